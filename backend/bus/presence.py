"""Device presence in a JetStream KV bucket, with Mender's version guard.

Every connect bumps the device's ``version`` with a compare-and-set on the key's revision;
a disconnect only applies while the key still holds the revision its own connect wrote. So a
stale disconnect (the old connection's close arriving after the new connection's open, maybe
from another shard) can never mark a connected device offline.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

MAX_CAS_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Presence:
    shard: str
    connected: bool
    version: int
    since: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Presence:
        fields = json.loads(data)
        return cls(fields["shard"], fields["connected"], fields["version"], fields["since"])


@dataclass(frozen=True, slots=True)
class Registration:
    """What a connect wrote (to guard its disconnect) and what it replaced."""

    version: int
    revision: int
    previous: Presence | None


async def lookup(kv: KeyValue, device_id: str) -> tuple[Presence | None, int]:
    """The device's presence and the key's revision (0 when the key does not exist)."""
    try:
        entry = await kv.get(device_id)
    except KeyNotFoundError:
        return None, 0
    # A stored key always has a value and its stream sequence; nats-py types both optional.
    assert entry.value is not None and entry.revision is not None
    return Presence.decode(entry.value), entry.revision


async def register(kv: KeyValue, device_id: str, shard_id: str) -> Registration:
    """Record a new connection on ``shard_id``; compare-and-set retried on races."""
    for _ in range(MAX_CAS_ATTEMPTS):
        previous, revision = await lookup(kv, device_id)
        version = (previous.version if previous else 0) + 1
        value = Presence(shard_id, True, version, time.time())
        try:
            new_revision = await kv.update(device_id, value.encode(), last=revision)
        except KeyWrongLastSequenceError:
            continue  # another connect of this device won the race: read again
        return Registration(version, new_revision, previous)
    raise RuntimeError(f"presence of {device_id} kept changing under {MAX_CAS_ATTEMPTS} attempts")


async def unregister(kv: KeyValue, device_id: str, shard_id: str, reg: Registration) -> bool:
    """Mark the device offline unless a newer connection registered since; True if applied."""
    value = Presence(shard_id, False, reg.version, time.time())
    try:
        await kv.update(device_id, value.encode(), last=reg.revision)
    except KeyWrongLastSequenceError:
        return False
    return True
