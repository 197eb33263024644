"""The local stack as scenarios use it: real NATS and shard processes, synchronous API."""

from __future__ import annotations

import asyncio
import math
import os
import stat
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from backend.bus import natsauth
from backend.client.operator import OperatorClient, OperatorError
from backend.devstack import process
from backend.devstack.stack import LocalStack, StackConfig, count_or_auto, haproxy_sources
from backend.protocol.http import DEVICE_PATH
from backend.shard.config import default_max_connections
from haproxy.config import ephemeral_ports, max_maxconn
from tests.natsauth_support import only_the_api_commands_devices, violations
from tests.support import wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers


def connect_device(stack: LocalStack, url: str, device_id: str) -> ClientConnection:
    headers = {"Authorization": f"Bearer {stack.token(device_id)}"}
    return connect(url + DEVICE_PATH, additional_headers=headers, open_timeout=5)


def test_stack_serves_devices_and_leaves_no_process(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path)) as stack:
        children = process.children(os.getpid())
        assert len(children) == 3  # nats-server and two shards
        assert stack.nats_url.startswith("nats://127.0.0.1:")
        assert stack.shard_urls == [f"ws://127.0.0.1:{port}" for port in stack.shard_ports]
        for index, url in enumerate(stack.shard_urls):
            healthz = url.replace("ws://", "http://") + "/healthz"
            with urllib.request.urlopen(healthz, timeout=5) as resp:
                assert resp.status == 200
            with connect_device(stack, url, f"gw-{index}") as ws:
                assert ws.response is not None
                assert ws.response.status_code == 101
    assert (tmp_path / "shard-b.log").exists()
    assert process.children(os.getpid()) == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_shard_options_reach_the_shards(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shards=1, shard_options={"max_connections": "1"})
    with LocalStack(config) as stack, connect_device(stack, stack.shard_urls[0], "gw-1"):
        with pytest.raises(InvalidStatus) as refused:
            connect_device(stack, stack.shard_urls[0], "gw-2")
        assert refused.value.response.status_code == 503


def test_the_operator_api_answers_the_stacks_operator_only(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shards=1, operator_api=True)
    with LocalStack(config) as stack, connect_device(stack, stack.shard_urls[0], "gw-1"):
        operator = OperatorClient(stack.api_url, stack.operator_token)
        # The fleet state learns of the device from its presence: it may take a moment.
        wait_until(lambda: known(operator, "gw-1"), 10, "the API knows gw-1")
        assert operator.device("gw-1")["online"] is True
        with pytest.raises(OperatorError) as refused:
            OperatorClient(stack.api_url, "not-the-token").devices()
        assert refused.value.status == 401
        assert violations(stack) == []  # NATS allowed every part all it did
    assert process.children(os.getpid()) == []


def test_nats_takes_credentialed_clients_only_and_commands_from_the_api_only(
    tmp_path: Path,
) -> None:
    with LocalStack(StackConfig(tmp_path)) as stack:
        seeds = stack.nats_credentials
        assert set(seeds) == set(natsauth.LOCAL_ROLES)
        assert all(stat.S_IMODE(seed.stat().st_mode) == 0o600 for seed in seeds.values())
        asyncio.run(only_the_api_commands_devices(stack))


def known(operator: OperatorClient, device_id: str) -> bool:
    """Whether the API has the device (404 until the fleet state has it)."""
    try:
        operator.device(device_id)
    except OperatorError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_shard_failing_to_start_raises_with_its_log_and_stops_the_rest(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shard_options={"max-connections": "many"})
    with pytest.raises(RuntimeError, match="shard-a exited with code 2") as failed:
        LocalStack(config).start()
    assert "'--max-connections'" in str(failed.value)  # click's error, from the log's tail
    assert process.children(os.getpid()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shards": 0}, "shards must be 1 to 26, not 0"),
        ({"nats_nodes": 2}, "nats_nodes must be 1 or 3 \\(a cluster\\), not 2"),
        ({"shard_options": {"jwt_secret": "x"}}, "shard_options cannot set jwt_secret"),
        ({"shard_options": {"shard-id": "x"}}, "shard_options cannot set shard_id"),
        ({"haproxies": -1}, "haproxies must be 0 or more, not -1"),
        ({"tls": True}, "they need haproxies >= 1"),
        ({"public_port": 8443}, "they need haproxies >= 1"),
        ({"haproxies": 1, "public_port": 70000}, "public_port must be 0 to 65535"),
    ],
)
def test_config_refuses_what_the_stack_cannot_honour(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StackConfig(tmp_path, **overrides)  # type: ignore[arg-type]


def test_sized_derives_process_counts_from_the_open_file_limits(tmp_path: Path) -> None:
    per_shard, per_haproxy = default_max_connections(), max_maxconn()
    config = StackConfig.sized(tmp_path, 100_000, None, None)
    assert config.shards == max(2, math.ceil(100_000 / per_shard))
    assert config.haproxies == math.ceil(100_000 / per_haproxy)
    assert (config.shards - 1) * per_shard < 100_000 or config.shards == 2
    small = StackConfig.sized(tmp_path, 0, None, None)
    assert (small.shards, small.haproxies) == (2, 1)
    given = StackConfig.sized(tmp_path, 10, 3, 0)
    assert (given.shards, given.haproxies) == (3, 0)


def test_too_few_processes_for_the_connections_are_refused(tmp_path: Path) -> None:
    per_shard = default_max_connections()
    with pytest.raises(ValueError, match=r"need at least 3 shards .*: raise --shards"):
        StackConfig(tmp_path, shards=2, connections=2 * per_shard + 1)
    per_haproxy = max_maxconn()
    with pytest.raises(ValueError, match=r"need at least 2 HAProxy processes .*--haproxies"):
        StackConfig(tmp_path, shards=4, haproxies=1, connections=per_haproxy + 1)
    # A shard_options max_connections is the shard's capacity.
    with pytest.raises(ValueError, match="need at least 5 shards"):
        StackConfig(tmp_path, shards=4, shard_options={"max-connections": "10"}, connections=41)
    StackConfig(tmp_path, shards=4, haproxies=0, connections=per_haproxy + 1)  # no HAProxy


def test_each_haproxy_reaches_the_shards_from_addresses_of_its_own() -> None:
    per_process = math.ceil(max_maxconn() / ephemeral_ports())
    first, second = haproxy_sources(0), haproxy_sources(1)
    assert len(first) == len(second) == per_process
    assert not set(first) & set(second)
    assert all(address.startswith("127.0.1.") for address in first + second)  # not the gateways'


@pytest.mark.parametrize("text", ["auto", " Auto "])
def test_count_or_auto_reads_auto(text: str) -> None:
    assert count_or_auto(text) is None


def test_count_or_auto_reads_a_count_and_refuses_the_rest() -> None:
    assert count_or_auto("3") == 3
    with pytest.raises(ValueError, match="expected a number or auto, not 'many'"):
        count_or_auto("many")


def test_the_stacks_secret_can_be_passed_on_a_command_line(tmp_path: Path) -> None:
    # A urlsafe secret starts with "-" once in 64: "--jwt-secret -x..." then reads as options.
    secrets = {StackConfig(tmp_path).jwt_secret for _ in range(1000)}
    assert not [secret for secret in secrets if secret.startswith("-")]
