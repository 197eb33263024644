"""Differential test: our RFC 6455 codec against websockets' Sans-I/O parser, on the same bytes.

``backend.protocol.websocket`` is our own framing code (docs/protocol.md, "Why our own RFC 6455
codec"). Hypothesis writes frame sequences, valid and not, in both directions (a server
reading masked client frames, a client reading unmasked server frames), and the same bytes, in
the same random slices, go to a ``WebSocketConnection`` and to websockets' ``ServerProtocol`` or
``ClientProtocol`` (``Frame.parse`` over a ``StreamReader``, plus its fragmentation and closing
rules). Compared:

- the events: binary messages (websockets' fragments joined here, as its connection layer
  joins them), pings, pongs, close codes and reasons; after every slice while the input is
  valid, so the buffering of partial frames is compared too;
- what each side writes back: a pong per ping, the close echo, and the close code it fails the
  connection with;
- a bad frame after valid ones (RSV bits, reserved opcodes, wrong masking, fragmented or
  over-125-byte control frames, a continuation without a message or a message inside one,
  oversized messages, a 64-bit length with its top bit set, a 1-byte close payload, invalid
  close codes, close reasons and text that are not UTF-8, text frames, arbitrary headers): a
  referee (``defects``) names the RFC rules it breaks, ``RULES`` says which close code each
  side chooses for each rule, and both must refuse it after the same events and ignore the
  frames behind it, or accept it where ``RULES`` documents that one side does;
- garbage after valid frames: the events agree as far as both go, and a refusal by one side
  only is one of the documented differences;
- the encoders: what ours writes parses with ``Frame.parse`` to the same opcode, payload and
  FIN (a server's frames are byte-identical to ``Frame.serialize``), and what websockets'
  ``Protocol`` sends, fragmented, parses with ours to the events its own parser reports.

The differences are real and deliberate; ``RULES`` and ``test_documented_difference`` pin each
one, so a change on either side fails here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from backend.protocol import websocket as ws
from backend.protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Role,
    WebSocketConnection,
)

T = TypeVar("T")

DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)  # RFC 6455 §5.2
MAX_CONTROL = 125  # RFC 6455 §5.5

# Rule broken -> (our close code, websockets' close code); None: that side accepts the frame.
# Where the two differ, the comment says why: each is a choice RFC 6455 leaves open or one we
# made on purpose, pinned by test_documented_difference.
RULES: dict[str, tuple[int | None, int | None]] = {
    "rsv": (1002, 1002),  # §5.2: RSV1-3 MUST be 0 when no extension was negotiated
    "opcode": (1002, 1002),  # §5.2: reserved opcodes MUST fail the connection
    "mask": (1002, 1002),  # §5.1: client frames masked, server frames not
    # §5.2: a 64-bit length's most significant bit MUST be 0. We refuse the length itself;
    # websockets only sees a length over max_size (1009). Both refuse from the header alone.
    "length_msb": (1002, 1009),
    "control_fragmented": (1002, 1002),  # §5.5: control frames MUST NOT be fragmented
    "control_too_long": (1002, 1002),  # §5.5: control payloads are 125 bytes or less
    # §5.2: a length in the shortest form; with §5.5's 125 bytes, a control frame's length is
    # always in the 7-bit field. We judge a control frame by that field and refuse an extended
    # one at once; websockets reads the extended length and accepts the frame if it is short.
    # (Both accept the longer form on data frames, where it costs nothing to read.)
    "control_long_form": (1002, None),
    "stray_continuation": (1002, 1002),  # §5.4: a continuation belongs to a message
    "data_in_message": (1002, 1002),  # §5.4: messages MUST NOT interleave
    "too_big": (1009, 1009),  # §7.4.1, §10.4: the message, all fragments, over the limit
    # §7.4.1 1003 "a type of data it cannot accept": ProtoMsg travels in binary frames only,
    # so we refuse every text frame from its header. websockets' Protocol passes text frames up
    # unchecked: their UTF-8 (§8.1) is checked by its connection layer (1007 from
    # websockets.asyncio.connection's recv), which this test does not run.
    "text": (1003, None),
    "close_short": (1002, 1002),  # §5.5.1: a close body starts with a 2-byte code
    "close_code": (1002, 1002),  # §7.4.1, §7.4.2: a code that may not be in a close frame
    "close_utf8": (1007, 1007),  # §5.5.1: the reason is UTF-8; §8.1: fail with 1007
    # §5.4: "Control frames MAY be injected in the middle of a fragmented message", the close
    # frame included: we close and drop the unfinished message. websockets refuses it as an
    # "incomplete fragmented message" (1002), stricter than the RFC.
    "close_in_message": (None, 1002),
    # §5.4: an interleaved control frame is not part of the message. websockets counts its
    # payload against the message's remaining max_size (1009); we do not.
    "control_over_remaining": (None, 1009),
}
OURS, THEIRS = 0, 1

# Close codes two refusals of one frame may differ by, when it breaks several rules and each
# side checks them in its own order (RFC 6455 fixes none): we check RSV, masking, opcode and
# the fragmentation and control rules before the size, websockets the size before RSV and the
# control rules (1002 vs 1009), a 64-bit top bit as a size too (1002 vs 1009), a control
# frame against the message's size first (1002 or 1007 vs 1009); a text frame is text to us
# before anything else (1003 vs websockets' 1002 or 1009); websockets decodes a close reason
# before checking the code (1002 vs 1007).
CODE_ORDER_DIFFERENCES = {(1002, 1009), (1007, 1009), (1003, 1002), (1003, 1009), (1002, 1007)}

VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, *range(1007, 1015))  # §7.4.1 and IANA's 1012-1014
BAD_UTF8 = (
    b"\xff",  # never in UTF-8
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # a UTF-16 surrogate, U+D800
    b"\xe2\x82",  # truncated "€"
    b"\xf4\x90\x80\x80",  # above U+10FFFF
)
WS_URI = parse_uri("ws://gateway.test/")


# --- Frames on the wire ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One frame to write, valid or not (RFC 6455 §5.2 base framing)."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0  # RSV1-3, the 3 bits under FIN
    masked: bool = True
    key: bytes = b"\x37\xfa\x21\x3d"
    length_form: int = 0  # 126 or 127: that extended length even where a shorter one fits
    length_msb: bool = False  # a 64-bit length with its top bit set, and no payload


@dataclass(frozen=True)
class Wire:
    """Frames for one side to read: valid ones, then perhaps a bad one, then more."""

    role: Role  # of the side reading them
    max_size: int  # our max_message_size and websockets' max_size
    frames: tuple[Spec, ...]


def is_valid_close_code(code: int) -> bool:
    return code in VALID_CLOSE_CODES or 3000 <= code <= 4999  # §7.4.1, §7.4.2


def close_body(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2) + reason


def encode(spec: Spec) -> bytes:
    """The frame's bytes. §5.2 asks a sender for the shortest length encoding, but neither
    parser requires it of a data frame, so a longer one (``length_form``) is valid input there
    (on a control frame, see "control_long_form")."""
    head1 = (0x80 if spec.fin else 0) | spec.rsv << 4 | spec.opcode
    mask_bit = 0x80 if spec.masked else 0
    size = len(spec.payload)
    if spec.length_msb:
        header = bytes((head1, mask_bit | 127)) + (1 << 63 | size).to_bytes(8)
        return header + spec.key if spec.masked else header
    shortest = 0 if size < 126 else 126 if size < 0x10000 else 127
    form = max(shortest, spec.length_form)
    if form == 0:
        header = bytes((head1, mask_bit | size))
    else:
        header = bytes((head1, mask_bit | form)) + size.to_bytes(2 if form == 126 else 8)
    if not spec.masked:
        return header + spec.payload
    return header + spec.key + apply_mask(spec.payload, spec.key)  # §5.3


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` in slices of ``sizes``, in turn: frames owe nothing to how reads cut them."""
    pieces: list[bytes] = []
    pos = 0
    while pos < len(data):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def drive(parser: Generator[None, None, T]) -> T:
    """Run one of websockets' generator-based parsers over a stream that has ended."""
    try:
        next(parser)
    except StopIteration as done:
        result: T = done.value
        return result
    raise AssertionError("the parser wants more bytes than were written")


def frames_written(data: bytes, *, masked: bool) -> list[Frame]:
    """``data`` parsed with websockets' ``Frame.parse``, as the peer reads it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while not drive(reader.at_eof()):
        frames.append(drive(Frame.parse(reader.read_exact, mask=masked)))
    return frames


# --- The two sides behind one interface -----------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One event either side reports: a message, a ping or pong, or the peer's close."""

    kind: str  # "binary", "text", "ping", "pong" or "close"
    data: bytes = b""
    code: int | None = None  # of a close
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    events: list[Seen]
    replies: list[tuple[int, bytes]]  # (opcode, payload) written, the failing close excluded
    refused: int | None  # the close code it failed the connection with (§7.1.7), if it did


def close_seen(code: int, reason: str) -> Seen:
    return Seen("close", code=code, reason=reason)


def expected_replies(events: list[Seen]) -> list[tuple[int, bytes]]:
    """§5.5.2: a pong per ping, same payload; §5.5.1: the peer's close echoed."""
    replies = []
    for event in events:
        if event.kind == "ping":
            replies.append((OP_PONG, event.data))
        elif event.kind == "close":
            assert event.code is not None
            body = b"" if event.code == 1005 else close_body(event.code, event.reason.encode())
            replies.append((OP_CLOSE, body))
    return replies


class Side:
    """One implementation reading a stream: what it reported and wrote so far."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.events: list[Seen] = []
        self.written = bytearray()

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    @property
    def failed(self) -> bool:
        raise NotImplementedError

    def outcome(self) -> Outcome:
        frames = frames_written(bytes(self.written), masked=self.role is Role.CLIENT)
        replies = [(int(frame.opcode), bytes(frame.data)) for frame in frames]
        refused = None
        if self.failed:
            opcode, body = replies.pop()
            assert opcode == OP_CLOSE
            refused = int.from_bytes(body[:2])
        assert replies == expected_replies(self.events)
        return Outcome(self.events, replies, refused)


class OurSide(Side):
    def __init__(self, role: Role, max_size: int) -> None:
        super().__init__(role)
        self.conn = WebSocketConnection(role, max_size)
        self._failed = False

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, ws.Failed):
                self._failed = True
            else:
                self.events.append(our_seen(event))
        self.written += self.conn.data_to_send()

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def waiting(self) -> bool:
        """Holding the start of a frame."""
        return self.conn._buffer is not None


def our_seen(event: ws.Event) -> Seen:
    if isinstance(event, ws.Message):
        return Seen("binary", event.data)
    if isinstance(event, ws.Ping):
        return Seen("ping", event.payload)
    if isinstance(event, ws.Pong):
        return Seen("pong", event.payload)
    assert isinstance(event, ws.Closed)
    return close_seen(event.code, event.reason)


def websockets_protocol(role: Role, max_size: int | None) -> Protocol:
    """websockets' Sans-I/O connection in ``role``, past the opening handshake."""
    if role is Role.SERVER:
        return ServerProtocol(state=WsState.OPEN, max_size=max_size)
    return ClientProtocol(WS_URI, state=WsState.OPEN, max_size=max_size)


class TheirSide(Side):
    """websockets' Protocol; the fragments of a message joined as its connection layer does."""

    def __init__(self, role: Role, max_size: int | None) -> None:
        super().__init__(role)
        self.protocol = websockets_protocol(role, max_size)
        self.fragments: list[bytes] | None = None
        self.kind = "binary"
        self.text_seen = False

    def feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for frame in self.protocol.events_received():
            assert isinstance(frame, Frame)
            self._receive(frame)
        self.written += b"".join(self.protocol.data_to_send())  # b"" is its EOF mark

    def _receive(self, frame: Frame) -> None:
        opcode, data = frame.opcode, bytes(frame.data)
        if opcode is Opcode.PING or opcode is Opcode.PONG:
            self.events.append(Seen(opcode.name.lower(), data))
            return
        if opcode is Opcode.CLOSE:
            close = Close.parse(data)
            self.events.append(close_seen(int(close.code), close.reason))
            return
        if opcode is Opcode.CONT:
            assert self.fragments is not None
            self.fragments.append(data)
        else:
            self.kind = opcode.name.lower()
            self.text_seen |= opcode is Opcode.TEXT
            self.fragments = [data]
        if frame.fin:
            self.events.append(Seen(self.kind, b"".join(self.fragments)))
            self.fragments = None

    @property
    def failed(self) -> bool:
        return self.protocol.parser_exc is not None

    def ends_mid_frame(self) -> bool:
        """Feeds the end of the stream: whether it came inside a frame (bytes buffered, or a
        header read and its mask or payload not yet), which websockets fails with EOFError.
        At a frame boundary its parser ends cleanly."""
        self.protocol.receive_eof()
        return isinstance(self.protocol.parser_exc, EOFError)


def run_both(
    role: Role, max_size: int, data: bytes, sizes: Sequence[int], *, step_by_step: bool = False
) -> tuple[OurSide, TheirSide]:
    """Feed ``data`` to both sides in the same slices; with ``step_by_step`` (valid input)
    their events must agree after every slice."""
    ours, theirs = OurSide(role, max_size), TheirSide(role, max_size)
    for chunk in chunks(data, sizes):
        ours.feed(chunk)
        theirs.feed(chunk)
        if step_by_step:
            assert ours.events == theirs.events
    return ours, theirs


def outcomes(
    wire: Wire, frames: Sequence[Spec], sizes: Sequence[int], *, step_by_step: bool = False
) -> tuple[Outcome, Outcome]:
    data = b"".join(encode(frame) for frame in frames)
    ours, theirs = run_both(wire.role, wire.max_size, data, sizes, step_by_step=step_by_step)
    return ours.outcome(), theirs.outcome()


# --- The referee: which RFC 6455 rules a frame breaks ---------------------------------------


def defects(spec: Spec, role: Role, pending: int | None, max_size: int) -> frozenset[str]:
    """The rules ``spec`` breaks, arriving while ``pending`` bytes of a message are in."""
    found = set()
    if spec.rsv:
        found.add("rsv")
    if spec.masked is not (role is Role.SERVER):
        found.add("mask")
    if spec.length_msb:
        found.add("length_msb")
    size = 1 << 63 if spec.length_msb else len(spec.payload)
    room = max_size - (pending or 0)
    if spec.opcode in CONTROL_OPCODES:
        found |= control_defects(spec, size, room, pending)
    elif spec.opcode in DATA_OPCODES:
        found |= data_defects(spec, size, room, pending)
    else:
        found.add("opcode")
    return frozenset(found)


def data_defects(spec: Spec, size: int, room: int, pending: int | None) -> set[str]:
    found = set()
    if spec.opcode == OP_CONTINUATION and pending is None:
        found.add("stray_continuation")
    if spec.opcode != OP_CONTINUATION and pending is not None:
        found.add("data_in_message")
    if spec.opcode == OP_TEXT:
        found.add("text")
    if size > room and not spec.length_msb:
        found.add("too_big")
    return found


def control_defects(spec: Spec, size: int, room: int, pending: int | None) -> set[str]:
    found = set()
    if not spec.fin:
        found.add("control_fragmented")
    if size > MAX_CONTROL:
        found.add("control_too_long")
    elif spec.length_form or spec.length_msb:
        found.add("control_long_form")
    if size > room:
        found.add("control_over_remaining")
    if spec.opcode == OP_CLOSE:
        if pending is not None:
            found.add("close_in_message")
        if size <= MAX_CONTROL:
            found |= close_defects(spec.payload)
    return found


def close_defects(body: bytes) -> set[str]:
    """§5.5.1: empty, or a 2-byte code (§7.4) then a UTF-8 reason."""
    if len(body) == 1:
        return {"close_short"}
    found = set()
    if len(body) >= 2 and not is_valid_close_code(int.from_bytes(body[:2])):
        found.add("close_code")
    try:
        body[2:].decode()
    except UnicodeDecodeError:
        found.add("close_utf8")
    return found


def next_pending(spec: Spec, pending: int | None) -> int | None:
    """The bytes of the unfinished message after a valid frame (§5.4)."""
    if spec.opcode in CONTROL_OPCODES:
        return pending
    return None if spec.fin else (pending or 0) + len(spec.payload)


def first_defect(wire: Wire) -> tuple[int, frozenset[str]]:
    """The index of the first frame breaking a rule, and the rules; past the end if none does
    before a valid close, after which both ignore the input (§1.4, §5.5.1)."""
    pending: int | None = None
    for index, spec in enumerate(wire.frames):
        found = defects(spec, wire.role, pending, wire.max_size)
        if found:
            return index, found
        if spec.opcode == OP_CLOSE:
            break
        pending = next_pending(spec, pending)
    return len(wire.frames), frozenset()


def expected_codes(found: frozenset[str], side: int) -> frozenset[int]:
    """The codes ``side`` may fail a frame breaking ``found`` with; empty: it accepts it."""
    return frozenset(code for rule in found if (code := RULES[rule][side]) is not None)


# --- Strategies -----------------------------------------------------------------------------
# The stream generator draws step by step with plain functions: building strategies per frame
# would cost Hypothesis more than running both parsers.


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def blobs(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Payloads, cheap to draw at any size (Hypothesis' own buffer is a few KiB)."""
    return st.builds(_blob, st.integers(min_size, max_size), SEEDS)


def _spliced(head: str, bad: bytes, tail: str) -> bytes:
    return head.encode() + bad + tail.encode()


SEEDS = st.integers(0, 2**16)
KEYS = st.binary(min_size=4, max_size=4)
FORMS = st.sampled_from([0, 0, 0, 126, 127])
LONG_FORMS = st.sampled_from([126, 127])
SHORTEST = st.just(0)
ROLES = st.sampled_from(Role)
CONTROLS = st.sampled_from([OP_PING, OP_PONG])
CLOSE_CODES = st.one_of(st.sampled_from(VALID_CLOSE_CODES), st.integers(3000, 4999))
BAD_CLOSE_CODES = st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]) | (
    st.integers(0, 65535).filter(lambda code: not is_valid_close_code(code))
)
REASONS = st.text(max_size=30)  # at most 120 bytes: a close payload fits in 125
UTF8 = REASONS.map(str.encode)
NOT_UTF8 = st.builds(_spliced, st.text(max_size=8), st.sampled_from(BAD_UTF8), st.text(max_size=8))
CLOSE_BODIES = st.just(b"") | st.builds(close_body, CLOSE_CODES, UTF8)
BAD_CLOSE_BODIES = st.one_of(
    blobs(1, 1),
    st.builds(close_body, BAD_CLOSE_CODES, UTF8),
    st.builds(close_body, CLOSE_CODES, NOT_UTF8),
    st.builds(close_body, BAD_CLOSE_CODES, NOT_UTF8),
)
SLICES = st.lists(st.integers(1, 8) | st.integers(9, 2048), min_size=1, max_size=6)


@dataclass(frozen=True)
class At:
    """Where in a stream a frame is drawn for: the reader's role and message state."""

    role: Role
    pending: int | None
    max_size: int

    @property
    def room(self) -> int:
        return self.max_size - (self.pending or 0)

    @property
    def data_opcode(self) -> int:
        return OP_BINARY if self.pending is None else OP_CONTINUATION


def blob(draw: st.DrawFn, min_size: int, max_size: int) -> bytes:
    return _blob(draw(st.integers(min_size, max_size)), draw(SEEDS))


def frame(
    draw: st.DrawFn,
    at: At,
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    forms: st.SearchStrategy[int] = FORMS,
) -> Spec:
    """A frame masked as ``at.role`` must read it (§5.1)."""
    masked = at.role is Role.SERVER
    return Spec(opcode, payload, fin, masked=masked, key=draw(KEYS), length_form=draw(forms))


def valid_frame(draw: st.DrawFn, at: At) -> Spec:
    """The next fragment of a binary message, or a ping or pong that fits (§5.4, §5.5)."""
    if draw(st.booleans()):
        payload = blob(draw, 0, at.room)
        return frame(draw, at, at.data_opcode, payload, fin=draw(st.booleans()))
    payload = blob(draw, 0, min(MAX_CONTROL, at.room))
    return frame(draw, at, draw(CONTROLS), payload, forms=SHORTEST)


def valid_close(draw: st.DrawFn, at: At) -> Spec:
    return frame(draw, at, OP_CLOSE, draw(CLOSE_BODIES), forms=SHORTEST)


# One maker per rule, each breaking that rule alone (but ``arbitrary_header``).


def with_rsv(draw: st.DrawFn, at: At) -> Spec:
    return replace(valid_frame(draw, at), rsv=draw(st.integers(1, 7)))


def with_reserved_opcode(draw: st.DrawFn, at: At) -> Spec:
    return replace(valid_frame(draw, at), opcode=draw(st.sampled_from(RESERVED_OPCODES)))


def wrongly_masked(draw: st.DrawFn, at: At) -> Spec:
    spec = valid_frame(draw, at)
    return replace(spec, masked=not spec.masked)


def with_top_bit_length(draw: st.DrawFn, at: At) -> Spec:
    return replace(valid_frame(draw, at), length_msb=True)


def arbitrary_header(draw: st.DrawFn, at: At) -> Spec:
    """Any FIN, RSV, opcode and mask bit: frames breaking several rules at once."""
    spec = frame(draw, at, draw(st.integers(0, 15)), blob(draw, 0, 200), fin=draw(st.booleans()))
    return replace(spec, rsv=draw(st.integers(0, 7)), masked=draw(st.booleans()))


def fragmented_control(draw: st.DrawFn, at: At) -> Spec:
    payload = blob(draw, 0, min(MAX_CONTROL, at.room))
    opcode = draw(st.sampled_from(CONTROL_OPCODES))
    return frame(draw, at, opcode, payload, fin=False, forms=SHORTEST)


def long_control(draw: st.DrawFn, at: At) -> Spec:
    payload = blob(draw, MAX_CONTROL + 1, 200)
    return frame(draw, at, draw(st.sampled_from(CONTROL_OPCODES)), payload)


def long_form_control(draw: st.DrawFn, at: At) -> Spec:
    payload = blob(draw, 0, min(MAX_CONTROL, at.room))
    return frame(draw, at, draw(st.sampled_from(CONTROL_OPCODES)), payload, forms=LONG_FORMS)


def misplaced_data(draw: st.DrawFn, at: At) -> Spec:
    """A continuation with no message, or a new message inside one (§5.4)."""
    opcode = OP_CONTINUATION if at.pending is None else OP_BINARY
    return frame(draw, at, opcode, blob(draw, 0, 50), fin=draw(st.booleans()))


def oversized(draw: st.DrawFn, at: At) -> Spec:
    payload = blob(draw, at.room + 1, at.room + 40)
    return frame(draw, at, at.data_opcode, payload, fin=draw(st.booleans()))


def bad_close(draw: st.DrawFn, at: At) -> Spec:
    return frame(draw, at, OP_CLOSE, draw(BAD_CLOSE_BODIES), forms=SHORTEST)


def text(draw: st.DrawFn, at: At) -> Spec:
    return frame(draw, at, OP_TEXT, draw(UTF8 | NOT_UTF8), fin=draw(st.booleans()))


def control_over_room(draw: st.DrawFn, at: At) -> Spec:
    payload = blob(draw, at.room + 1, MAX_CONTROL)
    return frame(draw, at, draw(CONTROLS), payload, forms=SHORTEST)


BAD_FRAMES = [
    with_rsv, with_reserved_opcode, wrongly_masked, with_top_bit_length, arbitrary_header,
    fragmented_control, long_control, long_form_control, misplaced_data, oversized, bad_close,
    text,
]  # fmt: skip


def bad_frame(draw: st.DrawFn, at: At) -> Spec:
    makers = list(BAD_FRAMES)
    if at.pending is not None:
        makers.append(valid_close)  # amid a message
    if at.room < MAX_CONTROL:
        makers.append(control_over_room)
    return draw(st.sampled_from(makers))(draw, at)


@st.composite
def wires(draw: st.DrawFn) -> Wire:
    """Valid frames, then a close, a bad frame or nothing, then a few more frames."""
    role, max_size = draw(ROLES), draw(st.integers(16, 600))
    frames: list[Spec] = []
    pending: int | None = None
    for _ in range(draw(st.integers(0, 6))):
        frames.append(valid_frame(draw, At(role, pending, max_size)))
        pending = next_pending(frames[-1], pending)
    at = At(role, pending, max_size)
    ending = draw(st.sampled_from(["bad", "bad", "bad", "close", "none"]))
    if ending == "close" and pending is None:
        frames.append(valid_close(draw, at))
    elif ending == "bad":
        frames.append(bad_frame(draw, at))
    after = At(role, None, max_size)
    frames += [valid_frame(draw, after) for _ in range(draw(st.integers(0, 2)))]
    return Wire(role, max_size, tuple(frames))


# --- Same bytes, same outcome ---------------------------------------------------------------


def check_verdict(after: Outcome, before: Outcome, codes: frozenset[int]) -> None:
    """One side's outcome with the bad frame, against its outcome without it."""
    if codes:  # refused (§7.1.7): nothing more is reported or answered, whatever follows
        assert after.refused in codes
        assert (after.events, after.replies) == (before.events, before.replies)
    else:  # accepted: one of RULES' documented differences
        assert after.refused is None
        assert after.events[: len(before.events)] == before.events


@settings(max_examples=1500, deadline=None)
@given(wire=wires(), sizes=SLICES)
def test_same_frames_same_outcome(wire: Wire, sizes: list[int]) -> None:
    bad, found = first_defect(wire)
    ours, theirs = outcomes(wire, wire.frames[:bad], sizes, step_by_step=True)
    assert ours == theirs
    assert ours.refused is None
    if bad == len(wire.frames):
        return
    our_codes, their_codes = expected_codes(found, OURS), expected_codes(found, THEIRS)
    # The frames after the bad one only if both refuse it: a side that accepts it would read
    # them, and they are drawn for the state before it.
    frames = wire.frames if our_codes and their_codes else wire.frames[: bad + 1]
    our_bad, their_bad = outcomes(wire, frames, sizes)
    check_verdict(our_bad, ours, our_codes)
    check_verdict(their_bad, theirs, their_codes)
    if our_codes == their_codes and len(our_codes) == 1:  # comparable: the very same code
        assert our_bad.refused == their_bad.refused


@settings(max_examples=300, deadline=None)
@given(wire=wires(), garbage=st.binary(max_size=80), sizes=SLICES)
def test_garbage_after_frames(wire: Wire, garbage: bytes, sizes: list[int]) -> None:
    data = b"".join(encode(frame) for frame in wire.frames) + garbage
    our_side, their_side = run_both(wire.role, wire.max_size, data, sizes)
    ours, theirs = our_side.outcome(), their_side.outcome()
    both = min(len(ours.events), len(theirs.events))
    assert ours.events[:both] == theirs.events[:both]
    if len(theirs.events) > both:
        # websockets read on past a frame we refused: text, or a control frame with an
        # extended length ("text" and "control_long_form" in RULES).
        assert ours.refused is not None
        assert their_side.text_seen or theirs.events[both].kind in {"ping", "pong", "close"}
    elif len(ours.events) > both:
        # We read on past a frame websockets refused: a close or a control frame amid a
        # message ("close_in_message", "control_over_remaining").
        assert theirs.refused is not None
        assert ours.events[both].kind in {"ping", "pong", "close"}
    elif ours.refused is not None and theirs.refused is None:
        # We judge a frame by its header while websockets reads the payload before checking
        # RSV and the control rules; or it took the start of a text message.
        assert their_side.text_seen or their_side.ends_mid_frame()
    elif theirs.refused is not None and ours.refused is None:
        # websockets refused a control frame's size from its header; we wait for the payload.
        assert our_side.waiting
    elif ours.refused != theirs.refused:
        assert (ours.refused, theirs.refused) in CODE_ORDER_DIFFERENCES


def test_every_close_code() -> None:
    """§7.4: both take exactly the same close codes; all up to 5099 (none is defined above
    4999), and the largest."""
    for code in [*range(5100), 0xFFFF]:
        data = encode(Spec(OP_CLOSE, close_body(code, b"bye")))
        ours, theirs = (side.outcome() for side in run_both(Role.SERVER, 125, data, [len(data)]))
        assert ours == theirs, code


def at_server(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, length_msb: bool = False
) -> Spec:
    """A frame a server reads: masked (§5.1)."""
    return Spec(opcode, payload, fin, rsv, length_msb=length_msb)


DIFFERENCES: list[tuple[str, list[Spec], int | None, int | None]] = [
    ("text frame", [at_server(OP_TEXT, b"hello")], 1003, None),
    ("text frame not UTF-8", [at_server(OP_TEXT, b"\xc0\xaf", fin=False)], 1003, None),
    (
        "close amid a fragmented message",
        [at_server(OP_BINARY, b"frag", fin=False), at_server(OP_CLOSE, close_body(1000))],
        None,
        1002,
    ),
    (
        "ping over the message's remaining room",
        [at_server(OP_BINARY, b"x" * 12, fin=False), at_server(OP_PING, b"ping!")],
        None,
        1009,
    ),
    ("64-bit length with its top bit", [at_server(OP_BINARY, length_msb=True)], 1002, 1009),
    ("bad close code, bad UTF-8", [at_server(OP_CLOSE, close_body(999, b"\xff"))], 1002, 1007),
    (
        "text inside a fragmented message",
        [at_server(OP_BINARY, b"a", fin=False), at_server(OP_TEXT, b"b")],
        1003,
        1002,
    ),
    ("RSV bit on an oversized frame", [at_server(OP_BINARY, b"x" * 17, rsv=4)], 1002, 1009),
    ("oversized ping", [at_server(OP_PING, b"x" * 126)], 1002, 1009),
    (
        "ping with a 16-bit length",
        [replace(at_server(OP_PING, b"hi"), length_form=126)],
        1002,
        None,
    ),
]


@pytest.mark.parametrize(
    ("frames", "our_code", "their_code"),
    [case[1:] for case in DIFFERENCES],
    ids=[case[0] for case in DIFFERENCES],
)
def test_documented_difference(
    frames: list[Spec], our_code: int | None, their_code: int | None
) -> None:
    """Each difference in RULES and CODE_ORDER_DIFFERENCES, on a server with a 16-byte limit."""
    data = b"".join(encode(frame) for frame in frames)
    ours, theirs = (side.outcome() for side in run_both(Role.SERVER, 16, data, [len(data)]))
    assert (ours.refused, theirs.refused) == (our_code, their_code)


# --- The encoders ---------------------------------------------------------------------------

SIZES = st.integers(0, 300) | st.sampled_from([125, 126, 127, 0xFFFF, 0x10000])
BINARY_SENDS = st.tuples(st.just(OP_BINARY), st.builds(_blob, SIZES, st.integers(0, 255)))
CONTROL_SENDS = st.tuples(CONTROLS, blobs(0, MAX_CONTROL))
OUR_SENDS = st.lists(BINARY_SENDS | CONTROL_SENDS, max_size=6)
SEND: dict[int, Callable[[WebSocketConnection, bytes], None]] = {
    OP_BINARY: WebSocketConnection.send_binary,
    OP_PING: WebSocketConnection.send_ping,
    OP_PONG: WebSocketConnection.send_pong,
}


@settings(max_examples=150, deadline=None)
@given(
    role=ROLES,
    sends=OUR_SENDS,
    close=st.none() | st.tuples(CLOSE_CODES, REASONS),
)
def test_our_frames_parse_with_websockets(
    role: Role, sends: list[tuple[int, bytes]], close: tuple[int, str] | None
) -> None:
    conn = WebSocketConnection(role)
    expected = []
    for opcode, payload in sends:
        SEND[opcode](conn, payload)
        expected.append(Frame(Opcode(opcode), payload))
    if close is not None:
        conn.send_close(*close)
        expected.append(Frame(Opcode.CLOSE, Close(*close).serialize()))
    written = conn.data_to_send()
    assert frames_written(written, masked=role is Role.CLIENT) == expected  # no RSV, FIN set
    unmasked = b"".join(frame.serialize(mask=False) for frame in expected)
    if role is Role.SERVER:  # the very bytes websockets writes: shortest lengths (§5.2)
        assert written == unmasked
    else:  # the same, with a masking key in each frame (§5.3)
        assert len(written) == len(unmasked) + 4 * len(expected)


@dataclass(frozen=True)
class Send:
    """What websockets' Protocol is asked to send: a ping, a pong, or a binary message in
    fragments with a ping after any non-final one (§5.4)."""

    kind: str
    parts: tuple[tuple[bytes, bytes | None], ...]


FRAGMENTS = st.tuples(blobs(0, 300), st.none() | blobs(0, MAX_CONTROL))
WS_SENDS = st.one_of(
    st.builds(Send, st.just("message"), st.lists(FRAGMENTS, min_size=1, max_size=4).map(tuple)),
    st.builds(
        Send, st.sampled_from(["ping", "pong"]), st.tuples(st.tuples(blobs(0, 125), st.none()))
    ),
)
WS_CLOSES = st.none() | st.just((None, "")) | st.tuples(CLOSE_CODES, REASONS)


def send_with_websockets(protocol: Protocol, send: Send) -> list[Seen]:
    """Send ``send``; returns the events the peer should see."""
    if send.kind != "message":
        payload = send.parts[0][0]
        (protocol.send_ping if send.kind == "ping" else protocol.send_pong)(payload)
        return [Seen(send.kind, payload)]
    seen = []
    for index, (fragment, ping) in enumerate(send.parts):
        last = index == len(send.parts) - 1
        if index == 0:
            protocol.send_binary(fragment, fin=last)
        else:
            protocol.send_continuation(fragment, fin=last)
        if ping is not None and not last:
            protocol.send_ping(ping)
            seen.append(Seen("ping", ping))
    return [*seen, Seen("binary", b"".join(fragment for fragment, _ in send.parts))]


@settings(max_examples=150, deadline=None)
@given(role=ROLES, sends=st.lists(WS_SENDS, max_size=5), close=WS_CLOSES, sizes=SLICES)
def test_websockets_frames_parse_with_ours(
    role: Role, sends: list[Send], close: tuple[int | None, str] | None, sizes: list[int]
) -> None:
    peer = websockets_protocol(Role.CLIENT if role is Role.SERVER else Role.SERVER, None)
    expected = [event for send in sends for event in send_with_websockets(peer, send)]
    if close is not None:
        peer.send_close(*close)
        expected.append(close_seen(1005 if close[0] is None else close[0], close[1]))
    data = b"".join(peer.data_to_send())
    ours, theirs = (side.outcome() for side in run_both(role, 2**20, data, sizes))
    assert ours == theirs
    assert ours.events == expected
