"""A scenario's operator against a real stack (NATS, a shard, the operator API) and real
virtual gateways: its commands and shells, and the failures it reports."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from backend.client.operator import OperatorClient, OperatorError
from backend.devstack.stack import LocalStack, StackConfig
from simulator.network import PROFILES
from simulator.operator import REQUEST_TYPE, OperatorActivity
from tests.simulator.support import NO_FAULTS, new_fleet, only
from tests.support import running, wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig(tmp_path_factory.mktemp("stack"), shards=1, operator_api=True)
    with LocalStack(config) as local:
        yield local


def online(operator: OperatorClient) -> int:
    return len(operator.devices(online=True)["devices"])


def act(operator: OperatorClient, times: int, *, tries: int | None = None) -> list[dict[str, Any]]:
    """What an operator reports after ``times`` actions on devices (every second one a
    shell), or after ``tries`` looks for an online device. In a thread of its own: its
    client blocks, while gevent runs the gateways in this one."""
    reported: list[dict[str, Any]] = []
    activity = OperatorActivity(
        operator, lambda **event: reported.append(event), random.Random(7), shell_every=2
    )

    def run() -> None:
        for _ in range(tries or 100):
            if activity.actions == times:
                return
            activity.act()
            time.sleep(0.1)  # on a busy host a look can find none online: look again

    with ThreadPoolExecutor(1) as thread:
        done = thread.submit(run)
        wait_until(done.done, 60, "the operator's actions")
        done.result()
    return reported


def test_commands_and_shells_on_online_devices_are_reported(stack: LocalStack) -> None:
    fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
    operator = OperatorClient(stack.api_url, stack.operator_token)
    with running(fleet, 3):
        wait_until(lambda: fleet.stats.connected == 3, 10, "the gateways connected")
        wait_until(lambda: online(operator) == 3, 10, "the fleet state sees them")
        reported = act(operator, 4)
    assert [event["name"] for event in reported] == ["operator command", "operator shell"] * 2
    assert all(event["request_type"] == REQUEST_TYPE for event in reported)
    assert [event["exception"] for event in reported] == [None] * 4
    assert all(event["response_length"] > 0 for event in reported)


def test_a_refused_operator_is_reported_as_a_failure(stack: LocalStack) -> None:
    (event,) = act(OperatorClient(stack.api_url, "not-a-token"), 1, tries=1)
    assert event["name"] == "operator devices"
    assert isinstance(event["exception"], OperatorError)
    assert event["exception"].status == 401
