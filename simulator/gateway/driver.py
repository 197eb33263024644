"""A virtual gateway's connection: the thin driver between a socket and the Sans-I/O core.

The bytes go through the same ``DeviceChannel`` (upgrade, WebSocket, ``DeviceSession``) as
the shard's, in its client role, and TLS through ``ssl.SSLObject`` over memory buffers; this
module moves bytes between them and a non-blocking socket when the ``Engine`` says it is
ready, keeps the connection's deadlines, and passes everything through the gateway's
``SimulatedLink`` (latency, bandwidth, faults). What the device does is its ``Device``'s.

A connection goes ``IDLE`` (waiting out a backoff) -> ``DIALING`` (the link's setup time)
-> ``CONNECTING`` (TCP) -> ``TLS`` -> ``UPGRADING`` (HTTP) -> ``OPEN`` (ProtoMsg handshake,
then served) and back to ``IDLE`` when it drops; a blackhole or offline spell makes an open
connection ``QUIET`` (silent on an open socket, so only the server's keep-alive can notice).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING, NoReturn

from gevent.monkey import get_original

from backend.protocol import channel as ch
from backend.protocol import closecodes
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import FleetError, UpgradeRejected
from simulator.backoff import Backoff
from simulator.gateway.device import REBOOT, Device
from simulator.gateway.engine import NEVER_TICK, READABLE, WRITABLE, Engine
from simulator.gateway.link import NEVER, SimulatedLink

if TYPE_CHECKING:
    from simulator.fleet import Fleet

log = logging.getLogger("fleet.simulator")

RECV_SIZE = 65536
# The stdlib's socket even when Locust has patched the module: gevent's wraps each socket in
# two loop watchers; these sockets are non-blocking and only the engine waits on them.
_plain_socket: type[socket.socket] = get_original("socket", "socket")
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# Closes a healthy fleet sees: normal, going away, and a draining shard (1012).
_EXPECTED_CLOSES = frozenset({1000, 1001, closecodes.SERVICE_RESTART})


class State(enum.Enum):
    IDLE = "idle"
    DIALING = "dialing"
    CONNECTING = "connecting"
    TLS = "tls"
    UPGRADING = "upgrading"
    OPEN = "open"
    QUIET = "quiet"
    STOPPED = "stopped"


_STAGES = {State.CONNECTING: "tcp", State.TLS: "tls", State.UPGRADING: "upgrade"}


class _Dropped(FleetError):
    """The connection ended; ``cause`` names why, for the drops-by-cause accounting."""

    def __init__(
        self, cause: str, *, expected: bool, reset: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.expected = expected
        self.reset = reset  # leave with a TCP reset rather than a close handshake
        self.retry_after = retry_after


class _ConnectFailed(FleetError):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


class Gateway:
    """One virtual gateway: its device, its link and its connection to the backend."""

    __slots__ = (
        "__weakref__",
        "backoff",
        "channel",
        "connected_at",
        "deadline",
        "device",
        "down_since",
        "engine",
        "fleet",
        "index",
        "last_heard",
        "link",
        "ping_sent",
        "quiet_until",
        "silent_ended",
        "sock",
        "stage_at",
        "state",
        "tls",
        "wake_tick",
        "wbuf",
    )

    def __init__(self, fleet: Fleet, index: int, device_id: str) -> None:
        behaviour, now = fleet.behaviour, time.monotonic()
        self.fleet = fleet
        self.engine: Engine = fleet.engine
        self.index = index
        self.link = SimulatedLink(fleet.mix.profile_for(index))
        self.device = Device(fleet, device_id, self.link, now)
        self.backoff = Backoff(behaviour.reconnect_base, behaviour.reconnect_cap)
        self.state = State.IDLE
        self.sock: socket.socket | None = None
        self.tls: _Tls | None = None
        self.channel: ch.ClientChannel | None = None  # the connection's protocol state
        self.wbuf = b""  # written but not taken by the kernel yet
        self.connected_at: float | None = None  # set once the ProtoMsg handshake completes
        self.down_since: float | None = None  # set while reconnecting after a drop
        self.stage_at = self.deadline = self.quiet_until = NEVER  # the current step's
        self.last_heard = 0.0
        self.ping_sent: float | None = None
        self.silent_ended = False  # a blackhole just ended: a drop now is its consequence
        self.wake_tick = NEVER_TICK

    @property
    def device_id(self) -> str:
        return self.device.session.device_id

    @property
    def session(self) -> ps.DeviceSession:
        return self.device.session

    @property
    def link_down(self) -> bool:
        """In a blackhole or offline spell of its simulated link."""
        return self.link.down

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect at once, then keep connecting until ``stop``."""
        self.stage_at = now = time.monotonic()
        self.engine.wake_at(self, now)

    def stop(self) -> None:
        """The run stopped this gateway: leave politely, for good."""
        if self.state is State.STOPPED:
            return
        if self.connected_at is not None:
            self.fleet.stats.gateway_stopped()
        self._leave(1001, "simulation stopped")
        self.state = State.STOPPED
        self.fleet.gateways.discard(self)

    # --- what the engine calls -----------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        if self.state is State.STOPPED:
            return
        try:
            self._run_due(now)
        except _ConnectFailed as failed:
            self._connect_failed(failed, now)
        except _Dropped as drop:
            self._dropped(drop, now)
        self.engine.wake_at(self, self._next_due())

    def on_ready(self, mask: int, now: float) -> None:
        if self.sock is None:
            return
        try:
            if mask & WRITABLE or self.state is State.CONNECTING:
                self._writable(now)
            if mask & READABLE and self.sock is not None:
                self._readable(now)
            if self.state is State.OPEN:
                self._flush(now)
        except _ConnectFailed as failed:
            self._connect_failed(failed, now)
        except _Dropped as drop:
            self._dropped(drop, now)
        self.engine.wake_at(self, self._next_due())

    # --- what is due ---------------------------------------------------------------------------

    def _run_due(self, now: float) -> None:
        state = self.state
        if state is State.OPEN:
            self._serve_due(now)
        elif state is State.QUIET:
            if now >= self.quiet_until:
                self._quiet_over(now)
        elif state is State.IDLE:
            if now >= self.stage_at:
                self._attempt(now)
        elif state is State.DIALING:
            if now >= self.deadline:
                self._dial(now)
        elif now >= self.deadline:  # connecting, TLS or upgrading for too long
            raise _ConnectFailed(_STAGES[state], TimeoutError("timed out"))
        else:
            self._transmit(now)
            self._deliver(now)
        if self.state is not State.OPEN and self._device_due(now) is REBOOT:
            self._rebooted_offline(now)

    def _next_due(self) -> float:
        state = self.state
        device = self.device.due
        if state is State.OPEN:
            return min(device, self._serve_next())
        if state is State.QUIET:
            return min(device, self.quiet_until)
        if state is State.IDLE:
            return min(device, self.stage_at)
        if state is State.STOPPED:
            return NEVER
        link = self.link
        return min(device, self.deadline, link.inbound.next_arrival(), link.outbound.next_arrival())

    def _device_due(self, now: float) -> str | None:
        return self.device.run_due(now) if now >= self.device.due else None

    def _rebooted_offline(self, now: float) -> None:
        """An update installed while disconnected: the reboot delays the next attempt."""
        if self.state is State.IDLE:
            self.stage_at = max(self.stage_at, now + self.fleet.behaviour.reboot_time)

    # --- connecting ----------------------------------------------------------------------------

    def _attempt(self, now: float) -> None:
        """Time for a connection: the link takes its setup time first."""
        self.stage_at = now  # "connect: tcp" includes the link's setup
        delay = self.link.connect_delay(self.fleet.rng)
        if delay > 0:
            self.state, self.deadline = State.DIALING, now + delay
        else:
            self._dial(now)

    def _dial(self, now: float) -> None:
        """Start the TCP connect, without blocking."""
        fleet = self.fleet
        target = fleet.target_for(self.index)
        self.device.session.messages_to_send()  # what queued offline: the outbox resends it
        sock = self.sock = _plain_socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if (source := fleet.source_for(self.index)) is not None:
                sock.bind((source, 0))
            err = sock.connect_ex((target.host, target.port))
        except OSError as exc:
            raise _ConnectFailed("tcp", exc) from exc
        if err not in (0, errno.EINPROGRESS):
            raise _ConnectFailed("tcp", OSError(err, os.strerror(err)))
        self.state, self.deadline = State.CONNECTING, now + fleet.behaviour.handshake_timeout
        self.engine.watch(sock.fileno(), self, write=True)

    def _connected(self, now: float) -> None:
        """TCP is up: TLS next, or the upgrade."""
        assert self.sock is not None
        fleet = self.fleet
        fleet.stats.sample("connect: tcp", now - self.stage_at, now)
        self.engine.watch(self.sock.fileno(), self)
        target = fleet.target_for(self.index)
        self.stage_at, self.deadline = now, now + fleet.behaviour.handshake_timeout
        if target.tls:
            if fleet.ssl_context is None:
                raise _ConnectFailed("tls", OSError("wss:// target but no TLS context"))
            self.tls = _Tls(fleet.ssl_context, target.host)
            self.state = State.TLS
            self._tls_handshake(now)
        else:
            self._upgrade(now)

    def _tls_handshake(self, now: float) -> None:
        assert self.tls is not None
        try:
            done = self.tls.handshake()
        except ssl.SSLError as exc:
            raise _ConnectFailed("tls", exc) from exc
        finally:
            self._write_raw(self.tls.outgoing.read())
        if done:
            self.fleet.stats.sample("connect: tls", now - self.stage_at, now)
            self.stage_at = now
            self._upgrade(now)

    def _upgrade(self, now: float) -> None:
        """Send the HTTP upgrade request (through the link)."""
        fleet = self.fleet
        target = fleet.target_for(self.index)
        channel = self.channel = ch.ClientChannel(self.device.session)
        request = channel.connect(target.netloc, target.path, fleet.credentials(self.device_id))
        self.state = State.UPGRADING
        self._send(request, now)

    def _upgrade_answered(self, now: float) -> None:
        """The response head is in: refused, or open (frames that came with it are handled)."""
        assert self.channel is not None
        outcome = next(self.channel.events_received())  # the handshake's, before any frame
        if isinstance(outcome, ch.HandshakeFailed):
            raise _ConnectFailed("upgrade", outcome.error)
        self.fleet.stats.sample("connect: upgrade", now - self.stage_at, now)
        self.state = State.OPEN
        self.stage_at = self.last_heard = now
        self.deadline = now + self.fleet.behaviour.handshake_timeout  # for the ProtoMsg one
        self._handle_events(now)

    def _connect_failed(self, failed: _ConnectFailed, now: float) -> None:
        stats = self.fleet.stats
        hint = None
        if isinstance(failed.error, UpgradeRejected):
            hint = failed.error.retry_after
            stats.connect_failures[f"http {failed.error.status}"] += 1
        else:
            stats.connect_failures[failed.stage] += 1
        stats.request(f"connect: {failed.stage}", 0.0, error=failed.error)
        self._close_socket(reset=True)
        self._forget_connection()
        if self.down_since is None:
            self.down_since = now
        self._retry_after(now, self.backoff.next_delay(self.fleet.rng, hint))

    def _retry_after(self, now: float, delay: float) -> None:
        self.state, self.stage_at = State.IDLE, now + delay

    # --- serving -------------------------------------------------------------------------------

    def _serve_due(self, now: float) -> None:
        self._transmit(now)
        self._deliver(now)
        if self.state is not State.OPEN:
            return
        if self.connected_at is None:
            if now >= self.deadline:
                raise _Dropped("handshake timeout", expected=False, reset=True)
            return
        if now >= self.link.fault_at:
            self._fault(now)
            return
        if now >= self.device.due and self.device.run_due(now) is REBOOT:
            self._flush(now)
            raise _Dropped("reboot", expected=True)
        self._keepalive(now)
        self._flush(now)

    def _serve_next(self) -> float:
        link = self.link
        due = min(link.inbound.next_arrival(), link.outbound.next_arrival())
        if self.connected_at is None:
            return min(due, self.deadline)
        behaviour = self.fleet.behaviour
        if self.ping_sent is None:
            keepalive = self.last_heard + behaviour.ping_interval
        else:
            keepalive = self.last_heard + behaviour.keepalive_timeout
        return min(due, link.fault_at, keepalive)

    def _keepalive(self, now: float) -> None:
        """Ping when the server has been quiet; give up when it stays quiet (RFC 6455
        §5.5.2: a ping's pong says the peer is still there)."""
        behaviour = self.fleet.behaviour
        quiet = now - self.last_heard
        if quiet >= behaviour.keepalive_timeout:
            raise _Dropped("keepalive timeout", expected=False, reset=True)
        if self.ping_sent is None and quiet >= behaviour.ping_interval:
            self._ping(now)

    def _ping(self, now: float) -> None:
        assert self.channel is not None
        self.channel.send_ping(_ping_payload(now))  # the pong echoes it: which ping it answers
        self.ping_sent = now

    def _received(self, data: bytes, now: float) -> None:
        """Bytes that crossed the link, for the protocol."""
        channel = self.channel
        assert channel is not None
        self.last_heard = now
        channel.receive_data(data)
        if self.state is State.UPGRADING:
            if channel.state is not ws.State.CONNECTING:
                self._upgrade_answered(now)
        else:
            self._handle_events(now)

    def _handle_events(self, now: float) -> None:
        assert self.channel is not None
        for event in self.channel.events_received():
            if self._event(event, now) is REBOOT:
                self._flush(now)
                raise _Dropped("reboot", expected=True)

    def _event(self, event: ch.Event, now: float) -> str | None:
        match event:
            case ps.HandshakeCompleted():
                self._handshake_completed(now)
            case ws.Pong(payload):
                self._pong_received(payload, now)
            case ws.Closed(code, reason):
                with contextlib.suppress(_Dropped):  # the peer may be gone: the close names it
                    self._flush(now)  # the echoed close frame (RFC 6455 §5.5.1)
                hint = closecodes.parse_retry_after(reason)
                expected = code in _EXPECTED_CLOSES
                raise _Dropped(f"closed {code}", expected=expected, retry_after=hint)
            case ws.Failed(error) | ps.ProtocolViolation(error) if error.close_code:
                with contextlib.suppress(_Dropped):
                    self._flush(now)
                raise _Dropped(f"protocol error {error.close_code}", expected=False)
            case ps.ErrorReceived(error):
                log.debug("%s: server error %s", self.device_id, error.err)
            case _:
                return self.device.received(event, now)
        return None

    def _pong_received(self, payload: bytes, now: float) -> None:
        """Only the answer to the latest ping counts: one to an earlier ping may have waited
        in the socket through a blackhole, and says nothing about the connection now."""
        if self.ping_sent is None or payload != _ping_payload(self.ping_sent):
            return
        self.silent_ended = False  # the server still answers: the connection survived
        self.fleet.stats.sample("ping", now - self.ping_sent, now)
        self.ping_sent = None

    def _handshake_completed(self, now: float) -> None:
        stats = self.fleet.stats
        stats.sample("connect: handshake", now - self.stage_at, now)
        self.connected_at = now
        stats.gateway_connected()
        if self.down_since is not None:
            stats.reconnects += 1
            stats.request("reconnect", now - self.down_since)
            self.down_since = None
        self.backoff.reset()
        self.device.connected(now)
        self.link.schedule_fault(now, self.fleet.rng)

    # --- network faults ------------------------------------------------------------------------

    def _fault(self, now: float) -> None:
        kind, duration = self.link.fail(self.fleet.rng)
        if kind == "drop":
            raise _Dropped("net_drop", expected=True, reset=True)
        assert self.sock is not None
        self.state, self.quiet_until = State.QUIET, now + duration
        self.engine.pause(self.sock.fileno())  # bytes wait in the kernel, unread

    def _quiet_over(self, now: float) -> None:
        assert self.sock is not None
        if self.link.heal(now, self.fleet.rng) == "offline":
            raise _Dropped("net_offline", expected=True, reset=True)
        # The blackhole is over: if the server reaped us meanwhile, the next drop says so;
        # the answer to this ping says the connection survived.
        self.state = State.OPEN
        self.silent_ended = True
        self.last_heard = now
        self.engine.watch(self.sock.fileno(), self, write=bool(self.wbuf))
        self._ping(now)
        self._flush(now)

    # --- the end of a connection ---------------------------------------------------------------

    def _dropped(self, drop: _Dropped, now: float) -> None:
        cause = drop.cause
        if self.silent_ended and not drop.expected:
            cause, drop.expected = f"net_blackhole ({cause})", True
        if drop.cause == "reboot":
            self._leave(1001, "rebooting")
        else:
            self._close_socket(reset=drop.reset)
        stats = self.fleet.stats
        if self.connected_at is None:  # ended before the handshake completed
            stats.connect_failures[cause] += 1
            stats.request("connect: handshake", 0.0, error=ConnectionError(cause))
        else:
            stats.gateway_dropped(cause, drop.expected)
            if not drop.expected:
                stats.request("drop", 0.0, error=ConnectionError(cause))
            self.down_since = now
        self._forget_connection()
        if drop.cause == "reboot":
            delay = self.fleet.behaviour.reboot_time
        else:
            delay = self.backoff.next_delay(self.fleet.rng, drop.retry_after)
        self._retry_after(now, delay)

    def _forget_connection(self) -> None:
        if self.connected_at is not None or self.channel is not None:
            self.device.connection_lost()
        self.channel = None
        self.tls = None
        self.wbuf = b""
        self.connected_at = None
        self.ping_sent = None
        self.link.forget()
        self.link.down = False
        self.silent_ended = False

    def _peer_gone(self, now: float) -> None:
        """The peer is gone: what we still had on the link is lost, but what it sent before
        still crosses the link first (TCP keeps order), so a close frame read just before the
        FIN names the drop, and acks read before it count."""
        self.link.outbound.clear()
        if self.channel is not None and (data := self.link.inbound.take_all()):
            self._received(data, now)

    def _leave(self, code: int, reason: str) -> None:
        """Close politely (best effort), then the socket."""
        if self.channel is not None and self.sock is not None and self.connected_at is not None:
            self.channel.send_close(code, reason)
            pending = self.link.outbound.take_all() + self.channel.data_to_send()
            with contextlib.suppress(OSError, _Dropped):
                self._write(pending)
        self._close_socket(reset=False)

    def _close_socket(self, *, reset: bool) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.engine.forget(sock.fileno())
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        sock.close()

    # --- bytes in ------------------------------------------------------------------------------

    def _readable(self, now: float) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(now, "reset", exc)
        if not data:
            self._gone(now, "eof", None)
        if self.tls is not None:
            data = self._decrypt(data, now)
            if not data:
                return
        if self.link.instant:
            self._received(data, now)
        else:
            self.link.received(now, data, self.fleet.rng)

    def _gone(self, now: float, cause: str, error: OSError | None) -> NoReturn:
        """The socket failed: what was read before still counts, and may name the drop (an
        upgrade's answer and a close frame can both still be on the link)."""
        self._peer_gone(now)
        if self.state in _STAGES:
            raise _ConnectFailed(_STAGES[self.state], error or OSError("connection closed"))
        raise _Dropped(cause, expected=False)

    def _decrypt(self, data: bytes, now: float) -> bytes:
        tls = self.tls
        assert tls is not None
        tls.incoming.write(data)
        if self.state is State.TLS:
            self._tls_handshake(now)
            return b""
        try:
            return tls.read()
        except ssl.SSLError as exc:
            self._gone(now, "reset", exc)

    def _deliver(self, now: float) -> None:
        if self.channel is not None and (data := self.link.inbound.take(now)):
            self._received(data, now)

    # --- bytes out -----------------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        """Frame what the session queued and put it on the link."""
        if self.channel is not None and (data := self.channel.data_to_send()):
            self._send(data, now)

    def _send(self, data: bytes, now: float) -> None:
        if self.state is State.QUIET:
            self.link.held(now, data)
        elif self.link.sent(now, data):
            self._write(data)

    def _transmit(self, now: float) -> None:
        """Write the bytes whose simulated transit is over."""
        if data := self.link.outbound.take(now):
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.tls.outgoing.read()
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        sock = self.sock
        if not data or sock is None:
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # a close frame read just before may still wait on the link
            self._gone(time.monotonic(), "reset", exc)
        if sent < len(data):
            self.wbuf = data[sent:]
            self.engine.watch(sock.fileno(), self, write=True)

    def _writable(self, now: float) -> None:
        sock = self.sock
        assert sock is not None
        if self.state is State.CONNECTING:
            if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise _ConnectFailed("tcp", OSError(err, os.strerror(err)))
            self._connected(now)
            return
        data, self.wbuf = self.wbuf, b""
        if data:
            self._write_raw(data)
        if not self.wbuf and self.state is not State.QUIET:
            self.engine.watch(sock.fileno(), self)


class _Tls:
    """Sans-I/O TLS: an ``SSLObject`` between two memory buffers; the driver moves the bytes."""

    __slots__ = ("incoming", "obj", "outgoing")

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)

    def handshake(self) -> bool:
        """One step; True once done (raises ``ssl.SSLError`` when it failed)."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def read(self) -> bytes:
        """The plaintext the buffered records hold (b"" if none is complete yet)."""
        chunks = []
        try:
            while chunk := self.obj.read(RECV_SIZE):
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:  # close_notify: the peer is closing
            pass
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        self.obj.write(data)


def _ping_payload(sent: float) -> bytes:
    return struct.pack("!d", sent)
