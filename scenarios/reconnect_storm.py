"""Reconnect storm: once every gateway is connected, SIGKILL one of the embedded stack's
shards (no drain, no close frames, as when a host dies) and watch the fleet come back
through HAProxy to the survivors.

    locust -f scenarios/reconnect_storm.py --headless -u 2000 -r 500 --shards 2

Parameters: ``-u``/``-r`` (gateways, per second), ``--kill-after`` (s once all are
connected, 5), ``--recovery-time`` (s watched after the kill, 45), ``--shards`` (K, auto: 2);
``-t`` caps the whole run. Needs the embedded stack (no ``--host``).

Checks (``--threshold NAME=VALUE`` overrides): connected_at_kill >= 99% of -u;
reconnect_99pct_s <= 30 and reconnect_100pct_s <= 60 (from the kill until the connected
count is back at 99% / 100% of what it was, by the gateways' own count to 0.1 s);
peak_accept_per_s after the kill <= (accept_rate + accept_burst) x surviving shards;
haproxy_5xx_beyond_shed <= 0 (HAProxy's 5xx minus the shards' admission 503s);
alerts_lost and alerts_duplicated = 0; the fleet checks alerts_unstored_pct <= 1 and
connect_failed_pct <= 5.
The dropped connections are the point of the run: the checks, not Locust's failure count,
decide the exit code.
"""

from simulator.behaviour import Behaviour
from simulator.checks import storm_checks
from simulator.shapes import StormShape, named_explicitly, needs_embedded_stack
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)
needs_embedded_stack(SELECTED, "reconnect storm")


class ReconnectStorm(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired"
    # Alerts in flight when the shard dies must be resent and stored exactly once.
    behaviour = Behaviour(status_interval=30.0, alerts_per_hour=120.0)

    checks = staticmethod(storm_checks)


class ReconnectStormShape(StormShape):
    abstract = not SELECTED
