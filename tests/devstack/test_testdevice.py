"""The built-in test device against an in-process shard (real nats-server)."""

from __future__ import annotations

import asyncio

from backend.devstack.testdevice import TestDevice
from tests.support import ShardFactory, device_token


async def test_the_device_is_connected_inside_async_with_and_closed_after(
    start_shard: ShardFactory,
) -> None:
    async with start_shard() as shard:
        url = f"ws://127.0.0.1:{shard.port}"
        async with TestDevice("gw-1", device_token("gw-1"), url) as device:
            async with asyncio.timeout(5):
                await device.handshake.wait()
        assert device.close_code == 1000  # a closing handshake, not a dropped link
