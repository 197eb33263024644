"""Alert policies: a household's problems at a rate, or the burst's window of unacked alerts."""

from __future__ import annotations

import random

import pytest

from simulator.behaviour import Behaviour
from simulator.fleet import Fleet, parse_targets
from simulator.gateway.alerts import WindowAlerts
from simulator.gateway.device import Device
from simulator.gateway.link import NEVER, SimulatedLink
from simulator.network import NetworkProfile


def window_device(window: int) -> Device:
    fleet = Fleet(
        parse_targets("ws://127.0.0.1:1"),
        lambda device_id: "token",
        behaviour=Behaviour(alerts_per_hour=0.0),
        alerts=WindowAlerts(window, Behaviour().max_outbox),
        rng=random.Random(1),
    )
    return Device(fleet, "gw-1", SimulatedLink(NetworkProfile("p")), now=0.0)


def test_the_window_fills_once_connected_and_waits_for_acks() -> None:
    dev = window_device(4)
    assert dev.due == NEVER  # offline: nothing in flight, nothing raised
    dev.connected(now=0.0)
    dev.run_due(0.0)
    assert dev.in_flight() == 4
    assert dev.fleet.alerts.next_alert(dev) == NEVER  # full: until an ack


@pytest.mark.parametrize("window", [0, 1001])
def test_a_window_beyond_the_outbox_is_refused(window: int) -> None:
    with pytest.raises(ValueError, match="alert window"):
        WindowAlerts(window, 1000)
