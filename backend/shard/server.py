"""The shard: holds device WebSockets and connects them to the rest of the backend via NATS.

Lifecycle (as uvicorn's): ``start`` connects NATS, declares streams, subscribes the shard's
request subject, starts its heartbeat and listens; ``drain`` stops accepting, closes devices
with 1012 and a jittered reconnect hint, waits with a timeout, then aborts the rest, removes
its heartbeat and closes NATS. The heartbeat (``presence.heartbeat``, one KV write per
``presence.HEARTBEAT_INTERVAL``) is what keeps this shard's devices shown online: when the
process dies, its key expires and they read as offline (``presence.Liveness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Coroutine
from functools import partial
from typing import Any, assert_never

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.bus import presence, routing, subjects
from backend.bus.acked import AckedPublisher
from backend.bus.auth import TokenVerifier
from backend.bus.natsauth import SHARD, connect_options
from backend.lifecycle import Service
from backend.logs import Throttled
from backend.protocol import channel as ch
from backend.protocol import closecodes, envelope, http, messages
from backend.protocol import session as ps
from backend.protocol.errors import (
    DeviceError,
    Draining,
    FleetError,
    HandshakeError,
    MethodNotAllowed,
    NotFound,
    TooBigForBus,
)
from backend.protocol.http import DEVICE_PATH, Request
from backend.shard.admission import Admission
from backend.shard.config import ShardConfig
from backend.shard.connection import INPUT_PUBLISH, DeviceConnection
from backend.shard.fairqueue import FairQueue, Job
from backend.shard.metrics import PROTO_NAMES, ShardMetrics
from backend.shard.wheel import TimerWheel

log = logging.getLogger("fleet.shard")

PUBLISH_QUEUE_SIZE = 50_000
"""Pending NATS publishes of all devices; beyond it alerts stay unacked and are resent."""
DEVICE_PUBLISH_SHARE = 256
"""Pending publishes of one device: when full, the shard stops reading that device (and
holds the rest of what it read) until half of them are out, so a flooding device slows
itself down and no one else. Only the total bound sheds."""
HEADER_OVERHEAD = 16
"""Bytes of a NATS header block beyond its names and values ("NATS/1.0", CRLFs)."""
FIRST_BEAT_PATIENCE = 15.0  # a new R3 bucket elects its leader within seconds
ALERT_ACK_TIMEOUT = 10.0


class Shard(Service):
    def __init__(self, config: ShardConfig) -> None:
        self.config = config
        self.id = config.shard_id
        self.epoch = presence.new_epoch()  # this run: presence written by another is not ours
        self.metrics = ShardMetrics(self.id)
        self.wheel = TimerWheel()
        self.channel_limits = ch.Limits(config.max_request_size, config.max_message_size)
        self.verifier = TokenVerifier.from_settings(config.jwt_secret, config.jwt_public_key_file)
        self.admission = Admission(
            config.max_connections, config.accept_rate, config.accept_burst, config.retry_after
        )
        self.devices: dict[str, DeviceConnection] = {}
        self.draining = False
        self.port = config.port
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._alerts: AckedPublisher | None = None
        self._kv: KeyValue | None = None
        self._shards_kv: KeyValue | None = None
        self._server: asyncio.Server | None = None
        self._commands: dict[tuple[str, str], asyncio.Future[messages.CommandResult]] = {}
        self._publishes: FairQueue[DeviceConnection] = FairQueue(
            DEVICE_PUBLISH_SHARE, PUBLISH_QUEUE_SIZE
        )
        self.max_payload = 0  # the NATS server's, learned at connect
        self._throttled = Throttled(log)
        self._unflushed: set[DeviceConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_devices = asyncio.Event()
        self._no_devices.set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect_nats()
        for loop_body in (self._run_timers, self._run_publishes, self._run_heartbeats):
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

    async def _connect_nats(self) -> None:
        self.nc = await nats.connect(
            list(self.config.nats_urls),
            name=self.id,
            max_reconnect_attempts=-1,
            reconnected_cb=self._nats_reconnected,
            disconnected_cb=self._nats_disconnected,
            closed_cb=self._nats_closed,
            **connect_options(SHARD, self.config),
        )
        self.max_payload = self.nc.max_payload
        self._js = self.nc.jetstream()
        self._alerts = AckedPublisher(self.nc, ALERT_ACK_TIMEOUT)
        await self._alerts.start()
        self._kv = await subjects.ensure_streams(self._js, self.config.stream_replicas)
        self._shards_kv = await subjects.ensure_shards_bucket(
            self._js, presence.SHARD_TTL, self.config.stream_replicas
        )
        # Alive before any device; the bucket may be new on a cluster, still electing a leader.
        await presence.heartbeat(self._shards_kv, self.id, self.epoch, patience=FIRST_BEAT_PATIENCE)
        await self.nc.subscribe(subjects.shard_subject(self.id), cb=self._on_request)
        await self.nc.subscribe(subjects.kick_subject(self.id), cb=self._on_kick)

    def _write_ready_file(self) -> None:
        if self.config.ready_file is not None:
            info = {"shard": self.id, "host": self.config.host, "port": self.port}
            self.config.ready_file.write_text(json.dumps(info))

    async def stop(self) -> None:
        await self.drain()

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, ask devices to come back later, then stop."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        log.info("shard %s draining %d connections", self.id, len(self.devices))
        self._close_devices("drain")
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
        if self._shards_kv is not None:  # gone now, not SHARD_TTL later
            with contextlib.suppress(Exception):
                await self._shards_kv.delete(self.id)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Throttled: without NATS, every device's presence update fails the same way.
            name = task.get_coro().__qualname__  # type: ignore[union-attr]
            self._throttled.warning(name, "background task %s failed: %r", name, exc, exc=exc)

    async def _nats_disconnected(self) -> None:
        if not self.draining:
            log.warning("shard %s lost NATS; /healthz reports not ready", self.id)

    async def _nats_reconnected(self) -> None:
        log.info("shard %s reconnected to NATS", self.id)

    async def _nats_closed(self) -> None:
        """nats-py gives up on a connection for good after some server errors (a protocol
        -ERR): never stay a live shard that cannot serve. Reconnect with a new client; if
        that takes longer than ``nats_recovery_time``, send the devices elsewhere meanwhile."""
        if self.draining:
            return
        error = self.nc.last_error if self.nc is not None else None
        log.error("shard %s: NATS connection closed (%s); reconnecting", self.id, error)
        self._spawn(self._recover_nats())

    async def _recover_nats(self) -> None:
        # No cancel (lost cancels in 3.11's wait_for, which nats-py uses): wait beside it.
        reconnect = self._spawn(self._reconnect_nats())
        done, _pending = await asyncio.wait({reconnect}, timeout=self.config.nats_recovery_time)
        if not done and not self.draining and self.devices:
            log.error("shard %s: no NATS for %gs; moving %d devices away", self.id,
                      self.config.nats_recovery_time, len(self.devices))  # fmt: skip
            self._close_devices("nats_lost")

    async def _reconnect_nats(self) -> None:
        while not self.draining:
            try:
                await self._connect_nats()  # nats-py itself retries while no server answers
            except Exception as exc:  # refused credentials, a stream it cannot declare...
                self._throttled.warning("nats-recovery", "shard %s: NATS reconnect failed: %r",
                                        self.id, exc)  # fmt: skip
                await asyncio.sleep(1.0)
            else:
                log.info("shard %s: NATS connection recovered", self.id)
                return

    def _close_devices(self, disconnect_reason: str) -> None:
        """Close every device with 1012 and a jittered reconnect hint (a drain's goodbye)."""
        for conn in list(self.devices.values()):
            hint = round(self.admission.jittered_retry_after())
            reason = closecodes.retry_after_reason(hint)
            conn.close(closecodes.SERVICE_RESTART, reason, disconnect_reason)

    @property
    def ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected and not self.draining

    async def _run_timers(self) -> None:
        while True:
            await asyncio.sleep(self.wheel.resolution)
            self.wheel.advance(time.monotonic())

    async def _run_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(presence.HEARTBEAT_INTERVAL)
            if self._shards_kv is not None and self.nc is not None and self.nc.is_connected:
                try:
                    await presence.heartbeat(self._shards_kv, self.id, self.epoch)
                except Exception as exc:  # NATS trouble: the next beat tries again
                    self._throttled.warning("heartbeat", "shard %s heartbeat failed: %r",
                                            self.id, exc)  # fmt: skip

    async def _run_publishes(self) -> None:
        while True:
            conn, job = await self._publishes.get()
            try:
                await job()
            except Exception as exc:  # NATS gone, buffer full: the device's input is not lost
                self.metrics.publish_failures.inc()
                self._throttled.warning("publish", "NATS publish failed: %r", exc)
            finally:
                self._publishes.task_done()
            if self._publishes.pending(conn) == DEVICE_PUBLISH_SHARE // 2:
                conn.resume_input(INPUT_PUBLISH)

    # --- HTTP: endpoints and the upgrade ------------------------------------------------------

    def handle_request(self, conn: DeviceConnection, request: Request) -> None:
        if request.method != "GET":
            conn.refuse(MethodNotAllowed(f"method {request.method} not allowed: use GET"))
        elif request.path == "/healthz":
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
        http.check_upgrade(request)  # a bad upgrade is a 400 before anything else
        if self.draining:
            raise Draining("shard is draining", retry_after=self.admission.jittered_retry_after())
        # The token before the accept budget: a burst of bad tokens (a signature check each,
        # microseconds) must not spend the budget that legit reconnects need.
        device_id = self.verifier.device_id(request.headers.get("authorization"))
        self.admission.admit(time.monotonic(), len(self.devices))
        conn.upgrade(device_id)
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
        assert conn.session is not None
        reason = f"device {conn.device_id} disconnected ({conn.disconnect_reason})".encode()
        props = {envelope.PROP_STATUS: envelope.STATUS_ERROR}
        headers = {subjects.RELAY_END_HEADER: conn.disconnect_reason}  # not the device's own
        for sid, proto in conn.session.end_relays().items():
            stop = envelope.encode(envelope.ProtoMsg(proto, envelope.TYP_SHELL_STOP, sid, props,
                                                     reason))  # fmt: skip
            subject = subjects.relay_subject(conn.device_id, sid)
            # Behind the device's last output for the session, in its own queue.
            self._enqueue(conn, "relay", partial(self._publish, subject, stop, headers))

    # --- presence ------------------------------------------------------------------------------

    async def _register_presence(self, conn: DeviceConnection) -> None:
        assert self._kv is not None
        assert self.nc is not None
        reg = await presence.register(self._kv, conn.device_id, self.id, self.epoch)
        conn.registration = reg
        if conn.gone:
            await self._unregister_presence(conn)  # it went away while we registered it
            return
        if conn.kicked_version > reg.version:
            conn.close(closecodes.REPLACED, "replaced by a newer connection", "replaced")
        previous = reg.previous
        if previous is not None and previous.connected and previous.shard != self.id:
            kick = routing.encode(
                {"op": routing.OP_KICK, "device": conn.device_id, "version": reg.version}
            )
            await self.nc.publish(subjects.kick_subject(previous.shard), kick)

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
        match event:
            case ps.AlertReceived(alert):
                self._publish_alert_soon(conn, alert)
            case ps.StatusReceived(status):
                msg = status.to_msg()
                self._publish_soon(conn, "status", msg, subjects.status_subject(conn.device_id))
            case ps.CommandCompleted(sid, result):
                future = self._commands.get((conn.device_id, sid))
                if future is not None and not future.done():
                    future.set_result(result)
            case ps.RequestFailed(sid, error):
                self._request_failed(conn, sid, error)
            case ps.UpdateProgressReceived(sid, progress):
                headers = {subjects.UPDATE_HEADER: sid}
                subject = subjects.update_subject(conn.device_id)
                self._publish_soon(conn, "update", progress.to_msg(sid), subject, headers=headers)
            case ps.Relayed(msg):
                subject = subjects.relay_subject(conn.device_id, msg.sid)
                self._publish_soon(conn, "relay", msg, subject, envelope.encode(msg))
            case ps.ProtocolViolation(error):
                self._protocol_error(conn, error.reason, error.close_code, str(error))
            case (
                ps.HandshakeCompleted() | ps.ErrorReceived() | ps.PeerClosing() | ps.StrayMessage()
                | ps.AlertAcked() | ps.CommandRequested() | ps.UpdateOffered()
                | ps.MessageReceived()
            ):  # fmt: skip
                pass  # nothing to do on the server, or a device's event only
            case _:
                assert_never(event)

    def _request_failed(self, conn: DeviceConnection, sid: str, error: messages.Error) -> None:
        """The device answered a request with a control "error": a command waiting for it
        ends now with the device's text; an update offer fails (as a failure progress, so
        the rollout learns it as it learns every outcome)."""
        self.metrics.device_errors.labels(PROTO_NAMES.get(error.msgproto or 0, "other")).inc()
        future = self._commands.get((conn.device_id, sid))
        if future is not None:
            if not future.done():
                future.set_exception(DeviceError(error.err))
        elif error.msgproto == envelope.PROTO_UPDATE:
            progress = messages.UpdateProgress("failure", 0, f"device error: {error.err}")
            headers = {subjects.UPDATE_HEADER: sid}
            subject = subjects.update_subject(conn.device_id)
            self._publish_soon(conn, "update", progress.to_msg(sid), subject, headers=headers)

    def _protocol_error(
        self, conn: DeviceConnection, reason: str, close_code: int | None, text: str
    ) -> None:
        """Count bad input; close the connection when the error says so, or when the device
        keeps sending garbage (``connection.MAX_ERRORS`` within ``ERROR_WINDOW``)."""
        self.metrics.protocol_errors.labels(reason).inc()
        if close_code is not None:
            conn.close(close_code, text[:120], reason)
        elif conn.count_error(time.monotonic()):
            self.metrics.protocol_errors.labels("too_many_errors").inc()
            conn.close(closecodes.POLICY_VIOLATION, "too many protocol errors", "too_many_errors")

    def _publish_soon(
        self,
        conn: DeviceConnection,
        kind: str,
        msg: envelope.ProtoMsg,
        subject: str,
        payload: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a core NATS publish of ``payload`` (by default ``msg``'s body)."""
        payload = msg.body if payload is None else payload
        if self._fits(conn, msg, payload, headers):
            self._enqueue(conn, kind, partial(self._publish, subject, payload, headers))

    def _fits(
        self,
        conn: DeviceConnection,
        msg: envelope.ProtoMsg,
        payload: bytes,
        headers: dict[str, str] | None,
    ) -> bool:
        """Whether the publish fits in one NATS message; if not, the device is told (a NATS
        server answers an oversize publish with -ERR and closes the shard's connection)."""
        size = len(payload) + HEADER_OVERHEAD
        size += sum(len(name) + len(value) + 4 for name, value in (headers or {}).items())
        if size <= self.max_payload:
            return True
        error = TooBigForBus(f"{size} bytes do not fit the bus limit of {self.max_payload}")
        assert conn.session is not None
        conn.session.reject(msg, error)
        self._protocol_error(conn, error.reason, None, str(error))
        return False

    def _enqueue(self, conn: DeviceConnection, kind: str, job: Job) -> None:
        if not self._publishes.put(conn, job):
            # An alert not acked stays with the device, which resends it: shed, never lose.
            self.metrics.publishes.labels(kind, "shed").inc()
        elif self._publishes.pending(conn) == DEVICE_PUBLISH_SHARE:
            conn.pause_input(INPUT_PUBLISH)

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, payload, headers=headers)

    def _publish_alert_soon(self, conn: DeviceConnection, alert: messages.Alert) -> None:
        headers = {
            subjects.MSG_ID_HEADER: subjects.alert_msg_id(conn.device_id, alert.id),
            subjects.DEVICE_HEADER: conn.device_id,
            subjects.SHARD_HEADER: self.id,
        }
        msg = alert.to_msg()
        if self._fits(conn, msg, msg.body, headers):
            job = partial(self._publish_alert, conn, alert.id, msg.body, headers, time.monotonic())
            self._enqueue(conn, "alert", job)

    async def _publish_alert(
        self,
        conn: DeviceConnection,
        alert_id: str,
        body: bytes,
        headers: dict[str, str],
        received: float,
    ) -> None:
        assert self._alerts is not None
        subject = subjects.alert_subject(conn.device_id)
        future = await self._alerts.publish(subject, body, headers)
        future.add_done_callback(partial(self._alert_stored, conn, alert_id, received))

    def _alert_stored(
        self,
        conn: DeviceConnection,
        alert_id: str,
        received: float,
        future: asyncio.Future[None],
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            self.metrics.alerts.labels("failed").inc()
            return  # not acked: the device resends, the stream de-duplicates
        self.metrics.alert_publish.observe(time.monotonic() - received)
        self.metrics.alerts.labels("acked").inc()
        if conn.open and conn.session is not None:
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
            if conn.open:
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
        except ps.NotServed as exc:  # the device's "accept" rules the request out
            self.metrics.unsupported.labels(PROTO_NAMES.get(exc.proto, "other")).inc()
            reply = routing.not_served(exc)
        except (FleetError, ValueError, KeyError, TypeError) as exc:
            reply = routing.error(routing.ERROR_BAD_REQUEST, f"bad {op} request: {exc}")
        await self._reply(msg, reply)

    async def _answer(self, op: str, device_id: str, request: dict[str, Any]) -> bytes:
        conn = self.devices.get(device_id)
        if conn is None or conn.session is None or not conn.open:
            reply = routing.error(routing.ERROR_OFFLINE, f"not connected to shard {self.id}")
        elif op == routing.OP_COMMAND:
            reply = await self._run_command(conn, request)
        elif op == routing.OP_DELIVER:
            for encoded in request.get("messages") or [request["message"]]:
                conn.session.deliver(envelope.decode(encoded), request.get("user_id") or None)
            conn.flush()
            reply = routing.ok()
        elif op == routing.OP_SERVES:
            conn.session.require(int(request["proto"]))
            reply = routing.ok()
        elif op == routing.OP_RELEASE:
            conn.session.release(str(request["sid"]))
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
        conn.session.send_command(  # first: NotServed leaves nothing behind
            sid,
            messages.CommandRequest(request["command"], timeout),
            request.get("user_id") or None,
        )
        future: asyncio.Future[messages.CommandResult] = asyncio.get_running_loop().create_future()
        self._commands[key] = future
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
        except DeviceError as exc:
            self.metrics.commands.labels("device_error").inc()
            return routing.error(routing.ERROR_DEVICE, str(exc))
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


async def _wait_until(awaitable: Coroutine[Any, Any, Any], deadline: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))


async def serve(config: ShardConfig) -> None:
    """Run a shard until SIGTERM or SIGINT, then drain it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Shard(config):
        await stop.wait()
