"""Update rollout: once every gateway is connected, an operator rolls firmware 2.0.0 out to
the whole fleet through the embedded stack's operator API, a few devices at a time, and a
share of the installs fails.

    locust -f scenarios/update_rollout.py --headless -u 1000 -r 200 -t 5m

Parameters: ``-u``/``-r`` (gateways, per second), ``--rollout-max-concurrent`` (devices
updating at once, 50), ``--rollout-rate`` (offers started per second, 20),
``--rollout-after`` (s once all are connected, 5); ``-t`` caps the run, which otherwise ends
3 s after the rollout finished. Gateways download 1 MB at their link's bandwidth, install for
5 s on average, fail 10% of the installs with a reason and reboot into 2.0.0 otherwise.
Needs the embedded stack (no ``--host``): it starts the operator API too.

Checks (``--threshold NAME=VALUE`` overrides): rollout_completion_s <= 300;
rollout_peak_in_flight (the rollout's own counts, polled 4 times a second) and
gateways_peak_updating (the gateways', between offer and final result) <= the max
concurrent; rollout_devices_unfinished = 0; failures_without_reason = 0; failures_unmatched
(the rollout's failures with an install reason against those the gateways reported) = 0;
the fleet checks alerts_unstored_pct <= 1 and connect_failed_pct <= 5.
"""

from simulator.behaviour import Behaviour
from simulator.checks import rollout_checks
from simulator.shapes import RolloutShape, named_explicitly, needs_embedded_stack
from simulator.user import GatewayUser

SELECTED = named_explicitly(__file__)
needs_embedded_stack(SELECTED, "update rollout")


class UpdateRollout(GatewayUser):
    abstract = not SELECTED
    network_mix = "wired:50,lte:40,3g:10"
    behaviour = Behaviour(install_time=5.0, reboot_time=2.0, update_failure_share=0.1)
    operator_api = True

    checks = staticmethod(rollout_checks)


class UpdateRolloutShape(RolloutShape):
    abstract = not SELECTED
