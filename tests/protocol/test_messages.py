"""Typed ProtoMsg bodies: round trips, Mender's bytes, and strict parsing of what peers send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol.errors import MalformedMessage

VECTORS_FILE = Path(__file__).parents[1] / "data" / "mender_protomsg_vectors.json"
VECTORS = {v["name"]: bytes.fromhex(v["msgpack_hex"]) for v in json.loads(VECTORS_FILE.read_text())}

BODIES: list[m.Body] = [
    m.Open(),
    m.Open((1, 2)),
    m.Accept(1, (1, 2, 3, 4)),
    m.Accept(1, ()),
    m.Accept(1, tuple(range(20))),  # array16 beyond 15 entries
    m.Error("boom"),
    m.Error("session timeout", True, 409, 0x0100, "alert", "a-1"),
    m.Status("1.2.3"),
    m.Status("1.2.3", {"cpu": 0.5, "temp": 41, "ok": True, "tags": ["a"]}, 1700000000.25),
    m.Status("1.2.3", {}, 1.0, {"geo-lat": 52.37, "geo-lon": 4.89, "geo-address": "Amsterdam"}),
    m.Alert("a-1", "disk_full", "critical", "raised"),
    m.Alert("a-2", "disk_full", "info", "cleared", "disk at 91%", "rm -rf /tmp/*", 1.5),
    m.AlertAck("a-1"),
    m.CommandRequest("uptime", 30.0),
    m.CommandRequest("ls -l", 0.5),
    m.CommandResult(0, b"ok\n", 0.01),
    m.CommandResult(-1, b""),
    m.CommandResult(127, bytes(range(256)), 2.0),
    m.UpdateOffer("2.0.0", "https://example.com/fw.bin", "ab" * 32, 1 << 33),
    *(m.UpdateProgress(state, 50) for state in ("downloading", "installing", "rebooting")),
    m.UpdateProgress("success", 100),
    m.UpdateProgress("failure", 30, "checksum mismatch"),
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def fields_of(body: m.Body) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(body.to_body(), raw=False)
    return fields


def vector_body(name: str) -> bytes:
    return env.decode(VECTORS[name]).body


# --- round trips and the wire -------------------------------------------------------------------


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_body_round_trips(body: m.Body) -> None:
    cls: Any = type(body)
    assert cls.from_body(body.to_body()) == body


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_to_msg_carries_proto_typ_sid_and_props(body: m.Body) -> None:
    msg = env.decode(env.encode(body.to_msg("s-9", {"user_id": "op"})))
    assert msg.proto == body.PROTO
    assert msg.typ == body.TYP
    assert msg.sid == "s-9"
    assert msg.props == {"user_id": "op"}
    assert msg.body == body.to_body()


def test_protocol_numbers() -> None:
    assert {m.Open.PROTO, m.Accept.PROTO, m.Error.PROTO} == {0xFFFF}
    assert {m.Status.PROTO, m.Alert.PROTO, m.AlertAck.PROTO} == {0x0100}
    assert {m.CommandRequest.PROTO, m.CommandResult.PROTO} == {0x0101}
    assert {m.UpdateOffer.PROTO, m.UpdateProgress.PROTO} == {0x0102}


def test_open_matches_mender_bytes() -> None:
    assert m.Open().to_body() == vector_body("control_open")


def test_accept_matches_mender_bytes() -> None:
    assert m.Accept(1, (1, 2, 3, 4)).to_body() == vector_body("control_accept")


def test_error_matches_mender_bytes() -> None:
    error = m.Error("session timeout", close=True, msgproto=1, msgtype="shell", msgid="m-7")
    assert error.to_body() == vector_body("control_error")


def test_accept_protocols_are_uint16_like_go() -> None:
    body = m.Accept(1, (1, 0x0100)).to_body()
    assert body.endswith(b"\xa9protocols\x92\xcd\x00\x01\xcd\x01\x00")


def test_accept_with_many_protocols_uses_array16() -> None:
    protocols = tuple(range(20))
    body = m.Accept(1, protocols).to_body()
    assert b"\xa9protocols\xdc\x00\x14" in body
    assert fields_of(m.Accept(1, protocols))["protocols"] == list(protocols)


def test_error_omits_absent_optional_fields() -> None:
    assert fields_of(m.Error("x")) == {"err": "x", "close": False}


def test_error_writes_msgproto_as_uint16() -> None:
    assert b"\xa8msgproto\xcd\x01\x00" in m.Error("x", msgproto=0x0100).to_body()


def test_update_progress_final_states() -> None:
    assert [m.UpdateProgress(s, reason="r").final for s in m.UPDATE_STATES] == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_update_progress_constructor_is_strict_too() -> None:
    with pytest.raises(MalformedMessage, match="state"):
        m.UpdateProgress("done")
    with pytest.raises(MalformedMessage, match="reason"):
        m.UpdateProgress("failure")


# --- strictness ----------------------------------------------------------------------------------

VALID: dict[type[Any], dict[str, Any]] = {
    m.Open: {"versions": [1]},
    m.Accept: {"version": 1, "protocols": [1, 256]},
    m.Error: {"err": "x", "close": True, "code": 400, "msgproto": 1, "msgtype": "t", "msgid": "i"},
    m.Status: {"firmware": "1.0", "values": {"cpu": 1}, "ts": 1.0},
    m.Alert: {
        "id": "a-1",
        "code": "c",
        "severity": "info",
        "state": "raised",
        "description": "d",
        "fix": "f",
        "ts": 1.0,
    },
    m.AlertAck: {"id": "a-1"},
    m.CommandRequest: {"command": "ls", "timeout": 5},
    m.CommandResult: {"exit_code": 0, "output": b"", "duration": 0.5},
    m.UpdateOffer: {"version": "2", "url": "u", "sha256": "s", "size": 10},
    m.UpdateProgress: {"state": "failure", "percent": 5, "reason": "r"},
}
REQUIRED: dict[type[Any], list[str]] = {
    m.Open: ["versions"],
    m.Accept: ["version", "protocols"],
    m.Error: ["err"],
    m.Status: ["firmware"],
    m.Alert: ["id", "code", "severity", "state"],
    m.AlertAck: ["id"],
    m.CommandRequest: ["command", "timeout"],
    m.CommandResult: ["exit_code"],
    m.UpdateOffer: ["version", "url", "sha256", "size"],
    m.UpdateProgress: ["state"],
}
INF, NAN = float("inf"), float("nan")
# (body class, field, bad value): the body must be refused naming the field.
BAD_VALUES: list[tuple[type[Any], str, Any]] = [
    (m.Open, "versions", 1),
    (m.Open, "versions", ["1"]),
    (m.Open, "versions", [True]),
    (m.Open, "versions", [1.0]),
    (m.Accept, "version", True),
    (m.Accept, "version", "1"),
    (m.Accept, "version", 1.0),
    (m.Accept, "protocols", {"1": 1}),
    (m.Accept, "protocols", [False]),
    (m.Error, "err", 1),
    (m.Error, "err", b"bytes"),
    (m.Error, "close", 1),
    (m.Error, "close", "true"),
    (m.Error, "code", True),
    (m.Error, "code", "400"),
    (m.Error, "msgproto", False),
    (m.Error, "msgtype", 1),
    (m.Error, "msgid", 2),
    (m.Status, "firmware", 1),
    (m.Status, "values", [1]),
    (m.Status, "ts", "now"),
    (m.Status, "ts", True),
    (m.Status, "ts", INF),
    (m.Status, "ts", NAN),
    (m.Status, "inventory", {"geo-lat": 1.0}),
    (m.Status, "inventory", [{"value": 1.0}]),
    (m.Status, "inventory", [{"name": "", "value": 1.0}]),
    (m.Status, "inventory", [{"name": "geo-lat"}]),
    (m.Status, "inventory", ["geo-lat"]),
    (m.Status, "inventory", [{"name": f"a{n}", "value": n} for n in range(65)]),
    (m.Alert, "id", ""),
    (m.Alert, "id", 7),
    (m.Alert, "code", 7),
    (m.Alert, "severity", "fatal"),
    (m.Alert, "severity", "INFO"),
    (m.Alert, "severity", 1),
    (m.Alert, "state", "open"),
    (m.Alert, "state", True),
    (m.Alert, "description", 1),
    (m.Alert, "fix", ["x"]),
    (m.Alert, "ts", -INF),
    (m.Alert, "ts", NAN),
    (m.AlertAck, "id", 1),
    (m.CommandRequest, "command", b"ls"),
    (m.CommandRequest, "timeout", True),
    (m.CommandRequest, "timeout", "5"),
    (m.CommandRequest, "timeout", INF),
    (m.CommandRequest, "timeout", NAN),
    (m.CommandResult, "exit_code", True),
    (m.CommandResult, "exit_code", 1.5),
    (m.CommandResult, "output", "text"),
    (m.CommandResult, "duration", False),
    (m.CommandResult, "duration", NAN),
    (m.UpdateOffer, "version", 2),
    (m.UpdateOffer, "url", None),
    (m.UpdateOffer, "sha256", b"s"),
    (m.UpdateOffer, "size", True),
    (m.UpdateOffer, "size", 1.0),
    (m.UpdateOffer, "size", "10"),
    (m.UpdateProgress, "state", "done"),
    (m.UpdateProgress, "state", "SUCCESS"),
    (m.UpdateProgress, "state", 1),
    (m.UpdateProgress, "percent", True),
    (m.UpdateProgress, "percent", 50.0),
    (m.UpdateProgress, "reason", 1),
]


def parse(cls: type[Any], fields: dict[str, Any]) -> Any:
    return cls.from_body(pack(fields))


@pytest.mark.parametrize("cls", VALID, ids=lambda c: c.__name__)
def test_valid_fixture_parses(cls: type[Any]) -> None:
    assert isinstance(parse(cls, VALID[cls]), cls)


@pytest.mark.parametrize(
    ("cls", "name"),
    [(cls, name) for cls, names in REQUIRED.items() for name in names],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_missing_required_field_is_named(cls: type[Any], name: str) -> None:
    fields = {k: v for k, v in VALID[cls].items() if k != name}
    with pytest.raises(MalformedMessage, match=repr(name)):
        parse(cls, fields)


@pytest.mark.parametrize(
    ("cls", "name"),
    [(cls, name) for cls, names in REQUIRED.items() for name in names],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_nil_required_field_counts_as_missing(cls: type[Any], name: str) -> None:
    with pytest.raises(MalformedMessage, match=repr(name)):
        parse(cls, {**VALID[cls], name: None})


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    BAD_VALUES,
    ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in BAD_VALUES],
)
def test_bad_field_value_is_named(cls: type[Any], name: str, value: Any) -> None:
    with pytest.raises(MalformedMessage, match=repr(name)):
        parse(cls, {**VALID[cls], name: value})


@pytest.mark.parametrize("reason", [None, ""])
def test_failure_progress_needs_a_reason(reason: str | None) -> None:
    fields = {"state": "failure", "percent": 10, "reason": reason}
    with pytest.raises(MalformedMessage, match="reason"):
        parse(m.UpdateProgress, fields)


def test_optional_fields_take_defaults() -> None:
    assert parse(m.Alert, {"id": "a", "code": "c", "severity": "warning", "state": "cleared"}) == (
        m.Alert("a", "c", "warning", "cleared", "", "", 0.0)
    )
    assert parse(m.Status, {"firmware": "1"}) == m.Status("1", {}, 0.0, {})
    assert parse(m.CommandResult, {"exit_code": 3}) == m.CommandResult(3, b"", 0.0)
    assert parse(m.UpdateProgress, {"state": "downloading"}) == m.UpdateProgress("downloading")
    assert parse(m.Error, {"err": "e"}) == m.Error("e", False, None, None, None, None)


def test_inventory_travels_as_mender_attributes_and_is_left_out_when_empty() -> None:
    """Mender devices report inventory as a list of {name, value} attributes; a status without
    one encodes exactly as before the field existed."""
    status = m.Status("1.0", {}, 1.0, {"geo-lat": 48.85, "geo-address": "Paris, FR"})
    body = msgpack.unpackb(status.to_body())
    assert body["inventory"] == [
        {"name": "geo-lat", "value": 48.85},
        {"name": "geo-address", "value": "Paris, FR"},
    ]
    assert "inventory" not in msgpack.unpackb(m.Status("1.0").to_body())


def test_integer_numbers_are_accepted_as_floats() -> None:
    request = parse(m.CommandRequest, {"command": "ls", "timeout": 5})
    assert request.timeout == 5.0
    assert type(request.timeout) is float


@pytest.mark.parametrize("cls", VALID, ids=lambda c: c.__name__)
def test_unknown_fields_are_ignored(cls: type[Any]) -> None:
    extended = {**VALID[cls], "added_in_v2": {"nested": [1, 2]}, "x": None}
    assert parse(cls, extended) == parse(cls, VALID[cls])


NOT_A_BODY = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "trailing data": pack({}) + b"\x00",
    "array": pack([1]),
    "string": pack("versions"),
    "unhashable key": b"\x81\x91\x01\x01",
}


@pytest.mark.parametrize("cls", VALID, ids=lambda c: c.__name__)
@pytest.mark.parametrize("body", NOT_A_BODY.values(), ids=NOT_A_BODY.keys())
def test_body_that_is_not_a_map_is_rejected(cls: type[Any], body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        cls.from_body(body)
