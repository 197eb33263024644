"""Device presence in a JetStream KV bucket, with Mender's version guard.

Every connect bumps the device's ``version`` with a compare-and-set on the key's revision;
a disconnect only applies while the key still holds the revision its own connect wrote. So a
stale disconnect (the old connection's close arriving after the new connection's open, maybe
from another shard) can never mark a connected device offline.

A shard that dies (SIGKILL, power) writes no disconnects. Its devices' entries are not
rewritten (at 100k devices that would be a flood); instead each shard keeps one key of its own
alive in a second bucket (``subjects.SHARDS_BUCKET``): a heartbeat every
``HEARTBEAT_INTERVAL`` seconds into a bucket whose entries expire after ``SHARD_TTL``. A
device's presence is believed only while its shard's key exists and names the same ``epoch``
(the shard process that registered it: a restarted shard with the same id did not inherit
its predecessor's connections). ``Liveness`` reads the bucket for everyone who shows or routes
by presence, at most once per ``LIVENESS_REFRESH``: a dead shard's devices read as offline
within SHARD_TTL + LIVENESS_REFRESH seconds, at a cost of one KV write per shard per interval,
whatever the number of devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoStreamResponseError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger("fleet.presence")

MAX_CAS_ATTEMPTS = 16
HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a shard."""
SHARD_TTL = 6.0
"""A shard's heartbeat key expires this long after its last write (three missed beats)."""
LIVENESS_REFRESH = 1.0
"""Seconds a reader trusts its last look at the shards bucket."""
WATCH_TIMEOUT = 2.0
"""Seconds to wait for the shards bucket's values after counting them."""
LEADERLESS_RETRY = 0.2
"""Seconds between two writes to a bucket whose stream has no leader yet."""


def new_epoch() -> str:
    """An id for one run of a shard process."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class Presence:
    shard: str
    connected: bool
    version: int
    since: float
    epoch: str = ""  # the shard process's; "" in entries written before epochs existed

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Presence:
        fields = json.loads(data)
        return cls(
            fields["shard"], fields["connected"], fields["version"], fields["since"],
            str(fields.get("epoch", "")),
        )  # fmt: skip


def believed(shard: str, epoch: str, shards: Mapping[str, str]) -> bool:
    """Whether a connection recorded on ``shard`` by run ``epoch`` can still be there:
    ``shards`` (``Liveness.shards``) holds the shards alive now and their epochs."""
    live_epoch = shards.get(shard)
    return live_epoch is not None and (not epoch or live_epoch == epoch)


@dataclass(frozen=True, slots=True)
class Registration:
    """What a connect wrote (to guard its disconnect) and what it replaced."""

    version: int
    revision: int
    previous: Presence | None
    epoch: str = ""


async def lookup(kv: KeyValue, device_id: str) -> tuple[Presence | None, int]:
    """The device's presence and the key's revision (0 when the key does not exist)."""
    try:
        entry = await kv.get(device_id)
    except KeyNotFoundError:
        return None, 0
    # A stored key always has a value and its stream sequence; nats-py types both optional.
    assert entry.value is not None and entry.revision is not None
    return Presence.decode(entry.value), entry.revision


async def register(kv: KeyValue, device_id: str, shard_id: str, epoch: str = "") -> Registration:
    """Record a new connection on ``shard_id`` (run ``epoch``); compare-and-set retried on
    races."""
    for _ in range(MAX_CAS_ATTEMPTS):
        previous, revision = await lookup(kv, device_id)
        version = (previous.version if previous else 0) + 1
        value = Presence(shard_id, True, version, time.time(), epoch)
        try:
            new_revision = await kv.update(device_id, value.encode(), last=revision)
        except KeyWrongLastSequenceError:
            continue  # another connect of this device won the race: read again
        return Registration(version, new_revision, previous, epoch)
    raise RuntimeError(f"presence of {device_id} kept changing under {MAX_CAS_ATTEMPTS} attempts")


async def unregister(kv: KeyValue, device_id: str, shard_id: str, reg: Registration) -> bool:
    """Mark the device offline unless a newer connection registered since; True if applied."""
    value = Presence(shard_id, False, reg.version, time.time(), reg.epoch)
    try:
        await kv.update(device_id, value.encode(), last=reg.revision)
    except KeyWrongLastSequenceError:
        return False
    return True


# --- shard liveness ---------------------------------------------------------------------------


async def heartbeat(kv: KeyValue, shard_id: str, epoch: str, *, patience: float = 0.0) -> None:
    """One beat: the shard's key, rewritten (which restarts its expiry). ``patience``: seconds
    to keep trying while the bucket's stream has no leader yet, as right after it was
    created on a cluster (its replicas elect one; until then a write has no responder)."""
    beat = json.dumps({"epoch": epoch, "at": time.time()}, separators=(",", ":")).encode()
    deadline = time.monotonic() + patience
    while True:
        try:
            await kv.put(shard_id, beat)
            return
        except (NoStreamResponseError, NatsTimeoutError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(LEADERLESS_RETRY)


async def live_shards(kv: KeyValue) -> dict[str, str]:
    """The shards whose key has not expired, with their epochs: one ordered consumer that
    delivers each key's last value, read until the one with nothing pending after it.

    Not until nats-py's "no more values" marker: it puts that marker first when its consumer
    reports nothing pending while the one value is already on its way (seen under load: every
    shard dead for one read). The bucket's message count says whether to wait for a value."""
    if not (await kv.status()).values:
        return {}
    watcher = await kv.watchall()
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(WATCH_TIMEOUT):  # keys that expired since the count
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.operation not in (KV_DEL, KV_PURGE) and entry.value:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        found[entry.key] = str(json.loads(entry.value)["epoch"])
                if entry.delta == 0:
                    break
    except TimeoutError:
        pass
    finally:
        with contextlib.suppress(NatsError):
            await watcher.stop()
    return found


class Liveness:
    """The live shards, read from the shards bucket at most once per ``refresh`` seconds.
    If a read fails the last answer stands: a NATS hiccup must not show the fleet offline."""

    def __init__(self, kv: KeyValue, refresh: float = LIVENESS_REFRESH) -> None:
        self.kv = kv
        self.refresh = refresh
        self._shards: dict[str, str] | None = None
        self._read_at = 0.0

    async def shards(self) -> Mapping[str, str]:
        now = time.monotonic()
        if self._shards is None or now - self._read_at >= self.refresh:
            try:
                self._shards = await live_shards(self.kv)
            except (NatsError, TimeoutError) as exc:
                log.warning("reading the live shards failed: %s", exc)
                if self._shards is None:
                    raise
            self._read_at = now
        return self._shards

    @property
    def last(self) -> Mapping[str, str]:
        """The last answer, without reading (for synchronous readers such as metrics)."""
        return self._shards or {}
