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
    from backend.presence import Registration
    from backend.shard.server import Shard

CLOSE_GRACE = 5.0
"""Seconds a peer gets to answer our close frame before the socket is aborted."""


class Phase(enum.Enum):
    HTTP = "http"  # reading the request head
    OPEN = "open"  # upgraded: WebSocket frames both ways
    CLOSING = "closing"  # our close frame is out, waiting for the peer's
    CLOSED = "closed"


class DeviceConnection(asyncio.Protocol):
    __slots__ = (
        "device_id",
        "disconnect_reason",
        "http_buffer",
        "kicked_version",
        "last_received",
        "phase",
        "ping_sent",
        "registration",
        "relays",
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
        self.relays: dict[str, int] | None = None  # operator sessions open: sid -> proto
        self.kicked_version = 0
        self.last_received = 0.0
        self.ping_sent: float | None = None
        self.disconnect_reason = "peer_closed"

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.last_received = now = time.monotonic()
        self.shard.wheel.schedule(self, now + self.shard.config.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        if self.phase is Phase.HTTP:
            self._receive_request(data)
        elif self.ws is not None:
            self.shard.metrics.bytes_in.inc(len(data))
            self._receive_frames(data)

    def eof_received(self) -> bool:
        self.disconnect_reason = "eof"
        return False  # close our side too

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
        """Answer a plain HTTP request and close (the response says ``Connection: close``)."""
        assert self.transport is not None
        self.phase = Phase.CLOSED
        self.transport.write(response)
        self.transport.close()

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
        assert self.session is not None
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if type(event) is ws.Message:
                msg = self.session.receive_message(event.data)
                if msg is not None:
                    self.shard.metrics.message_in(msg.proto, msg.typ)
            elif type(event) is ws.Pong:
                self._pong_received()
            elif type(event) is ws.Failed:
                self.shard.metrics.protocol_errors.labels(event.error.reason).inc()
                self.disconnect_reason = event.error.reason
                self._close_transport()
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
        for event in session.events_received():
            self.shard.session_event(self, event)
        for message in session.messages_to_send():
            self.shard.metrics.message_out(*envelope.peek_header(message))
            codec.send_binary(message)
        data = codec.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, code: int, reason: str, disconnect_reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the peer gets CLOSE_GRACE to answer."""
        if self.phase is not Phase.OPEN or self.ws is None:
            return
        self.disconnect_reason = disconnect_reason
        self.ws.send_close(code, reason)
        self.flush()
        self.phase = Phase.CLOSING
        self.shard.wheel.schedule(self, time.monotonic() + CLOSE_GRACE)

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
        if self.phase is Phase.CLOSING:
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
