"""The one loop that runs every gateway of a simulator process.

Gateways are state machines, not greenlets: a parked greenlet alone costs ~8 KiB and a
socket timeout arms and cancels a libev timer on every read. Here every gateway socket sits
in one ``epoll`` set, whose own descriptor is the only thing gevent's loop watches, and every
gateway deadline (link latency, keep-alive, status, retries) in one timer wheel; the hub
runs a round whenever the descriptor is readable or a tick is due, and calls the gateways
back (``on_ready``, ``on_timer``). Locust's own greenlets (runner, web UI, reports) run
between two rounds.

The wheel is lazy like the shard's (``backend.shard.wheel``): a gateway is filed under the
tick of its next deadline only when that deadline comes earlier than the one it is filed
under; a stale entry is skipped when its tick fires.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import select
import time
from typing import Any, Protocol

import gevent
from gevent.monkey import get_original

log = logging.getLogger("fleet.simulator")

RESOLUTION = 0.005
"""Seconds per wheel tick: below the shortest simulated latency (wired, 5 ms one way)."""
MAX_EVENTS = 4096  # per round: a ramp's burst is spread over rounds, Locust runs between
IDLE_WAIT = 0.25  # with nothing due: how often a round runs anyway
NEVER_TICK = 1 << 62
READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
"""In an ``on_ready`` mask: read (an error or a hang-up is read as one)."""
WRITABLE = select.EPOLLOUT
# Locust patches ``select`` (gevent's has no epoll): the kernel's, whose one descriptor
# gevent's loop watches.
_epoll: type[select.epoll] = get_original("select", "epoll")


class Driven(Protocol):
    """What the engine calls back."""

    wake_tick: int  # the tick it is filed under (``NEVER_TICK``: none)

    def on_ready(self, mask: int, now: float) -> None:
        """Its socket is readable (``EPOLLIN``, ``EPOLLERR``, ``EPOLLHUP``) or writable."""
        ...

    def on_timer(self, now: float) -> None:
        """A deadline is due (or was, within a tick); it files itself again (``wake_at``)."""
        ...

    def stop(self) -> None:
        """Give up: its code raised."""
        ...


class Engine:
    """Every gateway's sockets and deadlines in one process; started on first use."""

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        self._epoll = _epoll()
        self._sockets: dict[int, Driven] = {}
        self._slots: dict[int, list[Driven]] = {}
        self._ticks: list[int] = []  # heap of the ticks that have a slot
        self._fired = math.floor(time.monotonic() / resolution)  # every tick up to it fired
        self._io: Any = None  # gevent's watcher of the epoll descriptor, once started
        self._timer: Any = None  # gevent's timer for the next tick
        self.failures = 0  # gateways stopped because their code raised

    # --- what gateways ask -------------------------------------------------------------------

    def wake_at(self, item: Driven, when: float) -> None:
        """Call ``item.on_timer`` at ``when`` (up to one tick late), unless it is filed
        earlier already."""
        tick = max(math.ceil(when / self.resolution), self._fired + 1)
        if tick >= item.wake_tick:
            return
        item.wake_tick = tick
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [item]
            heapq.heappush(self._ticks, tick)
        else:
            slot.append(item)
        self._start()

    def watch(self, fd: int, item: Driven, *, write: bool = False) -> None:
        """Call ``item.on_ready`` when ``fd`` is readable, or writable too (``write``)."""
        mask = select.EPOLLIN | WRITABLE if write else select.EPOLLIN
        if fd in self._sockets:
            self._epoll.modify(fd, mask)
        else:
            self._epoll.register(fd, mask)
            self._sockets[fd] = item
        self._start()

    def pause(self, fd: int) -> None:
        """Stop reporting ``fd`` (a gateway gone silent) until ``watch`` again."""
        self._epoll.modify(fd, 0)

    def forget(self, fd: int) -> None:
        """Before closing ``fd``."""
        if self._sockets.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    # --- the loop ------------------------------------------------------------------------------

    def _start(self) -> None:
        """Watch the epoll descriptor and the next tick from gevent's loop (the hub). The
        watcher stays started: stopping and starting it would have libev take the
        descriptor out of its own epoll set and add it back, and adding an epoll set to
        another makes the kernel walk every descriptor in it (its loop check)."""
        if self._io is not None:
            return
        loop = gevent.get_hub().loop
        self._io = loop.io(self._epoll.fileno(), 1)
        self._io.start(self._round)
        self._arm(loop)

    def close(self) -> None:
        """Stop watching (the gateways' sockets are theirs to close)."""
        for watcher in (self._io, self._timer):
            if watcher is not None:
                watcher.stop()
        self._io = self._timer = None

    def _arm(self, loop: Any) -> None:
        """Wake for the next tick that has a slot (or after ``IDLE_WAIT``)."""
        if self._timer is not None:
            self._timer.stop()
        wait = IDLE_WAIT
        if self._ticks:
            wait = min(wait, max(0.0, self._ticks[0] * self.resolution - time.monotonic()))
        self._timer = loop.timer(wait)
        self._timer.start(self._round)

    def _round(self) -> None:
        """In the hub: what is ready, then what is due. Locust's greenlets run between two
        rounds; a gateway that fails is logged and stopped, never the loop."""
        self._poll()
        self._advance(time.monotonic())
        if self._io is not None:
            self._arm(self._io.loop)

    def _poll(self) -> None:
        ready = self._epoll.poll(0, MAX_EVENTS)
        if not ready:
            return
        now, sockets = time.monotonic(), self._sockets
        for fd, mask in ready:
            item = sockets.get(fd)
            if item is not None:
                try:
                    item.on_ready(mask, now)
                except Exception:
                    self._failed(item)

    def _advance(self, now: float) -> None:
        """Fire every tick up to ``now``."""
        last = math.floor(now / self.resolution)
        ticks, slots = self._ticks, self._slots
        self._fired = last  # deadlines filed from here on land in the future
        while ticks and ticks[0] <= last:
            tick = heapq.heappop(ticks)
            for item in slots.pop(tick):
                if item.wake_tick == tick:  # else a stale entry: filed earlier since
                    item.wake_tick = NEVER_TICK
                    try:
                        item.on_timer(now)
                    except Exception:
                        self._failed(item)

    def _failed(self, item: Driven) -> None:
        self.failures += 1
        log.exception("a gateway failed and is stopped: %r", item)
        with contextlib.suppress(Exception):
            item.stop()
