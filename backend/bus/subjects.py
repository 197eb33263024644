"""NATS layout shared by every backend component: subjects, streams and KV buckets.

Core NATS routes requests to the shard holding a device (one subscription per shard, never
one per device); JetStream keeps what must not be lost (alerts) and the latest value of what
is only ever read as "current" (status, presence).
"""

from __future__ import annotations

import dataclasses

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

ALERTS_STREAM = "FLEET_ALERTS"
STATUS_STREAM = "FLEET_STATUS"
UPDATES_STREAM = "FLEET_UPDATES"
PRESENCE_BUCKET = "fleet-presence"
DEVICES_BUCKET = "fleet-devices"
"""Per-device fleet state (health, open alerts, last status): ``backend.operator.fleetstate``."""
SHARDS_BUCKET = "fleet-shards"
"""One heartbeat key per live shard, expiring (``backend.bus.presence``, shard liveness)."""
ROLLOUTS_BUCKET = "fleet-rollouts"
"""Update rollouts (request, state, each target's progress): ``backend.operator.rollouts``."""


def bucket_stream(bucket: str) -> str:
    """A KV bucket is a stream named KV_<bucket> with subjects $KV.<bucket>.<key>: consumers
    of its changes read that stream like any other."""
    return f"KV_{bucket}"


PRESENCE_STREAM = bucket_stream(PRESENCE_BUCKET)
PRESENCE_SUBJECTS = f"$KV.{PRESENCE_BUCKET}.>"
ROLLOUTS_STREAM = bucket_stream(ROLLOUTS_BUCKET)
SHARDS_STREAM = bucket_stream(SHARDS_BUCKET)
ROLLOUTS_SUBJECTS = f"$KV.{ROLLOUTS_BUCKET}.>"

MSG_ID_HEADER = "Nats-Msg-Id"  # JetStream de-duplicates on it within duplicate_window
DEVICE_HEADER = "Fleet-Device"
SHARD_HEADER = "Fleet-Shard"
UPDATE_HEADER = "Fleet-Update"  # on update progress: the sid of the offer it answers
RELAY_END_HEADER = "Fleet-Relay-End"
"""On the shard's own "stop" for an operator session whose device went away (the reason): a
device can write into its sessions' relay subjects, never NATS headers."""

DEDUP_WINDOW = 120.0
"""Seconds within which a resent alert is recognised (JetStream's default window)."""
MAX_REPLICAS = 5  # JetStream's limit


def check_replicas(replicas: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"stream replicas must be 1 to {MAX_REPLICAS}, not {replicas}")


def alert_subject(device_id: str) -> str:
    return f"fleet.alerts.{device_id}"


def status_subject(device_id: str) -> str:
    return f"fleet.status.{device_id}"


def update_subject(device_id: str) -> str:
    return f"fleet.updates.{device_id}"


def relay_subject(device_id: str, sid: str) -> str:
    """Where a device's messages for an operator session (shell, file transfer...) go. The
    shard puts in the id of the device that sent them, so a device naming another device's
    session id still only reaches a subject of its own."""
    return f"fleet.relay.{device_id}.{sid}"


def shard_subject(shard_id: str) -> str:
    """Requests for devices held by ``shard_id`` (commands, deliveries, offers)."""
    return f"fleet.shard.{shard_id}"


def kick_subject(shard_id: str) -> str:
    """Kicks from the other shards, apart from ``shard_subject`` so that shards may publish
    here and nothing of the operator's (NATS permissions are by subject)."""
    return f"fleet.kick.{shard_id}"


def device_of(subject: str) -> str:
    """The device id, the last token of every per-device subject (ids contain no dots)."""
    return subject.rpartition(".")[2]


def alert_msg_id(device_id: str, alert_id: str) -> str:
    return f"{device_id}:{alert_id}"


STREAMS = (
    StreamConfig(
        name=ALERTS_STREAM,
        subjects=["fleet.alerts.>"],
        storage=StorageType.FILE,
        duplicate_window=DEDUP_WINDOW,
    ),
    # Only the latest status of each device is kept.
    StreamConfig(
        name=STATUS_STREAM,
        subjects=["fleet.status.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
    ),
    StreamConfig(
        name=UPDATES_STREAM,
        subjects=["fleet.updates.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=64,
        discard=DiscardPolicy.OLD,
    ),
)


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Create (or update to this layout) every stream, and return the presence bucket.

    ``replicas``: copies of each stream and bucket, on as many NATS nodes (1 on a single
    server; 3 on a cluster, so an acked alert survives the loss of a node). Every component
    of a fleet must give the same count: the last one started sets it.
    """
    for config in STREAMS:
        replicated = dataclasses.replace(config, num_replicas=replicas)
        try:
            await js.add_stream(replicated)
        except BadRequestError:
            await js.update_stream(replicated)
    return await ensure_bucket(js, PRESENCE_BUCKET, replicas)


async def ensure_shards_bucket(js: JetStreamContext, ttl: float, replicas: int = 1) -> KeyValue:
    """The shards' heartbeats: every entry expires ``ttl`` seconds after it was written."""
    return await ensure_bucket(js, SHARDS_BUCKET, replicas, ttl=ttl)


async def ensure_devices_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_bucket(js, DEVICES_BUCKET, replicas)


async def ensure_rollouts_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_bucket(js, ROLLOUTS_BUCKET, replicas)


async def ensure_bucket(
    js: JetStreamContext, bucket: str, replicas: int, ttl: float | None = None
) -> KeyValue:
    """A KV bucket keeping each key's latest value on ``replicas`` nodes (for ``ttl`` seconds,
    if given); an existing bucket with another replica count is rescaled (its stream updated),
    not refused."""
    config = KeyValueConfig(
        bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas, ttl=ttl
    )
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        info = await js.stream_info(bucket_stream(bucket))
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
        return await js.key_value(bucket)
