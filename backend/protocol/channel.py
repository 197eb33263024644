"""One device connection, Sans-I/O: the HTTP upgrade, the WebSocket and the ProtoMsg session.

Both drivers, the shard's asyncio ``DeviceConnection`` and the simulator's gevent gateway,
hand a ``DeviceChannel`` the bytes they read and write out the bytes it gives them; what the
bytes mean is decided here, in the layers it stacks::

    bytes -> http (opening handshake) -> websocket (RFC 6455 frames) -> session (ProtoMsg)

The handshake arrives as an event. A ``ServerChannel`` yields ``UpgradeRequested``; the
driver answers with ``accept``, ``refuse`` or ``respond`` (which endpoint, which token and
whether there is room are its policy, not protocol). A ``ClientChannel`` yields ``Upgraded``
or ``HandshakeFailed``.

``events_received`` is a generator: each WebSocket message is handed to the session only when
the driver asks for the next event. A driver that stops reading a device between two messages
(a full publish share, replies it does not read) keeps the iterator and resumes it later, so
no message is interpreted before the driver is ready for its consequences.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from backend.protocol import envelope, http
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import HandshakeError
from backend.protocol.websocket import Role, State

__all__ = [
    "DEFAULT_LIMITS",
    "ClientChannel",
    "DeviceChannel",
    "Event",
    "HandshakeFailed",
    "Limits",
    "MessageHandled",
    "Role",
    "ServerChannel",
    "State",
    "UpgradeRequested",
    "Upgraded",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a peer may send; one instance is shared by all of a driver's channels."""

    max_head_size: int = http.MAX_HEADER_SIZE
    """The request (server) or response (client) head, final CRLF included."""
    max_message_size: int = envelope.DEFAULT_MAX_MESSAGE_SIZE
    """One WebSocket message, and so one ProtoMsg."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class UpgradeRequested:
    """Server: a complete request head; answer it with ``accept`` or ``refuse``."""

    request: http.Request


@dataclass(frozen=True, slots=True)
class Upgraded:
    """Client: the server accepted the upgrade (RFC 6455 §4.1); frames follow."""


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The head was not a valid request (server: answer with ``refuse``), or the server did
    not accept the upgrade (client: ``error`` is an ``UpgradeRejected`` with its status)."""

    error: HandshakeError


@dataclass(slots=True)
class MessageHandled:
    """One WebSocket message went to the session: ``msg`` decoded, or None if it could not
    be (the session's ``ProtocolViolation`` follows). Its consequences come next, as session
    events. Not frozen: it is made once per message (see ``websocket.Message``)."""

    msg: envelope.ProtoMsg | None


Event: TypeAlias = (
    UpgradeRequested | Upgraded | HandshakeFailed | MessageHandled | ws.Pong | ws.Closed
    | ws.Failed | ps.Event
)  # fmt: skip

_UPGRADED = Upgraded()


class DeviceChannel(abc.ABC):
    """The protocol state of one connection; ``ServerChannel`` and ``ClientChannel`` add
    their side of the opening handshake."""

    __slots__ = ("_close_sent", "_head", "_pending", "_ws", "limits", "session")
    role: ClassVar[Role]

    def __init__(self, limits: Limits, session: ps.DeviceSession | None) -> None:
        self.limits = limits
        self.session = session
        self._head: bytes | None = b""  # the head read so far; None once the handshake ended
        self._pending: UpgradeRequested | Upgraded | HandshakeFailed | None = None
        self._ws: ws.WebSocketConnection | None = None
        self._close_sent = False  # by the driver: what the peer sends after it goes unanswered

    @property
    def state(self) -> State:
        """CONNECTING during the handshake, CLOSED if it failed; then the WebSocket's."""
        if self._ws is not None:
            return self._ws.state
        return State.CONNECTING if self._head is not None else State.CLOSED

    # --- bytes in, events out ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes read from the transport; ignored once CLOSED."""
        if self._ws is not None:
            self._ws.receive_data(data)
        elif self._head is not None:
            self._receive_head(self._head + data)

    def _receive_head(self, head: bytes) -> None:
        try:
            complete = self._parse_head(head)
        except HandshakeError as exc:
            self._head, self._pending = None, HandshakeFailed(exc)
        else:
            if not complete:
                self._head = head

    @abc.abstractmethod
    def _parse_head(self, head: bytes) -> bool:
        """Act on the peer's head (all of it read so far) if it is complete; raises
        ``HandshakeError`` if it is not one to accept."""

    def events_received(self) -> Iterator[Event]:
        """What the received bytes mean, one event at a time (see the module docstring)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            yield pending
        codec = self._ws  # read after the yield: ``accept`` may just have created it
        if codec is None:
            return
        session = self.session
        assert session is not None
        for event in codec.events_received():
            if isinstance(event, ws.Message):
                # Once our close frame is out, data is not answered (RFC 6455 §7.1.2); the
                # codec's state will not do: it parses a whole read at once, so a message
                # read with the peer's close frame comes out when it is CLOSED already.
                if not self._close_sent:
                    yield MessageHandled(session.receive_message(event.data))
                    yield from session.events_received()
            elif not isinstance(event, ws.Ping):  # already answered by the codec (§5.5.2)
                yield event

    def data_to_send(self, on_message: Callable[[bytes], object] | None = None) -> bytes:
        """Frame what the session queued and return every byte to write, in order;
        ``on_message`` sees each ProtoMsg framed (for accounting)."""
        codec, session = self._ws, self.session
        if codec is None or session is None:
            return b""
        for message in session.messages_to_send():
            if on_message is not None:
                on_message(message)
            codec.send_binary(message)
        return codec.data_to_send()

    # --- sending -----------------------------------------------------------------------------

    def send_ping(self, payload: bytes = b"") -> None:
        if self._ws is not None:
            self._ws.send_ping(payload)

    def send_close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2)."""
        if self._ws is not None:
            self._close_sent = True
            self._ws.send_close(code, reason)

    def _open(self, frames: bytes) -> None:
        self._head = None
        self._ws = ws.WebSocketConnection(self.role, self.limits.max_message_size)
        if frames:
            self._ws.receive_data(frames)


class ServerChannel(DeviceChannel):
    """A shard's side. It creates the session when it accepts the upgrade, for the device
    the driver found in the token."""

    __slots__ = ("_request",)
    role = Role.SERVER

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, None)
        self._request: http.Request | None = None  # the request awaiting an answer

    def receive_data(self, data: bytes) -> None:
        if self._request is not None and self._head is not None:
            self._head += data  # behind a request not answered yet: frames, once accepted
        else:
            super().receive_data(data)

    def _parse_head(self, head: bytes) -> bool:
        parsed = http.parse_request(head, self.limits.max_head_size)
        if parsed is None:
            return False
        self._request, consumed = parsed
        self._head, self._pending = head[consumed:], UpgradeRequested(self._request)
        return True

    def accept(self, device_id: str) -> bytes:
        """Accept the request (checked with ``http.check_upgrade``) for ``device_id``;
        returns the 101 to write. The server opens the ProtoMsg handshake: Mender devices
        never speak first."""
        request, self._request = self._request, None
        assert request is not None, "no upgrade request to accept"
        key = request.headers["sec-websocket-key"]
        response = http.accept_response(key, http.chosen_subprotocol(request))
        self.session = ps.DeviceSession(ps.Role.SERVER, device_id=device_id)
        self.session.start()
        self._open(self._head or b"")  # the frames sent right behind the request
        return response

    def refuse(self, error: HandshakeError) -> bytes:
        """The HTTP error response to write; the connection is over."""
        return self.respond(http.error_response(error))

    def respond(self, response: bytes) -> bytes:
        """Answer a plain HTTP request (``/healthz``...); the connection is over."""
        self._head = self._pending = self._request = None
        return response


class ClientChannel(DeviceChannel):
    """A device's side. Its session is its own and outlives connections: the outbox of
    unacked alerts is resent on the next one."""

    __slots__ = ("_key",)
    role = Role.CLIENT

    def __init__(self, session: ps.DeviceSession, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, session)
        self._key = ""  # the Sec-WebSocket-Key sent, which the answer must match

    def connect(self, host: str, path: str, token: str) -> bytes:
        """The upgrade request to write, with the device's token."""
        offer = [("Authorization", f"Bearer {token}"), ("Sec-WebSocket-Protocol", http.SUBPROTOCOL)]
        request, self._key = http.client_request(host, path, offer)
        return request

    def _parse_head(self, head: bytes) -> bool:
        parsed = http.parse_response(head, self._key, self.limits.max_head_size)
        if parsed is None:
            return False
        self._pending = _UPGRADED
        self._open(head[parsed[2] :])
        return True
