"""Keep-alive soak: hold N gateways for the whole run over a network mix in which one house
in five sits on a link that blackholes now and then (silent for ~30 s on average, so about
half the spells outlast the shards' keep-alive deadline and must be reaped).

    locust -f scenarios/keepalive_soak.py --headless -u 1000 -r 200 -t 90s

Parameters: ``-u``/``-r``/``-t`` (gateways, per second, the whole run: ramp, then hold);
``--network-mix`` (default wired:30,lte:40,3g:10,blackholing:20). The embedded shards ping
every 10 s and reap a connection silent for 25 s (``--shard-option keepalive_timeout=…``
overrides); gateways ping a server quiet for 5 s, which gives the ping round trips.

Checks (``--threshold NAME=VALUE`` overrides): peak_connected >= -u; unexpected_drops = 0
(blackholes, offline spells and injected resets are expected); ping_p99_ms <= 1,000;
blackhole_deaths_not_reaped = 0 (every connection a gateway found dead after a blackhole
was closed by a shard's keep-alive, per the shards' fleet_shard_disconnects_total
{reason="keepalive_timeout"}); alerts_lost and alerts_duplicated = 0; the fleet checks
alerts_unstored_pct <= 1 and connect_failed_pct <= 5.
"""

from collections.abc import Mapping
from typing import ClassVar

from simulator.behaviour import Behaviour
from simulator.checks import soak_checks
from simulator.network import NetworkProfile
from simulator.shapes import FleetShape, named_explicitly
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)

BLACKHOLING = NetworkProfile(
    name="blackholing",
    latency=0.04,
    jitter=0.02,
    bandwidth=2_500_000,
    blackholes_per_hour=60.0,
    blackhole_mean=30.0,
)


class KeepaliveSoak(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired:30,lte:40,3g:10,blackholing:20"
    network_profiles: ClassVar[Mapping[str, NetworkProfile]] = {"blackholing": BLACKHOLING}
    shard_options: ClassVar[Mapping[str, str]] = {"ping_interval": "10", "keepalive_timeout": "25"}
    behaviour = Behaviour(
        status_interval=60.0, alerts_per_hour=6.0, ping_interval=5.0, keepalive_timeout=30.0
    )

    checks = staticmethod(soak_checks)


class KeepaliveSoakShape(FleetShape):
    abstract = not SELECTED
