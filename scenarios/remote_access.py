"""Remote access on a flaky fleet: from 10% of the run, three operators open port forwards to
gateways' local web pages (16 KiB each, checked against the gateway's sha256) and copy files
to gateways and back (32 KiB, compared byte for byte), each one stream after another (a
second apart) on a random online gateway, through the embedded stack's operator API, while
LTE, 3G, GPRS and satellite links drop, blackhole and go offline. Needs the embedded stack
(no ``--host``).

    locust -f scenarios/remote_access.py --headless -u 200 -r 50 -t 90s

Parameters: ``-u``/``-r``/``-t``, ``--network-mix`` (default lte:40,3g:30,gprs:20,satellite:10).

Checks (``--threshold NAME=VALUE`` overrides): peak_connected >= 95% of -u;
stream_success_pct >= 90 (pages and copies that completed; a device may go offline between
being listed and being reached); streams_corrupt = 0 (no stream delivered wrong bytes);
first_byte_p99_ms <= 10,000 (time from opening the forward to the page's first byte);
alerts_lost and alerts_duplicated = 0; the fleet checks.
"""

from simulator.behaviour import Behaviour
from simulator.checks import remote_checks
from simulator.shapes import RemoteShape, named_explicitly, needs_embedded_stack
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)
needs_embedded_stack(SELECTED, "remote access scenario")


class RemoteAccess(GatewayUser):
    abstract = not SELECTED
    network_mix = "lte:40,3g:30,gprs:20,satellite:10"
    behaviour = Behaviour(status_interval=60.0, alerts_per_hour=6.0)
    operator_api = True

    checks = staticmethod(remote_checks)


class RemoteAccessShape(RemoteShape):
    abstract = not SELECTED
