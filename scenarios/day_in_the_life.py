"""A day in the life: a mixed fleet (wired, LTE, 3G, GPRS, satellite) ramps up, holds, loses
30% of its houses in the evening (their gateways stop; new ones join when it comes back) and
holds again, with every network's drops, blackholes and offline spells.

    locust -f scenarios/day_in_the_life.py --headless -u 1000 -r 100 -t 120s

Parameters: ``-u``/``-r``/``-t`` (gateways, per second, the day: the dip is from 50% to 70%
of -t), ``--network-mix`` (default wired:35,lte:35,3g:15,gprs:10,satellite:5),
``--alerts-per-hour`` (12).

Checks (``--threshold NAME=VALUE`` overrides): peak_connected >= 99% of -u;
connect_p99_ms <= 5,000 (the ProtoMsg handshake, GPRS included); unexpected_drops <= 1% of
-u; alerts_lost and alerts_duplicated = 0.
"""

from simulator.behaviour import Behaviour
from simulator.checks import day_checks
from simulator.shapes import DayShape, named_explicitly
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)


class DayInTheLife(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired:35,lte:35,3g:15,gprs:10,satellite:5"
    behaviour = Behaviour(status_interval=60.0, alerts_per_hour=12.0)

    checks = staticmethod(day_checks)


class DayInTheLifeShape(DayShape):
    abstract = not SELECTED
