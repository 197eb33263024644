"""Admission control: a connection cap and an accept-rate budget (a token bucket).

Mender learned it the hard way: after a restart every device reconnects at once. Shedding
the excess with 503 + a jittered Retry-After spreads the herd instead of melting the shard.
"""

from __future__ import annotations

import random

from backend.protocol.errors import Overloaded


class Admission:
    def __init__(self, max_connections: int, rate: float, burst: int, retry_after: float) -> None:
        self.max_connections = max_connections
        self.rate = rate
        self.burst = float(burst)
        self.retry_after = retry_after
        self._tokens = float(burst)
        self._updated: float | None = None

    def admit(self, now: float, connections: int) -> None:
        """Take one token for a new connection, or raise Overloaded with a jittered hint."""
        if connections >= self.max_connections:
            raise Overloaded(
                f"shard at capacity ({self.max_connections} connections)",
                retry_after=self.jittered_retry_after(),
            )
        self._refill(now)
        if self._tokens < 1.0:
            raise Overloaded(
                f"over the accept-rate budget ({self.rate:g} connections/s)",
                retry_after=self.jittered_retry_after(),
            )
        self._tokens -= 1.0

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def jittered_retry_after(self) -> float:
        """Full jitter over [1, retry_after] so refused clients do not come back together."""
        return random.uniform(1.0, max(1.0, self.retry_after))
