"""Presence with Mender's version guard, against a real JetStream KV."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from backend.bus import presence, subjects
from tests.support import until


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


# --- shard liveness ------------------------------------------------------------------------------


async def test_a_shard_is_live_while_its_heartbeat_key_has_not_expired(nc: NATS) -> None:
    kv = await subjects.ensure_shards_bucket(nc.jetstream(), ttl=1.0)
    assert await presence.live_shards(kv) == {}
    await presence.heartbeat(kv, "shard-a", "run-1")
    await presence.heartbeat(kv, "shard-b", "run-2")
    assert await presence.live_shards(kv) == {"shard-a": "run-1", "shard-b": "run-2"}
    await kv.delete("shard-b")  # a drained shard says so at once
    assert await presence.live_shards(kv) == {"shard-a": "run-1"}

    async def expired() -> bool | None:
        return await presence.live_shards(kv) == {} or None

    await until(expired, 5.0)  # no beat for the TTL: gone without a word


def test_presence_is_believed_only_on_the_live_run_of_its_shard() -> None:
    live = {"shard-a": "run-2"}
    assert presence.believed("shard-a", "run-2", live)
    assert not presence.believed("shard-a", "run-1", live)  # a restarted shard's old devices
    assert not presence.believed("shard-b", "run-1", live)  # a dead shard's
    assert presence.believed("shard-a", "", live)  # written before epochs: the shard decides


async def test_liveness_reads_at_most_once_per_refresh(nc: NATS) -> None:
    kv = await subjects.ensure_shards_bucket(nc.jetstream(), ttl=10.0)
    liveness = presence.Liveness(kv, refresh=0.3)
    await presence.heartbeat(kv, "shard-a", "run-1")
    assert await liveness.shards() == {"shard-a": "run-1"}
    await presence.heartbeat(kv, "shard-b", "run-1")
    assert await liveness.shards() == {"shard-a": "run-1"}  # within the refresh: as read
    await asyncio.sleep(0.3)
    assert await liveness.shards() == {"shard-a": "run-1", "shard-b": "run-1"}
    assert liveness.last == {"shard-a": "run-1", "shard-b": "run-1"}


async def test_a_registration_records_the_shards_run(nc: NATS) -> None:
    kv = await subjects.ensure_streams(nc.jetstream())
    reg = await presence.register(kv, "gw-1", "shard-a", "run-7")
    state, _ = await presence.lookup(kv, "gw-1")
    assert state is not None
    assert state.epoch == "run-7"
    await presence.unregister(kv, "gw-1", "shard-a", reg)
    state, _ = await presence.lookup(kv, "gw-1")
    assert state is not None
    assert (state.connected, state.epoch) == (False, "run-7")
