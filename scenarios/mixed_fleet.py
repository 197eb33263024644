"""A typical fleet: mostly wired and LTE houses, some on 3G, a few on GPRS or satellite.

Gateways report status every minute, raise a household alert every ten minutes on average
(cleared later), answer commands and take updates. Run alone with
``locust -f scenarios/mixed_fleet.py``, or with the other scenarios via ``locust -f scenarios``.
"""

from simulator.behaviour import Behaviour
from simulator.user import GatewayUser


class MixedFleet(GatewayUser):
    weight = 9
    network_mix = "wired:40,lte:40,3g:15,gprs:4,satellite:1"
    behaviour = Behaviour(status_interval=60.0, alerts_per_hour=6.0)
