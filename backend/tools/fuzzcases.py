"""Seeded hostile input for the device endpoint, each case with the answers it may get.

Three layers, as a device reaches the shard: HTTP upgrade request heads, RFC 6455 frames and
ProtoMsg envelopes (see docs/protocol.md). A case is a recipe (a named mutation of valid
input) with the set of answers the protocol allows for it, so the fuzz driver
(``backend.tools.fuzzdevice``) can tell a refusal from a defect. ``case(index)`` derives each case
from (seed, stream, index) alone: any case a run reports can be rebuilt on its own.

Answers are strings: ``none``, ``pong`` (control pong), ``accept``, ``ws-pong``,
``error:<ProtoMsg error code>``, ``close:<WebSocket close code>``, several joined with ``+``
(``summary``); HTTP cases expect statuses.

No I/O here: the driver, ``bench/fuzz.py`` and ``tests/tools/test_fuzz.py`` share it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import msgpack
from websockets.utils import apply_mask

from backend.bus.auth import issue_device_token
from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol import websocket as ws
from backend.protocol.envelope import ProtoMsg
from backend.protocol.http import DEVICE_PATH, SUBPROTOCOL
from backend.shard.config import ShardConfig

NONE = "none"
PONG = "pong"
ACCEPT = "accept"
WS_PONG = "ws-pong"


def error(code: int) -> str:
    return f"error:{code}"


def close(code: int) -> str:
    return f"close:{code}"


def summary(kinds: Iterable[str]) -> str:
    """One answer from what came back for a case: its kinds, sorted, or ``none``."""
    found = sorted(set(kinds) - {NONE})
    return "+".join(found) if found else NONE


# Accepted today, refused by a hardened shard: odd or long sids and typs, deep props, relays
# for no open operator session, messages over NATS' max_payload. Either answer is documented.
REFUSABLE = frozenset({error(400), error(404), error(413)})
# Whatever a well-framed ProtoMsg may get: never a close (only a message over the size limit
# closes, and the framing refuses that first).
SESSION_ANSWERS = frozenset(
    {NONE, PONG, ACCEPT, *(error(code) for code in (400, 404, 409, 413, 501))}
)

SHARD_DEFAULTS = ShardConfig(jwt_secret="unused")
"""The limits a shard enforces unless told otherwise (the fuzz targets those)."""
_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_TEXT = _SAFE + " .:/*>{}\"'\\%é€中😀\x00\t"
_ODD_SID_PARTS = (" ", ".", "*", ">", "\r\n", "\x00", "é", "😀", "/", "$JS.API", "\t")
_CONTROL_TYPES = frozenset(
    {env.TYP_OPEN, env.TYP_ACCEPT, env.TYP_CLOSE, env.TYP_ERROR, env.TYP_PING, env.TYP_PONG}
)
_RELAY_TYPES = ("new", "shell", "stop", "resize", "ping", "pong", "get_file", "forward")
_VALID_CLOSE_CODES = (*range(1000, 1004), *range(1007, 1015), 3000, 3999, 4000, 4001, 4999)
_INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
_PACK = msgpack.Packer(use_bin_type=True, autoreset=True)


@dataclass(frozen=True, slots=True)
class HttpCase:
    """A request head on a fresh connection, written in ``chunks``."""

    recipe: str
    chunks: tuple[bytes, ...]
    expect: frozenset[int]
    complete: bool = True
    """False: the head never ends; the shard answers 408 after its handshake timeout."""

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True, slots=True)
class FrameCase:
    """Bytes written on an upgraded connection (masked frames unless the recipe says not)."""

    recipe: str
    data: bytes
    expect: frozenset[str]
    ends: bool = False
    """The expected answer closes the connection."""
    abandon: bool = False
    """A partial frame: the client drops the connection right after writing it."""


Case = HttpCase | FrameCase


# --- framing --------------------------------------------------------------------------------


def frame_head(
    rng: random.Random,
    opcode: int,
    length: int,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    wide: int = 0,
) -> tuple[bytes, bytes]:
    """An RFC 6455 frame header for ``length`` payload bytes and its mask key (b"" unmasked).
    ``wide`` forces a 16-bit (126) or 64-bit (127) length field even for a short payload."""
    form = wide or (0 if length < 126 else 126 if length < 0x10000 else 127)
    mask_bit = 0x80 if masked else 0
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    if form == 0:
        head += bytes((mask_bit | length,))
    elif form == 126:
        head += bytes((mask_bit | 126,)) + length.to_bytes(2)
    else:
        head += bytes((mask_bit | 127,)) + length.to_bytes(8)
    key = rng.randbytes(4) if masked else b""
    return head + key, key


def frame(rng: random.Random, payload: bytes, opcode: int = ws.OP_BINARY, **head: Any) -> bytes:
    header, key = frame_head(rng, opcode, len(payload), **head)
    return header + (apply_mask(payload, key) if key else payload)


def barrier(rng: random.Random, sid: str) -> bytes:
    """A control ping: its pong, in order behind every answer to what was sent before it,
    marks the end of a case's answers."""
    return frame(rng, env.encode(ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, sid)))


# --- random values --------------------------------------------------------------------------


def _safe_id(rng: random.Random, longest: int = 32) -> str:
    return "".join(rng.choices(_SAFE, k=rng.randint(1, longest)))


def _text(rng: random.Random, longest: int = 40) -> str:
    return "".join(rng.choices(_TEXT, k=rng.randint(0, longest)))


def _odd_sid(rng: random.Random) -> str:
    """Not a NATS subject token: dots, wildcards, spaces, CR/LF, non-ASCII, or too long."""
    if rng.random() < 0.3:
        return rng.choice(_SAFE) * rng.randint(129, 5000)
    parts = [_safe_id(rng, 8), rng.choice(_ODD_SID_PARTS), _safe_id(rng, 8)]
    return "".join(parts)


def _scalar(rng: random.Random) -> Any:
    return rng.choice(
        (None, True, -(2**63), 2**64 - 1, rng.random(), _text(rng), rng.randbytes(8), [], {})
    )


def _nested(rng: random.Random, depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` lists or maps (built bottom-up: no recursion)."""
    value = leaf
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _nested_bytes(rng: random.Random, depth: int) -> bytes:
    """MessagePack of ``depth`` nested one-element arrays or maps around 1, packed by hand:
    msgpack's packer refuses more than 512 levels, its unpacker takes 1024."""
    return b"".join(rng.choice((b"\x91", b"\x81\xa1k")) for _ in range(depth)) + b"\x01"


def _envelope(hdr: bytes, body: bytes | None = None) -> bytes:
    """A ProtoMsg map around an already packed ``hdr`` value (and ``body`` value)."""
    if body is None:
        return b"\x81\xa3hdr" + hdr
    return b"\x82\xa3hdr" + hdr + b"\xa4body" + body


class CaseGenerator:
    """Cases for one stream (a fuzz worker) of a seeded run."""

    def __init__(
        self,
        seed: int,
        stream: int,
        jwt_secret: str,
        *,
        max_message_size: int = SHARD_DEFAULTS.max_message_size,
        max_request_size: int = SHARD_DEFAULTS.max_request_size,
    ) -> None:
        self.seed = seed
        self.stream = stream
        self.jwt_secret = jwt_secret
        self.max_message_size = max_message_size
        self.max_request_size = max_request_size
        self.device_id = f"fuzz-{stream}-http"
        recipes = _HTTP_RECIPES + _WS_RECIPES + _ENVELOPE_RECIPES
        self._recipes = [recipe for _weight, recipe in recipes]
        self._weights = [weight for weight, _recipe in recipes]

    def case(self, index: int) -> Case:
        rng = random.Random(f"{self.seed}/{self.stream}/{index}")
        return rng.choices(self._recipes, self._weights)[0](self, rng)

    # --- HTTP -----------------------------------------------------------------------------

    def token(self) -> str:
        return issue_device_token(self.device_id, self.jwt_secret)

    def request(
        self,
        rng: random.Random,
        recipe: str,
        expect: Iterable[int],
        *,
        method: str = "GET",
        target: str = DEVICE_PATH,
        drop: str = "",
        extra: Iterable[tuple[str, str]] = (),
        replace: dict[str, str] | None = None,
    ) -> HttpCase:
        """An upgrade request with header ``drop`` left out, values from ``replace`` and
        ``extra`` fields appended, in random order and letter case."""
        fields = {
            "Host": "shard.local",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Authorization": f"Bearer {self.token()}",
            **(replace or {}),
        }
        fields.pop(drop, None)
        lines = [(_case(rng, name), value) for name, value in fields.items()] + list(extra)
        rng.shuffle(lines)
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in lines)
        return self.http_case(rng, recipe, head.encode() + b"\r\n", expect)

    def http_case(
        self, rng: random.Random, recipe: str, data: bytes, expect: Iterable[int]
    ) -> HttpCase:
        """``data`` in 1 to 4 writes, now and then byte by byte (the parser is incremental)."""
        if len(data) < 400 and rng.random() < 0.05:
            chunks = tuple(data[i : i + 1] for i in range(len(data)))
        else:
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 3))))
            chunks = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
        return HttpCase(recipe, chunks, frozenset(expect))

    # --- messages and frames ------------------------------------------------------------------

    def message(
        self, rng: random.Random, recipe: str, payload: bytes, expect: Iterable[str]
    ) -> FrameCase:
        """``payload`` as one binary message: mostly one frame, sometimes with a wider length
        field than needed, sometimes in fragments with a WebSocket ping or pong between."""
        expected = frozenset(expect)
        draw = rng.random()
        if draw < 0.8 or len(payload) < 2:
            wide = rng.choice((0, 0, 0, 126, 127)) if len(payload) < 0x10000 else 0
            return FrameCase(recipe, frame(rng, payload, wide=wide), expected)
        cuts = sorted(rng.sample(range(1, len(payload)), min(len(payload) - 1, rng.randint(1, 5))))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        frames = [
            frame(rng, piece, ws.OP_CONTINUATION if i else ws.OP_BINARY, fin=i == len(cuts))
            for i, piece in enumerate(pieces)
        ]
        if draw < 0.9:  # control frames may come between fragments (RFC 6455 §5.4)
            control = rng.choice((ws.OP_PING, ws.OP_PONG))
            frames.insert(rng.randint(1, len(cuts)), frame(rng, rng.randbytes(9), control))
            if control == ws.OP_PING:
                expected = frozenset(summary((kind, WS_PONG)) for kind in expected)
        return FrameCase(f"{recipe}/fragmented", b"".join(frames), expected)

    def closing(self, rng: random.Random, recipe: str, data: bytes, code: int) -> FrameCase:
        return FrameCase(recipe, data, frozenset({close(code)}), ends=True)


def _case(rng: random.Random, name: str) -> str:
    """Header names are case-insensitive (RFC 9110 §5.1)."""
    draw = rng.random()
    return name.lower() if draw < 0.2 else name.upper() if draw < 0.3 else name


Recipe = Callable[[CaseGenerator, random.Random], Case]


# --- HTTP recipes -----------------------------------------------------------------------------


def _http_valid(gen: CaseGenerator, rng: random.Random) -> Case:
    extra = [("X-Fuzz", _safe_id(rng)), ("Sec-WebSocket-Protocol", f"chat, {SUBPROTOCOL}")]
    replace = {
        "Connection": rng.choice(("Upgrade", "keep-alive, Upgrade", "upgrade")),
        "Upgrade": rng.choice(("websocket", "WebSocket", "h2c, websocket")),
    }
    target = DEVICE_PATH + rng.choice(("", "?x=1", "?"))
    return gen.request(rng, "http/valid", {101}, target=target, replace=replace, extra=extra)


def _http_method(gen: CaseGenerator, rng: random.Random) -> Case:
    name = rng.choice(("POST", "PUT", "HEAD", "DELETE", "get", "CONNECT", _safe_id(rng, 9)))
    return gen.request(rng, "http/method", {405}, method=name if name != "GET" else "PUT")


def _http_path(gen: CaseGenerator, rng: random.Random) -> Case:
    target = "/" + "".join(rng.choices(_SAFE + "/%?.~", k=rng.randint(0, 300)))
    if target.partition("?")[0] in (DEVICE_PATH, "/healthz", "/metrics"):
        target = "/nowhere"
    return gen.request(rng, "http/path", {404}, target=target)


def _http_endpoint(gen: CaseGenerator, rng: random.Random) -> Case:
    target = "/metrics" if rng.random() < 0.05 else "/healthz"
    return gen.request(rng, f"http{target}", {200}, target=target)


def _http_missing(gen: CaseGenerator, rng: random.Random) -> Case:
    drop = rng.choice(
        ("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version")
    )
    return gen.request(rng, "http/missing-header", {400}, drop=drop)


def _http_bad_value(gen: CaseGenerator, rng: random.Random) -> Case:
    name, value = rng.choice(
        (("Upgrade", "websocket2"), ("Upgrade", ""), ("Connection", "close"),
         ("Host", ""), ("Sec-WebSocket-Key", "c2hvcnQ="), ("Sec-WebSocket-Key", "!" * 24),
         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ")))  # fmt: skip
    return gen.request(rng, "http/bad-value", {400}, replace={name: value})


def _http_version(gen: CaseGenerator, rng: random.Random) -> Case:
    value = rng.choice(("8", "12", "14", "13, 8", "", "thirteen", "013"))
    return gen.request(rng, "http/version", {426}, replace={"Sec-WebSocket-Version": value})


def _http_auth(gen: CaseGenerator, rng: random.Random) -> Case:
    now = int(rng.random() * 10) + 1_700_000_000
    value = rng.choice(
        (
            "",
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer " + _safe_id(rng, 60),
            "Bearer a.b.c",
            "Bearer " + issue_device_token("fuzz-expired", gen.jwt_secret, ttl=-60),
            "Bearer " + issue_device_token("fuzz-other", "another-secret-of-32-bytes-at-least"),
            "Bearer " + jwt.encode({"sub": "a.b", "exp": now * 2}, gen.jwt_secret),
            "Bearer " + jwt.encode({"sub": "x" * 129, "exp": now * 2}, gen.jwt_secret),
            "Bearer " + jwt.encode({"sub": 7, "exp": now * 2}, gen.jwt_secret),
            "Bearer " + jwt.encode({"sub": "fuzz-noexp"}, gen.jwt_secret),
            # PyJWT takes "" as no key for "none" (its annotation has no None).
            "Bearer " + jwt.encode({"sub": "fuzz-none", "exp": now * 2}, "", "none"),
        )
    )
    if not value:
        return gen.request(rng, "http/auth", {401}, drop="Authorization")
    return gen.request(rng, "http/auth", {401}, replace={"Authorization": value})


def _http_request_line(gen: CaseGenerator, rng: random.Random) -> Case:
    line = rng.choice(
        (f"GET {DEVICE_PATH} HTTP/1.0", f"GET {DEVICE_PATH}", f"GET  {DEVICE_PATH} HTTP/1.1",
         f"GET {DEVICE_PATH} HTTP/1.1 ", "GET HTTP/1.1", f"G(T {DEVICE_PATH} HTTP/1.1",
         f"GET {DEVICE_PATH}\x7f HTTP/1.1", _text(rng, 200).replace("\r", "")))  # fmt: skip
    return gen.http_case(rng, "http/request-line", f"{line}\r\nHost: x\r\n\r\n".encode(), {400})


def _http_header_line(gen: CaseGenerator, rng: random.Random) -> Case:
    field = rng.choice(
        ("Host : x", "NoColon", " folded: value", "Bad[Name]: x", "X: a\x01b", "X: a\rb",
         ": empty-name", "X-Bare: a\nb", "Host: second"))  # fmt: skip
    return _raw_header(gen, rng, field)


def _http_non_ascii(gen: CaseGenerator, rng: random.Random) -> Case:
    value = rng.choice(("é", "\x80", "😀", "\xff")) + _safe_id(rng)
    return gen.request(rng, "http/non-ascii", {400}, extra=[("X-Fuzz", value)])


def _http_oversize(gen: CaseGenerator, rng: random.Random) -> Case:
    pad = "a" * rng.randint(gen.max_request_size, gen.max_request_size + 3000)
    data = gen.request(rng, "", {431}, extra=[("X-Pad", pad)]).data
    if rng.random() < 0.5:  # the head never ends within the limit either way
        data = data[:-4]
    # One write: the shard refuses once it holds the limit, and bytes still on their way
    # then would make its close a reset.
    return HttpCase("http/oversize", (data,), frozenset({431}))


def _http_garbage(gen: CaseGenerator, rng: random.Random) -> Case:
    body = rng.randbytes(rng.randint(1, 3000)).replace(b"\r\n\r\n", b"")
    return gen.http_case(rng, "http/garbage", body + b"\r\n\r\n", {400})


def _http_slow(gen: CaseGenerator, rng: random.Random) -> Case:
    head = gen.request(rng, "", {408}).data[: rng.randint(0, 120)]
    return HttpCase("http/slow", (head,), frozenset({408}), complete=False)


_HTTP_RECIPES: list[tuple[float, Recipe]] = [
    (0.6, _http_valid),
    (0.4, _http_method),
    (0.5, _http_path),
    (0.3, _http_endpoint),
    (0.8, _http_missing),
    (0.5, _http_bad_value),
    (0.3, _http_version),
    (0.8, _http_auth),
    (0.3, _http_request_line),
    (0.4, _http_header_line),
    (0.2, _http_non_ascii),
    (0.1, _http_oversize),
    (0.3, _http_garbage),
    (0.003, _http_slow),
]


def _raw_header(gen: CaseGenerator, rng: random.Random, field: str) -> HttpCase:
    """A valid upgrade request with one malformed (or a second Host) field line inserted."""
    head = gen.request(rng, "", {400}).data
    first_end = head.index(b"\r\n") + 2
    data = head[:first_end] + field.encode() + b"\r\n" + head[first_end:]
    return gen.http_case(rng, "http/header-line", data, {400})


# --- RFC 6455 framing recipes -----------------------------------------------------------------


def _ws_ping(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = rng.randbytes(rng.randint(0, 125))
    return FrameCase("ws/ping", frame(rng, payload, ws.OP_PING), frozenset({WS_PONG}))


def _ws_pong(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = rng.randbytes(rng.randint(0, 125))
    return FrameCase("ws/pong", frame(rng, payload, ws.OP_PONG), frozenset({NONE}))


def _ws_text(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = rng.choice((_text(rng).encode(), b"\xff\xfe", b""))
    return gen.closing(
        rng, "ws/text", frame(rng, payload, ws.OP_TEXT, fin=rng.random() < 0.8), 1003
    )


def _ws_reserved_opcode(gen: CaseGenerator, rng: random.Random) -> Case:
    opcode = rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF))
    return gen.closing(rng, "ws/reserved-opcode", frame(rng, rng.randbytes(5), opcode), 1002)


def _ws_rsv(gen: CaseGenerator, rng: random.Random) -> Case:
    opcode = rng.choice((0, 1, 2, 8, 9, 10))
    data = frame(rng, rng.randbytes(5), opcode, rsv=rng.randint(1, 7))
    return gen.closing(rng, "ws/rsv-bits", data, 1002)


def _ws_unmasked(gen: CaseGenerator, rng: random.Random) -> Case:
    opcode = rng.choice((1, 2, 8, 9, 10))
    data = frame(rng, env.encode(_ping(rng)), opcode, masked=False)
    return gen.closing(rng, "ws/unmasked", data, 1002)


def _ws_stray_continuation(gen: CaseGenerator, rng: random.Random) -> Case:
    data = frame(rng, rng.randbytes(5), ws.OP_CONTINUATION, fin=rng.random() < 0.5)
    return gen.closing(rng, "ws/stray-continuation", data, 1002)


def _ws_fragmented_control(gen: CaseGenerator, rng: random.Random) -> Case:
    opcode = rng.choice((ws.OP_CLOSE, ws.OP_PING, ws.OP_PONG))
    data = frame(rng, rng.randbytes(rng.randint(0, 125)), opcode, fin=False)
    return gen.closing(rng, "ws/fragmented-control", data, 1002)


def _ws_long_control(gen: CaseGenerator, rng: random.Random) -> Case:
    opcode = rng.choice((ws.OP_CLOSE, ws.OP_PING, ws.OP_PONG))
    data = frame(rng, b"\x03\xe8" + rng.randbytes(rng.randint(124, 400)), opcode)
    return gen.closing(rng, "ws/long-control", data, 1002)


def _ws_length_msb(gen: CaseGenerator, rng: random.Random) -> Case:
    length = 1 << 63 | rng.getrandbits(63)
    head, _key = frame_head(rng, ws.OP_BINARY, length, wide=127)
    return gen.closing(rng, "ws/length-msb", head, 1002)


def _ws_too_long(gen: CaseGenerator, rng: random.Random) -> Case:
    """Only the header of a frame over the limit: refused before any payload arrives."""
    limit = gen.max_message_size
    length = rng.choice((limit + 1, rng.randint(limit + 1, 2**63 - 1)))
    head, _key = frame_head(rng, ws.OP_BINARY, length, wide=127)
    return gen.closing(rng, "ws/too-long", head, 1009)


def _ws_new_message_inside(gen: CaseGenerator, rng: random.Random) -> Case:
    data = frame(rng, b"\x81", fin=False) + frame(rng, env.encode(_ping(rng)))
    return gen.closing(rng, "ws/message-inside-message", data, 1002)


def _ws_fragments_too_long(gen: CaseGenerator, rng: random.Random) -> Case:
    limit = gen.max_message_size
    first = rng.randint(1, 1000) if rng.random() < 0.9 else limit // 2
    head, _key = frame_head(rng, ws.OP_CONTINUATION, rng.randint(limit - first + 1, limit))
    data = frame(rng, rng.randbytes(first), fin=False) + head
    return gen.closing(rng, "ws/fragments-too-long", data, 1009)


def _ws_close_valid(gen: CaseGenerator, rng: random.Random) -> Case:
    if rng.random() < 0.2:
        return gen.closing(rng, "ws/close-empty", frame(rng, b"", ws.OP_CLOSE), 1005)
    code = rng.choice(_VALID_CLOSE_CODES)
    reason = "".join(rng.choices(_SAFE + "é€😀 ", k=rng.randint(0, 30))).encode()
    data = frame(rng, code.to_bytes(2) + reason, ws.OP_CLOSE)
    return gen.closing(rng, "ws/close", data, code)  # echoed (RFC 6455 §5.5.1)


def _ws_close_invalid(gen: CaseGenerator, rng: random.Random) -> Case:
    draw = rng.random()
    if draw < 0.3:
        payload, code = rng.randbytes(1), 1002
    elif draw < 0.7:
        payload, code = rng.choice(_INVALID_CLOSE_CODES).to_bytes(2) + b"bye", 1002
    else:
        payload, code = (
            (1000).to_bytes(2) + rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80")),
            1007,
        )
    return gen.closing(rng, "ws/close-invalid", frame(rng, payload, ws.OP_CLOSE), code)


def _ws_abandon(gen: CaseGenerator, rng: random.Random) -> Case:
    length = rng.randint(10, gen.max_message_size)
    head, _key = frame_head(rng, ws.OP_BINARY, length)
    data = head + rng.randbytes(rng.randint(0, min(length - 1, 4096)))
    return FrameCase("ws/abandoned-frame", data, frozenset({NONE}), abandon=True)


_WS_RECIPES: list[tuple[float, Recipe]] = [
    (2, _ws_ping),
    (1, _ws_pong),
    (0.3, _ws_text),
    (0.3, _ws_reserved_opcode),
    (0.3, _ws_rsv),
    (0.3, _ws_unmasked),
    (0.2, _ws_stray_continuation),
    (0.2, _ws_fragmented_control),
    (0.2, _ws_long_control),
    (0.1, _ws_length_msb),
    (0.2, _ws_too_long),
    (0.2, _ws_new_message_inside),
    (0.1, _ws_fragments_too_long),
    (0.3, _ws_close_valid),
    (0.3, _ws_close_invalid),
    (0.2, _ws_abandon),
]

# --- valid messages, the material of the envelope recipes ----------------------------------------


def _status(rng: random.Random) -> ProtoMsg:
    values = {_safe_id(rng, 8): _scalar(rng) for _ in range(rng.randint(0, 5))}
    return m.Status(_text(rng), values, rng.random() * 2e9).to_msg()


def _alert(rng: random.Random, alert_id: str = "") -> ProtoMsg:
    return m.Alert(
        alert_id or _safe_id(rng), _text(rng), rng.choice(sorted(m.SEVERITIES)),
        rng.choice(sorted(m.ALERT_STATES)), _text(rng, 200), _text(rng), rng.random() * 2e9,
    ).to_msg()  # fmt: skip


def _ping(rng: random.Random) -> ProtoMsg:
    sid = _safe_id(rng, 128) if rng.random() < 0.9 else ""
    return ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, sid, None, rng.randbytes(rng.randint(0, 1024)))


def _relay(rng: random.Random, sid: str, props: dict[str, Any] | None = None) -> ProtoMsg:
    if props is None and rng.random() < 0.5:
        props = {env.PROP_STATUS: rng.choice((1, 2, 3))}
    proto = rng.choice(sorted(env.MENDER_PROTOCOLS))
    body = rng.randbytes(rng.randint(0, 2048))
    return ProtoMsg(proto, rng.choice(_RELAY_TYPES), sid, props, body)


def _quiet_control(rng: random.Random) -> ProtoMsg:
    """Control messages that get no answer: pong, close, accept, error."""
    sid = _safe_id(rng)
    draw = rng.randrange(4)
    if draw == 0:
        return ProtoMsg(env.PROTO_CONTROL, env.TYP_PONG, sid, None, rng.randbytes(16))
    if draw == 1:
        return ProtoMsg(env.PROTO_CONTROL, env.TYP_CLOSE, sid)
    if draw == 2:
        protocols = tuple(rng.randrange(0x10000) for _ in range(rng.randint(0, 6)))
        return m.Accept(rng.randint(0, 3), protocols).to_msg(sid)
    code = rng.choice((None, 400, 500, 1000))
    return m.Error(_text(rng), rng.random() < 0.5, code, rng.randrange(0x10000), "x", sid).to_msg()


def _valid(rng: random.Random) -> ProtoMsg:
    maker = rng.choice((_status, _alert, _ping, _quiet_control))
    return maker(rng) if rng.random() < 0.8 else _relay(rng, _safe_id(rng))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """1 to 4 byte flips, insertions or deletions."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(out) + 1)
        draw = rng.random()
        if draw < 0.6 and where < len(out):
            out[where] = rng.randrange(256)
        elif draw < 0.8:
            out.insert(where, rng.randrange(256))
        elif out:
            del out[min(where, len(out) - 1)]
    return bytes(out)


# --- ProtoMsg envelope recipes ----------------------------------------------------------------


def _well_formed(recipe: str, make: Callable[[random.Random], ProtoMsg], *expect: str) -> Recipe:
    """A recipe of valid messages from ``make``, answered with one of ``expect``."""

    def play(gen: CaseGenerator, rng: random.Random) -> Case:
        return gen.message(rng, recipe, env.encode(make(rng)), expect)

    return play


def _envelope_alert_odd_id(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = env.encode(_alert(rng, _odd_sid(rng)))
    return gen.message(rng, "envelope/alert-odd-id", payload, {NONE} | REFUSABLE)


def _envelope_ping_odd_sid(gen: CaseGenerator, rng: random.Random) -> Case:
    msg = ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, _odd_sid(rng))
    return gen.message(rng, "envelope/ping-odd-sid", env.encode(msg), {PONG, error(400)})


def _envelope_open(gen: CaseGenerator, rng: random.Random) -> Case:
    draw = rng.random()
    sid = _safe_id(rng)
    if draw < 0.1:  # a pre-handshake (version 0) device
        msg = ProtoMsg(env.PROTO_CONTROL, env.TYP_OPEN, sid, {env.PROP_STATUS: 1})
        return gen.message(rng, "envelope/open-v0", env.encode(msg), {NONE})
    others = [rng.randrange(2, 2**32) for _ in range(rng.randint(0, 5))]
    if draw < 0.6:
        versions = tuple(rng.sample([1, *others], len(others) + 1))
        return gen.message(rng, "envelope/open", env.encode(m.Open(versions).to_msg(sid)),
                           {ACCEPT})  # fmt: skip
    if draw < 0.8:
        payload = env.encode(m.Open(tuple(others)).to_msg(sid))
        return gen.message(rng, "envelope/open-no-common-version", payload, {error(409)})
    body = rng.choice(
        (
            b"",
            b"\xc1",
            _PACK.pack([1]),
            _PACK.pack({"versions": "1"}),
            _PACK.pack({"versions": [1.0]}),
            _PACK.pack({"versions": None}),
        )
    )
    payload = env.encode(ProtoMsg(env.PROTO_CONTROL, env.TYP_OPEN, sid, None, body))
    return gen.message(rng, "envelope/open-bad-body", payload, {error(400)})


def _envelope_unknown_control(gen: CaseGenerator, rng: random.Random) -> Case:
    long = rng.random() < 0.3
    typ = rng.choice(_SAFE) * rng.randint(65, 3000) if long else _safe_id(rng, 64)
    if typ in _CONTROL_TYPES:
        typ += "x"
    payload = env.encode(ProtoMsg(env.PROTO_CONTROL, typ, _safe_id(rng)))
    expect = {error(409), error(400)} if long else {error(409)}
    return gen.message(rng, "envelope/unknown-control-typ", payload, expect)


def _envelope_unknown_proto(gen: CaseGenerator, rng: random.Random) -> Case:
    proto = rng.choice((0, rng.randrange(5, 0x100), rng.randrange(0x103, 0xFFFF)))
    payload = env.encode(ProtoMsg(proto, _safe_id(rng, 10), _safe_id(rng)))
    return gen.message(rng, "envelope/unknown-proto", payload, {error(501)})


def _envelope_bad_proto(gen: CaseGenerator, rng: random.Random) -> Case:
    value = rng.choice((0x10000, 2**64 - 1, -1, -(2**63), 1.5, True, False, "1", None,
                        b"\xff\xff", [1], {"a": 1}, math.nan))  # fmt: skip
    hdr = {"typ": "ping"} if rng.random() < 0.1 else {"proto": value, "typ": "ping"}
    return gen.message(rng, "envelope/bad-proto", _PACK.pack({"hdr": hdr}), {error(400)})


def _envelope_deep_proto(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = _envelope(b"\x81\xa5proto" + _nested_bytes(rng, rng.randint(1, 1100)))
    return gen.message(rng, "envelope/deep-proto", payload, {error(400)})


def _envelope_bad_shape(gen: CaseGenerator, rng: random.Random) -> Case:
    valid = env.encode(_valid(rng))
    payload = rng.choice(
        (b"", b"\xc1", _PACK.pack(1), _PACK.pack("hdr"), _PACK.pack([1, 2]), b"\xc0",
         _PACK.pack({"body": b"x"}), _PACK.pack({"hdr": 1}), _PACK.pack({"hdr": ["proto"]}),
         valid + rng.randbytes(rng.randint(1, 9)), valid[: rng.randrange(1, len(valid))],
         b"\x82\x81\x01\x02\x03" + valid[1:], _envelope(b"\x81\x91\x01\x02")))  # fmt: skip
    return gen.message(rng, "envelope/bad-shape", payload, {error(400)})


def _envelope_bad_fields(gen: CaseGenerator, rng: random.Random) -> Case:
    hdr: dict[str, Any] = {"proto": env.PROTO_CONTROL, "typ": "ping"}
    name, value = rng.choice(
        (("typ", 1), ("typ", b"ping"), ("typ", ["ping"]), ("sid", 7), ("sid", b"s"),
         ("props", 1), ("props", "x"), ("props", [1]), ("props", {1: 2}), ("body", "x"),
         ("body", 1), ("body", [1])))  # fmt: skip
    fields: dict[str, Any] = {"hdr": hdr}
    (fields if name == "body" else hdr)[name] = value
    return gen.message(rng, "envelope/bad-field-type", _PACK.pack(fields), {error(400)})


def _envelope_deep_props(gen: CaseGenerator, rng: random.Random) -> Case:
    """Deep props on a pong (ignored) and on a relayed shell message (re-encoded)."""
    props = b"\x81\xa1k" + _nested_bytes(rng, rng.randint(1, 1000))
    if rng.random() < 0.5:
        hdr = b"\x83\xa5proto\xcd\xff\xff\xa3typ\xa4pong\xa5props" + props
        return gen.message(rng, "envelope/deep-props", _envelope(hdr), {NONE, error(400)})
    sid = _PACK.pack(_safe_id(rng))
    hdr = b"\x84\xa5proto\xcd\x00\x01\xa3typ\xa5shell\xa3sid" + sid + b"\xa5props" + props
    payload = _envelope(hdr, _PACK.pack(b"ls\n"))
    return gen.message(rng, "envelope/relay-deep-props", payload, {NONE} | REFUSABLE)


def _envelope_wrong_sender(gen: CaseGenerator, rng: random.Random) -> Case:
    sid = _safe_id(rng)
    offer = m.UpdateOffer("2.0.0", "https://u.example/fw", "0" * 64, rng.randrange(2**40))
    msg = rng.choice(
        (
            m.AlertAck(_safe_id(rng)).to_msg(),
            m.CommandRequest("ls", 1.0).to_msg(sid),
            offer.to_msg(sid),
            ProtoMsg(rng.choice((0x100, 0x101, 0x102)), _other_typ(rng), sid),
            ProtoMsg(env.PROTO_MONITOR, "exec", sid),
            ProtoMsg(env.PROTO_UPDATE, "result", sid),
        )
    )
    return gen.message(rng, "envelope/wrong-sender-or-typ", env.encode(msg), {error(409)})


def _envelope_bad_body(gen: CaseGenerator, rng: random.Random) -> Case:
    proto, typ, body = _bad_body(rng)
    sid = _safe_id(rng) if typ != "progress" or rng.random() < 0.8 else ""
    payload = env.encode(ProtoMsg(proto, typ, sid, None, body))
    return gen.message(rng, f"envelope/bad-body/{typ}", payload, {error(400)})


def _envelope_deep_status(gen: CaseGenerator, rng: random.Random) -> Case:
    body = b"\x82\xa8firmware\xa11\xa6values\x81\xa1k" + _nested_bytes(rng, rng.randint(1, 1000))
    payload = env.encode(ProtoMsg(env.PROTO_MONITOR, "status", "", None, body))
    return gen.message(rng, "envelope/deep-status-values", payload, {NONE, error(400)})


def _envelope_relay(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = env.encode(_relay(rng, _safe_id(rng, 128)))
    return gen.message(rng, "envelope/relay", payload, {NONE} | REFUSABLE)


def _envelope_relay_odd_sid(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = env.encode(_relay(rng, _odd_sid(rng)))
    return gen.message(rng, "envelope/relay-odd-sid", payload, {NONE} | REFUSABLE)


def _envelope_big(gen: CaseGenerator, rng: random.Random) -> Case:
    """Up to the message size limit: answered (a pong carries the whole body back)."""
    # The body leaves room for the rest of the envelope (a sid, props: under 256 bytes).
    size = rng.randint(gen.max_message_size - 4096, gen.max_message_size - 256)
    draw = rng.randrange(3)
    if draw == 0:
        msg = ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, _safe_id(rng), None, rng.randbytes(size))
        return gen.message(rng, "envelope/big-ping", env.encode(msg), {PONG})
    if draw == 1:
        msg = _relay(rng, _safe_id(rng))
        msg.body = rng.randbytes(size)
    else:
        msg = m.Status("1.0", {"blob": "x" * size}).to_msg()
    return gen.message(rng, "envelope/big", env.encode(msg), {NONE} | REFUSABLE)


def _envelope_mutated(gen: CaseGenerator, rng: random.Random) -> Case:
    payload = _mutate(rng, env.encode(_valid(rng)))
    return gen.message(rng, "envelope/mutated", payload, SESSION_ANSWERS)


_ENVELOPE_RECIPES: list[tuple[float, Recipe]] = [
    (6, _well_formed("envelope/status", _status, NONE)),
    (4, _well_formed("envelope/alert", _alert, NONE)),
    (6, _well_formed("envelope/ping", _ping, PONG)),
    (4, _well_formed("envelope/quiet", _quiet_control, NONE)),
    (1, _envelope_alert_odd_id),
    (1, _envelope_ping_odd_sid),
    (3, _envelope_open),
    (3, _envelope_unknown_control),
    (3, _envelope_unknown_proto),
    (4, _envelope_bad_proto),
    (2, _envelope_deep_proto),
    (5, _envelope_bad_shape),
    (4, _envelope_bad_fields),
    (2, _envelope_deep_props),
    (3, _envelope_wrong_sender),
    (8, _envelope_bad_body),
    (2, _envelope_deep_status),
    (5, _envelope_relay),
    (2, _envelope_relay_odd_sid),
    (0.1, _envelope_big),
    (15, _envelope_mutated),
]


def _other_typ(rng: random.Random) -> str:
    """A typ none of our protocols knows."""
    typ = _safe_id(rng, 64)
    return (
        typ + "x"
        if typ in ("status", "alert", "ack", "exec", "result", "offer", "progress")
        else typ
    )


def _bad_body(rng: random.Random) -> tuple[int, str, bytes]:
    """A body that breaks one rule of its type: not a map, a field missing, of the wrong type,
    a boolean for a number, a non-finite number, an unknown enum value."""
    base: dict[str, tuple[int, dict[str, Any], list[tuple[str, Any]]]] = {
        "status": (env.PROTO_MONITOR, {"firmware": "1.0", "values": {}, "ts": 1.0},
                   [("firmware", None), ("firmware", 1), ("values", [1]), ("ts", "x"),
                    ("ts", True), ("ts", math.nan), ("ts", math.inf)]),
        "alert": (env.PROTO_MONITOR,
                  {"id": "a-1", "code": "c", "severity": "info", "state": "raised"},
                  [("id", None), ("id", ""), ("id", 1), ("code", None), ("severity", "fatal"),
                   ("state", "open"), ("state", None), ("description", 1), ("fix", []),
                   ("ts", -math.inf)]),
        "result": (env.PROTO_COMMAND, {"exit_code": 0, "output": b"", "duration": 0.1},
                   [("exit_code", None), ("exit_code", "0"), ("exit_code", True),
                    ("exit_code", 1.5), ("output", "text"), ("duration", math.nan)]),
        "progress": (env.PROTO_UPDATE, {"state": "downloading", "percent": 5},
                     [("state", None), ("state", "done"), ("percent", "5"), ("percent", True),
                      ("state", "failure"), ("reason", 5)]),
    }  # fmt: skip
    typ = rng.choice(sorted(base))
    proto, fields, breaks = base[typ]
    if rng.random() < 0.1:
        return proto, typ, rng.choice((b"", b"\xc1", _PACK.pack([1]), _PACK.pack("x")))
    name, value = rng.choice(breaks)
    return proto, typ, _PACK.pack({**fields, name: value})
