"""Typed ProtoMsg bodies: Mender's control bodies and our own protocols (docs/protocol.md).

Each body is a MessagePack map. ``from_body`` is strict on the fields it knows (wrong type or
missing → MalformedMessage naming the field) and ignores the ones it does not, so a newer
peer can add fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

from backend.protocol import envelope as env
from backend.protocol.errors import MalformedMessage

_PACK = msgpack.Packer(use_bin_type=True, autoreset=True)
_REQUIRED: Any = object()

SEVERITIES = frozenset({"info", "warning", "critical"})
ALERT_STATES = frozenset({"raised", "cleared"})
UPDATE_STATES = ("downloading", "installing", "rebooting", "success", "failure")
UPDATE_FINAL_STATES = frozenset({"success", "failure"})
MAX_INVENTORY = 64
"""Inventory attributes one status may carry."""
# Where the device's house is: inventory attributes named like mender-inventory-geo's geo-*.
GEO_LAT, GEO_LON, GEO_ADDRESS = "geo-lat", "geo-lon", "geo-address"


def _map(items: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map from already-packed values (keys are short strings)."""
    if len(items) > 15:
        raise ValueError("body maps here have at most 15 fields")
    out = [bytes((0x80 | len(items),))]
    for key, packed in items:
        out += (_PACK.pack(key), packed)
    return b"".join(out)


def _unpack(body: bytes, what: str) -> dict[str, Any]:
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: unhashable key
        raise MalformedMessage(f"{what} body is not MessagePack: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedMessage(f"{what} body must be a map")
    return fields


def _take(
    fields: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED
) -> Any:
    value = fields.get(name)
    if value is None:
        if default is _REQUIRED:
            raise MalformedMessage(f"field {name!r} is required")
        return default
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise MalformedMessage(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _choice(value: str, allowed: frozenset[str] | tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise MalformedMessage(f"field {name!r} must be one of {sorted(allowed)}, not {value!r}")
    return value


def _int_list(fields: dict[str, Any], name: str) -> tuple[int, ...]:
    values = _take(fields, name, list)
    if not all(type(v) is int for v in values):
        raise MalformedMessage(f"field {name!r} must be a list of integers")
    return tuple(values)


def pack(fields: dict[str, Any]) -> bytes:
    return _PACK.pack(fields)


# For the bodies of the other protocols' modules (port forward, file transfer).
unpack = _unpack
take = _take


class Body:
    """A typed body: knows its ProtoMsg ``proto``/``typ`` and how to (de)serialise itself."""

    __slots__ = ()
    PROTO: ClassVar[int]
    TYP: ClassVar[str]

    def to_body(self) -> bytes:
        raise NotImplementedError

    def to_msg(self, sid: str = "", props: dict[str, Any] | None = None) -> env.ProtoMsg:
        return env.ProtoMsg(self.PROTO, self.TYP, sid, props, self.to_body())


# --- control (Mender) --------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Open(Body):
    """The requester lists the protocol versions it speaks."""

    PROTO = env.PROTO_CONTROL
    TYP = env.TYP_OPEN
    versions: tuple[int, ...] = (env.PROTOCOL_VERSION,)

    def to_body(self) -> bytes:
        return _map([("versions", _PACK.pack(list(self.versions)))])

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        return cls(_int_list(_unpack(body, "open"), "versions"))


@dataclass(slots=True, frozen=True)
class Accept(Body):
    """The peer picks a version and lists the protocols it serves (its capabilities)."""

    PROTO = env.PROTO_CONTROL
    TYP = env.TYP_ACCEPT
    version: int
    protocols: tuple[int, ...]

    def to_body(self) -> bytes:
        count = len(self.protocols)
        header = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
        protocols = header + b"".join(env.uint16(p) for p in self.protocols)
        return _map([("version", _PACK.pack(self.version)), ("protocols", protocols)])

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "accept")
        return cls(_take(fields, "version", int), _int_list(fields, "protocols"))


@dataclass(slots=True, frozen=True)
class Error(Body):
    """Mender's ``ws.Error``: code is HTTP-like (400-599) or custom (>= 1000)."""

    PROTO = env.PROTO_CONTROL
    TYP = env.TYP_ERROR
    err: str
    close: bool = False
    code: int | None = None
    msgproto: int | None = None
    msgtype: str | None = None
    msgid: str | None = None

    def to_body(self) -> bytes:
        items = [("err", _PACK.pack(self.err)), ("close", _PACK.pack(self.close))]
        if self.code is not None:
            items.append(("code", _PACK.pack(self.code)))
        if self.msgproto is not None:
            items.append(("msgproto", env.uint16(self.msgproto)))
        if self.msgtype:
            items.append(("msgtype", _PACK.pack(self.msgtype)))
        if self.msgid:
            items.append(("msgid", _PACK.pack(self.msgid)))
        return _map(items)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "error")
        return cls(
            _take(fields, "err", str),
            _take(fields, "close", bool, False),
            _take(fields, "code", int, None),
            _take(fields, "msgproto", int, None),
            _take(fields, "msgtype", str, None),
            _take(fields, "msgid", str, None),
        )


# --- Mender's stream protocols (file transfer 0x0002, port forward 0x0003) -------------------


@dataclass(slots=True, frozen=True)
class StreamError(Body):
    """An "error" body of file transfer or port forward: ``err`` is shown to the operator as
    it is, ``msgtype`` names the message it answers. Each protocol's subclass sets PROTO."""

    TYP = env.TYP_ERROR
    err: str
    msgtype: str = ""

    def to_body(self) -> bytes:
        return pack({"err": self.err, "msgtype": self.msgtype})

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = unpack(body, "error")
        return cls(take(fields, "err", str, "") or "error", take(fields, "msgtype", str, ""))


# --- monitoring (ours, 0x0100) ---------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Status(Body):
    """Periodic device status: firmware version, a small map of readings and, optionally, the
    device's inventory attributes (name -> value; on the wire a list of ``{"name", "value"}``
    maps, the shape Mender devices report inventory in)."""

    PROTO = env.PROTO_MONITOR
    TYP = "status"
    firmware: str
    values: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0
    inventory: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> bytes:
        fields: dict[str, Any] = {"firmware": self.firmware, "values": self.values, "ts": self.ts}
        if self.inventory:  # left out when empty: the body stays what older peers send
            attributes = [{"name": k, "value": v} for k, v in self.inventory.items()]
            fields["inventory"] = attributes
        return _PACK.pack(fields)

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "status")
        values = _take(fields, "values", dict, {})
        return cls(
            _take(fields, "firmware", str), values, _number(fields, "ts"), _inventory(fields)
        )


def _inventory(fields: dict[str, Any]) -> dict[str, Any]:
    """Mender's inventory attributes, ``[{"name": str, "value": scalar or list}]``."""
    attributes = _take(fields, "inventory", list, [])
    if len(attributes) > MAX_INVENTORY:
        raise MalformedMessage(f"field 'inventory' has more than {MAX_INVENTORY} attributes")
    inventory: dict[str, Any] = {}
    for attribute in attributes:
        name = attribute.get("name") if isinstance(attribute, dict) else None
        if not isinstance(name, str) or not name or "value" not in attribute:
            raise MalformedMessage("field 'inventory' must list {name: str, value} maps")
        inventory[name] = attribute["value"]
    return inventory


@dataclass(slots=True, frozen=True)
class Alert(Body):
    """An alert event; ``id`` is unique per device and is the de-duplication key."""

    PROTO = env.PROTO_MONITOR
    TYP = "alert"
    id: str
    code: str
    severity: str
    state: str
    description: str = ""
    fix: str = ""
    ts: float = 0.0

    def to_body(self) -> bytes:
        return _PACK.pack(
            {"id": self.id, "code": self.code, "severity": self.severity, "state": self.state,
             "description": self.description, "fix": self.fix, "ts": self.ts}
        )  # fmt: skip

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "alert")
        alert_id = _take(fields, "id", str)
        if not alert_id:
            raise MalformedMessage("field 'id' must not be empty")
        return cls(
            alert_id,
            _take(fields, "code", str),
            _choice(_take(fields, "severity", str), SEVERITIES, "severity"),
            _choice(_take(fields, "state", str), ALERT_STATES, "state"),
            _take(fields, "description", str, ""),
            _take(fields, "fix", str, ""),
            _number(fields, "ts"),
        )


@dataclass(slots=True, frozen=True)
class AlertAck(Body):
    """The server stored the alert durably: the device may forget it."""

    PROTO = env.PROTO_MONITOR
    TYP = "ack"
    id: str

    def to_body(self) -> bytes:
        return _map([("id", _PACK.pack(self.id))])

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        return cls(_take(_unpack(body, "ack"), "id", str))


# --- command execution (ours, 0x0101); sid correlates request and result ------------------------


@dataclass(slots=True, frozen=True)
class CommandRequest(Body):
    PROTO = env.PROTO_COMMAND
    TYP = "exec"
    command: str
    timeout: float

    def to_body(self) -> bytes:
        return _map([("command", _PACK.pack(self.command)), ("timeout", _PACK.pack(self.timeout))])

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "exec")
        return cls(_take(fields, "command", str), _number(fields, "timeout", required=True))


@dataclass(slots=True, frozen=True)
class CommandResult(Body):
    PROTO = env.PROTO_COMMAND
    TYP = "result"
    exit_code: int
    output: bytes
    duration: float = 0.0

    def to_body(self) -> bytes:
        return _map(
            [("exit_code", _PACK.pack(self.exit_code)), ("output", _PACK.pack(self.output)),
             ("duration", _PACK.pack(self.duration))]
        )  # fmt: skip

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "result")
        return cls(
            _take(fields, "exit_code", int), _take(fields, "output", bytes, b""),
            _number(fields, "duration"),
        )  # fmt: skip


# --- software update (ours, 0x0102); sid names the update --------------------------------------


@dataclass(slots=True, frozen=True)
class UpdateOffer(Body):
    PROTO = env.PROTO_UPDATE
    TYP = "offer"
    version: str
    url: str
    sha256: str
    size: int

    def to_body(self) -> bytes:
        return _PACK.pack(
            {"version": self.version, "url": self.url, "sha256": self.sha256, "size": self.size}
        )

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "offer")
        return cls(
            _take(fields, "version", str), _take(fields, "url", str),
            _take(fields, "sha256", str), _take(fields, "size", int),
        )  # fmt: skip


@dataclass(slots=True, frozen=True)
class UpdateProgress(Body):
    """Progress of an offered update; "success" and "failure" are the final result."""

    PROTO = env.PROTO_UPDATE
    TYP = "progress"
    state: str
    percent: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        _choice(self.state, UPDATE_STATES, "state")
        if self.state == "failure" and not self.reason:
            raise MalformedMessage("an update failure needs a reason")

    @property
    def final(self) -> bool:
        return self.state in UPDATE_FINAL_STATES

    def to_body(self) -> bytes:
        return _PACK.pack({"state": self.state, "percent": self.percent, "reason": self.reason})

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        fields = _unpack(body, "progress")
        return cls(
            _take(fields, "state", str), _take(fields, "percent", int, 0),
            _take(fields, "reason", str, ""),
        )  # fmt: skip


def _number(fields: dict[str, Any], name: str, *, required: bool = False) -> float:
    value = _take(fields, name, (int, float), _REQUIRED if required else 0.0)
    if not math.isfinite(value):
        raise MalformedMessage(f"field {name!r} must be a finite number")
    return float(value)
