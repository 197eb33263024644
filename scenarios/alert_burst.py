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

from typing import Any

from simulator.behaviour import Behaviour
from simulator.checks import burst_checks
from simulator.gateway.alerts import AlertPolicy, WindowAlerts
from simulator.shapes import FleetShape, named_explicitly
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)


class AlertBurst(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired"
    behaviour = Behaviour(status_interval=3600.0, alerts_per_hour=0.0)

    @classmethod
    def alert_policy(cls, options: Any) -> AlertPolicy:
        return WindowAlerts(getattr(options, "alert_window", 8), cls.behaviour.max_outbox)

    checks = staticmethod(burst_checks)


class AlertBurstShape(FleetShape):
    abstract = not SELECTED
