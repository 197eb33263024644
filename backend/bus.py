"""NATS layout shared by every backend component: subjects, streams and KV buckets.

Core NATS routes requests to the shard holding a device (one subscription per shard, never
one per device); JetStream keeps what must not be lost (alerts) and the latest value of what
is only ever read as "current" (status, presence).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

ALERTS_STREAM = "FLEET_ALERTS"
STATUS_STREAM = "FLEET_STATUS"
UPDATES_STREAM = "FLEET_UPDATES"
PRESENCE_BUCKET = "fleet-presence"
DEVICES_BUCKET = "fleet-devices"
"""Per-device fleet state (health, open alerts, last status) kept by ``backend.fleetstate``."""
ROLLOUTS_BUCKET = "fleet-rollouts"
"""Update rollouts (request, state, each target's progress) kept by ``backend.rollouts``."""
# A KV bucket is a stream named KV_<bucket> with subjects $KV.<bucket>.<key>: consumers of
# its changes read that stream like any other.
PRESENCE_STREAM = f"KV_{PRESENCE_BUCKET}"
PRESENCE_SUBJECTS = f"$KV.{PRESENCE_BUCKET}.>"

MSG_ID_HEADER = "Nats-Msg-Id"  # JetStream de-duplicates on it within duplicate_window
DEVICE_HEADER = "Fleet-Device"
SHARD_HEADER = "Fleet-Shard"
UPDATE_HEADER = "Fleet-Update"  # on update progress: the sid of the offer it answers

DEDUP_WINDOW = 120.0
"""Seconds within which a resent alert is recognised (JetStream's default window)."""


def alert_subject(device_id: str) -> str:
    return f"fleet.alerts.{device_id}"


def status_subject(device_id: str) -> str:
    return f"fleet.status.{device_id}"


def update_subject(device_id: str) -> str:
    return f"fleet.updates.{device_id}"


def relay_subject(sid: str) -> str:
    """Where a device's messages for an operator session (shell, file transfer...) go."""
    return f"fleet.relay.{sid}"


def shard_subject(shard_id: str) -> str:
    """Requests for devices held by ``shard_id`` (commands, deliveries, kicks)."""
    return f"fleet.shard.{shard_id}"


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


async def ensure_streams(js: JetStreamContext) -> KeyValue:
    """Create (or update to this layout) every stream, and return the presence bucket."""
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
    return await js.create_key_value(
        KeyValueConfig(bucket=PRESENCE_BUCKET, history=1, storage=StorageType.FILE)
    )


async def ensure_devices_bucket(js: JetStreamContext) -> KeyValue:
    return await js.create_key_value(
        KeyValueConfig(bucket=DEVICES_BUCKET, history=1, storage=StorageType.FILE)
    )


async def ensure_rollouts_bucket(js: JetStreamContext) -> KeyValue:
    return await js.create_key_value(
        KeyValueConfig(bucket=ROLLOUTS_BUCKET, history=1, storage=StorageType.FILE)
    )
