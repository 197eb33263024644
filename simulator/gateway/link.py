"""A gateway's simulated link, pure: when bytes arrive, and when the link fails.

The load-test host has no netem, so each gateway plays its own ``NetworkProfile``: bytes
written or read wait here for their one-way latency and serialisation before they reach the
socket or the protocol, in order (TCP keeps it), and faults come due at the profile's rates.
No I/O and no clock of its own: the driver passes ``now`` and asks what is due.
"""

from __future__ import annotations

import random
from collections import deque

from simulator.network import FaultKind, NetworkProfile

NEVER = float("inf")


class LinkQueue:
    """Bytes in flight one way, ``(arrival, bytes)`` oldest first; empty ones cost nothing."""

    __slots__ = ("_flight",)

    def __init__(self) -> None:
        self._flight: deque[tuple[float, bytes]] | None = None

    def put(self, profile: NetworkProfile, now: float, data: bytes, rng: random.Random) -> float:
        """Send ``data`` at ``now``; returns when it arrives."""
        flight = self._flight
        busy_until = flight[-1][0] if flight else 0.0
        arrival = profile.arrival(now, len(data), rng, busy_until)
        if flight is None:
            flight = self._flight = deque()
        flight.append((arrival, data))
        return arrival

    def take(self, now: float) -> bytes:
        """The bytes that have arrived by ``now``, joined (b"" if none)."""
        flight = self._flight
        if not flight or flight[0][0] > now:
            return b""
        arrived = [flight.popleft()[1]]
        while flight and flight[0][0] <= now:
            arrived.append(flight.popleft()[1])
        if not flight:
            self._flight = None
        return arrived[0] if len(arrived) == 1 else b"".join(arrived)

    def take_all(self) -> bytes:
        """Everything in flight, as if it had all arrived (the peer is gone: it got through
        before the end)."""
        flight, self._flight = self._flight, None
        return b"".join(data for _, data in flight) if flight else b""

    def next_arrival(self) -> float:
        return self._flight[0][0] if self._flight else NEVER

    def clear(self) -> None:
        self._flight = None


class SimulatedLink:
    """Both directions of one gateway's link, and its fault schedule."""

    __slots__ = ("down", "fault_at", "fault_kind", "inbound", "outbound", "profile")

    def __init__(self, profile: NetworkProfile) -> None:
        self.profile = profile
        self.inbound = LinkQueue()  # read off the socket, not yet handed to the protocol
        self.outbound = LinkQueue()  # framed by the protocol, not yet written to the socket
        self.fault_at = NEVER
        self.fault_kind: FaultKind | None = None
        self.down = False  # inside a blackhole or offline spell

    @property
    def instant(self) -> bool:
        """A perfect link: bytes need not wait at all."""
        profile = self.profile
        return not (profile.latency or profile.jitter or profile.bandwidth)

    def schedule_fault(self, now: float, rng: random.Random) -> None:
        """Draw the next fault, counted from ``now``."""
        fault = self.profile.next_fault(rng)
        if fault is None:
            self.fault_at, self.fault_kind = NEVER, None
        else:
            self.fault_at, self.fault_kind = now + fault[0], fault[1]

    def fail(self, rng: random.Random) -> tuple[FaultKind, float]:
        """The fault that is due, and how long it lasts; a blackhole or offline spell keeps
        the link down until ``heal``."""
        kind = self.fault_kind
        assert kind is not None, "no fault is due on a link without faults"
        self.fault_at = NEVER
        self.down = kind != "drop"
        return kind, self.profile.fault_duration(kind, rng)

    def heal(self, now: float, rng: random.Random) -> FaultKind | None:
        """The spell is over: the fault that ended; the next one counts from ``now``."""
        kind = self.fault_kind
        self.down = False
        self.schedule_fault(now, rng)
        return kind

    def connect_delay(self, rng: random.Random) -> float:
        """How long the link takes to carry a TCP handshake: slow link setup, then a
        round trip."""
        profile = self.profile
        return profile.handshake_delay + 2 * profile.delay(0, rng)

    def forget(self) -> None:
        """The connection ended: nothing it had in flight matters any more."""
        self.inbound.clear()
        self.outbound.clear()
