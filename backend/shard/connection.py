"""One device's TCP connection: the thin asyncio driver of the Sans-I/O ``DeviceChannel``.

Bytes go in through ``data_received`` and come out of the channel's ``data_to_send``; what
they mean is decided by ``backend.protocol`` (handshake, framing, ProtoMsg, session) and
what to do about it by the shard (endpoints, tokens, routing, NATS), which the connection
reaches only through the narrow ``ShardContext``. An idle connection owns no task, future or
timer handle: its deadlines live in the shard's one timer wheel, which is why everything is
in slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, cast

from backend.protocol import channel as ch
from backend.protocol import closecodes, envelope
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import HandshakeError, RequestTimeout

if TYPE_CHECKING:
    from backend.bus.presence import Registration
    from backend.protocol.http import Request
    from backend.shard.config import ShardConfig
    from backend.shard.metrics import ShardMetrics
    from backend.shard.wheel import TimerWheel

CLOSE_GRACE = 5.0
"""Seconds a peer gets to answer our close frame before the socket is aborted."""
LINGER = 2.0
"""Seconds a failed connection keeps reading (and discarding) after its close frame: closing
a socket with unread input sends a reset, which can destroy the close frame in flight (the
peer would see a reset instead of 1009). nginx's lingering close does the same."""
WRITE_HIGH_WATER = 64 * 1024
"""Unsent bytes to a device above which the shard stops reading it: its input produces
replies (acks, pongs, errors) that it does not read."""
MAX_WRITE_BUFFER = 1024 * 1024
"""Unsent bytes to a device (an operator's output to a device that does not read) beyond
which it is cut off: with reading paused above the high-water mark, what one device costs
the shard stays bounded."""
ERROR_WINDOW = 10.0
MAX_ERRORS = 20
"""Protocol errors (each answered with a ProtoMsg error) per ERROR_WINDOW before the device
is closed with 1008: a peer that keeps sending garbage is not worth the answers."""

MESSAGES_PER_TURN = 64
"""Messages of one device handled per event-loop turn: one read holds up to 256 KiB, which
can be thousands of small messages; the rest wait a turn, so that the other devices' work
(acks arriving from NATS...) goes in between."""

# Why a connection's input is paused (bits of ``input_paused``).
INPUT_WRITE = 1  # its replies are not being read (pause_writing)
INPUT_PUBLISH = 2  # its share of the publish queue is full
INPUT_TURN = 4  # it had its MESSAGES_PER_TURN this turn

_OPEN = ws.State.OPEN
_CONNECTING = ws.State.CONNECTING
_CLOSED = ws.State.CLOSED


class ShardContext(Protocol):
    """What a connection may use of the shard that accepted it."""

    @property
    def config(self) -> ShardConfig: ...
    @property
    def metrics(self) -> ShardMetrics: ...
    @property
    def wheel(self) -> TimerWheel: ...
    @property
    def channel_limits(self) -> ch.Limits: ...
    def handle_request(self, conn: DeviceConnection, request: Request) -> None: ...
    def session_event(self, conn: DeviceConnection, event: ps.Event) -> None: ...
    def connection_closed(self, conn: DeviceConnection) -> None: ...


class DeviceConnection(asyncio.Protocol):
    __slots__ = (
        "channel",
        "disconnect_reason",
        "errors",
        "errors_since",
        "held",
        "input_paused",
        "kicked_version",
        "last_received",
        "ping_sent",
        "registration",
        "shard",
        "transport",
    )

    def __init__(self, shard: ShardContext) -> None:
        self.shard = shard
        self.transport: asyncio.Transport | None = None
        self.channel = ch.ServerChannel(shard.channel_limits)
        self.registration: Registration | None = None
        self.kicked_version = 0
        self.input_paused = 0  # INPUT_* bits
        self.held: Iterator[ch.Event] | None = None  # events not handled while paused
        self.errors = 0  # protocol errors since errors_since
        self.errors_since = 0.0
        self.last_received = 0.0
        self.ping_sent: float | None = None
        self.disconnect_reason = "peer_closed"

    @property
    def device_id(self) -> str:
        """The device its token named, from the upgrade on."""
        session = self.channel.session
        return session.device_id if session is not None else ""

    @property
    def session(self) -> ps.DeviceSession | None:
        """The device's session, from the upgrade on."""
        return self.channel.session

    @property
    def open(self) -> bool:
        """Upgraded, and neither side has started closing."""
        return self.channel.state is _OPEN

    @property
    def gone(self) -> bool:
        """The transport is closed or closing: nothing more goes either way."""
        return self.transport is None or self.transport.is_closing()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.last_received = now = time.monotonic()
        self.shard.wheel.schedule(self, now + self.shard.config.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        channel = self.channel
        if channel.session is not None and channel.state is not _CLOSED:
            self.shard.metrics.bytes_in.inc(len(data))
        channel.receive_data(data)
        if self.held is None:  # else they wait behind what is held
            self._handle_events(channel.events_received())

    def eof_received(self) -> bool:
        if self.open:  # closing or failed: the reason is ours already
            self.disconnect_reason = "eof"
        return False  # close our side too

    # Flow control (asyncio.Protocol): called when the unsent bytes cross the water marks.
    def pause_writing(self) -> None:
        self.pause_input(INPUT_WRITE)

    def resume_writing(self) -> None:
        self.resume_input(INPUT_WRITE)

    def pause_input(self, cause: int) -> None:
        """Stop reading the device (for ``cause``, an INPUT_* bit) until ``resume_input``.
        While paused nothing arrives, so the keep-alive reaps a device that stays stuck."""
        if not self.input_paused and not self.gone:
            assert self.transport is not None
            self.transport.pause_reading()
        self.input_paused |= cause
        self.shard.metrics.input_paused.labels(_CAUSES[cause]).inc()

    def resume_input(self, cause: int) -> None:
        if not self.input_paused & cause:
            return
        self.input_paused &= ~cause
        if self.input_paused:
            return
        held, self.held = self.held, None
        if held is not None:
            self._handle_events(held)
            if not self.input_paused:  # what arrived while it was held
                self._handle_events(self.channel.events_received())
        if not self.input_paused and not self.gone:
            assert self.transport is not None
            self.transport.resume_reading()

    def count_error(self, now: float) -> bool:
        """Count a protocol error; True once the device is over MAX_ERRORS per window."""
        if now - self.errors_since > ERROR_WINDOW:
            self.errors, self.errors_since = 0, now
        self.errors += 1
        return self.errors > MAX_ERRORS

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.disconnect_reason == "peer_closed":
            self.disconnect_reason = "reset"
        self.transport = None
        if self.channel.session is not None:
            self.shard.connection_closed(self)

    # --- events ------------------------------------------------------------------------------

    def _handle_events(self, events: Iterator[ch.Event]) -> None:
        """Handle events in order; once input is paused (a full publish share, replies not
        read), the rest wait in ``held`` so that one read cannot queue thousands."""
        if self.input_paused:  # read before the pause took effect
            self.held = events
            return
        handled = 0
        for event in events:
            if isinstance(event, ch.MessageHandled):
                if event.msg is not None:
                    self.shard.metrics.message_in(event.msg.proto, event.msg.typ)
                handled += 1
                if handled == MESSAGES_PER_TURN:
                    self.pause_input(INPUT_TURN)
                    asyncio.get_running_loop().call_soon(self.resume_input, INPUT_TURN)
            elif isinstance(event, ws.Pong):
                self._pong_received()
            elif isinstance(event, ws.Failed):
                self.shard.metrics.protocol_errors.labels(event.error.reason).inc()
                self.disconnect_reason = event.error.reason
                self._linger()
                return
            elif isinstance(event, ws.Closed):
                self._close_transport()
            elif isinstance(event, ch.UpgradeRequested):
                self.shard.handle_request(self, event.request)
            elif isinstance(event, ch.HandshakeFailed):
                self.refuse(event.error)
                return
            elif not isinstance(event, ch.Upgraded):  # a client's event: never on a server
                self.shard.session_event(self, event)
            if self.input_paused:  # may be: its share of publishes is full
                self.held = events
                break
        self.flush()

    def _pong_received(self) -> None:
        if self.ping_sent is not None:
            self.shard.metrics.ping_rtt.observe(time.monotonic() - self.ping_sent)
            self.ping_sent = None

    # --- the upgrade -------------------------------------------------------------------------

    def respond(self, response: bytes) -> None:
        """Answer a plain HTTP request and close (the response says ``Connection: close``),
        lingering: a refusal may come before the whole request was read."""
        self._write(self.channel.respond(response))
        self._linger()

    def refuse(self, exc: HandshakeError) -> None:
        self.shard.metrics.rejected_upgrades.labels(exc.reason).inc()
        self._write(self.channel.refuse(exc))
        self._linger()

    def upgrade(self, device_id: str) -> None:
        self._write(self.channel.accept(device_id))
        self.flush()
        self.shard.wheel.schedule(self, self.last_received + self.shard.config.ping_interval)

    # --- bytes out ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand the session's events to the shard and write whatever the channel produced."""
        session = self.channel.session
        if session is None:
            return
        for event in session.events_received():  # from the shard's calls (deliver...)
            self.shard.session_event(self, event)
        data = self.channel.data_to_send(self._count_out)
        if data and not self.gone:
            self._write(data)
            assert self.transport is not None
            if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.abort("slow_reader")  # a close frame would queue behind the rest

    def _count_out(self, message: bytes) -> None:
        self.shard.metrics.message_out(*envelope.peek_header(message))

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self, code: int, reason: str, disconnect_reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the peer gets CLOSE_GRACE to answer."""
        if not self.open:
            return
        self.disconnect_reason = disconnect_reason
        self.channel.send_close(code, reason)
        self.flush()
        self.shard.wheel.schedule(self, time.monotonic() + CLOSE_GRACE)

    def _linger(self) -> None:
        """Close without a reset (after an HTTP answer, or failing the connection, RFC 6455
        §7.1.7): the last bytes go out, then our FIN; input is dropped (the channel is
        closed) until the peer's EOF or LINGER."""
        self.flush()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.input_paused, self.held = 0, None
        transport.resume_reading()
        self.shard.wheel.schedule(self, time.monotonic() + LINGER)

    def _close_transport(self) -> None:
        # RFC 6455 §7.1.1: the server closes the TCP connection first.
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self, disconnect_reason: str) -> None:
        self.disconnect_reason = disconnect_reason
        if self.transport is not None:
            self.transport.abort()

    # --- the shard's timer wheel -------------------------------------------------------------

    def on_timer(self, now: float) -> float | None:
        if self.gone:
            return None
        state = self.channel.state
        if state is _OPEN:
            return self._keepalive(now)
        if state is _CONNECTING:
            self.refuse(RequestTimeout("no complete upgrade request in time"))
        else:  # our close frame got no answer, or the linger is over
            self.abort(self.disconnect_reason)
        return None

    def _keepalive(self, now: float) -> float | None:
        config = self.shard.config
        if now - self.last_received >= config.keepalive_timeout:
            # Silent past the deadline: a blackholed peer will never read a close frame.
            self.channel.send_close(closecodes.KEEPALIVE_TIMEOUT, "keep-alive timeout")
            self.flush()
            self.abort("keepalive_timeout")
            return None
        if self.ping_sent is None:
            self.ping_sent = now
            self.channel.send_ping()
            self.flush()
        return min(now + config.ping_interval, self.last_received + config.keepalive_timeout)


_CAUSES = {INPUT_WRITE: "write", INPUT_PUBLISH: "publish", INPUT_TURN: "turn"}
