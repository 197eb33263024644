"""The ProtoMsg envelope, wire-compatible with Mender's ``go-lib-micro/ws`` (MessagePack).

    ProtoMsg = {"hdr": {"proto": uint16, "typ": str?, "sid": str?, "props": map?}, "body": bin?}

Empty optional fields are omitted, as Go's ``omitempty`` does, and ``proto`` is written as a
16-bit unsigned int (0xcd), so our bytes equal the Go encoder's for the same message.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from backend.protocol.errors import MalformedMessage, MessageTooBig

PROTOCOL_VERSION = 1

# Mender's protocol numbers (ws.ProtoType).
PROTO_INVALID = 0
PROTO_SHELL = 1
PROTO_FILE_TRANSFER = 2
PROTO_PORT_FORWARD = 3
PROTO_MENDER_CLIENT = 4
PROTO_CONTROL = 0xFFFF
# Ours, from 0x0100: far from Mender's small numbers and its 0xFFFF control.
PROTO_MONITOR = 0x0100
PROTO_COMMAND = 0x0101
PROTO_UPDATE = 0x0102

MENDER_PROTOCOLS = frozenset(
    {PROTO_SHELL, PROTO_FILE_TRANSFER, PROTO_PORT_FORWARD, PROTO_MENDER_CLIENT}
)

# Control message types (proto 0xFFFF).
TYP_OPEN = "open"
TYP_ACCEPT = "accept"
TYP_CLOSE = "close"
TYP_ERROR = "error"
TYP_PING = "ping"
TYP_PONG = "pong"

# Shell message types (proto 1) and props.
TYP_SHELL_NEW = "new"
TYP_SHELL_DATA = "shell"
TYP_SHELL_STOP = "stop"
TYP_SHELL_RESIZE = "resize"
PROP_STATUS = "status"
PROP_USER_ID = "user_id"
PROP_TERMINAL_WIDTH = "terminal_width"
PROP_TERMINAL_HEIGHT = "terminal_height"
PROP_TIMEOUT = "timeout"
STATUS_NORMAL = 1
STATUS_ERROR = 2
STATUS_CONTROL = 3

DEFAULT_MAX_MESSAGE_SIZE = 8 * 2**20  # Mender's server-side message limit

# Header fields are bounded so that nothing a peer sends grows when echoed, logged or used as
# a NATS subject token or header value (a relayed sid is one: no dots, spaces or CR/LF).
SID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_TYP_LENGTH = 64
MAX_PROPS_DEPTH = 8
"""Mender's props are flat (status, user_id, terminal size...); deeper is an attack."""

_PACK = msgpack.Packer(use_bin_type=True, autoreset=True)


@dataclass(slots=True)
class ProtoMsg:
    proto: int
    typ: str = ""
    sid: str = ""
    props: dict[str, Any] | None = None
    body: bytes = b""


def uint16(value: int) -> bytes:
    """A msgpack uint16 (0xcd), the fixed width Go writes for ``ProtoType``."""
    return b"\xcd" + struct.pack(">H", value)


def encode(msg: ProtoMsg) -> bytes:
    header = [b"\xa5proto" + uint16(msg.proto)]
    if msg.typ:
        header.append(b"\xa3typ" + _PACK.pack(msg.typ))
    if msg.sid:
        header.append(b"\xa3sid" + _PACK.pack(msg.sid))
    if msg.props:
        header.append(b"\xa5props" + _PACK.pack(msg.props))
    hdr = b"\xa3hdr" + bytes((0x80 | len(header),)) + b"".join(header)
    if msg.body:
        return b"\x82" + hdr + b"\xa4body" + _PACK.pack(msg.body)
    return b"\x81" + hdr


def peek_header(encoded: bytes) -> tuple[int, str]:
    """``(proto, typ)`` of a message produced by ``encode``, without decoding it all.

    Relies on ``encode``'s fixed layout: map, "hdr", map, "proto", uint16, then "typ" if set.
    """
    proto = int.from_bytes(encoded[13:15], "big")
    if encoded[15:19] != b"\xa3typ":
        return proto, ""
    if encoded[19] >> 5 != 0b101:  # not a fixstr: a long type name, decode it properly
        return proto, decode(encoded).typ
    length = encoded[19] & 0x1F
    return proto, encoded[20 : 20 + length].decode()


def decode(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> ProtoMsg:
    if len(data) > max_size:
        raise MessageTooBig(f"message of {len(data)} bytes exceeds the {max_size} byte limit")
    try:
        # Bounded containers: a small message must not unpack into a huge structure.
        fields = msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_map_len=1024, max_array_len=1024
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: unhashable key
        raise MalformedMessage(f"not a MessagePack message: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage("a ProtoMsg is a map with 'hdr' and 'body'")
    hdr = fields.get("hdr")
    if not isinstance(hdr, dict):
        raise MalformedMessage("ProtoMsg has no 'hdr' map")
    return ProtoMsg(
        proto=_proto(hdr.get("proto")),
        typ=_typ(_optional(hdr, "typ", str, "")),
        sid=_sid(_optional(hdr, "sid", str, "")),
        props=_props(hdr.get("props")),
        body=_optional(fields, "body", bytes, b""),
    )


def _proto(value: object) -> int:
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        # The type only: a repr of a deeply nested value would recurse past Python's limit.
        shown = value if type(value) is int else type(value).__name__
        raise MalformedMessage(f"hdr.proto must be an integer in 0..65535, not {shown}")
    return value


def _typ(value: str) -> str:
    if len(value) > MAX_TYP_LENGTH:
        raise MalformedMessage(f"hdr.typ is longer than {MAX_TYP_LENGTH} characters")
    return value


def _sid(value: str) -> str:
    if value and not SID.fullmatch(value):
        raise MalformedMessage("hdr.sid must be 1 to 128 characters of [A-Za-z0-9_-]")
    return value


def _optional(fields: dict[Any, Any], name: str, kind: type[Any], default: Any) -> Any:
    value = fields.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise MalformedMessage(f"{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _props(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise MalformedMessage("hdr.props must be a map with string keys")
    if _depth(value) > MAX_PROPS_DEPTH:
        raise MalformedMessage(f"hdr.props nests deeper than {MAX_PROPS_DEPTH} levels")
    return value


def _depth(value: object) -> int:
    """How deep containers nest in ``value``, without recursion (and without walking past
    the limit): msgpack unpacks up to 1024 levels, Python's repr and packer choke earlier."""
    depth, level = 0, [value]
    while level and depth <= MAX_PROPS_DEPTH:
        depth += 1
        inner: list[object] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(item.values())
            elif isinstance(item, list):
                inner.extend(item)
        level = inner
    return depth - 1 if not level else depth
