"""Fleet state: each device's presence, health, open alerts and last status, in a KV bucket.

Instances bind the same durable pull consumers (one per source: the alert and status streams
and the presence bucket's own stream) and so split the events between them. Each event is
applied to its device's entry (``subjects.DEVICES_BUCKET``) with compare-and-set on the entry's
revision, and acked only once that write succeeded: events of a stopped or crashed instance
are redelivered, to it or to another, and nothing is lost.

Two instances, or a redelivery, may apply one device's events out of order. Every part of
the state therefore remembers the stream sequence of the event that last changed it (per
alert code, for status, for presence) and ignores older events, which also makes a
redelivered event a no-op.

Alerts are matched by ``code``: a "raised" alert opens (or replaces) the device's open alert
with that code, a "cleared" one closes it. A clear carries an id of its own, since the id is
the stream's de-duplication key (docs/protocol.md, 0x0100). A device is red while any alert
is open, green otherwise.

A device's stored ``online`` is the last presence event; the fleet view believes it only
while the shard that wrote it is alive (``presence.Liveness``, ``shown``): a shard killed
outright writes no disconnects, and its devices read as offline once its heartbeat expired,
without a write per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.bus import natsauth, presence, subjects
from backend.bus.auth import DEVICE_ID
from backend.lifecycle import Service
from backend.operator.config import FleetConfig
from backend.operator.errors import InvalidEvent, StateConflict
from backend.protocol.errors import FleetError
from backend.protocol.messages import GEO_ADDRESS, GEO_LAT, GEO_LON, Alert, Status

log = logging.getLogger("fleet.state")

RED = "red"
GREEN = "green"
MAX_CLEARED = 32
"""Cleared alert codes remembered per device (to ignore a raise older than its clear)."""
MAX_HISTORY = 10
"""Presence changes remembered per device, newest last: its recent connection history."""

Change = Callable[["DeviceState"], bool]
PullSubscription = JetStreamContext.PullSubscription


# --- the state of one device (pure) ----------------------------------------------------------


@dataclass(slots=True)
class OpenAlert:
    id: str
    code: str
    severity: str
    description: str
    fix: str
    ts: float
    seq: int


@dataclass(slots=True)
class DeviceState:
    device: str
    online: bool = False
    shard: str = ""
    epoch: str = ""  # the run of the shard that recorded the presence
    since: float = 0.0
    presence_rev: int = 0
    firmware: str = ""
    status: dict[str, Any] | None = None
    status_seq: int = 0
    alerts: dict[str, OpenAlert] = field(default_factory=dict)
    cleared: dict[str, int] = field(default_factory=dict)
    updated: float = 0.0
    inventory: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[float, bool, str]] = field(default_factory=list)
    """(when applied, online, shard) of the last MAX_HISTORY presence changes."""

    @property
    def health(self) -> str:
        return RED if self.alerts else GREEN

    @property
    def location(self) -> dict[str, Any] | None:
        """``{"lat", "lon", "address"}`` from the inventory, or None if it names no valid one."""
        lat, lon = self.inventory.get(GEO_LAT), self.inventory.get(GEO_LON)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
            return None
        assert isinstance(lat, int | float) and isinstance(lon, int | float)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return None
        address = self.inventory.get(GEO_ADDRESS)
        return {"lat": lat, "lon": lon, "address": address if isinstance(address, str) else ""}

    def apply_alert(self, alert: Alert, seq: int) -> bool:
        """Open or close the alert of ``alert.code``, unless a later event did already."""
        code = alert.code
        known = self.alerts.get(code)
        if seq <= max(known.seq if known else 0, self.cleared.get(code, 0)):
            return False
        if alert.state == "raised":
            self.alerts[code] = OpenAlert(
                alert.id, code, alert.severity, alert.description, alert.fix, alert.ts, seq
            )
            self.cleared.pop(code, None)
        else:
            self.alerts.pop(code, None)
            self.cleared[code] = seq
            if len(self.cleared) > MAX_CLEARED:
                del self.cleared[min(self.cleared, key=self.cleared.__getitem__)]
        return True

    def apply_status(self, status: Status, seq: int) -> bool:
        if seq <= self.status_seq:
            return False
        self.status_seq = seq
        self.firmware = status.firmware
        self.status = {"values": status.values, "ts": status.ts}
        if status.inventory:  # a status without one keeps the last reported
            self.inventory = dict(status.inventory)
        return True

    def apply_presence(self, state: presence.Presence | None, revision: int) -> bool:
        """``state`` None: the presence key was deleted, the device is offline."""
        if revision <= self.presence_rev:
            return False
        self.presence_rev = revision
        self.online = state is not None and state.connected
        shard = state.shard if state is not None else self.shard
        self.history = [*self.history, (time.time(), self.online, shard)][-MAX_HISTORY:]
        if state is not None:
            self.shard, self.since, self.epoch = state.shard, state.since, state.epoch
        return True

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> DeviceState:
        fields = json.loads(data)
        alerts = {code: OpenAlert(**a) for code, a in fields.pop("alerts").items()}
        history = [(ts, online, shard) for ts, online, shard in fields.pop("history", [])]
        return cls(**fields, alerts=alerts, history=history)

    def summary(self) -> dict[str, Any]:
        """What a device listing shows."""
        return {
            "id": self.device, "online": self.online, "health": self.health,
            "firmware": self.firmware, "open_alerts": len(self.alerts), "shard": self.shard,
            "since": self.since, "updated": self.updated, "location": self.location,
        }  # fmt: skip

    def detail(self) -> dict[str, Any]:
        """What a device's own page shows: the summary, its open alerts, last status,
        inventory and recent connection history."""
        alerts = [
            {k: v for k, v in asdict(a).items() if k != "seq"}
            for a in sorted(self.alerts.values(), key=lambda a: a.seq)
        ]
        history = [
            {"ts": ts, "online": online, "shard": shard} for ts, online, shard in self.history
        ]
        return {
            **self.summary(), "alerts": alerts, "status": self.status,
            "inventory": self.inventory, "history": history,
        }  # fmt: skip


def shown(state: DeviceState, shards: Mapping[str, str]) -> DeviceState:
    """The state as the fleet view shows it: offline if the shard that recorded it online is
    gone (``shards``: the live shards, ``presence.Liveness.shards``)."""
    if state.online and not presence.believed(state.shard, state.epoch, shards):
        return replace(state, online=False)
    return state


async def load(kv: KeyValue, device_id: str) -> tuple[DeviceState | None, int]:
    """The device's state and the entry's revision (0 when there is none)."""
    try:
        entry = await kv.get(device_id)
    except KeyNotFoundError:
        return None, 0
    assert entry.value is not None
    return DeviceState.decode(entry.value), entry.revision or 0


async def update(kv: KeyValue, device_id: str, change: Change, metrics: StateMetrics) -> bool:
    """Apply ``change`` with compare-and-set; False if it changed nothing (a stale event)."""
    for _ in range(presence.MAX_CAS_ATTEMPTS):
        state, revision = await load(kv, device_id)
        state = state or DeviceState(device_id)
        if not change(state):
            return False
        state.updated = time.time()
        try:
            await kv.update(device_id, state.encode(), last=revision)
        except KeyWrongLastSequenceError:
            metrics.conflicts.inc()  # another instance wrote first: read again, re-apply
            continue
        return True
    raise StateConflict(f"state of {device_id} kept changing under every attempt")


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # metrics label
    stream: str
    subjects: str


SOURCES = (
    Source("alert", subjects.ALERTS_STREAM, subjects.alert_subject(">")),
    Source("status", subjects.STATUS_STREAM, subjects.status_subject(">")),
    Source("presence", subjects.PRESENCE_STREAM, subjects.PRESENCE_SUBJECTS),
)


def change_of(kind: str, msg: Msg) -> Change:
    """What the event means for its device's state; InvalidEvent if it cannot be read."""
    seq = msg.metadata.sequence.stream
    try:
        if kind == "alert":
            alert = Alert.from_body(msg.data)
            return lambda state: state.apply_alert(alert, seq)
        if kind == "status":
            status = Status.from_body(msg.data)
            return lambda state: state.apply_status(status, seq)
        deleted = (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE)
        value = None if deleted else presence.Presence.decode(msg.data)
        return lambda state: state.apply_presence(value, seq)
    except (FleetError, ValueError, KeyError, TypeError) as exc:
        raise InvalidEvent(f"unreadable {kind} event: {exc}") from None


# --- metrics ------------------------------------------------------------------------------------


class FleetSummary(Collector):
    """``fleet_state_devices{state}``: the fleet by state, from a watch of the devices bucket;
    online only on a live shard (``shards``, kept fresh by the fleet state)."""

    def __init__(self) -> None:
        # id -> (online on (shard, epoch), or None when offline; red)
        self.devices: dict[str, tuple[tuple[str, str] | None, bool]] = {}
        self.shards: Mapping[str, str] = {}

    def watched(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.devices.pop(entry.key, None)
            return
        state = DeviceState.decode(entry.value)
        where = (state.shard, state.epoch) if state.online else None
        self.devices[entry.key] = (where, bool(state.alerts))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "fleet_state_devices", "Devices by state: online, offline, red, green", labels=["state"]
        )
        total, shards = len(self.devices), self.shards
        online = sum(
            where is not None and presence.believed(*where, shards)
            for where, _red in self.devices.values()
        )
        red = sum(red for _where, red in self.devices.values())
        for state, count in (
            ("online", online), ("offline", total - online), (RED, red), (GREEN, total - red),
        ):  # fmt: skip
            family.add_metric([state], count)
        yield family


class StateMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "fleet_state_events",
            "Events read, by source (alert, status, presence) and outcome "
            "(applied, stale, invalid, retried)",
            ["kind", "outcome"],
            registry=r,
        )
        self.conflicts = Counter(
            "fleet_state_update_conflicts",
            "Compare-and-set writes that lost to another writer and were retried",
            registry=r,
        )
        self.summary = FleetSummary()
        r.register(self.summary)


# --- the service ----------------------------------------------------------------------------------


class FleetState(Service):
    """``start()`` binds the consumers and runs them; ``stop()`` finishes the batches in hand."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.metrics = StateMetrics()
        self.nc: NATS | None = None
        self.kv: KeyValue | None = None
        self.liveness: presence.Liveness | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._subs: list[PullSubscription] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._idle: set[str] = set()  # sources waiting in a fetch: safe to cancel
        self._stopping = False

    async def start(self) -> None:
        self.nc = await nats.connect(
            list(self.config.nats_urls), name=self.config.instance_id, max_reconnect_attempts=-1,
            **natsauth.connect_options(natsauth.STATE, self.config),
        )  # fmt: skip
        js = self.nc.jetstream()
        await subjects.ensure_streams(js, self.config.stream_replicas)
        self.kv = await subjects.ensure_devices_bucket(js, self.config.stream_replicas)
        shards = await subjects.ensure_shards_bucket(
            js, presence.SHARD_TTL, self.config.stream_replicas
        )
        self.liveness = presence.Liveness(shards)
        for source in SOURCES:
            sub = await bind_consumer(
                js, source.stream, source.subjects, self.config.durable, self.config.ack_wait
            )
            self._subs.append(sub)
            self._tasks[source.kind] = asyncio.create_task(self._consume(source.kind, sub))
        self._watcher = await self.kv.watchall()
        self._tasks["summary"] = asyncio.create_task(self._summarise(self._watcher))
        self._tasks["liveness"] = asyncio.create_task(self._follow_shards(self.liveness))
        self._idle.add("liveness")  # nothing in hand to finish: cancelled at once on stop
        log.info("fleet state %s consuming as %r", self.config.instance_id, self.config.durable)

    async def stop(self) -> None:
        self._stopping = True
        for kind in self._idle:
            self._tasks[kind].cancel()  # waiting for events that would then wait for us
        if self._watcher is not None:
            with contextlib.suppress(NatsError):
                await self._watcher.stop()
        tasks = list(self._tasks.values())
        _done, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout)
        for task in pending:
            task.cancel()  # unacked: redelivered after ack_wait
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in self._subs:
            # Draining the connection would wait for these queues, which nobody reads now.
            await quietly(sub.unsubscribe())
        if self.nc is not None:
            with contextlib.suppress(NatsError):
                await self.nc.drain()
        log.info("fleet state %s stopped", self.config.instance_id)

    async def _consume(self, kind: str, sub: PullSubscription) -> None:
        config = self.config
        while not self._stopping:
            self._idle.add(kind)
            try:
                msgs = await sub.fetch(config.fetch_batch, timeout=config.fetch_timeout)
            except TimeoutError:  # nats-py raises its own and, near a deadline, asyncio's
                continue
            except NatsError as exc:
                log.warning("fetching %s events failed (%s); retrying", kind, exc)
                await asyncio.sleep(config.retry_delay)
                continue
            finally:
                self._idle.discard(kind)
            for msg in msgs:
                await self._handle(kind, msg)

    async def _handle(self, kind: str, msg: Msg) -> None:
        try:
            applied = await self._apply(kind, msg)
        except InvalidEvent as exc:
            log.warning("dropping %s event %s: %s", kind, msg.subject, exc)
            self.metrics.events.labels(kind, "invalid").inc()
            await quietly(msg.term())
            return
        except Exception as exc:  # NATS trouble, CAS exhausted...: one event must not stop us
            expected = isinstance(exc, NatsError | StateConflict)
            log.warning("%s event %s not applied (%s); redelivering", kind, msg.subject, exc,
                        exc_info=not expected)  # fmt: skip
            self.metrics.events.labels(kind, "retried").inc()
            await quietly(msg.nak(delay=self.config.retry_delay))
            return
        # Acked only now: a crash before this line means a redelivery, never a loss.
        await quietly(msg.ack())
        self.metrics.events.labels(kind, "applied" if applied else "stale").inc()

    async def _apply(self, kind: str, msg: Msg) -> bool:
        assert self.kv is not None
        device_id = subjects.device_of(msg.subject)
        if not DEVICE_ID.fullmatch(device_id):
            raise InvalidEvent(f"{device_id!r} is not a device id")
        return await update(self.kv, device_id, change_of(kind, msg), self.metrics)

    async def _follow_shards(self, liveness: presence.Liveness) -> None:
        """Keeps the summary's live shards fresh (a collector cannot wait for a read)."""
        while True:
            with contextlib.suppress(NatsError):
                self.metrics.summary.shards = await liveness.shards()
            await asyncio.sleep(liveness.refresh)

    async def _summarise(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:  # None marks the end of the initial values
                self.metrics.summary.watched(entry)


async def quietly(ack: Awaitable[Any]) -> None:
    # An ack that cannot reach the server changes nothing: the event is redelivered.
    with contextlib.suppress(NatsError):
        await ack


async def bind_consumer(
    js: JetStreamContext, stream: str, filter_subject: str, durable: str, ack_wait: float
) -> PullSubscription:
    """Declare (idempotent for an identical config, so concurrent instances may all do it)
    and bind a durable pull consumer that never gives up on an event: its effect would be lost."""
    config = ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        filter_subject=filter_subject,
    )
    await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(durable, stream)


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT (then the caller stops gracefully)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def serve(config: FleetConfig) -> None:
    """Run one fleet state instance until SIGTERM or SIGINT, then stop it."""
    service = FleetState(config)
    await service.start()
    await wait_for_stop_signal()
    await service.stop()
