"""The fleet map's live feed: the whole fleet once, compactly, then only what changes.

One watch of the devices bucket (``subjects.DEVICES_BUCKET``, written by the fleet state)
per API process keeps a compact row per device; every page connected to
``GET /fleet/live`` (a WebSocket) gets

- ``{"type": "fleet", "fields": [...], "rows": [[...], ...]}`` once, when it connects (after
  the watch has read the bucket's initial values), then
- ``{"type": "delta", "rows": [[...], ...], "removed": [id, ...]}`` every ``FLUSH_INTERVAL``
  in which a row changed: the changed rows whole, each device at most once per delta.

The watch starts with the first page, so an API no page looks at never reads the bucket.
A row is ``[id, lat, lon, flags, firmware, address, open alerts]``: lat/lon null for a device
that reported no location, flags bit 0 online, bit 1 red (an open alert). Rows are JSON
arrays, not objects, so field names are not repeated 100,000 times, and the WebSocket is
compressed (permessage-deflate, RFC 7692), which shrinks the repeated firmware strings and
address suffixes further. A page that falls behind by ``MAX_BEHIND`` deltas is closed with
``LAGGING``, and every page with ``WATCH_LOST`` if the watch fails (NATS trouble); they
reconnect and start again from a fresh fleet message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web
from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from backend.operator.errors import ApiError
from backend.operator.fleetstate import DeviceState

log = logging.getLogger("fleet.watch")

FIELDS = ("id", "lat", "lon", "flags", "firmware", "address", "alerts")
ONLINE, RED = 1, 2
FLUSH_INTERVAL = 0.25
"""Changes are batched this long: at most four messages a second per page."""
MAX_BEHIND = 64
"""Deltas queued for one page before it counts as lagging and is closed."""
LAGGING = 4002
"""Close code for a page that did not keep up; it reconnects and gets the fleet again."""
GOING_AWAY = 1001
WATCH_LOST = 1011
CLOSE_REASONS = {
    LAGGING: b"fell behind the fleet's changes",
    GOING_AWAY: b"the API is stopping",
    WATCH_LOST: b"the feed lost its watch of the fleet state",
}

Row = list[Any]


def row_of(state: DeviceState) -> Row:
    location = state.location
    flags = (ONLINE if state.online else 0) | (RED if state.alerts else 0)
    lat, lon, address = (
        (location["lat"], location["lon"], location["address"]) if location else (None, None, "")
    )
    return [state.device, lat, lon, flags, state.firmware, address, len(state.alerts)]


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class FleetFeed:
    """``handle`` is the ``/fleet/live`` route: it feeds one page until it goes away."""

    def __init__(self, kv: KeyValue, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.kv = kv
        self.flush_interval = flush_interval
        self.rows: dict[str, Row] = {}
        self.ready = asyncio.Event()
        self._changed: dict[str, Row | None] = {}  # None: removed
        self._pages: set[asyncio.Queue[str | int]] = set()  # int: close with that code
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._stopped = False
        self._flusher: asyncio.Task[None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, compress=True)
        if not ws.can_prepare(request).ok:
            raise ApiError("GET /fleet/live takes a WebSocket upgrade", field="upgrade")
        await self._start()
        await ws.prepare(request)
        await self.serve(ws)
        return ws

    async def _start(self) -> None:
        async with self._starting:
            if self._watcher is None:
                self._watcher = await self.kv.watchall()
                self._tasks.append(asyncio.create_task(self._watch(self._watcher)))
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_every())
                self._tasks.append(self._flusher)

    async def stop(self) -> None:
        self._stopped = True
        self.ready.set()  # a page still waiting for the first fleet is let go
        for page in list(self._pages):
            _close(page, GOING_AWAY)
        if self._watcher is not None:
            with contextlib.suppress(NatsError):
                await self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def fleet_message(self) -> str:
        return encode({"type": "fleet", "fields": FIELDS, "rows": list(self.rows.values())})

    async def serve(self, ws: web.WebSocketResponse) -> None:
        """The fleet, then its deltas, until the page closes or lags behind."""
        await self.ready.wait()
        if self._stopped or self._watcher is None:  # stopping, or the watch was lost
            code = GOING_AWAY if self._stopped else WATCH_LOST
            await ws.close(code=code, message=CLOSE_REASONS[code])
            return
        queue: asyncio.Queue[str | int] = asyncio.Queue(MAX_BEHIND)
        self._pages.add(queue)  # before the fleet message: no delta can fall between
        try:
            await ws.send_str(self.fleet_message())
            reader = asyncio.create_task(_until_closed(ws))
            while not reader.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                message = getter.result()
                if isinstance(message, int):
                    await ws.close(code=message, message=CLOSE_REASONS[message])
                    break
                await ws.send_str(message)
            reader.cancel()
        except ConnectionError:
            pass  # the page went away mid-send
        finally:
            self._pages.discard(queue)

    # --- the watch --------------------------------------------------------------------------

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    self.ready.set()
                    log.info("fleet feed: %d devices", len(self.rows))
                    continue
                self._apply(entry)
        except NatsError as exc:
            log.warning("fleet feed: the watch of the devices bucket failed: %s", exc)
        if not self._stopped:
            self._lost()

    def _lost(self) -> None:
        """The watch ended: the pages are closed (they reconnect) and the next one that
        connects starts a new watch, which reads the bucket afresh."""
        self._watcher, self.rows, self._changed = None, {}, {}
        waited, self.ready = self.ready, asyncio.Event()
        waited.set()  # pages still waiting for the first fleet are let go (and closed)
        for page in list(self._pages):
            _close(page, WATCH_LOST)

    def _apply(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            if self.rows.pop(key, None) is not None and self.ready.is_set():
                self._changed[key] = None
            return
        try:
            row = row_of(DeviceState.decode(entry.value))
        except (ValueError, KeyError, TypeError) as exc:  # not one the fleet state wrote
            log.warning("fleet feed: skipping unreadable entry %s: %s", key, exc)
            return
        if self.rows.get(key) == row:
            return  # a change the map does not show (a status reading, a timestamp)
        self.rows[key] = row
        if self.ready.is_set():
            self._changed[key] = row

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def flush(self) -> None:
        """Send what changed since the last flush to every page, as one delta."""
        if not self._changed:
            return
        changed, self._changed = self._changed, {}
        rows = [row for row in changed.values() if row is not None]
        removed = [key for key, row in changed.items() if row is None]
        message = encode({"type": "delta", "rows": rows, "removed": removed})
        for page in list(self._pages):
            try:
                page.put_nowait(message)
            except asyncio.QueueFull:
                self._pages.discard(page)
                _close(page, LAGGING)


def _close(page: asyncio.Queue[str | int], code: int) -> None:
    """Tell the page's ``serve`` to close with ``code``, ahead of what it has not sent."""
    while not page.empty():
        page.get_nowait()
    page.put_nowait(code)


async def _until_closed(ws: web.WebSocketResponse) -> None:
    """Reads (and ignores) what the page sends, until it closes."""
    async for frame in ws:
        if frame.type is WSMsgType.ERROR:
            break
