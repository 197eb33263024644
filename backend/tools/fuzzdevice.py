"""The fuzz driver: hostile connections against a live shard while a legit device is served.

``fuzz`` plays ``count`` cases of ``backend.tools.fuzzcases`` over ``connections`` concurrent
workers. An HTTP case gets a connection of its own; frame and envelope cases share upgraded
connections, many per connection, each case followed by a barrier (a control ping whose pong
comes back behind every answer to the case), so each case's answer is known and checked
against the answers the protocol allows. A connection the shard closes is replaced by a new
one. Meanwhile ``mute`` connections send big control pings without ever reading their
pongs (the shard must push back or let go, not buffer), a ``TestDevice`` raises alerts that
must keep being acked, and a monitor samples the shard's RSS and ``/healthz``.

Used by ``bench/fuzz.py`` (a million cases) and ``tests/tools/test_fuzz.py`` (the short run).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import assert_never

from backend.bus.auth import issue_device_token
from backend.devstack import process
from backend.devstack.stack import LocalStack
from backend.devstack.testdevice import TestDevice
from backend.protocol import envelope as env
from backend.protocol import http
from backend.protocol import messages as m
from backend.protocol import websocket as ws
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import FleetError
from backend.protocol.http import DEVICE_PATH
from backend.tools.fuzzcases import (
    NONE,
    SHARD_DEFAULTS,
    WS_PONG,
    CaseGenerator,
    FrameCase,
    HttpCase,
    barrier,
    close,
    error,
    frame,
    summary,
)

SHARD_OPTIONS = {"accept_rate": "100000", "accept_burst": "100000"}
"""One client opens hundreds of connections a second; at the default accept rate most would
be shed with 503 (documented, but it would starve the fuzzing behind the upgrade)."""

ANSWER_BOUND = 10.0
"""Seconds within which a batch of cases must be answered: past it the shard hangs."""
CLOSE_BOUND = 5.0
"""After its close frame or HTTP refusal the shard closes the TCP connection within this."""
SLOW_HEAD_BOUND = SHARD_DEFAULTS.handshake_timeout + 5.0
"""An unfinished request head is answered 408 after the handshake timeout (1 s wheel)."""
ROUND_TRIP_BOUND = 5.0
"""The legit device's alert must be acked within this (the shard waits 10 s for JetStream)."""
RSS_GROWTH_BOUND = 64 * 2**20
"""Peak shard RSS over its RSS before the run: a few 1 MiB messages in flight at once, not
what a device that never reads makes the shard buffer."""
BATCH = 8
"""Cases written at once on a connection, each behind its own barrier."""
CASES_PER_CONNECTION = 100
"""At most; each connection draws how many it takes, so connections come and go."""
MUTE_STALL = 2.0
"""A mute connection whose writes stall this long has met the shard's backpressure."""
MUTE_HOLD = 1.5
"""A mute connection stays open this long after its last write, so the monitor sees what the
shard holds for it."""
SAMPLE_INTERVAL = 0.1
REPLY_LIMIT = 64 * 2**20
"""The largest shard message the fuzz client decodes (a pong echoes up to 1 MiB)."""
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})[ \r]")


@dataclass(frozen=True)
class FuzzTarget:
    host: str
    port: int
    pid: int
    jwt_secret: str

    @classmethod
    def first_shard(cls, stack: LocalStack) -> FuzzTarget:
        port, pid = stack.shard_ports[0], stack.pids()["shards"][0]
        return cls(stack.config.host, port, pid, stack.jwt_secret)

    @property
    def healthz(self) -> str:
        return f"http://{self.host}:{self.port}/healthz"


@dataclass(frozen=True)
class FuzzSettings:
    seed: int = 1
    count: int = 50_000
    connections: int = 32
    mute: int = 1
    mute_bytes: int = 128 * 2**20


@dataclass(frozen=True)
class Mismatch:
    """A case whose answer the protocol does not allow; ``where`` rebuilds it:
    ``CaseGenerator(seed, stream, secret).case(index)``."""

    recipe: str
    where: str
    expected: tuple[str, ...]
    observed: str
    data: bytes

    def line(self) -> str:
        head = self.data[:48].hex()
        return (
            f"{self.recipe} [{self.where}]: got {self.observed}, expected one of "
            f"{', '.join(self.expected)}; {len(self.data)} bytes: {head}"
        )


@dataclass
class Report:
    inputs: Counter[str] = field(default_factory=Counter)  # by layer: http, ws, envelope
    connections: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    mismatches: list[Mismatch] = field(default_factory=list)  # the first few
    wrong: Counter[str] = field(default_factory=Counter)  # "recipe: observed" -> inputs
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    healthz_checks: int = 0
    healthz_failures: int = 0
    shard_alive: bool = False
    legit_latencies: list[float] = field(default_factory=list)
    legit_failed: int = 0
    mute: Counter[str] = field(default_factory=Counter)
    mute_bytes: int = 0
    largest_reply: int = 0
    elapsed: float = 0.0

    def add(self, mismatch: Mismatch) -> None:
        self.wrong[f"{mismatch.recipe}: {mismatch.observed}"] += 1
        if len(self.mismatches) < 20:
            self.mismatches.append(mismatch)

    @property
    def total_inputs(self) -> int:
        return sum(self.inputs.values())

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before

    def failures(self) -> list[str]:
        """What this run shows wrong with the shard; empty when it passed."""
        found = [mismatch.line() for mismatch in self.mismatches]
        if self.wrong.total() > len(self.mismatches):
            found.append(f"... {self.wrong.total()} inputs answered wrongly in all")
        if not self.shard_alive:
            found.append("the shard process is gone or its /healthz does not answer 200")
        if self.healthz_failures:
            found.append(f"/healthz not 200 {self.healthz_failures} times during the run")
        if self.rss_growth > RSS_GROWTH_BOUND:
            found.append(
                f"shard RSS grew by {_mib(self.rss_growth)} at peak, over the "
                f"{_mib(RSS_GROWTH_BOUND)} bound"
            )
        if self.legit_failed or not self.legit_latencies:
            found.append(
                f"legit device: {self.legit_failed} alerts not acked within "
                f"{ROUND_TRIP_BOUND:g}s, {len(self.legit_latencies)} acked"
            )
        return found

    def lines(self) -> list[str]:
        """The run's figures, for people."""
        latencies = sorted(self.legit_latencies) or [0.0]
        return [
            f"inputs sent and answered: {self.total_inputs:,} ({_counts(self.inputs)}) in "
            f"{self.elapsed:.1f}s, {self.total_inputs / max(self.elapsed, 1e-9):,.0f}/s",
            f"connections opened: {self.connections:,}",
            f"answers by kind: {_counts(self.answers)}",
            f"inputs answered wrongly: {self.wrong.total():,} ({_counts(self.wrong)})",
            f"shard RSS: before {_mib(self.rss_before)}, peak {_mib(self.rss_peak)}, "
            f"after {_mib(self.rss_after)} (bound on growth {_mib(RSS_GROWTH_BOUND)})",
            f"shard /healthz: {self.healthz_checks - self.healthz_failures}/"
            f"{self.healthz_checks} answered 200; alive at the end: {self.shard_alive}",
            f"legit device: {len(self.legit_latencies)} alerts acked, {self.legit_failed} "
            f"failed; round trip p50 {_ms(statistics.median(latencies))}, "
            f"p99 {_ms(latencies[int(0.99 * (len(latencies) - 1))])}",
            f"mute connections: {_counts(self.mute)}, {_mib(self.mute_bytes)} of pings sent unread",
            f"largest shard message received: {self.largest_reply:,} bytes",
        ]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{kind} {count:,}" for kind, count in sorted(counter.items())) or "-"


async def fuzz(target: FuzzTarget, settings: FuzzSettings) -> Report:
    """Run the fuzz against ``target`` and return its figures (``Report.failures`` judges)."""
    return await _Run(target, settings).go()


# --- the client side of one connection --------------------------------------------------------


class _Wire(asyncio.Protocol):
    """A client connection that keeps what arrived before a reset (asyncio's StreamReader
    raises the reset first and drops it) and says when its writes back up."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.lost = ""  # "eof" or "reset" once the connection is gone
        self._wake = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    async def open(cls, target: FuzzTarget) -> _Wire:
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(cls, target.host, target.port)
        _transport, wire = await asyncio.wait_for(connect, ANSWER_BOUND)
        return wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake.set()

    def eof_received(self) -> bool:
        self.lost = self.lost or "eof"
        self._wake.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or ("reset" if exc else "eof")
        self._wake.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def read(self, deadline: float) -> bytes:
        """What arrived, once something did; b"" when the connection is gone (``lost``).
        TimeoutError past ``deadline`` (loop time)."""
        async with asyncio.timeout_at(deadline):
            while not self.buffer and not self.lost:
                self._wake.clear()
                await self._wake.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        await asyncio.wait_for(self._writable.wait(), timeout)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Link:
    """An upgraded fuzz connection: cases go out behind barriers, answers are sorted by them."""

    def __init__(self, wire: _Wire, report: Report) -> None:
        self.wire = wire
        self.report = report
        self.codec = ws.WebSocketConnection(ws.Role.CLIENT, REPLY_LIMIT)
        self.sids: deque[str] = deque()  # barriers written, not answered yet
        self.ended = False
        self.close_received = False
        self.cases = 0

    @classmethod
    async def open(
        cls, target: FuzzTarget, device_id: str, report: Report, early: bytes = b""
    ) -> _Link:
        """Upgrade a new connection as ``device_id``; ``early`` goes right behind the request."""
        token = issue_device_token(device_id, target.jwt_secret)
        request, key = http.client_request(
            f"{target.host}:{target.port}", DEVICE_PATH, [("Authorization", f"Bearer {token}")]
        )
        wire = await _Wire.open(target)
        report.connections += 1
        wire.write(request + early)
        deadline = asyncio.get_running_loop().time() + ANSWER_BOUND
        received = b""
        while (parsed := http.parse_response(received, key)) is None:
            data = await wire.read(deadline)
            if not data:
                raise ConnectionError(f"connection {wire.lost} before the 101")
            received += data
        link = cls(wire, report)
        link.codec.receive_data(received[parsed[2] :])
        return link

    async def answers(self, count: int) -> list[str]:
        """What came back for each of the next ``count`` barriers; fewer when the connection
        ended first (the last one then holds how it ended)."""
        kinds: list[set[str]] = [set()]
        self._handle(kinds)  # frames that came with the 101
        deadline = asyncio.get_running_loop().time() + ANSWER_BOUND
        while len(kinds) <= count and not self.ended:
            try:
                data = await self.wire.read(deadline)
            except TimeoutError:
                data, self.wire.lost = b"", "timeout"
            if not data:
                kinds[-1].add(self.wire.lost)
                self.ended = True
                break
            self.codec.receive_data(data)
            self._handle(kinds)
            # Echoes the shard's close frame (its closing handshake), answers its pings.
            self.wire.write(self.codec.data_to_send())
        if self.close_received:
            await self._closed_by_shard(kinds[-1])
        answered = kinds if len(kinds) <= count else kinds[:count]
        return [summary(found) for found in answered]

    async def _closed_by_shard(self, kinds: set[str]) -> None:
        """After its close frame the shard must close the TCP connection (RFC 6455 §7.1.1)."""
        deadline = asyncio.get_running_loop().time() + CLOSE_BOUND
        with contextlib.suppress(TimeoutError):
            while await self.wire.read(deadline):
                pass
        if not self.wire.lost:
            kinds.add("still-open")

    def _handle(self, kinds: list[set[str]]) -> None:
        for event in self.codec.events_received():
            match event:
                case ws.Message():
                    self._message(event.data, kinds)
                case ws.Pong():
                    kinds[-1].add(WS_PONG)
                case ws.Closed():
                    kinds[-1].add(close(event.code))
                    self.ended = self.close_received = True
                case ws.Failed():
                    kinds[-1].add(f"bad-frame-from-shard:{event.error.reason}")
                    self.ended = True
                case ws.Ping():
                    pass  # the shard's keep-alive, no answer to anything we sent
                case _:
                    assert_never(event)

    def _message(self, data: bytes, kinds: list[set[str]]) -> None:
        self.report.largest_reply = max(self.report.largest_reply, len(data))
        try:
            msg = env.decode(data, REPLY_LIMIT)
        except FleetError:
            kinds[-1].add("bad-message-from-shard")
            return
        if msg.typ == env.TYP_PONG and self.sids and msg.sid == self.sids[0]:
            self.sids.popleft()
            kinds.append(set())
            return
        kind = _reply_kind(msg)
        if kind is not None:
            kinds[-1].add(kind)

    def abandon(self) -> None:
        self.ended = True
        self.wire.abort()


def _allowed(observed: str, expected: set[str] | frozenset[str]) -> bool:
    """``observed`` is one of ``expected``, or the shard closed the connection with 1008
    (a device over its budget of protocol errors), which drops the answers still queued."""
    if observed in expected:
        return True
    kinds = set(observed.split("+"))
    parts = {part for answer in expected for part in answer.split("+")}
    return close(1008) in kinds and kinds - {close(1008)} <= parts


def _reply_kind(msg: ProtoMsg) -> str | None:
    """The answer a shard message is, None for what answers nothing we sent."""
    if msg.proto == env.PROTO_CONTROL:
        if msg.typ == env.TYP_ERROR:
            try:
                return error(m.Error.from_body(msg.body).code or 0)
            except FleetError:
                return "bad-error-from-shard"
        if msg.typ in (env.TYP_PONG, env.TYP_ACCEPT):
            return msg.typ
        if msg.typ == env.TYP_OPEN:
            return None  # the shard opens the handshake after the 101
    if (msg.proto, msg.typ) == (env.PROTO_MONITOR, m.AlertAck.TYP):
        return None  # acks follow the stream's, whenever it stored the alert
    return f"message:{msg.proto:#x}/{msg.typ}"


# --- the run ----------------------------------------------------------------------------------


class _Run:
    def __init__(self, target: FuzzTarget, settings: FuzzSettings) -> None:
        self.target = target
        self.settings = settings
        self.report = Report()
        self.remaining = settings.count
        self.stop = asyncio.Event()

    async def go(self) -> Report:
        report = self.report
        report.rss_before = report.rss_peak = process.rss_bytes(self.target.pid)
        started = time.monotonic()
        legit_ready = asyncio.Event()
        watchers = [
            asyncio.create_task(self._monitor()),
            asyncio.create_task(self._legit(legit_ready)),
        ]
        await asyncio.wait_for(legit_ready.wait(), ANSWER_BOUND)
        workers = [_Worker(self, stream).run() for stream in range(self.settings.connections)]
        mutes = [self._mute(index) for index in range(self.settings.mute)]
        await asyncio.gather(*workers, *mutes)
        report.elapsed = time.monotonic() - started
        self.stop.set()
        await asyncio.gather(*watchers)
        await asyncio.sleep(MUTE_HOLD)  # let the shard let go of the closed connections
        report.rss_after = process.rss_bytes(self.target.pid)
        status, _body = await asyncio.to_thread(process.http_get, self.target.healthz)
        report.shard_alive = report.rss_after > 0 and status == 200
        return report

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def give_back(self, count: int) -> None:
        """Cases written on a connection that ended before them: played again elsewhere."""
        self.remaining += count

    def record(self, layer: str, case: HttpCase | FrameCase, where: str, observed: str) -> None:
        report = self.report
        report.inputs[layer] += 1
        report.answers[observed] += 1
        expected = (
            {f"http:{status}" for status in case.expect}
            if isinstance(case, HttpCase)
            else case.expect
        )
        if not _allowed(observed, expected):
            report.add(Mismatch(case.recipe, where, tuple(sorted(expected)), observed, case.data))

    async def _monitor(self) -> None:
        report = self.report
        while not self.stop.is_set():
            report.rss_peak = max(report.rss_peak, process.rss_bytes(self.target.pid))
            status, _body = await asyncio.to_thread(process.http_get, self.target.healthz)
            report.healthz_checks += 1
            report.healthz_failures += status != 200
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _legit(self, ready: asyncio.Event) -> None:
        """A well-behaved device raising alerts one after the other, each to be acked."""
        target, report = self.target, self.report
        token = issue_device_token("fuzz-legit", target.jwt_secret)
        device = TestDevice("fuzz-legit", token, f"ws://{target.host}:{target.port}")
        await device.connect()
        report.connections += 1
        for number in itertools.count(1):
            alert = m.Alert(f"legit-{number}", "fuzz_probe", "info", "raised")
            started = time.monotonic()
            try:
                await device.send_alert(alert)
                async with asyncio.timeout(ROUND_TRIP_BOUND):
                    await device.wait_acked(alert.id)
                report.legit_latencies.append(time.monotonic() - started)
            except TimeoutError:
                report.legit_failed += 1
            ready.set()
            if self.stop.is_set():
                break
            await asyncio.sleep(0.05)
        await device.close()

    async def _mute(self, index: int) -> None:
        """Big pings, pongs never read: the shard must stop reading or close, not buffer."""
        try:
            link = await _Link.open(self.target, f"fuzz-mute-{index}", self.report)
        except (OSError, TimeoutError, FleetError) as exc:
            self.report.add(
                Mismatch("mute/upgrade", f"mute {index}", ("http:101",), repr(exc), b"")
            )
            return
        wire = link.wire
        assert wire.transport is not None
        wire.transport.pause_reading()  # the kernel buffers fill, then the shard's writes back up
        self.report.mute[await self._flood(wire, index)] += 1
        await asyncio.sleep(MUTE_HOLD)
        wire.abort()

    async def _flood(self, wire: _Wire, index: int) -> str:
        """Write big pings until ``mute_bytes`` are out; how it ended."""
        rng = random.Random(f"{self.settings.seed}/mute/{index}")
        ping = ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, "mute", None, rng.randbytes(1 << 19))
        data = frame(rng, env.encode(ping))  # one mask for every copy: valid, and cheap
        sent = 0
        while sent < self.settings.mute_bytes:
            wire.write(data)
            sent += len(data)
            self.report.mute_bytes += len(data)
            try:
                await wire.drain(MUTE_STALL)
            except TimeoutError:
                return "backpressured"
            if wire.lost:
                return f"closed ({wire.lost})"
        return "all-sent"


class _Worker:
    """One stream of cases: HTTP cases on connections of their own, the others on upgraded
    connections, in batches."""

    def __init__(self, run: _Run, stream: int) -> None:
        self.run_ = run
        self.stream = stream
        self.gen = CaseGenerator(run.settings.seed, stream, run.target.jwt_secret)
        self.rng = random.Random(f"{run.settings.seed}/{stream}")
        self.index = 0
        self.link: _Link | None = None
        self.budget = 0  # cases the current connection takes
        self.barriers = itertools.count()
        self.sids: list[str] = []

    async def run(self) -> None:
        batch: list[tuple[int, FrameCase]] = []
        while self.run_.take():
            index, case = self.index, self.gen.case(self.index)
            self.index += 1
            if isinstance(case, HttpCase):
                await self._http(index, case)
                continue
            if _alone(case) and batch:
                await self._frames(batch)
                batch = []
            batch.append((index, case))
            if len(batch) >= BATCH or _alone(case) or case.abandon:
                await self._frames(batch)
                batch = []
        if batch:
            await self._frames(batch)
        self._drop_link()

    def where(self, index: int) -> str:
        return f"seed {self.run_.settings.seed}, stream {self.stream}, index {index}"

    async def _frames(self, batch: list[tuple[int, FrameCase]]) -> None:
        observed = await self._play(batch)
        answered = list(zip(batch, observed, strict=False))
        wrong = any(not _allowed(answer, case.expect) for (_i, case), answer in answered)
        if wrong and len(batch) > 1:
            # An answer lost or out of place may belong to any case of the batch (a shard
            # that dies on one drops the answers to all): each again, alone, tells which.
            self._drop_link()
            for item in batch:
                await self._frames([item])
            return
        for (index, case), answer in answered:
            self.run_.record(_layer(case), case, self.where(index), answer)
        self.run_.give_back(len(batch) - len(observed))

    async def _play(self, batch: list[tuple[int, FrameCase]]) -> list[str]:
        """Write the batch on the worker's connection; the answers, one per case answered."""
        cases = [case for _index, case in batch]
        try:
            link, data = await self._link_for(cases)
        except (OSError, TimeoutError, FleetError) as exc:
            self.sids.clear()
            self._upgrade_failed(batch[0][0], exc)
            return []
        if data:
            link.wire.write(data)
        observed = await link.answers(sum(not case.abandon for case in cases))
        if cases[-1].abandon and not link.ended:
            link.abandon()
            observed.append(NONE)
        if link.ended or link.cases >= self.budget:
            self._drop_link()
        return observed

    def _drop_link(self) -> None:
        if self.link is not None:
            self.link.wire.abort()
            self.link = None

    async def _link_for(self, cases: list[FrameCase]) -> tuple[_Link, bytes]:
        """The worker's open connection and the bytes still to write on it: a new
        connection now and then gets them right behind its upgrade request."""
        data = self._encode(cases)
        link, written = self.link, b""
        if link is None:
            written = data if self.rng.random() < 0.2 else b""
            report = self.run_.report
            link = await _Link.open(self.run_.target, f"fuzz-{self.stream}", report, written)
            self.link, self.budget = link, self.rng.randint(1, CASES_PER_CONNECTION)
        link.sids.extend(self.sids)
        link.cases += len(cases)
        self.sids.clear()
        return link, b"" if written else data

    def _encode(self, cases: list[FrameCase]) -> bytes:
        """The cases' bytes, each but an abandoned one followed by its barrier (numbered
        per worker: a late pong from an earlier connection cannot be taken for one)."""
        out = []
        for case in cases:
            out.append(case.data)
            if not case.abandon:
                sid = f"barrier-{self.stream}-{next(self.barriers)}"
                self.sids.append(sid)
                out.append(barrier(self.rng, sid))
        return b"".join(out)

    def _upgrade_failed(self, index: int, exc: BaseException) -> None:
        self.run_.report.add(Mismatch("upgrade", self.where(index), ("http:101",), repr(exc), b""))

    async def _http(self, index: int, case: HttpCase) -> None:
        try:
            wire = await _Wire.open(self.run_.target)
        except (OSError, TimeoutError) as exc:
            self.run_.give_back(1)
            self._upgrade_failed(index, exc)
            return
        self.run_.report.connections += 1
        for chunk in case.chunks:
            wire.write(chunk)
        bound = ANSWER_BOUND if case.complete else SLOW_HEAD_BOUND
        observed = await _http_answer(wire, asyncio.get_running_loop().time() + bound)
        wire.abort()
        self.run_.record("http", case, self.where(index), observed)


def _alone(case: FrameCase) -> bool:
    """Does the WebSocket layer answer this case (a pong, a close)? It does as it parses
    a read, ahead of the ProtoMsg answers to what came before in the same read, and a close
    drops those: such a case goes in a batch of its own."""
    return case.ends or any(WS_PONG in kind or "close:" in kind for kind in case.expect)


def _layer(case: FrameCase) -> str:
    return case.recipe.partition("/")[0]


async def _http_answer(wire: _Wire, deadline: float) -> str:
    """``http:<status>`` of the shard's response, with ``+still-open`` if the shard kept the
    connection after a refusal; or how the connection ended without one."""
    received = b""
    while (match := _STATUS_LINE.match(received)) is None or b"\r\n\r\n" not in received:
        try:
            data = await wire.read(deadline)
        except TimeoutError:
            return "timeout"
        if not data:
            return f"http:{match.group(1).decode()}+truncated" if match else wire.lost
        received += data
    status = match.group(1).decode()
    if status == "101":
        return "http:101"
    close_deadline = asyncio.get_running_loop().time() + CLOSE_BOUND
    with contextlib.suppress(TimeoutError):
        while await wire.read(close_deadline):
            pass
    return f"http:{status}" if wire.lost else f"http:{status}+still-open"
