"""Lean Sans-I/O WebSocket framing (RFC 6455 §5-§7) for very many, mostly idle connections.

``WebSocketConnection`` keeps its state in a handful of slots. Frames are parsed straight out
of the bytes handed to ``receive_data``; only an incomplete tail (or the fragments of an
unfinished message) is buffered, and every buffer is dropped as soon as it is empty, so an idle
connection costs one small object. No extension is ever negotiated and only binary messages
are accepted: ProtoMsg travels in binary frames.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import TypeAlias

from backend.protocol.errors import (
    FrameError,
    InvalidPayload,
    MessageTooBig,
    ProtocolError,
    UnsupportedData,
)


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455 §5.3)."""
    size = len(data)
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data) ^ int.from_bytes(repeated)).to_bytes(size)


try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    apply_mask = _apply_mask_py


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    CONNECTING = "connecting"  # the opening handshake (``channel``); a codec starts OPEN
    OPEN = "open"
    CLOSING = "closing"  # we sent a close frame and wait for the peer's (RFC 6455 §7.1.2)
    CLOSED = "closed"


# RFC 6455 §5.2 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_RSV = 0x70
_MASK = 0x80
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5
_NO_STATUS = 1005  # RFC 6455 §7.1.5: a close frame without a status code

_SERVER = Role.SERVER
_CLIENT = Role.CLIENT
_OPEN = State.OPEN
_CLOSING = State.CLOSING
_CLOSED = State.CLOSED


@dataclass(slots=True)
class Message:
    """A complete binary message. Not frozen: a frozen dataclass's ``__init__`` costs about
    0.4 µs more (``object.__setattr__``), a quarter of the receive path of a small message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping from the peer; the pong is already queued while the connection is open."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The closing handshake finished, or the peer closed and we echoed its close frame.

    The driver flushes ``data_to_send()`` and closes the TCP connection (the server first,
    RFC 6455 §7.1.1). ``code`` is the peer's status code, 1005 if it sent none.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """We failed the connection (RFC 6455 §7.1.7): a close frame with ``error.close_code`` is
    queued; the driver flushes ``data_to_send()`` and closes the transport."""

    error: ProtocolError


Event: TypeAlias = Message | Ping | Pong | Closed | Failed


class WebSocketConnection:
    """One WebSocket connection after the opening handshake, in either role.

    Feed transport bytes to ``receive_data``, then drain ``events_received`` and write out
    ``data_to_send``. Sending in any state but OPEN is silently dropped: the peer is gone or
    going, and RFC 6455 §5.5.1 forbids data after our close frame.
    """

    __slots__ = (
        "_buffer",
        "_events",
        "_message",
        "_outgoing",
        "max_message_size",
        "role",
        "state",
    )

    def __init__(self, role: Role, max_message_size: int = 8 * 2**20) -> None:
        self.role = role
        self.max_message_size = max_message_size
        self.state = _OPEN
        self._buffer: bytearray | None = None  # the incomplete frame at the end of the input
        self._message: bytearray | None = None  # the fragments of an unfinished message
        self._events: list[Event] | None = None
        self._outgoing: list[bytes] | None = None  # frames not yet handed to the driver

    # --- Receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse the frames in ``data`` (RFC 6455 §5.2) into events; ignored once CLOSED."""
        if self.state is _CLOSED:
            return
        buffer = self._buffer
        stream: bytes | bytearray = data
        if buffer is not None:
            buffer += data
            stream = buffer
        end = len(stream)
        pos = 0
        try:
            while pos < end:
                frame_end = self._receive_frame(stream, pos, end)
                if frame_end < 0 or self.state is _CLOSED:
                    break
                pos = frame_end
        except ProtocolError as error:
            self.fail(error)
        if self.state is _CLOSED or pos == end:
            self._buffer = None
        elif buffer is None:
            self._buffer = bytearray(stream[pos:])
        else:
            del buffer[:pos]

    def _receive_frame(self, data: bytes | bytearray, pos: int, end: int) -> int:
        """Handle the frame at ``data[pos:end]`` and return where it ends, or -1 if it is
        incomplete. The header is validated as soon as it is there, before the payload."""
        if end - pos < 2:
            return -1
        head1 = data[pos]
        head2 = data[pos + 1]
        if head1 & _RSV:  # RFC 6455 §5.2: no extension negotiated
            raise FrameError("reserved bits set")
        masked = head2 & _MASK
        if (self.role is _SERVER) is not bool(masked):  # RFC 6455 §5.1
            raise FrameError("masked frame from a server" if masked else "unmasked client frame")
        opcode = head1 & 0x0F
        fin = head1 & _FIN
        length = head2 & 0x7F
        if opcode != OP_BINARY or self._message is not None:  # not the common case
            self._check_opcode(opcode, fin, length)
        pos += 2
        if length == 126:  # RFC 6455 §5.2: 16-bit extended payload length
            if end - pos < 2:
                return -1
            length = int.from_bytes(data[pos : pos + 2])
            pos += 2
        elif length == 127:  # RFC 6455 §5.2: 64-bit, most significant bit 0
            if end - pos < 8:
                return -1
            length = int.from_bytes(data[pos : pos + 8])
            if length >> 63:
                raise FrameError("payload length has its most significant bit set")
            pos += 8
        if opcode < OP_CLOSE:  # the whole message, fragments so far included, must fit
            message = self._message
            if (length if message is None else length + len(message)) > self.max_message_size:
                raise MessageTooBig(f"message over {self.max_message_size} bytes")
        if masked:
            if end - pos < 4 + length:
                return -1
            payload = apply_mask(data[pos + 4 : pos + 4 + length], data[pos : pos + 4])
            pos += 4
        else:
            if end - pos < length:
                return -1
            payload = bytes(data[pos : pos + length])
        self._handle_frame(opcode, fin, payload)
        return pos + length

    def _check_opcode(self, opcode: int, fin: int, length: int) -> None:
        """Opcode (RFC 6455 §5.2), fragmentation (§5.4) and control frame (§5.5) rules."""
        if opcode == OP_BINARY:
            if self._message is not None:
                raise FrameError("new message before the end of a fragmented one")
        elif opcode == OP_CONTINUATION:
            if self._message is None:
                raise FrameError("continuation frame without a message in progress")
        elif opcode == OP_TEXT:
            raise UnsupportedData("text frames are not accepted")
        elif OP_CLOSE <= opcode <= OP_PONG:
            if not fin:
                raise FrameError("fragmented control frame")
            # RFC 6455 §5.5: 125 bytes at most, so always in the 7-bit length field; an
            # extended length (126 or 127 here) is refused before it is read.
            if length > _MAX_CONTROL_PAYLOAD:
                raise FrameError("control frame with an extended length (over 125 bytes)")
        else:
            raise FrameError(f"unknown opcode {opcode:#x}")

    def _handle_frame(self, opcode: int, fin: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            if fin:
                self._add_event(Message(payload))
            else:
                self._message = bytearray(payload)
        elif opcode == OP_CONTINUATION:
            self._receive_continuation(fin, payload)
        elif opcode == OP_PING:
            # RFC 6455 §5.5.2: answer with a pong, same payload, "unless it already received a
            # Close frame" (then we are CLOSED and read nothing): also after sending ours.
            self._send_frame(OP_PONG, payload)
            self._add_event(Ping(payload))
        elif opcode == OP_PONG:
            self._add_event(Pong(payload))
        else:
            self._receive_close(payload)

    def _receive_continuation(self, fin: int, payload: bytes) -> None:
        """RFC 6455 §5.4: append a fragment; the final one completes the message."""
        message = self._message
        assert message is not None  # _check_opcode made sure
        message += payload
        if fin:
            self._message = None
            self._add_event(Message(bytes(message)))

    def _receive_close(self, payload: bytes) -> None:
        """RFC 6455 §5.5.1: echo the peer's close unless we sent ours, then we are closed."""
        code, reason = parse_close(payload)
        if self.state is _OPEN:
            self._send_frame(OP_CLOSE, payload)
        self._close()
        self._add_event(Closed(code, reason))

    def _add_event(self, event: Event) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def events_received(self) -> list[Event]:
        """The events parsed since the last call."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    # --- Sending ------------------------------------------------------------------------

    def send_binary(self, data: bytes) -> None:
        """Queue ``data`` as one binary message in a single frame."""
        if self.state is _OPEN:
            self._send_frame(OP_BINARY, data)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (RFC 6455 §5.5.2)."""
        _check_control_payload(payload)
        if self.state is _OPEN:
            self._send_frame(OP_PING, payload)

    def send_pong(self, payload: bytes) -> None:
        """Queue an unsolicited pong or an answer to a ping (RFC 6455 §5.5.3)."""
        _check_control_payload(payload)
        if self.state is _OPEN:
            self._send_frame(OP_PONG, payload)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2): queue a close frame, go CLOSING."""
        payload = close_payload(code, reason)
        if self.state is _OPEN:
            self._send_frame(OP_CLOSE, payload)
            self.state = _CLOSING

    def fail(self, error: ProtocolError) -> None:
        """Fail the connection (RFC 6455 §7.1.7): queue a close frame with
        ``error.close_code`` unless we already sent one, go CLOSED, report ``Failed``."""
        if error.close_code is None:
            raise ValueError(f"{type(error).__name__} does not close the connection")
        if self.state is _CLOSED:
            return
        if self.state is _OPEN:
            self._send_frame(OP_CLOSE, close_payload(error.close_code, error.reason))
        self._close()
        self._add_event(Failed(error))

    def data_to_send(self) -> bytes:
        """The bytes to write to the transport since the last call, b"" if none."""
        outgoing = self._outgoing
        if outgoing is None:
            return b""
        self._outgoing = None
        return b"".join(outgoing)  # no copy for a single frame

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        """Queue one final frame (RFC 6455 §5.2); a client masks it with a fresh key (§5.3)."""
        length = len(payload)
        mask_bit = _MASK if self.role is _CLIENT else 0
        if length < 126:
            header = bytes((_FIN | opcode, mask_bit | length))
        elif length < 0x10000:
            header = bytes((_FIN | opcode, mask_bit | 126)) + length.to_bytes(2)
        else:
            header = bytes((_FIN | opcode, mask_bit | 127)) + length.to_bytes(8)
        if mask_bit:
            mask = os.urandom(4)
            frame = header + mask + apply_mask(payload, mask)
        else:
            frame = header + payload
        if self._outgoing is None:
            self._outgoing = [frame]
        else:
            self._outgoing.append(frame)

    def _close(self) -> None:
        self.state = _CLOSED
        self._buffer = None
        self._message = None


def is_valid_close_code(code: int) -> bool:
    """May ``code`` appear in a close frame (RFC 6455 §7.4.1, §7.4.2)? Not 1004-1006 nor
    1015, nor the unassigned 1016-2999; 1012-1014 are IANA-registered since RFC 6455."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Status code and reason of a close frame (RFC 6455 §5.5.1, §7.1.5, §7.1.6)."""
    if not payload:
        return _NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError("close frame payload of 1 byte")
    code = int.from_bytes(payload[:2])
    if not is_valid_close_code(code):
        raise FrameError(f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise InvalidPayload("close reason is not UTF-8") from exc


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame we send (RFC 6455 §5.5.1)."""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    payload = code.to_bytes(2) + reason.encode()
    _check_control_payload(payload)
    return payload


def _check_control_payload(payload: bytes) -> None:
    if len(payload) > _MAX_CONTROL_PAYLOAD:  # RFC 6455 §5.5
        raise ValueError(f"control frame payload over {_MAX_CONTROL_PAYLOAD} bytes")
