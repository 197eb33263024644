"""The gateways of ``bench/streams.py``'s command round trips: idle (no alerts, hourly
status, a perfect link) and answering commands at once (no simulated command latency), so
the figure is the backend's round trip, not the gateway's pretend work."""

from __future__ import annotations

from simulator.behaviour import Behaviour
from simulator.network import NetworkProfile
from simulator.user import GatewayUser


class CommandFleet(GatewayUser):
    network_mix = "idle"
    network_profiles = {"idle": NetworkProfile(name="idle")}  # noqa: RUF012 (ClassVar)
    behaviour = Behaviour(status_interval=3600.0, alerts_per_hour=0.0, command_latency=0.0)
