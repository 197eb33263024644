"""Operators' remote access against a real stack (NATS, a shard, the operator API) and a real
virtual gateway: pages through port forwards and files copied there and back, intact, even
when two operators reach the same gateway at once."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from backend.client.operator import OperatorClient
from backend.devstack.stack import LocalStack, StackConfig
from simulator.network import PROFILES
from simulator.remote import REQUEST_TYPE, RemoteActivity
from tests.simulator.support import NO_FAULTS, new_fleet, only
from tests.support import running, wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig(tmp_path_factory.mktemp("stack"), shards=1, operator_api=True)
    with LocalStack(config) as local:
        yield local


def operators_act(stack: LocalStack, operators: int, times: int) -> list[dict[str, Any]]:
    """What ``operators`` operators report after ``times`` actions each, all at once (every
    second action a copy). In threads: their clients block, while gevent runs the gateway."""
    reported: list[dict[str, Any]] = []
    activities = [
        RemoteActivity(
            OperatorClient(stack.api_url, stack.operator_token),
            lambda **event: reported.append(event),
            random.Random(seed),
            copy_every=2,
        )
        for seed in range(operators)
    ]

    def act(activity: RemoteActivity) -> None:
        for _ in range(times):
            activity.act()

    with ThreadPoolExecutor(operators) as threads:
        done = [threads.submit(act, activity) for activity in activities]
        wait_until(lambda: all(d.done() for d in done), 90, "the operators' streams")
        for each in done:
            each.result()
    return reported


def test_operators_on_one_gateway_get_its_pages_and_their_own_files_back(
    stack: LocalStack,
) -> None:
    fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
    operator = OperatorClient(stack.api_url, stack.operator_token)
    with running(fleet, 1):
        wait_until(lambda: len(operator.devices(online=True)["devices"]) == 1, 10, "online")
        reported = operators_act(stack, operators=3, times=4)
    streams = [event for event in reported if event["name"] in {"remote page", "remote copy"}]
    assert sorted(event["name"] for event in streams) == ["remote copy"] * 6 + ["remote page"] * 6
    assert [event["exception"] for event in streams] == [None] * 12
    assert all(event["request_type"] == REQUEST_TYPE for event in reported)
    assert all(event["response_length"] > 0 for event in streams)
