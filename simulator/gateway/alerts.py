"""When a fleet's devices raise alerts: one policy object serves every device of a fleet.

``PoissonAlerts`` are a household's problems at a rate; ``WindowAlerts`` is the alert burst's
closed loop. A scenario picks one (``GatewayUser.alert_policy``); the device asks it what is
due and when, instead of being subclassed.
"""

from __future__ import annotations

import random
from typing import Protocol

from simulator.behaviour import Behaviour, pick_problem
from simulator.gateway.link import NEVER


class _Fleet(Protocol):
    @property
    def rng(self) -> random.Random: ...

    @property
    def behaviour(self) -> Behaviour: ...


class Device(Protocol):
    """What a policy reads and calls of a device (``simulator.gateway.device.Device``; named
    here, not imported: the fleet holds the policy, and the device the fleet)."""

    open_problem: tuple[float, str, str, str, str] | None
    next_alert: float
    online: bool

    @property
    def fleet(self) -> _Fleet: ...

    def in_flight(self) -> int: ...

    def schedule_alert(self, now: float) -> None: ...

    def send_alert(self, state: str, problem: tuple[str, str, str, str], now: float) -> None: ...


class AlertPolicy(Protocol):
    """When a fleet's devices raise alerts; one instance serves every device of a fleet."""

    def next_alert(self, device: Device) -> float:
        """When ``device`` next has an alert to raise or clear (``NEVER``: not before an
        ack or a connection)."""
        ...

    def raise_due(self, device: Device, now: float) -> None: ...


class PoissonAlerts:
    """A household's problems: raised at ``alerts_per_hour`` (Poisson), each cleared after an
    exponential time; they go on while offline and wait in the outbox."""

    def next_alert(self, device: Device) -> float:
        problem = device.open_problem
        return min(device.next_alert, problem[0]) if problem is not None else device.next_alert

    def raise_due(self, device: Device, now: float) -> None:
        problem = device.open_problem
        if problem is not None and now >= problem[0]:
            device.open_problem = None
            device.send_alert("cleared", problem[1:], now)
        if now >= device.next_alert:
            device.schedule_alert(now)
            if device.open_problem is None:
                fleet = device.fleet
                new = pick_problem(fleet.rng)
                clear_at = now + fleet.rng.expovariate(1 / fleet.behaviour.clear_after)
                device.open_problem = (clear_at, *new)
                device.send_alert("raised", new, now)


class WindowAlerts:
    """A closed loop: keep ``window`` alerts unacked while connected and raise a new one as
    each ack comes back, so the fleet sends as fast as the backend stores (an open loop at a
    fixed rate would only fill outboxes once the backend falls behind)."""

    def __init__(self, window: int, max_outbox: int) -> None:
        if not 1 <= window <= max_outbox:
            raise ValueError(f"alert window must be 1 to max_outbox ({max_outbox}), not {window}")
        self.window = window

    def next_alert(self, device: Device) -> float:
        if not device.online or device.in_flight() >= self.window:
            return NEVER
        return 0.0  # room in the window: due now

    def raise_due(self, device: Device, now: float) -> None:
        if not device.online:
            return
        while (before := device.in_flight()) < self.window:
            device.send_alert("raised", pick_problem(device.fleet.rng), now)
            if device.in_flight() == before:  # the outbox refused it: try after the next ack
                return
