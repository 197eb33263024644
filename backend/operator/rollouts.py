"""Update rollouts: offer a firmware to a selection of devices, a few at a time.

A rollout is one entry of the KV bucket ``fleet-rollouts`` (key: its id, value: JSON): the
request, its state (running, paused, aborted, finished) and every target device's progress.
Each change is a compare-and-set on the entry's revision, so the drivers of several API
instances, and a restarted one, share it safely:

- **Driver** (one task per API process): every ``rollout_tick``, and after each batch of
  progress, each running rollout claims pending devices, in id order, by writing them as
  "offered" (CAS: never more than ``max_concurrent`` in flight, counted in the entry), and
  only then sends the offers (``DeviceRouter.offer_update``, sid = the rollout id, stamped
  with the creating operator's ``user_id``). At most ``rate`` offers start per second (a
  token bucket per driver). A device that cannot be reached fails with the reason. An offer
  can also be lost after the shard sent it (the link died): one with no answer at all after
  ``rollout_offer_timeout`` is made again (devices ignore an offer they are already working
  on), ``rollout_offer_attempts`` times in all; one with no final result
  ``rollout_device_timeout`` after its offer fails as timed out.
- **Progress**: a durable pull consumer (``fleet-rollouts``) on FLEET_UPDATES, where the
  shard publishes the devices' progress with the offer's sid in the ``Fleet-Update`` header.
  A device's state only moves forward (offered, downloading, installing, then success or
  failure), so redelivered or reordered events are no-ops; events are acked after the write.
- A rollout is finished when no device is pending or in flight. Pause and abort stop new
  offers; offers already made run to their end (an update cannot be called back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter

from backend.bus import presence, subjects
from backend.bus.auth import DEVICE_ID
from backend.bus.routing import DeviceRouter
from backend.lifecycle import Service
from backend.operator import fleetstate
from backend.operator.config import FleetConfig
from backend.operator.errors import InvalidRollout, RolloutConflict, RolloutError, UnknownRollout
from backend.protocol.errors import FleetError, RoutingError
from backend.protocol.messages import UpdateOffer, UpdateProgress

log = logging.getLogger("fleet.rollouts")

RUNNING, PAUSED, ABORTED, FINISHED = "running", "paused", "aborted", "finished"
PENDING, OFFERED, DOWNLOADING, INSTALLING = "pending", "offered", "downloading", "installing"
SUCCESS, FAILURE = "success", "failure"
DEVICE_STATES = (PENDING, OFFERED, DOWNLOADING, INSTALLING, SUCCESS, FAILURE)
IN_FLIGHT = frozenset({OFFERED, DOWNLOADING, INSTALLING})
_RANK = {PENDING: 0, OFFERED: 1, DOWNLOADING: 2, INSTALLING: 3, SUCCESS: 4, FAILURE: 4}
_PROGRESS = {"downloading": DOWNLOADING, "installing": INSTALLING, "rebooting": INSTALLING,
             "success": SUCCESS, "failure": FAILURE}  # fmt: skip
# action -> (states it applies to, state it leads to)
ACTIONS = {"pause": ({RUNNING}, PAUSED), "resume": ({PAUSED}, RUNNING),
           "abort": ({RUNNING, PAUSED}, ABORTED)}  # fmt: skip
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 256
SELECTOR_KEYS = frozenset({"state", "firmware", "prefix", "online", "devices"})
FETCH_BATCH = 256
FOLLOW_UP_WAIT = 0.05
"""Seconds a fetch waits for more events once it has one (they are usually there already)."""


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices: an explicit id list, or fleet state filters (all optional)."""

    devices: tuple[str, ...] = ()
    health: str | None = None
    firmware: str | None = None
    prefix: str = ""
    online: bool | None = None

    def matches(self, state: fleetstate.DeviceState) -> bool:
        return (
            (self.health is None or state.health == self.health)
            and (self.firmware is None or state.firmware == self.firmware)
            and (self.online is None or state.online == self.online)
        )

    def as_json(self) -> dict[str, Any]:
        if self.devices:
            return {"devices": list(self.devices)}
        found = {"state": self.health, "firmware": self.firmware, "online": self.online}
        return {k: v for k, v in {**found, "prefix": self.prefix}.items() if v not in (None, "")}


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    version: str
    artifact_url: str
    checksum: str
    size: int
    selector: Selector
    percent: float | None
    count: int | None
    max_concurrent: int
    rate: float


def rollout_spec(body: dict[str, Any], config: FleetConfig) -> RolloutSpec:
    """The request, checked field by field (InvalidRollout names the first bad one)."""
    url = _text(body, "artifact_url")
    if not url.startswith(("http://", "https://")):
        raise InvalidRollout("artifact_url", "'artifact_url' must be an http(s) URL")
    checksum = _text(body, "checksum").lower()
    if not SHA256.fullmatch(checksum):
        raise InvalidRollout("checksum", "'checksum' must be a SHA-256 digest (64 hex digits)")
    percent, count = body.get("percent"), body.get("count")
    if percent is not None and count is not None:
        raise InvalidRollout("count", "give 'percent' or 'count', not both")
    return RolloutSpec(
        version=_text(body, "version"),
        artifact_url=url,
        checksum=checksum,
        size=_integer(body, "size", 0, 0, 2**53),
        selector=_selector(body.get("selector")),
        percent=None if percent is None else _number(body, "percent", 100.0, 100.0),
        count=None if count is None else _integer(body, "count", None, 1, 2**31),
        max_concurrent=_integer(body, "max_concurrent", 10, 1, config.max_rollout_devices),
        rate=_number(body, "rate", 1000.0, 1e6),
    )


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidRollout(name, f"'{name}' must be a non-empty string (at most {MAX_TEXT})")
    return value.strip()


def _integer(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = body.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise InvalidRollout(name, f"'{name}' must be an integer from {low} to {high}")
    return value


def _number(body: dict[str, Any], name: str, default: float, high: float) -> float:
    value = body.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 < value <= high)
    ):
        raise InvalidRollout(name, f"'{name}' must be a number in (0, {high:g}]")
    return float(value)


def _selector(value: Any) -> Selector:
    if not isinstance(value, dict) or not value or value.keys() - SELECTOR_KEYS:
        raise InvalidRollout(
            "selector", f"'selector' must be an object of {sorted(SELECTOR_KEYS)}, not empty"
        )
    if "devices" in value:
        devices = value["devices"]
        if len(value) > 1 or not isinstance(devices, list) or not devices:
            raise InvalidRollout("selector", "'selector.devices' is a non-empty list on its own")
        if not all(isinstance(d, str) and DEVICE_ID.fullmatch(d) for d in devices):
            raise InvalidRollout("selector", "'selector.devices' must hold device ids")
        return Selector(devices=tuple(sorted(set(devices))))
    health, firmware = value.get("state"), value.get("firmware")
    prefix, online = value.get("prefix", ""), value.get("online")
    if health not in (None, fleetstate.RED, fleetstate.GREEN):
        raise InvalidRollout("selector", "'selector.state' must be 'red' or 'green'")
    if not (firmware is None or isinstance(firmware, str)) or not isinstance(prefix, str):
        raise InvalidRollout("selector", "'selector.firmware' and '.prefix' must be strings")
    if online not in (None, True, False):
        raise InvalidRollout("selector", "'selector.online' must be true or false")
    return Selector(health=health, firmware=firmware, prefix=prefix, online=online)


# --- a rollout (pure) -----------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """One device of a rollout: its state, the failure's reason, since when (Unix time),
    and how many offers it was made."""

    state: str = PENDING
    reason: str = ""
    at: float = 0.0
    offers: int = 0


@dataclass(slots=True)
class Rollout:
    id: str
    version: str
    artifact_url: str
    checksum: str
    size: int
    max_concurrent: int
    rate: float
    operator: str
    selector: dict[str, Any]
    created: float
    state: str = RUNNING
    devices: dict[str, Target] = field(default_factory=dict)

    @property
    def offer(self) -> UpdateOffer:
        return UpdateOffer(self.version, self.artifact_url, self.checksum, self.size)

    def in_flight(self) -> int:
        return sum(target.state in IN_FLIGHT for target in self.devices.values())

    def claim(self, most: int, now: float) -> list[str]:
        """Up to ``most`` pending devices, now offered, within max_concurrent in flight."""
        room = min(most, self.max_concurrent - self.in_flight())
        claimed = [d for d, t in self.devices.items() if t.state == PENDING][: max(room, 0)]
        for device in claimed:
            self.devices[device] = Target(OFFERED, "", now, offers=1)
        return claimed

    def unanswered(self, now: float, timeout: float, attempts: int) -> tuple[list[str], bool]:
        """Offers with no answer for ``timeout`` s: made again (the devices to send them to)
        or, after ``attempts`` offers, failed. Whether anything changed."""
        late = [d for d, t in self.devices.items() if t.state == OFFERED and now - t.at > timeout]
        again = [d for d in late if self.devices[d].offers < attempts]
        for device in late:
            target = self.devices[device]
            if device in again:
                self.devices[device] = Target(OFFERED, "", now, target.offers + 1)
            else:
                reason = f"no answer to {target.offers} offers, {timeout:g}s apart"
                self.advance(device, FAILURE, reason, now)
        return again, bool(late)

    def advance(self, device: str, state: str, reason: str, now: float) -> bool:
        """Move the device forward to ``state``; False if it is there or beyond already."""
        target = self.devices.get(device)
        if target is None or _RANK[state] <= _RANK[target.state]:
            return False
        self.devices[device] = Target(state, reason, now, target.offers)
        return True

    def expire(self, now: float, timeout: float) -> bool:
        late = [d for d, t in self.devices.items() if t.state in IN_FLIGHT and now - t.at > timeout]
        for device in late:
            self.advance(device, FAILURE, f"no result within {timeout:g}s of the offer", now)
        return bool(late)

    def settle(self) -> bool:
        """Running or paused with nothing pending or in flight: finished."""
        if self.state in (ABORTED, FINISHED):
            return False
        if any(t.state in IN_FLIGHT or t.state == PENDING for t in self.devices.values()):
            return False
        self.state = FINISHED
        return True

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(DEVICE_STATES, 0)
        for target in self.devices.values():
            counts[target.state] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state, "version": self.version,
            "operator": self.operator, "created": self.created, "selector": self.selector,
            "max_concurrent": self.max_concurrent, "rate": self.rate,
            "total": len(self.devices), "counts": self.counts(),
        }  # fmt: skip

    def detail(self) -> dict[str, Any]:
        failed = [
            {"device": d, "reason": t.reason} for d, t in self.devices.items() if t.state == FAILURE
        ]
        return {**self.summary(), "artifact_url": self.artifact_url, "checksum": self.checksum,
                "size": self.size, "failed": failed}  # fmt: skip

    def encode(self) -> bytes:
        fields = asdict(self)
        fields["devices"] = {
            d: [t.state, t.reason, t.at, t.offers] for d, t in self.devices.items()
        }
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Rollout:
        fields = json.loads(data)
        devices = {d: Target(*values) for d, values in fields.pop("devices").items()}
        return cls(**fields, devices=devices)


# --- metrics ----------------------------------------------------------------------------------


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.offers = Counter(
            "fleet_api_rollout_offers", "Update offers sent by rollouts, by outcome (sent, "
            "unreachable)", ["outcome"], registry=registry,
        )  # fmt: skip
        self.events = Counter(
            "fleet_api_rollout_events", "Update progress events read, by outcome (applied, "
            "stale, other: not a rollout's, invalid)", ["outcome"], registry=registry,
        )  # fmt: skip


# --- the service -------------------------------------------------------------------------------


class Rollouts(Service):
    """``start()`` binds the progress consumer and runs the driver; ``stop()`` ends both."""

    def __init__(
        self,
        config: FleetConfig,
        nc: NATS,
        router: DeviceRouter,
        devices: KeyValue,
        registry: CollectorRegistry,
    ) -> None:
        self.config = config
        self.nc = nc
        self.router = router
        self.devices = devices
        self.metrics = RolloutMetrics(registry)
        self.kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: fleetstate.PullSubscription | None = None
        self._wake = asyncio.Event()
        self._tokens: dict[str, tuple[float, float]] = {}  # id -> (tokens, when counted)
        self._done: set[str] = set()  # aborted or finished: the driver skips them
        self._running = False

    async def start(self) -> None:
        js = self.nc.jetstream()
        self.kv = await subjects.ensure_rollouts_bucket(js, self.config.stream_replicas)
        self._sub = sub = await fleetstate.bind_consumer(
            js, subjects.UPDATES_STREAM, subjects.update_subject(">"), self.config.rollout_durable,
            self.config.ack_wait,
        )  # fmt: skip
        self._running = True
        self._tasks = [asyncio.create_task(self._consume(sub)), asyncio.create_task(self._drive())]
        for task in self._tasks:
            task.add_done_callback(_report_end)

    async def stop(self) -> None:
        # Unacked events are redelivered, offers claimed but not sent time out: both safe.
        # The flag ends a loop whose cancel was lost: on Python 3.11, asyncio.wait_for (which
        # nats-py's requests use) returns a result that arrived with the cancel, dropping it.
        self._running = False
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            # Draining the connection would wait for this queue, which nobody reads now.
            await fleetstate.quietly(self._sub.unsubscribe())

    # --- operator requests ---------------------------------------------------------------------

    async def create(self, spec: RolloutSpec, operator: str) -> Rollout:
        targets = await self._select(spec.selector)
        if spec.percent is not None:
            targets = targets[: math.ceil(len(targets) * spec.percent / 100)]
        elif spec.count is not None:
            targets = targets[: spec.count]
        if not targets:
            raise InvalidRollout("selector", "the selector matches no device")
        if len(targets) > self.config.max_rollout_devices:
            raise InvalidRollout("selector", f"the selector matches {len(targets)} devices, "
                                 f"more than {self.config.max_rollout_devices}")  # fmt: skip
        rollout = Rollout(
            f"r-{uuid.uuid4().hex[:12]}", spec.version, spec.artifact_url, spec.checksum,
            spec.size, spec.max_concurrent, spec.rate, operator, spec.selector.as_json(),
            time.time(), devices={device: Target() for device in targets},
        )  # fmt: skip
        assert self.kv is not None
        await self.kv.create(rollout.id, rollout.encode())
        log.info("operator %s created rollout %s of %s to %d devices", operator, rollout.id,
                 rollout.version, len(targets))  # fmt: skip
        self._wake.set()
        return rollout

    async def get(self, rollout_id: str) -> Rollout:
        rollout, _revision = await self._load(rollout_id)
        if rollout is None:
            raise UnknownRollout(f"no rollout {rollout_id}")
        return rollout

    async def all(self) -> list[Rollout]:
        loaded = await asyncio.gather(*(self._load(key) for key in await self._ids()))
        return sorted((r for r, _rev in loaded if r is not None), key=lambda r: r.created)

    async def _ids(self) -> list[str]:
        """Every rollout's id, from the bucket stream's subject counts: ``kv.keys()`` would
        create a watcher consumer per call, and the driver asks several times a second
        (idle consumers linger for minutes, until JetStream refuses more)."""
        info = await self.nc.jetstream().stream_info(
            subjects.ROLLOUTS_STREAM, subjects_filter=subjects.ROLLOUTS_SUBJECTS
        )
        prefix = subjects.ROLLOUTS_SUBJECTS.removesuffix(">")
        return sorted(subject.removeprefix(prefix) for subject in info.state.subjects or {})

    async def control(self, rollout_id: str, action: str) -> Rollout:
        """Pause, resume or abort; RolloutConflict if the rollout's state does not allow it."""
        allowed, after = ACTIONS[action]

        def change(rollout: Rollout) -> bool:
            if rollout.state not in allowed:
                raise RolloutConflict(f"rollout {rollout_id} is {rollout.state}: cannot {action}")
            rollout.state = after
            return True

        rollout = await self._change(rollout_id, change)
        if rollout is None:
            raise UnknownRollout(f"no rollout {rollout_id}")
        self._wake.set()
        return rollout

    async def _select(self, selector: Selector) -> list[str]:
        if selector.devices:
            return list(selector.devices)
        try:
            keys = sorted(k for k in await self.devices.keys() if k.startswith(selector.prefix))
        except NoKeysError:
            return []
        states = await asyncio.gather(*(fleetstate.load(self.devices, key) for key in keys))
        live = await self.router.liveness.shards() if self.router.liveness else None
        return [
            k for k, (s, _rev) in zip(keys, states, strict=True)
            if s and selector.matches(s if live is None else fleetstate.shown(s, live))
        ]  # fmt: skip

    # --- storage -------------------------------------------------------------------------------

    async def _load(self, rollout_id: str) -> tuple[Rollout | None, int]:
        assert self.kv is not None
        try:
            entry = await self.kv.get(rollout_id)
        except KeyNotFoundError:
            return None, 0
        assert entry.value is not None
        return Rollout.decode(entry.value), entry.revision or 0

    async def _change(self, rollout_id: str, change: Callable[[Rollout], bool]) -> Rollout | None:
        """Apply ``change`` with compare-and-set; the rollout as it is now (None: no such)."""
        assert self.kv is not None
        for _ in range(presence.MAX_CAS_ATTEMPTS):
            rollout, revision = await self._load(rollout_id)
            if rollout is None or not change(rollout):
                return rollout
            try:
                await self.kv.update(rollout_id, rollout.encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another instance wrote first: read again, apply again
            return rollout
        raise RolloutError(f"rollout {rollout_id} kept changing under every attempt")

    # --- progress ------------------------------------------------------------------------------

    async def _consume(self, sub: fleetstate.PullSubscription) -> None:
        while self._running:
            try:
                msgs = await _fetch(sub, self.config.fetch_timeout)
            except TimeoutError:  # nats-py raises its own and, near a deadline, asyncio's
                continue
            except NatsError as exc:
                log.warning("fetching update progress failed (%s); retrying", exc)
                await asyncio.sleep(self.config.retry_delay)
                continue
            try:
                await self._apply(msgs)
            except Exception as exc:  # NATS trouble, CAS exhausted...: progress must go on
                expected = isinstance(exc, NatsError | RolloutError)
                log.warning("update progress not applied (%s); redelivering", exc,
                            exc_info=not expected)  # fmt: skip
                for msg in msgs:
                    await fleetstate.quietly(msg.nak(delay=self.config.retry_delay))
                continue
            for msg in msgs:
                await fleetstate.quietly(msg.ack())  # only now: a crash means a redelivery
            self._wake.set()

    async def _apply(self, msgs: list[Msg]) -> None:
        """One compare-and-set per rollout for the whole batch."""
        by_rollout: dict[str, list[tuple[str, UpdateProgress]]] = {}
        for msg in msgs:
            rollout_id = (msg.headers or {}).get(subjects.UPDATE_HEADER, "")
            try:
                progress = UpdateProgress.from_body(msg.data)
            except FleetError as exc:
                log.warning("dropping update progress on %s: %s", msg.subject, exc)
                self.metrics.events.labels("invalid").inc()
                continue
            by_rollout.setdefault(rollout_id, []).append(
                (subjects.device_of(msg.subject), progress)
            )
        for rollout_id, events in by_rollout.items():
            await self._apply_events(rollout_id, events)

    async def _apply_events(
        self, rollout_id: str, events: list[tuple[str, UpdateProgress]]
    ) -> None:
        applied = 0

        def change(rollout: Rollout) -> bool:
            nonlocal applied
            now = time.time()
            applied = sum(rollout.advance(d, _PROGRESS[p.state], p.reason, now) for d, p in events)
            return bool(applied) | rollout.settle()

        rollout = None
        if DEVICE_ID.fullmatch(rollout_id):  # a KV key; manual offers may use any sid
            rollout = await self._change(rollout_id, change)
        if rollout is None:
            self.metrics.events.labels("other").inc(len(events))  # an offer of no rollout
            return
        self.metrics.events.labels("applied").inc(applied)
        self.metrics.events.labels("stale").inc(len(events) - applied)

    # --- the driver -----------------------------------------------------------------------------

    async def _drive(self) -> None:
        while self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.rollout_tick):  # wait_for can lose a cancel
                    await self._wake.wait()
            self._wake.clear()
            try:
                for rollout_id in await self._ids():
                    if rollout_id not in self._done:
                        await self._advance(rollout_id)
            except Exception as exc:  # the driver must outlive one bad pass
                expected = isinstance(exc, NatsError | RolloutError)
                log.warning("rollout driver: %s; trying again", exc, exc_info=not expected)

    async def _advance(self, rollout_id: str) -> None:
        """Time out late devices, finish a rollout with nothing left, offer within limits."""
        now = time.time()
        timeout = self.config.rollout_device_timeout
        claimed: list[str] = []
        again: list[str] = []

        def change(rollout: Rollout) -> bool:
            changed = rollout.expire(now, timeout)
            # Offers already made are seen through, paused or not (an offer is never
            # called back); new ones only while running.
            again[:], chased = rollout.unanswered(
                now, self.config.rollout_offer_timeout, self.config.rollout_offer_attempts
            )
            if rollout.state == RUNNING:
                claimed[:] = rollout.claim(self._budget(rollout, now), now)
            return bool(claimed) | changed | chased | rollout.settle()

        rollout = await self._change(rollout_id, change)
        if (
            rollout is None
            or rollout.state == FINISHED
            or (rollout.state == ABORTED and not rollout.in_flight())
        ):
            self._done.add(rollout_id)  # nothing left to offer or to time out
            self._tokens.pop(rollout_id, None)
            return
        if claimed:
            self._spend(rollout_id, len(claimed))
        if claimed or again:
            await self._offer(rollout, claimed + again)

    async def _offer(self, rollout: Rollout, claimed: list[str]) -> None:
        results = await asyncio.gather(
            *(self.router.offer_update(d, rollout.id, rollout.offer, user_id=rollout.operator)
              for d in claimed),
            return_exceptions=True,
        )  # fmt: skip
        failed = [(d, error) for d, error in zip(claimed, results, strict=True) if error]
        self.metrics.offers.labels("sent").inc(len(claimed) - len(failed))
        self.metrics.offers.labels("unreachable").inc(len(failed))
        if not failed:
            return
        now = time.time()
        for device, error in failed:
            if not isinstance(error, RoutingError | NatsError):
                log.error("offering %s to %s failed", rollout.id, device, exc_info=error)

        def fail(rollout: Rollout) -> bool:
            marked = [
                rollout.advance(d, FAILURE, f"offer not delivered: {e}", now) for d, e in failed
            ]
            return any(marked)

        await self._change(rollout.id, fail)

    def _budget(self, rollout: Rollout, now: float) -> int:
        """Offers the rate allows now: a token bucket holding one tick's worth (at least 1)."""
        tokens, counted = self._tokens.get(rollout.id, (1.0, now))
        burst = max(1.0, rollout.rate * self.config.rollout_tick)
        tokens = min(burst, tokens + (now - counted) * rollout.rate)
        self._tokens[rollout.id] = (tokens, now)
        return int(tokens)

    def _spend(self, rollout_id: str, count: int) -> None:
        tokens, counted = self._tokens[rollout_id]
        self._tokens[rollout_id] = (tokens - count, counted)


async def _fetch(sub: fleetstate.PullSubscription, timeout: float) -> list[Msg]:
    """The next event, and whatever else is there already: a batch fetch would hold the
    first one back until its batch filled up or its timeout passed."""
    msgs = await sub.fetch(1, timeout=timeout)
    with contextlib.suppress(TimeoutError):
        msgs += await sub.fetch(FETCH_BATCH, timeout=FOLLOW_UP_WAIT)
    return msgs


def _report_end(task: asyncio.Task[None]) -> None:
    """The consumer and the driver run until stopped: an end of theirs before is a bug."""
    if not task.cancelled() and task.exception() is not None:
        log.error("rollout task %s ended", task.get_name(), exc_info=task.exception())
