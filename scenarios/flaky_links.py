"""Houses on bad links: slow 3G and GPRS, satellite rain fade. Expect drops, blackholes the
server must reap by keep-alive, offline spells and reconnects; no alert may be lost.

Run alone with ``locust -f scenarios/flaky_links.py``; with ``locust -f scenarios`` it is one
gateway in ten of the fleet.
"""

from simulator.behaviour import Behaviour
from simulator.user import GatewayUser


class FlakyLinks(GatewayUser):
    weight = 1
    network_mix = "3g:50,gprs:40,satellite:10"
    behaviour = Behaviour(status_interval=120.0, alerts_per_hour=12.0)
