"""A day in the life: a mixed fleet (wired, LTE, 3G, GPRS, satellite) ramps up, holds, loses
30% of its houses in the evening (their gateways stop; new ones join when it comes back) and
holds again, with every network's drops, blackholes and offline spells. From 20% of the day
an operator runs a command or (every third time) a shell session on a random online device
every 5 s, through the embedded stack's operator API; at 25% an update goes out to a fifth
of the fleet (20 at once, 5 offers a second). Needs the embedded stack (no ``--host``).

    locust -f scenarios/day_in_the_life.py --headless -u 1000 -r 100 -t 120s

Parameters: ``-u``/``-r``/``-t`` (gateways, per second, the day: the dip is from 50% to 70%
of -t), ``--network-mix`` (default wired:35,lte:35,3g:15,gprs:10,satellite:5),
``--alerts-per-hour`` (12).

Checks (``--threshold NAME=VALUE`` overrides): peak_connected >= 99% of -u;
connect_p99_ms <= 5,000 (the ProtoMsg handshake, GPRS included); unexpected_drops <= 1% of
-u; alerts_lost and alerts_duplicated = 0; operator_failed_pct <= 25 (commands and shells
that failed: on flaky links a device can go offline between being listed and being asked,
or stay silent past the command's deadline);
rollout_failures_without_reason = 0; the fleet checks alerts_unstored_pct <= 1 and
connect_failed_pct <= 5.
"""

from simulator.behaviour import Behaviour
from simulator.checks import day_checks
from simulator.shapes import DayShape, named_explicitly, needs_embedded_stack
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)
needs_embedded_stack(SELECTED, "day in the life")


class DayInTheLife(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired:35,lte:35,3g:15,gprs:10,satellite:5"
    behaviour = Behaviour(status_interval=60.0, alerts_per_hour=12.0)
    operator_api = True

    checks = staticmethod(day_checks)


class DayInTheLifeShape(DayShape):
    abstract = not SELECTED
