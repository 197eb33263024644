"""Mender's file transfer (proto 2), Sans-I/O: the message shapes and one transfer's chunk,
offset and ack windows, for both ends (the API's relay and the devices).

As mender-connect implements it (docs/protocol.md, "File transfer"), one sid per transfer:

- "stat" ``{"path"}`` -> "file_info" ``{"path", "size", "uid", "gid", "mode", "modtime"}``.
- download: server "get_file" ``{"path"}``; the device sends "file_chunk"s (body = bytes,
  prop ``offset``) up to ``WINDOW`` chunks ahead of the last "ack" (prop ``offset``: the bytes
  received so far), then an empty "file_chunk" at the end.
- upload: server "put_file" ``{"path", "size", "mode", "uid", "gid", "src_path"?}``; the device
  answers "ack" (offset 0); the server sends "file_chunk"s; the device acks every
  ``ACK_EVERY`` chunks and the end (the empty chunk).
- "error" ``{"err", "msgtype", "msgid"?}`` from either side ends the transfer; the device's
  ``err`` is shown to the operator as it is.

The receiving end checks that each chunk starts where the last one ended and acks every
``ACK_EVERY`` chunks and the end, so a sender ``WINDOW`` (> ``ACK_EVERY``) chunks ahead is
never stalled. Peer input never raises: a bad chunk or message ends the transfer with
``Failed`` and an "error" for the peer.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import MalformedMessage

TYP_STAT = "stat"
TYP_FILE_INFO = "file_info"
TYP_GET = "get_file"
TYP_PUT = "put_file"
TYP_CHUNK = "file_chunk"
TYP_ACK = "ack"
TYP_ERROR = env.TYP_ERROR
PROP_OFFSET = "offset"

CHUNK = 4096
"""Bytes per chunk we send: a Mender device reads at most 8 KiB per WebSocket message."""
WINDOW = 20
"""Chunks a sender keeps unacked (mender-connect's)."""
ACK_EVERY = 10
"""A receiver acks every this many chunks, and the end (mender-connect's)."""


class Role(enum.Enum):
    SERVER = "server"
    DEVICE = "device"


@dataclass(slots=True, frozen=True)
class FileInfo(m.Body):
    PROTO = env.PROTO_FILE_TRANSFER
    TYP = TYP_FILE_INFO
    path: str
    size: int
    uid: int = 0
    gid: int = 0
    mode: int = 0o644
    modtime: int = 0

    def to_body(self) -> bytes:
        return m.pack({"path": self.path, "size": self.size, "uid": self.uid, "gid": self.gid,
                       "mode": self.mode, "modtime": self.modtime})  # fmt: skip

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        f = m.unpack(body, "file_info")
        return cls(
            m.take(f, "path", str, ""), m.take(f, "size", int, 0), m.take(f, "uid", int, 0),
            m.take(f, "gid", int, 0), m.take(f, "mode", int, 0), _modtime(f),
        )  # fmt: skip


@dataclass(slots=True, frozen=True)
class PutFile(m.Body):
    PROTO = env.PROTO_FILE_TRANSFER
    TYP = TYP_PUT
    path: str
    size: int
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    src_path: str = ""

    def to_body(self) -> bytes:
        fields: dict[str, Any] = {"path": self.path, "size": self.size, "mode": self.mode,
                                  "uid": self.uid, "gid": self.gid}  # fmt: skip
        if self.src_path:
            fields["src_path"] = self.src_path
        return m.pack(fields)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        f = m.unpack(body, "put_file")
        return cls(
            _path(f), m.take(f, "size", int, 0), m.take(f, "mode", int, 0o644),
            m.take(f, "uid", int, 0), m.take(f, "gid", int, 0), m.take(f, "src_path", str, ""),
        )  # fmt: skip


class TransferError(m.StreamError):
    __slots__ = ()
    PROTO = env.PROTO_FILE_TRANSFER


def path_body(path: str) -> bytes:
    """The body of "stat" and "get_file"."""
    return m.pack({"path": path})


# --- events ----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class StatRequested:
    path: str


@dataclass(slots=True, frozen=True)
class GetRequested:
    path: str


@dataclass(slots=True, frozen=True)
class PutRequested:
    request: PutFile


@dataclass(slots=True, frozen=True)
class Info:
    info: FileInfo


@dataclass(slots=True, frozen=True)
class Ready:
    """Upload: the device took the "put_file" (ack 0); chunks may go."""


@dataclass(slots=True, frozen=True)
class Chunk:
    offset: int
    data: bytes


@dataclass(slots=True, frozen=True)
class Acked:
    """The peer acked up to ``offset``: window slots are free again."""

    offset: int


@dataclass(slots=True, frozen=True)
class Done:
    """Everything arrived (receiver) or was acked (sender): ``size`` bytes."""

    size: int


@dataclass(slots=True, frozen=True)
class Failed:
    text: str
    by_peer: bool


Event = StatRequested | GetRequested | PutRequested | Info | Ready | Chunk | Acked | Done | Failed


class Phase(enum.Enum):
    IDLE = "idle"
    STAT = "stat"
    SENDING = "sending"
    RECEIVING = "receiving"
    PUT_SENT = "put_sent"  # server: waiting for the device's ack 0
    ENDED = "ended"


class FileTransfer:
    """One sid's transfer for ``role``'s end. Server: ``stat``, ``get`` or ``put``; device:
    answer the request event with ``info``, ``accept_put``, ``send``/``end`` or ``refuse``."""

    def __init__(self, sid: str, role: Role, *, window: int = WINDOW, chunk: int = CHUNK) -> None:
        self.sid = sid
        self.role = role
        self.window = window
        self.chunk = chunk
        self.phase = Phase.IDLE
        self.offset = 0  # bytes sent (sender) or received (receiver)
        self.acked = 0
        self._ends: deque[int] = deque()  # end offsets of the chunks in flight
        self._received_chunks = 0
        self._ending = False
        self._events: list[Event] = []
        self._outgoing: list[ProtoMsg] = []

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def outgoing(self) -> list[ProtoMsg]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    # --- server commands ------------------------------------------------------------------

    def stat(self, path: str) -> None:
        self.phase = Phase.STAT
        self._send(TYP_STAT, path_body(path))

    def get(self, path: str) -> None:
        self.phase = Phase.RECEIVING
        self._send(TYP_GET, path_body(path))

    def put(self, request: PutFile) -> None:
        self.phase = Phase.PUT_SENT
        self._send(TYP_PUT, request.to_body())

    # --- device answers ---------------------------------------------------------------------

    def info(self, info: FileInfo) -> None:
        self.phase = Phase.ENDED
        self._send(TYP_FILE_INFO, info.to_body())

    def accept_put(self) -> None:
        self.phase = Phase.RECEIVING
        self._send(TYP_ACK, props={PROP_OFFSET: 0})

    def refuse(self, text: str, msgtype: str) -> None:
        """Either end: the transfer cannot go on (``text`` shown to the operator as it is)."""
        self.phase = Phase.ENDED
        self._send(TYP_ERROR, TransferError(text, msgtype).to_body())

    def start_sending(self) -> None:
        """Device: a "get_file" it can serve; the driver ``send``s the file, then ``end``s."""
        self.phase = Phase.SENDING

    # --- the sending half ---------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        return self.phase is Phase.SENDING and len(self._ends) < self.window

    def send(self, data: bytes) -> None:
        """Chunks of ``data`` (the driver sends only while ``can_send``; one call may overrun
        the window by the chunks of one read)."""
        for start in range(0, len(data), self.chunk):
            piece = data[start : start + self.chunk]
            self._send(TYP_CHUNK, piece, {PROP_OFFSET: self.offset})
            self.offset += len(piece)
            self._ends.append(self.offset)

    def end(self) -> None:
        """All sent: the empty chunk; ``Done`` once the peer acked everything."""
        self._ending = True
        self._send(TYP_CHUNK, b"", {PROP_OFFSET: self.offset})

    # --- what the peer sends --------------------------------------------------------------

    def receive(self, msg: ProtoMsg) -> None:
        try:
            self._dispatch(msg)
        except MalformedMessage as exc:
            self._fail(str(exc), msg.typ)

    def _dispatch(self, msg: ProtoMsg) -> None:
        typ, phase = msg.typ, self.phase
        if typ == TYP_ERROR:
            self.phase = Phase.ENDED
            self._events.append(Failed(TransferError.from_body(msg.body).err, True))
        elif self.role is Role.DEVICE and phase is Phase.IDLE and typ == TYP_STAT:
            self._events.append(StatRequested(_path(m.unpack(msg.body, "stat"))))
        elif self.role is Role.DEVICE and phase is Phase.IDLE and typ == TYP_GET:
            self._events.append(GetRequested(_path(m.unpack(msg.body, "get_file"))))
        elif self.role is Role.DEVICE and phase is Phase.IDLE and typ == TYP_PUT:
            self._events.append(PutRequested(PutFile.from_body(msg.body)))
        elif phase is Phase.STAT and typ == TYP_FILE_INFO:
            self.phase = Phase.ENDED
            self._events.append(Info(FileInfo.from_body(msg.body)))
        elif phase is Phase.PUT_SENT and typ == TYP_ACK and _offset(msg) == 0:
            self.phase = Phase.SENDING
            self._events.append(Ready())
        elif phase is Phase.RECEIVING and typ == TYP_CHUNK:
            self._chunk(msg)
        elif phase is Phase.SENDING and typ == TYP_ACK:
            self._ack(_offset(msg))
        elif phase is not Phase.ENDED:
            raise MalformedMessage(f"unexpected {typ!r} while {phase.value}")

    def _chunk(self, msg: ProtoMsg) -> None:
        offset = _offset(msg)
        if offset != self.offset:
            raise MalformedMessage(f"chunk at offset {offset}, expected {self.offset}")
        if not msg.body:
            self.phase = Phase.ENDED
            self._send(TYP_ACK, props={PROP_OFFSET: self.offset})
            self._events.append(Done(self.offset))
            return
        self.offset += len(msg.body)
        self._received_chunks += 1
        self._events.append(Chunk(offset, msg.body))
        if self._received_chunks % ACK_EVERY == 0:
            self._send(TYP_ACK, props={PROP_OFFSET: self.offset})

    def _ack(self, offset: int) -> None:
        if not self.acked <= offset <= self.offset:
            raise MalformedMessage(f"ack of offset {offset}, sent {self.offset}")
        self.acked = offset
        while self._ends and self._ends[0] <= offset:
            self._ends.popleft()
        self._events.append(Acked(offset))
        if self._ending and offset == self.offset:
            self.phase = Phase.ENDED
            self._events.append(Done(offset))

    def _fail(self, text: str, msgtype: str) -> None:
        self._events.append(Failed(text, False))
        if self.phase is not Phase.ENDED:
            self.refuse(text, msgtype)

    def _send(self, typ: str, body: bytes = b"", props: dict[str, Any] | None = None) -> None:
        self._outgoing.append(ProtoMsg(env.PROTO_FILE_TRANSFER, typ, self.sid, props, body))


def _offset(msg: ProtoMsg) -> int:
    offset = (msg.props or {}).get(PROP_OFFSET)
    if type(offset) is not int or offset < 0:
        raise MalformedMessage(f"{msg.typ!r} needs a non-negative integer 'offset' prop")
    return offset


def _path(fields: dict[str, Any]) -> str:
    path: str = m.take(fields, "path", str)
    if not path:
        raise MalformedMessage("field 'path' must not be empty")
    return path


def _modtime(fields: dict[str, Any]) -> int:
    """Go's ``time.Time`` may arrive as an int or a float of seconds; either is kept."""
    value = fields.get("modtime", 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
