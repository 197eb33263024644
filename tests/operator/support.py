"""Helpers shared by the operator side's tests (fleet state, API, shell, rollouts, client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
from nats.js.kv import KeyValue

from backend.devstack.testdevice import CommandHandler, TestDevice, UpdateHandler, echo_command
from backend.operator.api import OperatorApi
from backend.operator.fleetstate import DeviceState, FleetState, load
from backend.shard import Shard
from tests.support import device_token, until, until_true

FleetStateFactory = Callable[..., contextlib.AbstractAsyncContextManager[FleetState]]
ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[OperatorApi]]
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
OPERATOR_TOKENS = {OPERATOR_TOKEN: "op-alice"}
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def base(api: OperatorApi) -> str:
    return f"http://127.0.0.1:{api.port}"


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    """(status, JSON answer) of an API request, as the test operator unless headers say."""
    kwargs.setdefault("headers", AUTH)
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


async def connected(
    device_id: str,
    shard: Shard,
    on_command: CommandHandler = echo_command,
    on_update: UpdateHandler | None = None,
    offers_lost: int = 0,
    **options: Any,
) -> TestDevice:
    """A test device connected to ``shard``, handshake done and presence recorded (reachable);
    ``options`` go to ``TestDevice`` (its port forwards' window and chunk...)."""
    url = f"ws://127.0.0.1:{shard.port}"
    device = TestDevice(
        device_id, device_token(device_id), url, on_command=on_command, on_update=on_update,
        offers_lost=offers_lost, **options,
    )  # fmt: skip
    await device.connect()
    async with asyncio.timeout(10):
        await device.handshake.wait()
    await until_true(lambda: shard.devices[device_id].registration is not None)
    return device


async def state_when(
    kv: KeyValue, device_id: str, check: Callable[[DeviceState], bool], timeout: float = 10.0
) -> DeviceState:
    """The device's fleet state once ``check`` holds for it."""

    async def probe() -> DeviceState | None:
        state, _revision = await load(kv, device_id)
        return state if state is not None and check(state) else None

    return await until(probe, timeout)
