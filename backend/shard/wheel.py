"""One shared timer for every connection's deadlines (handshake, keep-alive ping, reaping).

A per-connection ``call_later`` handle or task costs hundreds of bytes; here a connection
costs one list slot. Timers are coarse (``resolution`` seconds) and lazy: a connection is
filed under the tick of its next deadline and, when that tick comes, decides itself whether
the deadline still holds (activity since then just moves it further out).
"""

from __future__ import annotations

import math
from typing import Protocol


class Timed(Protocol):
    def on_timer(self, now: float) -> float | None:
        """Handle a due deadline; return the next one (monotonic seconds), or None to stop."""


class TimerWheel:
    def __init__(self, resolution: float = 1.0) -> None:
        self.resolution = resolution
        self._slots: dict[int, list[Timed]] = {}
        self._fired_up_to = -1  # every tick up to this one has fired

    def schedule(self, item: Timed, when: float) -> None:
        """File ``item`` to be called back at ``when``, or up to one resolution later."""
        tick = max(math.ceil(when / self.resolution), self._fired_up_to + 1)
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [item]
        else:
            slot.append(item)

    def advance(self, now: float) -> int:
        """Fire every deadline up to ``now``; returns how many items were called."""
        last = math.floor(now / self.resolution)
        due = sorted(tick for tick in self._slots if tick <= last)
        self._fired_up_to = last  # items rescheduled below land in the future
        fired = 0
        for tick in due:
            for item in self._slots.pop(tick):
                fired += 1
                when = item.on_timer(now)
                if when is not None:
                    self.schedule(item, when)
        return fired
