"""Presence with Mender's version guard, against a real JetStream KV."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from backend.bus import presence, subjects


async def test_connect_bumps_version_and_remembers_the_previous_holder(nc: NATS) -> None:
    kv = await subjects.ensure_streams(nc.jetstream())
    first = await presence.register(kv, "gw-1", "shard-a")
    second = await presence.register(kv, "gw-1", "shard-b")
    assert (first.version, second.version) == (1, 2)
    assert first.previous is None
    assert second.previous is not None
    assert (second.previous.shard, second.previous.connected) == ("shard-a", True)


async def test_stale_disconnect_never_overwrites_a_newer_connect(nc: NATS) -> None:
    kv = await subjects.ensure_streams(nc.jetstream())
    old = await presence.register(kv, "gw-1", "shard-a")
    new = await presence.register(kv, "gw-1", "shard-b")
    assert not await presence.unregister(kv, "gw-1", "shard-a", old)  # arrives late
    state, _ = await presence.lookup(kv, "gw-1")
    assert state is not None
    assert (state.connected, state.shard, state.version) == (True, "shard-b", 2)
    assert await presence.unregister(kv, "gw-1", "shard-b", new)
    state, _ = await presence.lookup(kv, "gw-1")
    assert state is not None
    assert (state.connected, state.version) == (False, 2)


async def test_concurrent_connects_each_get_a_distinct_version(nc: NATS) -> None:
    kv = await subjects.ensure_streams(nc.jetstream())
    regs = await asyncio.gather(*(presence.register(kv, "gw-1", f"shard-{i}") for i in range(8)))
    assert sorted(reg.version for reg in regs) == list(range(1, 9))


async def test_unknown_device_has_no_presence(nc: NATS) -> None:
    kv = await subjects.ensure_streams(nc.jetstream())
    assert await presence.lookup(kv, "gw-never") == (None, 0)


async def test_ensure_streams_is_idempotent(nc: NATS) -> None:
    js = nc.jetstream()
    await subjects.ensure_streams(js)
    await subjects.ensure_streams(js)
    info = await js.stream_info(subjects.ALERTS_STREAM)
    assert info.config.duplicate_window == subjects.DEDUP_WINDOW
