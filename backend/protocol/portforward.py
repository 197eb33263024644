"""Mender's port forward (proto 3), Sans-I/O: the message shapes and each connection's flow
control, for both ends (the backend's relay and the devices: test device, simulated gateway).

As mender-connect implements it (docs/protocol.md, "Port forward"):

- server -> device "new", props ``{"connection_id"}``, body ``{"remote_host", "remote_port",
  "protocol": "tcp"|"udp"}``; the device dials and answers "new" (same sid and connection_id,
  no body), or "error" body ``{"err", "msgtype": "new"}``. One sid carries many connections.
- data both ways is "forward" (body = the bytes, prop connection_id). A sender keeps at most
  ``window`` forwards unacked per connection (Mender: ONE, of at most 4,096 bytes), and every
  receiver answers each "forward" with an "ack" once it has passed the bytes on.
- either side ends a connection with "stop", answered with "stop".

Our extension, ignored by Mender: the device's "new" answer may carry props ``window`` and
``chunk`` (the forwards it takes unacked, and their largest body). Without them the backend
sends as a Mender device expects: one forward of at most 4,096 bytes at a time.

``PortForward`` holds one sid's connections. Feed it the peer's messages with ``receive``;
read what they mean from ``events`` and what to send from ``outgoing``. Peer input never
raises: a message for no connection, or an ack with nothing in flight, becomes an "error"
for the peer and a ``Rejected`` event.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import MalformedMessage

TYP_NEW = "new"
TYP_STOP = "stop"
TYP_FORWARD = "forward"
TYP_ACK = "ack"
TYP_ERROR = env.TYP_ERROR
PROP_CONNECTION_ID = "connection_id"
PROP_WINDOW = "window"
PROP_CHUNK = "chunk"

TRANSPORTS = frozenset({"tcp", "udp"})
MENDER_CHUNK = 4096
"""mender-connect reads (and sends) at most this many bytes per "forward"."""
MENDER_WINDOW = 1
"""mender-connect keeps one "forward" in flight per connection until it is acked."""
MAX_CHUNK = 1 << 20
MAX_WINDOW = 64
"""Bounds on what a device may announce: a forward fits one NATS message, and what is in
flight per connection stays bounded."""


class Role(enum.Enum):
    SERVER = "server"
    DEVICE = "device"


@dataclass(slots=True, frozen=True)
class Target(m.Body):
    """What the device dials: the body of the server's "new"."""

    PROTO = env.PROTO_PORT_FORWARD
    TYP = TYP_NEW
    remote_host: str
    remote_port: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        if not 0 < self.remote_port < 65536:
            raise MalformedMessage(f"remote_port must be 1..65535, not {self.remote_port}")
        if self.protocol not in TRANSPORTS:
            raise MalformedMessage(f"protocol must be tcp or udp, not {self.protocol!r}")
        if not self.remote_host:
            raise MalformedMessage("remote_host must not be empty")

    def to_body(self) -> bytes:
        fields = {"remote_host": self.remote_host, "remote_port": self.remote_port,
                  "protocol": self.protocol}  # fmt: skip
        return m.pack(fields)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = m.unpack(body, "new")
        return cls(
            m.take(fields, "remote_host", str), m.take(fields, "remote_port", int),
            m.take(fields, "protocol", str, "tcp"),
        )  # fmt: skip


class ForwardError(m.StreamError):
    __slots__ = ()
    PROTO = env.PROTO_PORT_FORWARD


# --- the operator API's data frames (docs/operator.md) ------------------------------------


def data_frame(cid: str, data: bytes) -> bytes:
    """A binary frame of the operator API's port-forward WebSocket: ``[len(id)] id bytes``."""
    raw = cid.encode()
    return bytes((len(raw),)) + raw + data


def split_frame(frame: bytes) -> tuple[str, bytes]:
    """(connection id, bytes) of a binary frame, or ValueError."""
    if not frame or len(frame) < 1 + frame[0]:
        raise ValueError("a data frame is [len(id)] id bytes")
    return frame[1 : 1 + frame[0]].decode(errors="replace"), frame[1 + frame[0] :]


# --- events ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class NewRequested:
    """Device side: the server asks to dial ``target``; answer ``accept`` or ``refuse``."""

    connection_id: str
    target: Target
    user_id: str | None


@dataclass(slots=True, frozen=True)
class Opened:
    """Server side: the device dialled; ``window``/``chunk`` are what it takes unacked."""

    connection_id: str
    window: int
    chunk: int


@dataclass(slots=True, frozen=True)
class Data:
    """Bytes for the connection's local end; call ``consumed`` once they are passed on."""

    connection_id: str
    data: bytes


@dataclass(slots=True, frozen=True)
class Acked:
    """The peer acked one forward of the connection (a window slot is free again)."""

    connection_id: str


@dataclass(slots=True, frozen=True)
class Ended:
    """The connection is gone: ``by_peer`` (a "stop" or an "error" from the peer, ``text``
    says why) or the peer's answer to our own "stop"."""

    connection_id: str
    by_peer: bool
    text: str = ""


@dataclass(slots=True, frozen=True)
class Rejected:
    """A peer message that fits no connection (answered with an "error")."""

    connection_id: str
    text: str


Event = NewRequested | Opened | Data | Acked | Ended | Rejected


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


@dataclass(slots=True)
class Flow:
    """One connection's sending side: at most ``window`` forwards unacked, of at most
    ``chunk`` bytes each; what does not fit waits in ``backlog``."""

    window: int = MENDER_WINDOW
    chunk: int = MENDER_CHUNK
    in_flight: int = 0
    backlog: deque[bytes] = field(default_factory=deque)
    queued: int = 0  # bytes in backlog

    def push(self, data: bytes) -> None:
        for start in range(0, len(data), self.chunk):
            piece = data[start : start + self.chunk]
            self.backlog.append(piece)
            self.queued += len(piece)

    def ready(self) -> list[bytes]:
        """The pieces that may go now (the window's free slots)."""
        out = []
        while self.backlog and self.in_flight < self.window:
            piece = self.backlog.popleft()
            self.queued -= len(piece)
            self.in_flight += 1
            out.append(piece)
        return out

    def acked(self) -> bool:
        """An ack arrived; False if nothing was in flight (the peer is confused)."""
        if self.in_flight == 0:
            return False
        self.in_flight -= 1
        return True

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self.backlog


@dataclass(slots=True)
class Connection:
    state: State
    flow: Flow = field(default_factory=Flow)
    finishing: bool = False  # "stop" once the backlog is sent


class PortForward:
    """One sid's connections, for ``role``'s end. Device side: ``window``/``chunk`` are what
    this end takes unacked (announced in its "new" answer when not Mender's)."""

    def __init__(
        self, sid: str, role: Role, *, window: int = MENDER_WINDOW, chunk: int = MENDER_CHUNK
    ) -> None:
        self.sid = sid
        self.role = role
        self.window = window
        self.chunk = chunk
        self.connections: dict[str, Connection] = {}
        self._events: list[Event] = []
        self._outgoing: list[ProtoMsg] = []

    # --- I/O boundary ------------------------------------------------------------------------

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def outgoing(self) -> list[ProtoMsg]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def receive(self, msg: ProtoMsg) -> None:
        """One peer message of this sid (proto 3)."""
        cid = _connection_id(msg)
        conn = self.connections.get(cid)
        try:
            if msg.typ == TYP_NEW and self.role is Role.DEVICE:
                self._new_requested(cid, msg)
            elif conn is None:
                if msg.typ not in (TYP_STOP, TYP_ERROR):  # a late answer to a gone connection
                    self._reject(cid, msg, f"connection {cid!r} not found")
            else:
                self._for_connection(cid, conn, msg)
        except MalformedMessage as exc:
            self._reject(cid, msg, str(exc))

    # --- commands ------------------------------------------------------------------------------

    def open(self, cid: str, target: Target) -> None:
        """Server: ask the device to dial ``target`` for connection ``cid``."""
        self.connections[cid] = Connection(State.OPENING)
        self._send(TYP_NEW, cid, target.to_body())

    def accept(self, cid: str) -> None:
        """Device: the dial succeeded."""
        conn = self.connections.get(cid)
        if conn is None or conn.state is not State.OPENING:
            return
        conn.state = State.OPEN
        conn.flow = Flow(self.window, self.chunk)
        extra = {}
        if (self.window, self.chunk) != (MENDER_WINDOW, MENDER_CHUNK):
            extra = {PROP_WINDOW: self.window, PROP_CHUNK: self.chunk}
        self._send(TYP_NEW, cid, props=extra)

    def refuse(self, cid: str, text: str) -> None:
        """Device: the dial failed (``text`` as the OS said it); the connection is forgotten."""
        self.connections.pop(cid, None)
        self._send(TYP_ERROR, cid, ForwardError(text, TYP_NEW).to_body())

    def send(self, cid: str, data: bytes) -> None:
        """Bytes from the local end: forwarded as the peer's window allows."""
        conn = self.connections.get(cid)
        if conn is None or conn.state is not State.OPEN or not data:
            return
        conn.flow.push(data)
        self._pump(cid, conn)

    def queued(self, cid: str) -> int:
        """Bytes of ``cid`` waiting for the window (the driver stops reading beyond a bound)."""
        conn = self.connections.get(cid)
        return conn.flow.queued if conn is not None else 0

    def consumed(self, cid: str) -> None:
        """The bytes of the last ``Data`` event were passed on: ack them."""
        if cid in self.connections:
            self._send(TYP_ACK, cid)

    def stop(self, cid: str) -> None:
        """End ``cid`` from this side; the peer's "stop" answer ends it (``Ended``)."""
        conn = self.connections.get(cid)
        if conn is not None and conn.state is not State.CLOSING:
            conn.state = State.CLOSING
            conn.flow.backlog.clear()
            self._send(TYP_STOP, cid)

    def finish(self, cid: str) -> None:
        """The local end is done sending: "stop" once what it sent has gone out (Mender has
        no half-close; the last forwards go before the "stop", in order)."""
        conn = self.connections.get(cid)
        if conn is None:
            return
        if conn.flow.backlog and conn.state is State.OPEN:
            conn.finishing = True
        else:
            self.stop(cid)

    def fail(self, cid: str, text: str) -> None:
        """The local end broke: tell the peer (an "error") and forget the connection."""
        if self.connections.pop(cid, None) is not None:
            self._send(TYP_ERROR, cid, ForwardError(text, TYP_FORWARD).to_body())

    def forget(self, cid: str) -> None:
        self.connections.pop(cid, None)

    # --- what the peer sends ---------------------------------------------------------------

    def _new_requested(self, cid: str, msg: ProtoMsg) -> None:
        target = Target.from_body(msg.body)
        if cid in self.connections:
            self._reject(cid, msg, f"connection {cid!r} already exists")
            return
        self.connections[cid] = Connection(State.OPENING, Flow())
        user_id = (msg.props or {}).get(env.PROP_USER_ID)
        self._events.append(
            NewRequested(cid, target, user_id if isinstance(user_id, str) else None)
        )

    def _for_connection(self, cid: str, conn: Connection, msg: ProtoMsg) -> None:
        typ = msg.typ
        if typ == TYP_NEW and conn.state is State.OPENING:
            conn.flow = _announced_flow(msg.props or {})
            conn.state = State.OPEN
            self._events.append(Opened(cid, conn.flow.window, conn.flow.chunk))
        elif typ == TYP_FORWARD and conn.state is not State.OPENING:
            if conn.state is State.OPEN:
                self._events.append(Data(cid, msg.body))
        elif typ == TYP_ACK:
            self._acked(cid, conn, msg)
        elif typ == TYP_STOP:
            del self.connections[cid]
            if conn.state is not State.CLOSING:
                self._send(TYP_STOP, cid)  # Mender: a "stop" is answered with "stop"
            self._events.append(Ended(cid, conn.state is not State.CLOSING, "stopped"))
        elif typ == TYP_ERROR:
            del self.connections[cid]
            self._events.append(Ended(cid, True, ForwardError.from_body(msg.body).err))
        else:
            self._reject(cid, msg, f"unexpected {typ!r} on a connection {conn.state.value}")

    def _acked(self, cid: str, conn: Connection, msg: ProtoMsg) -> None:
        if conn.state is State.CLOSING:
            return  # in flight when we stopped
        if not conn.flow.acked():
            self._reject(cid, msg, "ack without a forward in flight")
            return
        self._events.append(Acked(cid))
        self._pump(cid, conn)

    def _pump(self, cid: str, conn: Connection) -> None:
        for piece in conn.flow.ready():
            self._send(TYP_FORWARD, cid, piece)
        if conn.finishing and not conn.flow.backlog:
            self.stop(cid)

    def _reject(self, cid: str, msg: ProtoMsg, text: str) -> None:
        self._events.append(Rejected(cid, text))
        self._send(TYP_ERROR, cid, ForwardError(text, msg.typ).to_body())

    def _send(
        self, typ: str, cid: str, body: bytes = b"", props: dict[str, Any] | None = None
    ) -> None:
        props = {PROP_CONNECTION_ID: cid, **(props or {})}
        self._outgoing.append(ProtoMsg(env.PROTO_PORT_FORWARD, typ, self.sid, props, body))


def _connection_id(msg: ProtoMsg) -> str:
    cid = (msg.props or {}).get(PROP_CONNECTION_ID)
    return cid if isinstance(cid, str) else ""


def _announced_flow(props: dict[str, Any]) -> Flow:
    """The device's window and chunk, bounded; Mender's when it announces none."""
    window, chunk = props.get(PROP_WINDOW), props.get(PROP_CHUNK)
    if type(window) is not int or not 0 < window <= MAX_WINDOW:
        window = MENDER_WINDOW
    if type(chunk) is not int or not 0 < chunk <= MAX_CHUNK:
        chunk = MENDER_CHUNK
    return Flow(window, chunk)
