"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.auth import issue_device_token
from backend.shard import Shard

JWT_SECRET = "test-secret-not-for-production-0123456789"

ShardFactory = Callable[..., contextlib.AbstractAsyncContextManager[Shard]]


def device_token(device_id: str, **kwargs: Any) -> str:
    return issue_device_token(device_id, JWT_SECRET, **kwargs)


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.append(int(status.parent.name))
    return found


def descendants_of(pid: int) -> list[int]:
    children = children_of(pid)
    return children + [grandchild for child in children for grandchild in descendants_of(child)]


def tls_client_context(ca_file: Path) -> ssl.SSLContext:
    """Trusts only ``ca_file``. Pinned to TLS 1.2: websockets' sync client reads in a thread
    while it writes the upgrade, and with TLS 1.3 the session tickets arriving then sometimes
    stall CPython's ssl (about 1 connect in 30 hangs). TLS 1.3 itself is covered by the
    simulator's single-threaded gateways."""
    context = ssl.create_default_context(cafile=ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context
