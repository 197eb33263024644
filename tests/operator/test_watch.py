"""The fleet map's live feed: compact rows, batched deltas, lagging pages; then through a real
API, fleet state and shard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KeyValue

from backend.bus import subjects
from backend.operator import watch
from backend.operator.fleetstate import DeviceState, OpenAlert
from backend.operator.watch import FleetFeed, row_of
from backend.protocol import messages
from tests.operator.support import ApiFactory, base, connected, signed_in, state_when
from tests.support import ShardFactory

HOUSE = {"geo-lat": 41.01, "geo-lon": 28.95, "geo-address": "house 1, Istanbul, TR"}


def entry(state: DeviceState | None, key: str = "gw-1") -> KeyValue.Entry:
    if state is None:
        return KeyValue.Entry("b", key, None, 1, 0, 0, KV_DEL)
    return KeyValue.Entry("b", state.device, state.encode(), 1, 0, 0, None)


def red(device: str = "gw-1") -> DeviceState:
    state = DeviceState(device, online=True, firmware="1.0", inventory=dict(HOUSE))
    state.alerts["smoke"] = OpenAlert("a-1", "smoke", "critical", "Smoke", "Call", 1.0, 3)
    return state


def test_a_row_holds_what_a_mark_shows() -> None:
    assert row_of(red()) == ["gw-1", 41.01, 28.95, watch.ONLINE | watch.RED, "1.0",
                             "house 1, Istanbul, TR", 1]  # fmt: skip
    assert row_of(DeviceState("gw-2")) == ["gw-2", None, None, 0, "", "", 0]


def feed_with_page() -> tuple[FleetFeed, asyncio.Queue[str | int]]:
    feed = FleetFeed(kv=None)  # type: ignore[arg-type]  # these tests never start the watch
    page: asyncio.Queue[str | int] = asyncio.Queue(watch.MAX_BEHIND)
    feed._pages.add(page)
    return feed, page


def delta(page: asyncio.Queue[str | int]) -> dict[str, Any]:
    message = page.get_nowait()
    assert isinstance(message, str)
    return json.loads(message)  # type: ignore[no-any-return]


async def test_changes_are_batched_one_row_per_device_and_unseen_changes_dropped() -> None:
    feed, page = feed_with_page()
    feed._apply(entry(DeviceState("gw-1", online=True)))  # an initial value: no delta
    feed.ready.set()
    feed.flush()
    assert page.empty()
    feed._apply(entry(red()))
    feed._apply(entry(red()))  # the same row again
    feed._apply(entry(DeviceState("gw-2")))
    feed.flush()
    assert delta(page) == {"type": "delta", "rows": [row_of(red()), row_of(DeviceState("gw-2"))],
                           "removed": []}  # fmt: skip
    changed = red()
    changed.status = {"values": {"cpu": 1}, "ts": 2.0}  # not on the map
    feed._apply(entry(changed))
    feed._apply(entry(None, "gw-2"))
    feed.flush()
    assert delta(page) == {"type": "delta", "rows": [], "removed": ["gw-2"]}
    assert json.loads(feed.fleet_message())["rows"] == [row_of(red())]


async def test_a_page_that_falls_behind_is_closed_to_start_again() -> None:
    feed, page = feed_with_page()
    feed.ready.set()
    for n in range(watch.MAX_BEHIND + 1):
        feed._apply(entry(DeviceState("gw-1", firmware=str(n))))
        feed.flush()
    assert page.get_nowait() == watch.LAGGING
    assert page.empty()
    assert page not in feed._pages


async def test_a_failed_watch_closes_the_pages_and_the_next_page_starts_afresh() -> None:
    feed, page = feed_with_page()

    async def failing() -> AsyncIterator[KeyValue.Entry | None]:
        yield entry(red())
        yield None
        raise NatsError("connection lost")

    await feed._watch(failing())  # type: ignore[arg-type]
    assert page.get_nowait() == watch.WATCH_LOST
    assert (feed.rows, feed.ready.is_set(), feed._watcher) == ({}, False, None)


def test_an_unreadable_entry_is_skipped() -> None:
    feed, _page = feed_with_page()
    feed._apply(KeyValue.Entry("b", "gw-9", b"not json", 1, 0, 0, None))
    feed._apply(entry(red()))
    assert list(feed.rows) == ["gw-1"]


# --- through the API ---------------------------------------------------------------------------


async def test_a_page_gets_the_fleet_then_a_delta_when_a_device_turns_red(
    nc: NATS, start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_api() as api:
        device = await connected("gw-1", shard)
        await device.send_status(messages.Status("1.0", inventory=HOUSE))
        kv = await subjects.ensure_devices_bucket(nc.jetstream())
        await state_when(kv, "gw-1", lambda s: s.location is not None)
        async with signed_in(api) as (http, _signed), live(http, api) as ws:
            fleet = await ws.receive_json(timeout=10)
            assert fleet["fields"] == list(watch.FIELDS)
            assert fleet["rows"] == [
                ["gw-1", 41.01, 28.95, watch.ONLINE, "1.0", HOUSE["geo-address"], 0]
            ]
            alert = messages.Alert("a-1", "smoke", "critical", "raised", "Smoke", "Call", 1.0)
            await device.send_alert(alert)
            rows = await next_rows(ws)
        assert rows == [["gw-1", 41.01, 28.95, watch.ONLINE | watch.RED, "1.0",
                         HOUSE["geo-address"], 1]]  # fmt: skip


def live(http: aiohttp.ClientSession, api: Any) -> Any:
    return http.ws_connect(f"{base(api)}/fleet/live", origin=base(api))


async def next_rows(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """The rows of the next delta that has any (a status may come first)."""
    while True:
        message = await ws.receive_json(timeout=10)
        if message["type"] == "delta" and message["rows"]:
            return message["rows"]  # type: ignore[no-any-return]
