"""The local stack on a 3-node NATS cluster: losing a node in the middle of an alert burst
costs no alert, the shards and their devices ride it out, and the node rejoins.

The node killed is the hardest one to lose: it holds a shard's NATS connection (the shard must
reconnect to a survivor) and leads the alert stream (the survivors must elect a new leader;
until then publishes fail, the shard leaves those alerts unacked and the gateways resend
them). Gateways run on gevent as in tests/simulator/test_gateway.py; nats-py, which wants
asyncio, runs in a thread beside them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamInfo

from backend.bus import subjects
from backend.bus.natsauth import ADMIN, AUDIT
from backend.devstack import process
from backend.devstack.natsserver import NatsServer, groups_behind
from backend.devstack.prometheus import query
from backend.devstack.stack import LocalStack, StackConfig, fetch_metrics, metric_sum
from simulator.audit import audit_stream
from simulator.behaviour import Behaviour
from simulator.fleet import Fleet, parse_targets
from simulator.network import PROFILES, NetworkMix
from tests.natsauth_support import connect_as, only_the_api_commands_devices
from tests.support import running, wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers

GATEWAYS = 20
BEHAVIOUR = Behaviour(
    status_interval=5.0,
    alerts_per_hour=7200.0,  # about 40 alerts a second over the fleet
    clear_after=0.5,
    ack_timeout=2.0,  # an alert whose publish failed with the node goes again soon
    reconnect_base=0.1,
    reconnect_cap=0.5,
)
NO_FAULTS = {"drops_per_hour": 0, "blackholes_per_hour": 0, "offline_per_hour": 0}
STEADY = NetworkMix(((PROFILES["wired"].with_overrides(**NO_FAULTS), 1.0),))
STEPDOWN = f"$JS.API.STREAM.LEADER.STEPDOWN.{subjects.ALERTS_STREAM}"


def beside_gateways(nats_client: ThreadPoolExecutor, call: Callable[[], Any], what: str) -> Any:
    """``call()`` in the thread while the gateways go on running in this one."""
    done = nats_client.submit(call)
    wait_until(done.done, 30, what)
    return done.result()


async def alert_stream_led_by(stack: LocalStack, server_name: str) -> StreamInfo:
    """Move the alert stream's leadership to ``server_name`` (a stepdown naming it as the
    preferred successor, which only the admin role may ask); the stream's info once it leads."""
    nc = await connect_as(stack.nats_urls, ADMIN, stack.nats_credentials[ADMIN], [])
    try:
        js = nc.jetstream()
        async with asyncio.timeout(20):
            while (
                info := await js.stream_info(subjects.ALERTS_STREAM)
            ).cluster.leader != server_name:
                request = {"placement": {"preferred": server_name}}
                await nc.request(STEPDOWN, json.dumps(request).encode(), timeout=5)
                await asyncio.sleep(0.1)
        return info
    finally:
        await nc.close()


def clients_of(node: NatsServer) -> set[str]:
    """Names of the clients connected to ``node`` (a shard connects under its id)."""
    _status, body = process.http_get(f"{node.monitor_url}/connz")
    return {conn.get("name", "") for conn in json.loads(body)["connections"]}


def node_serving(stack: LocalStack, client: str) -> NatsServer:
    [node] = [node for node in stack.nats_nodes if client in clients_of(node)]
    return node


def acked(fleet: Fleet) -> int:
    return fleet.stats.alerts["acked"]


def shard_health(stack: LocalStack) -> list[int]:
    return [
        process.http_get(url.replace("ws://", "http://") + "/healthz")[0]
        for url in stack.shard_urls
    ]


def test_losing_a_nats_node_mid_burst_loses_no_alert_and_the_node_rejoins(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, nats_nodes=3, haproxies=1)
    with LocalStack(config) as stack, ThreadPoolExecutor(1) as nats_client:
        fleet = Fleet(parse_targets(stack.public_url), stack.token, behaviour=BEHAVIOUR, mix=STEADY)
        victim = node_serving(stack, "shard-a")
        led = alert_stream_led_by(stack, victim.name)
        info = beside_gateways(nats_client, lambda: asyncio.run(led), "the victim leads alerts")
        assert info.config.num_replicas == 3
        with running(fleet, GATEWAYS):
            wait_until(lambda: fleet.stats.connected == GATEWAYS, 20, "every gateway connected")
            wait_until(lambda: acked(fleet) >= 50, 20, "the burst under way")
            victim.kill()
            at_loss = acked(fleet)
            wait_until(lambda: acked(fleet) >= at_loss + 100, 60, "alerts acked without the node")
            beside_gateways(nats_client, victim.start, "the killed node restarted")
            wait_until(lambda: not groups_behind(stack.nats_nodes, victim.name), 30, "caught up")
            assert fleet.drain(30) == 0
        assert node_serving(stack, "shard-a") is not victim  # it reconnected to a survivor
        assert shard_health(stack) == [200, 200]
        haproxy = fetch_metrics(stack.haproxy_stats_urls[0])
        stored = audit_stream(
            stack.nats_url, fleet.run_id, timeout=30, credentials=stack.nats_credentials[AUDIT]
        )
    assert metric_sum(haproxy, "haproxy_server_check_up_down_total") == 0  # no shard taken out
    stats = fleet.stats
    assert (stats.reconnects, dict(stats.drops)) == (0, {})  # no gateway lost its connection
    assert stats.alerts["resent"] > 0  # publishes failed with the node: alerts went again
    assert stats.alerts["acked"] == stats.alerts["sent"]
    assert (stored["unique"], stored["duplicates"]) == (stats.alerts["acked"], 0)


def test_prometheus_scrapes_every_node_of_an_observed_cluster(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shards=1, nats_nodes=3, observe=True)
    with LocalStack(config) as stack:
        # One exporter per node, each reading its own node (nats_up) and scraped as a target.
        def nodes_up() -> int:
            return len(query(stack.prometheus_url, 'nats_up{job="nats"} == 1'))

        wait_until(lambda: nodes_up() == 3, 30, "Prometheus has all three nodes")


def test_every_node_takes_credentialed_clients_only_and_commands_from_the_api_only(
    tmp_path: Path,
) -> None:
    with LocalStack(StackConfig(tmp_path, shards=1, nats_nodes=3)) as stack:
        asyncio.run(only_the_api_commands_devices(stack))
