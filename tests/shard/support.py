"""Helpers shared by the shard's test modules: devices connected to an in-process shard, its
metrics, and the check that it still serves."""

from __future__ import annotations

import asyncio

from backend.devstack.testdevice import TestDevice
from backend.protocol import messages
from backend.shard import Shard
from tests.support import device_token


def url(shard: Shard) -> str:
    return f"ws://127.0.0.1:{shard.port}"


def alert(alert_id: str, state: str = "raised") -> messages.Alert:
    return messages.Alert(alert_id, "temp-high", "warning", state, "Too hot", "Open a window", 1.0)


async def connected(device_id: str, shard: Shard) -> TestDevice:
    device = TestDevice(device_id, device_token(device_id), url(shard))
    await device.connect()
    async with asyncio.timeout(5):
        await device.handshake.wait()
    return device


def metric(shard: Shard, name: str, **labels: str) -> float:
    value = shard.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def still_serves(shard: Shard, device: TestDevice, alert_id: str) -> None:
    """The shard is on NATS and stores (and acks) the device's alerts."""
    assert shard.ready
    await device.send_alert(alert(alert_id))
    async with asyncio.timeout(5):
        await device.wait_acked(alert_id)
