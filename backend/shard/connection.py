"""One device's TCP connection: the thin asyncio driver around the Sans-I/O core.

Bytes go in through ``data_received`` and come out of the codecs' ``data_to_send``; all
decisions about what they mean are made by ``backend.protocol`` (framing, ProtoMsg, session)
and by the shard (routing, NATS). An idle connection owns no task, future or timer handle:
its deadlines live in the shard's one timer wheel, which is why everything is in slots.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import TYPE_CHECKING, cast

from backend.protocol import closecodes, envelope, http
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import HandshakeError, RequestTimeout

if TYPE_CHECKING:
    from backend.bus.presence import Registration
    from backend.shard.server import Shard

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


class Phase(enum.Enum):
    HTTP = "http"  # reading the request head
    OPEN = "open"  # upgraded: WebSocket frames both ways
    CLOSING = "closing"  # our close frame is out, waiting for the peer's
    LINGERING = "lingering"  # failed: close frame out, discarding input until the peer's EOF
    CLOSED = "closed"


class DeviceConnection(asyncio.Protocol):
    __slots__ = (
        "device_id",
        "disconnect_reason",
        "errors",
        "errors_since",
        "held",
        "http_buffer",
        "input_paused",
        "kicked_version",
        "last_received",
        "phase",
        "ping_sent",
        "registration",
        "session",
        "shard",
        "transport",
        "ws",
    )

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.HTTP
        self.http_buffer: bytes | None = None
        self.ws: ws.WebSocketConnection | None = None
        self.session: ps.DeviceSession | None = None
        self.device_id = ""
        self.registration: Registration | None = None
        self.kicked_version = 0
        self.input_paused = 0  # INPUT_* bits
        self.held: list[ws.Event] | None = None  # frames read, not handled while paused
        self.errors = 0  # protocol errors since errors_since
        self.errors_since = 0.0
        self.last_received = 0.0
        self.ping_sent: float | None = None
        self.disconnect_reason = "peer_closed"

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.last_received = now = time.monotonic()
        self.shard.wheel.schedule(self, now + self.shard.config.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        if self.phase is Phase.HTTP:
            self._receive_request(data)
        elif self.phase is Phase.LINGERING:
            return  # discarded: the connection failed and our close frame is out
        elif self.ws is not None:
            self.shard.metrics.bytes_in.inc(len(data))
            self._receive_frames(data)

    def eof_received(self) -> bool:
        if self.phase is Phase.OPEN:  # closing or failed: the reason is ours already
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
        if not self.input_paused and self._transport_open():
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
        if held:
            self._handle_frames(held)
        if not self.input_paused and self._transport_open():
            assert self.transport is not None
            self.transport.resume_reading()

    def _transport_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def count_error(self, now: float) -> bool:
        """Count a protocol error; True once the device is over MAX_ERRORS per window."""
        if now - self.errors_since > ERROR_WINDOW:
            self.errors, self.errors_since = 0, now
        self.errors += 1
        return self.errors > MAX_ERRORS

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.disconnect_reason == "peer_closed":
            self.disconnect_reason = "reset"
        was_open = self.session is not None
        self.phase = Phase.CLOSED
        if was_open:
            self.shard.connection_closed(self)

    # --- before the upgrade ------------------------------------------------------------------

    def _receive_request(self, data: bytes) -> None:
        buffer = data if self.http_buffer is None else self.http_buffer + data
        try:
            parsed = http.parse_request(buffer, self.shard.config.max_request_size)
        except HandshakeError as exc:
            self.refuse(exc)
            return
        if parsed is None:
            self.http_buffer = buffer
            return
        self.http_buffer = None
        request, consumed = parsed
        self.shard.handle_request(self, request)
        if self.phase is Phase.OPEN and consumed < len(buffer):
            self._receive_frames(buffer[consumed:])  # frames sent right behind the request

    def respond(self, response: bytes) -> None:
        """Answer a plain HTTP request and close (the response says ``Connection: close``),
        lingering: a refusal may come before the whole request was read."""
        assert self.transport is not None
        self.transport.write(response)
        self._linger()

    def refuse(self, exc: HandshakeError) -> None:
        self.shard.metrics.rejected_upgrades.labels(exc.reason).inc()
        self.respond(http.error_response(exc))

    def upgrade(self, response: bytes, device_id: str) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.device_id = device_id
        self.phase = Phase.OPEN
        self.ws = ws.WebSocketConnection(ws.Role.SERVER, self.shard.config.max_message_size)
        self.session = ps.DeviceSession(ps.Role.SERVER, device_id=device_id)
        self.session.start()  # Mender devices never speak first: the server opens
        self.flush()
        self.shard.wheel.schedule(self, self.last_received + self.shard.config.ping_interval)

    # --- after the upgrade -------------------------------------------------------------------

    def _receive_frames(self, data: bytes) -> None:
        assert self.ws is not None
        self.ws.receive_data(data)
        events = self.ws.events_received()
        if self.held is not None:
            self.held.extend(events)  # read before the pause took effect: after the rest
        else:
            self._handle_frames(events)

    def _handle_frames(self, events: list[ws.Event]) -> None:
        """Handle frames in order; once input is paused (a full publish share, replies not
        read), the rest wait in ``held`` so that one read cannot queue thousands."""
        assert self.session is not None
        handled = 0
        for index, event in enumerate(events):
            if self.input_paused:
                self.held = events[index:]
                break
            if type(event) is ws.Message:
                if self.phase is not Phase.OPEN:
                    continue  # closing: what it sent after our close frame is not answered
                msg = self.session.receive_message(event.data)
                if msg is not None:
                    self.shard.metrics.message_in(msg.proto, msg.typ)
                self._hand_over()  # may pause input: its share of publishes is full
                handled += 1
                if handled == MESSAGES_PER_TURN:
                    self.pause_input(INPUT_TURN)
                    asyncio.get_running_loop().call_soon(self.resume_input, INPUT_TURN)
            elif type(event) is ws.Pong:
                self._pong_received()
            elif type(event) is ws.Failed:
                self.shard.metrics.protocol_errors.labels(event.error.reason).inc()
                self.disconnect_reason = event.error.reason
                self._linger()
                return
            elif type(event) is ws.Closed:
                self._close_transport()
        self.flush()

    def _pong_received(self) -> None:
        if self.ping_sent is not None:
            self.shard.metrics.ping_rtt.observe(time.monotonic() - self.ping_sent)
            self.ping_sent = None

    def flush(self) -> None:
        """Hand the session's events to the shard and write whatever the codecs produced."""
        session, codec = self.session, self.ws
        if session is None or codec is None:
            return
        self._hand_over()
        for message in session.messages_to_send():
            self.shard.metrics.message_out(*envelope.peek_header(message))
            codec.send_binary(message)
        data = codec.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.abort("slow_reader")  # a close frame would queue behind the rest

    def _hand_over(self) -> None:
        assert self.session is not None
        for event in self.session.events_received():
            self.shard.session_event(self, event)

    def close(self, code: int, reason: str, disconnect_reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the peer gets CLOSE_GRACE to answer."""
        if self.phase is not Phase.OPEN or self.ws is None:
            return
        self.disconnect_reason = disconnect_reason
        self.ws.send_close(code, reason)
        self.flush()
        self.phase = Phase.CLOSING
        self.shard.wheel.schedule(self, time.monotonic() + CLOSE_GRACE)

    def _linger(self) -> None:
        """Close without a reset (after an HTTP answer, or failing the connection, RFC 6455
        §7.1.7): the last bytes go out, then our FIN; input is read and dropped until the
        peer's EOF or LINGER."""
        self.flush()
        self.phase = Phase.LINGERING
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
        self.phase = Phase.CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self, disconnect_reason: str) -> None:
        self.disconnect_reason = disconnect_reason
        self.phase = Phase.CLOSED
        if self.transport is not None:
            self.transport.abort()

    # --- the shard's timer wheel -------------------------------------------------------------

    def on_timer(self, now: float) -> float | None:
        if self.phase is Phase.HTTP:
            self.refuse(RequestTimeout("no complete upgrade request in time"))
            return None
        if self.phase is Phase.CLOSING or self.phase is Phase.LINGERING:
            self.abort(self.disconnect_reason)
            return None
        if self.phase is Phase.CLOSED:
            return None
        return self._keepalive(now)

    def _keepalive(self, now: float) -> float | None:
        config = self.shard.config
        if now - self.last_received >= config.keepalive_timeout:
            # Silent past the deadline: a blackholed peer will never read a close frame.
            assert self.ws is not None
            self.ws.send_close(closecodes.KEEPALIVE_TIMEOUT, "keep-alive timeout")
            self.flush()
            self.abort("keepalive_timeout")
            return None
        if self.ping_sent is None:
            assert self.ws is not None
            self.ping_sent = now
            self.ws.send_ping()
            self.flush()
        return min(now + config.ping_interval, self.last_received + config.keepalive_timeout)


_CAUSES = {INPUT_WRITE: "write", INPUT_PUBLISH: "publish", INPUT_TURN: "turn"}
