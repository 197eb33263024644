"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from backend.auth import issue_device_token
from backend.shard import Shard

JWT_SECRET = "test-secret-not-for-production-0123456789"

ShardFactory = Callable[..., contextlib.AbstractAsyncContextManager[Shard]]


def device_token(device_id: str, **kwargs: Any) -> str:
    return issue_device_token(device_id, JWT_SECRET, **kwargs)
