"""nats-server processes: a cluster node's configuration as nats-server reads it, and a real
3-node cluster keeping replicated writes through the loss of a node."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from backend.bus import subjects
from backend.devstack.natsserver import (
    ClusterNode,
    NatsCluster,
    NodeConfig,
    check_config,
    groups_behind,
    jetstream_report,
    render_config,
    write_config,
)
from backend.devstack.process import ConfigCheckFailed

pytestmark = pytest.mark.integration  # every test here runs real servers

DEPLOYED = NodeConfig(
    server_name="nats-0",
    store_dir=Path("/var/lib/nats"),
    routes=tuple(f"nats-route://nats-{i}.nats:6222" for i in range(3)),  # itself included
)


def test_a_deployment_nodes_config_passes_nats_servers_own_check(tmp_path: Path) -> None:
    path = write_config(DEPLOYED, tmp_path / "nats-0.conf")
    check_config(path)
    text = path.read_text()
    assert 'server_name: "nats-0"' in text
    assert 'listen: "0.0.0.0:6222"' in text  # the routes' port, on every interface
    assert '"nats-route://nats-2.nats:6222"' in text


def test_check_config_says_what_nats_server_refuses(tmp_path: Path) -> None:
    path = tmp_path / "broken.conf"
    path.write_text(render_config(DEPLOYED).replace('"0.0.0.0:4222"', '"0.0.0.0:clients"'))
    with pytest.raises(ConfigCheckFailed, match=r"rejects .*broken\.conf"):
        check_config(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cluster_port": 4222}, "ports must be 3 distinct"),
        ({"http_port": 0}, "ports must be 3 distinct 1-65535"),
        ({"routes": ()}, "needs routes to the others"),
    ],
)
def test_node_config_refuses_what_cannot_run(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEPLOYED, **changes)  # type: ignore[arg-type]


def test_a_cluster_needs_an_odd_number_of_nodes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="odd number of nodes, 3 or more, not 2"):
        NatsCluster(tmp_path, size=2)


def follower(cluster: NatsCluster, leaders: set[str]) -> ClusterNode:
    """A node leading none of ``leaders``: losing it costs no election."""
    return next(node for node in cluster.nodes if node.name not in leaders)


def stored_on(node: ClusterNode, stream: str) -> int:
    """Messages in ``node``'s own replica of ``stream`` (its /jsz, not the leader's answer)."""
    [account] = jetstream_report(node.monitor_url)["account_details"]
    [detail] = [s for s in account["stream_detail"] if s["name"] == stream]
    return int(detail["state"]["messages"])


async def publish_until_stored(js: JetStreamContext, payload: bytes) -> PubAck:
    """As the shards and devices do: sent again with the same id (the stream keeps one copy)
    until acked: a publish written to the killed node just before the client noticed is lost,
    one that reached the stream but whose ack was lost is answered as a duplicate."""
    headers = {subjects.MSG_ID_HEADER: payload.hex()}
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(nats.errors.TimeoutError, APIError):
                return await js.publish(subjects.alert_subject("gw-1"), payload, 1, headers=headers)


async def test_a_killed_node_restarts_as_the_same_member_and_catches_up(
    nats_cluster: NatsCluster,
) -> None:
    nc = await nats.connect(nats_cluster.urls)
    try:
        js = nc.jetstream()
        await subjects.ensure_streams(js, replicas=3)
        await js.publish(subjects.alert_subject("gw-1"), b"before")
        info = await js.stream_info(subjects.ALERTS_STREAM)
        meta = jetstream_report(nats_cluster.nodes[0].monitor_url)["meta_cluster"]["leader"]
        node = follower(nats_cluster, {info.cluster.leader, meta})
        node.kill()
        assert node.pid is None
        ack = await publish_until_stored(js, b"while it is down")  # 2 of 3 agree
        assert ack.seq == 2
        assert subjects.ALERTS_STREAM in groups_behind(
            nats_cluster.nodes, node.name
        )  # missed a write
        await asyncio.to_thread(node.start)  # same ports, same store
        async with asyncio.timeout(20):  # until every leader counts it current again
            while True:
                if not await asyncio.to_thread(groups_behind, nats_cluster.nodes, node.name):
                    break
                await asyncio.sleep(0.1)
        assert await asyncio.to_thread(stored_on, node, subjects.ALERTS_STREAM) == 2
    finally:
        await nc.close()
