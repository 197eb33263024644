"""The NATS layout on a real 3-node cluster: streams and KV buckets keep the copies asked for."""

from __future__ import annotations

import nats
import pytest

from backend.bus import subjects
from backend.devstack.natsserver import NatsCluster
from backend.operator.config import FleetConfig
from backend.shard import ShardConfig

STREAM_NAMES = [config.name for config in subjects.STREAMS] + [
    subjects.bucket_stream(bucket)
    for bucket in (subjects.PRESENCE_BUCKET, subjects.DEVICES_BUCKET, subjects.ROLLOUTS_BUCKET)
]


async def ensure_layout(js: nats.js.JetStreamContext, replicas: int) -> None:
    """What a shard and the operator side each declare when they start."""
    await subjects.ensure_streams(js, replicas)
    await subjects.ensure_devices_bucket(js, replicas)
    await subjects.ensure_rollouts_bucket(js, replicas)


async def test_a_single_copy_layout_is_rescaled_to_three_keeping_its_data(
    nats_cluster: NatsCluster,
) -> None:
    nc = await nats.connect(nats_cluster.urls)
    try:
        js = nc.jetstream()
        await ensure_layout(js, replicas=1)
        devices = await subjects.ensure_devices_bucket(js, 1)
        await devices.put("gw-1", b"red")
        await ensure_layout(js, replicas=3)  # a bucket that exists is rescaled, not refused
        replicas = {name: (await js.stream_info(name)).config.num_replicas for name in STREAM_NAMES}
        assert replicas == dict.fromkeys(STREAM_NAMES, 3)
        entry = await (await subjects.ensure_devices_bucket(js, 3)).get("gw-1")
        assert entry.value == b"red"
    finally:
        await nc.close()


@pytest.mark.parametrize("replicas", [0, subjects.MAX_REPLICAS + 1])
def test_replica_counts_jetstream_cannot_keep_are_refused(replicas: int) -> None:
    with pytest.raises(ValueError, match=f"stream replicas must be 1 to 5, not {replicas}"):
        ShardConfig(stream_replicas=replicas)
    with pytest.raises(ValueError, match=f"stream replicas must be 1 to 5, not {replicas}"):
        FleetConfig(stream_replicas=replicas)
