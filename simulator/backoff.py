"""Reconnect policy: capped exponential backoff with full jitter, one per virtual gateway.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") sleeps
``uniform(0, min(cap, base * 2**attempt))`` on every retry, the first included: unlike
Mender's client, which first waits a fixed time, a fleet cut off at once does not come back
in one synchronised wave.
"""

from __future__ import annotations

import random

# 2.0 ** 1024 overflows a float; by 1000 doublings any sensible base is far past any cap.
_MAX_DOUBLINGS = 1000


class Backoff:
    """Delays between reconnect attempts; ``reset()`` once a connection succeeds."""

    # Tens of thousands live in one simulator process: no per-instance dict.
    __slots__ = ("attempt", "base", "cap")

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self, rng: random.Random, hint: float | None = None) -> float:
        """Seconds to wait before the next attempt.

        ``hint`` is the server's own wait (HTTP 503 Retry-After, or a 1012 close reason
        "retry-after=N"): never reconnect before it, and jitter on top so that the clients it
        turned away do not all return at the same instant.
        """
        if hint is not None and hint < 0:
            raise ValueError(f"retry hint must be >= 0, got {hint}")
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, _MAX_DOUBLINGS))
        self.attempt += 1
        jitter = rng.uniform(0.0, ceiling)
        return jitter if hint is None else hint + jitter

    def reset(self) -> None:
        self.attempt = 0
