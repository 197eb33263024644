"""A gateway's simulated link, pure: when bytes arrive, and when the link fails.

The load-test host has no netem, so each gateway plays its own ``NetworkProfile``. Both
one-way latencies (with their jitter) are applied to what the gateway reads: a round trip
takes as long as over the real link whichever side starts it (a ping, an alert and its ack,
an operator's command), and a gateway's write leaves at once instead of waiting a wheel tick
of its own; the backend sees a gateway's messages one latency early, which no figure
measures. Serialisation is applied each way: a write waits for the bytes before it to leave
at the link's bandwidth (an upload over GPRS is as slow as over GPRS), a read for the bytes
before it to arrive. Faults come due at the profile's rates. No I/O and no clock of its own:
the driver passes ``now`` and asks what is due.
"""

from __future__ import annotations

import random
from collections import deque

from simulator.network import FaultKind, NetworkProfile

NEVER = float("inf")
SERIALISATION_FLOOR = 0.001
"""A write whose serialisation takes less (and that waits behind nothing) leaves at once."""


class LinkQueue:
    """Bytes in flight one way, ``(arrival, bytes)`` oldest first; empty ones cost nothing."""

    __slots__ = ("_flight",)

    def __init__(self) -> None:
        self._flight: deque[tuple[float, bytes]] | None = None

    def put(self, arrival: float, data: bytes) -> None:
        if self._flight is None:
            self._flight = deque()
        self._flight.append((arrival, data))

    def busy_until(self) -> float:
        """When the last bytes in flight arrive (0: none are)."""
        return self._flight[-1][0] if self._flight else 0.0

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

    def received(self, now: float, data: bytes, rng: random.Random) -> None:
        """Bytes read off the socket at ``now``: they reach the protocol after both legs."""
        inbound = self.inbound
        inbound.put(self.profile.arrival(now, len(data), rng, inbound.busy_until(), 2), data)

    def sent(self, now: float, data: bytes) -> bool:
        """Bytes written at ``now``: True if they leave at once, else they wait here for
        their serialisation (``outbound``)."""
        outbound = self.outbound
        busy = outbound.busy_until()
        departure = self.profile.departure(now, len(data), busy)
        if not busy and departure - now < SERIALISATION_FLOOR:
            return True
        outbound.put(departure, data)
        return False

    def held(self, now: float, data: bytes) -> None:
        """Bytes written while the link is down: they leave, in order, once it is up."""
        self.outbound.put(max(now, self.outbound.busy_until()), data)

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
