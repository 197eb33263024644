"""The shard: holds device WebSockets and connects them to the rest of the backend via NATS.

Lifecycle (as uvicorn's): ``start`` connects NATS, declares streams, subscribes the shard's
request subject and listens; ``drain`` stops accepting, closes devices with 1012 and a
jittered reconnect hint, waits with a timeout, then aborts the rest and closes NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend import bus, presence, routing
from backend.auth import TokenVerifier
from backend.natsauth import SHARD, connect_options
from backend.protocol import closecodes, envelope, http, messages
from backend.protocol import session as ps
from backend.protocol.errors import (
    Draining,
    FleetError,
    HandshakeError,
    MethodNotAllowed,
    NotFound,
)
from backend.protocol.http import Request
from backend.shard.admission import Admission
from backend.shard.config import DEVICE_PATH, SUBPROTOCOL, ShardConfig
from backend.shard.connection import DeviceConnection, Phase
from backend.shard.metrics import ShardMetrics
from backend.shard.wheel import TimerWheel

log = logging.getLogger("fleet.shard")

PUBLISH_QUEUE_SIZE = 50_000
"""Pending NATS publishes; beyond it alerts stay unacked and the devices resend them."""
ALERT_ACK_TIMEOUT = 10.0

Job = Callable[[], Coroutine[Any, Any, None]]


class Shard:
    def __init__(self, config: ShardConfig) -> None:
        self.config = config
        self.id = config.shard_id
        self.metrics = ShardMetrics(self.id)
        self.wheel = TimerWheel()
        self.verifier = TokenVerifier.from_settings(config.jwt_secret, config.jwt_public_key_file)
        self.admission = Admission(
            config.max_connections, config.accept_rate, config.accept_burst, config.retry_after
        )
        self.devices: dict[str, DeviceConnection] = {}
        self.draining = False
        self.port = config.port
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._server: asyncio.Server | None = None
        self._commands: dict[tuple[str, str], asyncio.Future[messages.CommandResult]] = {}
        self._publishes: asyncio.Queue[Job] = asyncio.Queue(PUBLISH_QUEUE_SIZE)
        self._unflushed: set[DeviceConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_devices = asyncio.Event()
        self._no_devices.set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.nc = await nats.connect(
            list(self.config.nats_urls),
            name=self.id,
            max_reconnect_attempts=-1,
            reconnected_cb=self._nats_reconnected,
            disconnected_cb=self._nats_disconnected,
            **connect_options(SHARD, self.config),
        )
        self._js = self.nc.jetstream()
        self._kv = await bus.ensure_streams(self._js, self.config.stream_replicas)
        await self.nc.subscribe(bus.shard_subject(self.id), cb=self._on_request)
        await self.nc.subscribe(bus.kick_subject(self.id), cb=self._on_kick)
        for loop_body in (self._run_timers, self._run_publishes):
            self._spawn(loop_body())
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: DeviceConnection(self),
            self.config.host,
            self.config.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._write_ready_file()
        log.info("shard %s listening on %s:%d", self.id, self.config.host, self.port)

    def _write_ready_file(self) -> None:
        if self.config.ready_file is not None:
            info = {"shard": self.id, "host": self.config.host, "port": self.port}
            self.config.ready_file.write_text(json.dumps(info))

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, ask devices to come back later, then stop."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        log.info("shard %s draining %d connections", self.id, len(self.devices))
        for conn in list(self.devices.values()):
            hint = round(self.admission.jittered_retry_after())
            reason = closecodes.retry_after_reason(hint)
            conn.close(closecodes.SERVICE_RESTART, reason, "drain")
        deadline = time.monotonic() + self.config.drain_timeout
        await _wait_until(self._no_devices.wait(), deadline)
        for conn in list(self.devices.values()):
            conn.abort("drain_timeout")
        await _wait_until(self._publishes.join(), deadline)
        await self._stop_background_work()
        log.info("shard %s drained", self.id)

    async def _stop_background_work(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _nats_disconnected(self) -> None:
        if not self.draining:
            log.warning("shard %s lost NATS; /healthz reports not ready", self.id)

    async def _nats_reconnected(self) -> None:
        log.info("shard %s reconnected to NATS", self.id)

    @property
    def ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected and not self.draining

    async def _run_timers(self) -> None:
        while True:
            await asyncio.sleep(self.wheel.resolution)
            self.wheel.advance(time.monotonic())

    async def _run_publishes(self) -> None:
        while True:
            job = await self._publishes.get()
            try:
                await job()
            except Exception:
                log.exception("NATS publish failed")
            finally:
                self._publishes.task_done()

    # --- HTTP: endpoints and the upgrade ------------------------------------------------------

    def handle_request(self, conn: DeviceConnection, request: Request) -> None:
        if request.path == "/healthz":
            status = 200 if self.ready else 503
            conn.respond(http.http_response(status, b"ok\n" if status == 200 else b"not ready\n"))
        elif request.path == "/metrics":
            body = generate_latest(self.metrics.registry)
            conn.respond(http.http_response(200, body, content_type=CONTENT_TYPE_LATEST))
        elif request.path == DEVICE_PATH:
            try:
                self._upgrade(conn, request)
            except HandshakeError as exc:
                conn.refuse(exc)
        else:
            conn.refuse(NotFound(f"no such endpoint: {request.path}"))

    def _upgrade(self, conn: DeviceConnection, request: Request) -> None:
        if request.method != "GET":
            raise MethodNotAllowed("the device endpoint takes GET with a WebSocket upgrade")
        key = http.check_upgrade(request)
        if self.draining:
            raise Draining("shard is draining", retry_after=self.admission.jittered_retry_after())
        self.admission.admit(time.monotonic(), len(self.devices))
        device_id = self.verifier.device_id(request.headers.get("authorization"))
        offered = request.headers.get("sec-websocket-protocol", "")
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in _tokens(offered) else None
        conn.upgrade(http.accept_response(key, subprotocol), device_id)
        self._connection_opened(conn)

    def _connection_opened(self, conn: DeviceConnection) -> None:
        older = self.devices.get(conn.device_id)
        self.devices[conn.device_id] = conn
        self._no_devices.clear()
        if older is not None:
            older.close(closecodes.REPLACED, "replaced by a newer connection", "replaced")
        self.metrics.connects.inc()
        self.metrics.connections.set(len(self.devices))
        self._spawn(self._register_presence(conn))

    def connection_closed(self, conn: DeviceConnection) -> None:
        if self.devices.get(conn.device_id) is conn:
            del self.devices[conn.device_id]
            self._fail_commands(conn.device_id)
            if not self.devices:
                self._no_devices.set()
        self.metrics.connections.set(len(self.devices))
        self.metrics.disconnects.labels(conn.disconnect_reason).inc()
        self._end_relays(conn)
        if conn.registration is not None:
            self._spawn(self._unregister_presence(conn))

    def _end_relays(self, conn: DeviceConnection) -> None:
        """Tell each operator session still open on the device that it is gone: a "stop" with
        status 2 (error) and the reason, so an operator is not left waiting for output."""
        reason = f"device {conn.device_id} disconnected ({conn.disconnect_reason})".encode()
        props = {envelope.PROP_STATUS: envelope.STATUS_ERROR}
        for sid, proto in (conn.relays or {}).items():
            stop = envelope.ProtoMsg(proto, envelope.TYP_SHELL_STOP, sid, props, reason)
            self._enqueue(partial(self._publish, bus.relay_subject(sid), envelope.encode(stop)))
        conn.relays = None

    # --- presence ------------------------------------------------------------------------------

    async def _register_presence(self, conn: DeviceConnection) -> None:
        assert self._kv is not None
        assert self.nc is not None
        reg = await presence.register(self._kv, conn.device_id, self.id)
        conn.registration = reg
        if conn.phase is Phase.CLOSED:
            await self._unregister_presence(conn)  # it went away while we registered it
            return
        if conn.kicked_version > reg.version:
            conn.close(closecodes.REPLACED, "replaced by a newer connection", "replaced")
        previous = reg.previous
        if previous is not None and previous.connected and previous.shard != self.id:
            kick = routing.encode(
                {"op": routing.OP_KICK, "device": conn.device_id, "version": reg.version}
            )
            await self.nc.publish(bus.kick_subject(previous.shard), kick)

    async def _unregister_presence(self, conn: DeviceConnection) -> None:
        assert self._kv is not None
        assert conn.registration is not None
        await presence.unregister(self._kv, conn.device_id, self.id, conn.registration)

    async def _on_kick(self, msg: Msg) -> None:
        """Only kicks are taken here: every shard may publish to this subject."""
        try:
            request = routing.decode(msg.data)
            if request["op"] == routing.OP_KICK:
                self._kick(request["device"], int(request["version"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("shard %s: bad kick: %s", self.id, exc)

    def _kick(self, device_id: str, version: int) -> None:
        conn = self.devices.get(device_id)
        if conn is None:
            return
        if conn.registration is None:
            conn.kicked_version = max(conn.kicked_version, version)  # decided once registered
        elif conn.registration.version < version:
            conn.close(closecodes.REPLACED, "replaced by a newer connection", "replaced")

    # --- what devices send ----------------------------------------------------------------------

    def session_event(self, conn: DeviceConnection, event: ps.Event) -> None:
        kind = type(event)
        if kind is ps.AlertReceived:
            self._enqueue(partial(self._publish_alert, conn, event.alert, time.monotonic()))
        elif kind is ps.StatusReceived:
            subject = bus.status_subject(conn.device_id)
            self._enqueue(partial(self._publish, subject, event.status.to_body()))
        elif kind is ps.CommandCompleted:
            future = self._commands.get((conn.device_id, event.sid))
            if future is not None and not future.done():
                future.set_result(event.result)
        elif kind is ps.UpdateProgressReceived:
            subject = bus.update_subject(conn.device_id)
            headers = {bus.UPDATE_HEADER: event.sid}
            self._enqueue(partial(self._publish, subject, event.progress.to_body(), headers))
        elif kind is ps.Relayed:
            _track_relay(conn, event.msg)
            subject = bus.relay_subject(event.msg.sid)
            self._enqueue(partial(self._publish, subject, envelope.encode(event.msg)))
        elif kind is ps.ProtocolViolation:
            self.metrics.protocol_errors.labels(event.error.reason).inc()
            if event.error.close_code is not None:
                conn.close(event.error.close_code, str(event.error)[:120], event.error.reason)

    def _enqueue(self, job: Job) -> None:
        try:
            self._publishes.put_nowait(job)
        except asyncio.QueueFull:
            # Not acked, so the device keeps the alert and resends it: shed, never lose.
            self.metrics.alerts.labels("shed").inc()

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, payload, headers=headers)

    async def _publish_alert(
        self, conn: DeviceConnection, alert: messages.Alert, received: float
    ) -> None:
        assert self._js is not None
        headers = {
            bus.MSG_ID_HEADER: bus.alert_msg_id(conn.device_id, alert.id),
            bus.DEVICE_HEADER: conn.device_id,
            bus.SHARD_HEADER: self.id,
        }
        future = await self._js.publish_async(
            bus.alert_subject(conn.device_id), alert.to_body(), headers=headers
        )
        timeout = asyncio.get_running_loop().call_later(ALERT_ACK_TIMEOUT, future.cancel)
        future.add_done_callback(partial(self._alert_stored, conn, alert.id, received, timeout))

    def _alert_stored(
        self,
        conn: DeviceConnection,
        alert_id: str,
        received: float,
        timeout: asyncio.TimerHandle,
        future: asyncio.Future[Any],
    ) -> None:
        timeout.cancel()
        if future.cancelled() or future.exception() is not None:
            self.metrics.alerts.labels("failed").inc()
            return  # not acked: the device resends, the stream de-duplicates
        self.metrics.alert_publish.observe(time.monotonic() - received)
        self.metrics.alerts.labels("acked").inc()
        if conn.phase is Phase.OPEN and conn.session is not None:
            conn.session.ack_alert(alert_id)
            self._flush_soon(conn)

    def _flush_soon(self, conn: DeviceConnection) -> None:
        """Flush ``conn`` once the loop has run the callbacks already queued: the acks one NATS
        read brings back (hundreds in a burst) leave in one write per connection, not one
        write (and one send syscall) each."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._unflushed.add(conn)

    def _flush_all(self) -> None:
        unflushed, self._unflushed = self._unflushed, set()
        for conn in unflushed:
            if conn.phase is Phase.OPEN:
                conn.flush()

    # --- requests from operators ------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one after another: a command waiting on a
        # slow device must not hold up the requests behind it.
        self._spawn(self._handle_request(msg))

    async def _handle_request(self, msg: Msg) -> None:
        try:
            request = routing.decode(msg.data)
            op, device_id = request["op"], request["device"]
        except (ValueError, KeyError, TypeError) as exc:
            await self._reply(msg, routing.error(routing.ERROR_BAD_REQUEST, f"bad request: {exc}"))
            return
        try:
            reply = await self._answer(op, device_id, request)
        except (FleetError, ValueError, KeyError, TypeError) as exc:
            reply = routing.error(routing.ERROR_BAD_REQUEST, f"bad {op} request: {exc}")
        await self._reply(msg, reply)

    async def _answer(self, op: str, device_id: str, request: dict[str, Any]) -> bytes:
        conn = self.devices.get(device_id)
        if conn is None or conn.session is None or conn.phase is not Phase.OPEN:
            reply = routing.error(routing.ERROR_OFFLINE, f"not connected to shard {self.id}")
        elif op == routing.OP_COMMAND:
            reply = await self._run_command(conn, request)
        elif op == routing.OP_DELIVER:
            msg = _stamped(envelope.decode(request["message"]), request)
            _track_relay(conn, msg)
            conn.session.send(msg)
            conn.flush()
            reply = routing.ok()
        elif op == routing.OP_OFFER:
            offer = messages.UpdateOffer.from_body(request["offer"])
            conn.session.offer_update(request["sid"], offer, request.get("user_id") or None)
            conn.flush()
            reply = routing.ok()
        else:
            reply = routing.error(routing.ERROR_BAD_REQUEST, f"unknown op {op!r}")
        return reply

    async def _reply(self, msg: Msg, payload: bytes) -> None:
        if msg.reply:
            await msg.respond(payload)

    async def _run_command(self, conn: DeviceConnection, request: dict[str, Any]) -> bytes:
        assert conn.session is not None
        sid = str(request.get("sid") or uuid.uuid4().hex)
        timeout = float(request.get("timeout") or self.config.command_timeout)
        key = (conn.device_id, sid)
        future: asyncio.Future[messages.CommandResult] = asyncio.get_running_loop().create_future()
        self._commands[key] = future
        conn.session.send_command(
            sid,
            messages.CommandRequest(request["command"], timeout),
            request.get("user_id") or None,
        )
        conn.flush()
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if conn.session is not None:
                conn.session.cancel_command(sid)
            self.metrics.commands.labels("timeout").inc()
            return routing.error(routing.ERROR_TIMEOUT, f"no result within {timeout:g}s")
        except ConnectionError as exc:
            self.metrics.commands.labels("offline").inc()
            return routing.error(routing.ERROR_OFFLINE, str(exc))
        finally:
            self._commands.pop(key, None)
        self.metrics.commands.labels("ok").inc()
        return routing.ok(
            exit_code=result.exit_code, output=result.output, duration=result.duration
        )

    def _fail_commands(self, device_id: str) -> None:
        for (device, _sid), future in self._commands.items():
            if device == device_id and not future.done():
                future.set_exception(ConnectionError("device disconnected before answering"))


def _stamped(msg: envelope.ProtoMsg, request: dict[str, Any]) -> envelope.ProtoMsg:
    """Operator messages carry the operator's id in props, as Mender's deviceconnect does."""
    user_id = request.get("user_id")
    if user_id:
        msg.props = {**(msg.props or {}), "user_id": user_id}
    return msg


def _track_relay(conn: DeviceConnection, msg: envelope.ProtoMsg) -> None:
    """Operator sessions (Mender's shell and port forward) open with "new" and end with
    "stop" from either side (or a refused "new": status 2); the connection keeps the open
    ones until it closes."""
    refused = (msg.props or {}).get(envelope.PROP_STATUS) == envelope.STATUS_ERROR
    if msg.typ == envelope.TYP_SHELL_NEW and msg.sid and not refused:
        if conn.relays is None:
            conn.relays = {}
        conn.relays[msg.sid] = msg.proto
    elif msg.typ in (envelope.TYP_SHELL_NEW, envelope.TYP_SHELL_STOP) and conn.relays:
        conn.relays.pop(msg.sid, None)
        if not conn.relays:
            conn.relays = None


def _tokens(value: str) -> set[str]:
    return {token.strip() for token in value.split(",") if token.strip()}


async def _wait_until(awaitable: Coroutine[Any, Any, Any], deadline: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))


async def serve(config: ShardConfig) -> None:
    """Run a shard until SIGTERM or SIGINT, then drain it."""
    shard = Shard(config)
    await shard.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await shard.drain()
