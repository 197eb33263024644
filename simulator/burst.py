"""A gateway that raises alerts as fast as the backend acks them: it keeps ``window`` alerts
unacked at all times while connected, for the alert-burst scenario's closed loop (an open
loop at a fixed rate would only fill outboxes once the backend falls behind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.behaviour import pick_problem
from simulator.gateway import VirtualGateway

if TYPE_CHECKING:
    from simulator.fleet import Fleet


class WindowedGateway(VirtualGateway):
    __slots__ = ("window",)

    def __init__(self, fleet: Fleet, index: int, device_id: str, window: int) -> None:
        if not 1 <= window <= fleet.behaviour.max_outbox:
            raise ValueError(f"alert window must be 1 to max_outbox, not {window}")
        self.window = window
        super().__init__(fleet, index, device_id)

    def _in_flight(self) -> int:
        return len(self.alert_sent or ())

    def _next_alert_event(self) -> float:
        if self.fleet.draining or self.connected_at is None or self._in_flight() >= self.window:
            return float("inf")
        return 0.0  # room in the window: due now

    def _alerts_due(self, now: float) -> None:
        if self.fleet.draining or self.connected_at is None:
            return
        while (before := self._in_flight()) < self.window:
            self._send_alert("raised", pick_problem(self.fleet.rng), now)
            if self._in_flight() == before:  # the outbox refused it: try after the next ack
                return
