"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
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
