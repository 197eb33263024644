"""Alert burst: every gateway keeps ``--alert-window`` alerts unacked and raises a new one as
each ack comes back, so the fleet sends alerts as fast as the backend stores them.

    locust -f scenarios/alert_burst.py --headless -u 200 -r 100 -t 60s --alert-window 16

Parameters: ``-u``/``-r``/``-t`` (gateways, per second, the whole run: ramp, then burst until
-t), ``--alert-window`` (in flight per gateway, 8). Wired links, no status chatter.

Checks (``--threshold NAME=VALUE`` overrides): alerts_per_s_stored >= 20,000 (the goal; the
rate is counted by reading the durable stream back, this run's unique alerts over the time
from the first stored to the last, not from counters); alert_p50_ms <= 250 and
alert_p99_ms <= 2,000 (first send to ack, resends included); alerts_lost = 0 and
alerts_duplicated = 0; the fleet checks alerts_unstored_pct <= 1 and connect_failed_pct <= 5.
The stream is read back only with the embedded stack.
"""

from simulator.behaviour import Behaviour
from simulator.burst import WindowedGateway
from simulator.checks import burst_checks
from simulator.fleet import Fleet
from simulator.gateway import VirtualGateway
from simulator.shapes import FleetShape, named_explicitly
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)


class AlertBurst(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired"
    behaviour = Behaviour(status_interval=3600.0, alerts_per_hour=0.0)

    def make_gateway(self, fleet: Fleet, index: int, device_id: str) -> VirtualGateway:
        options = self.environment.parsed_options
        return WindowedGateway(fleet, index, device_id, getattr(options, "alert_window", 8))

    checks = staticmethod(burst_checks)


class AlertBurstShape(FleetShape):
    abstract = not SELECTED
