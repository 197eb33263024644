"""The ProtoMsg envelope against Mender's Go-encoded vectors, its omit-empty rules and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol.envelope import ProtoMsg, decode, encode
from backend.protocol.errors import MalformedMessage, MessageTooBig

VECTORS_FILE = Path(__file__).parents[1] / "data" / "mender_protomsg_vectors.json"
VECTORS: dict[str, bytes] = {
    v["name"]: bytes.fromhex(v["msgpack_hex"]) for v in json.loads(VECTORS_FILE.read_text())
}
SID = "0f1e2d3c"

# Each vector's "meaning" text, spelled out: the envelope and, for control bodies, the body.
EXPECTED: dict[str, tuple[ProtoMsg, m.Body | None]] = {
    "control_ping": (ProtoMsg(env.PROTO_CONTROL, "ping"), None),
    "control_open": (ProtoMsg(env.PROTO_CONTROL, "open", "s-1"), m.Open((1,))),
    "control_accept": (ProtoMsg(env.PROTO_CONTROL, "accept", "s-1"), m.Accept(1, (1, 2, 3, 4))),
    "control_error": (
        ProtoMsg(env.PROTO_CONTROL, "error", "s-1"),
        m.Error("session timeout", close=True, msgproto=1, msgtype="shell", msgid="m-7"),
    ),
    "shell_new": (ProtoMsg(env.PROTO_SHELL, "new", SID, {"user_id": "operator-1"}), None),
    "shell_data": (ProtoMsg(env.PROTO_SHELL, "shell", SID, {"status": 1}, b"ls -l\n"), None),
    "shell_error": (
        ProtoMsg(env.PROTO_SHELL, "stop", SID, {"status": 2}, b"device disconnected"),
        None,
    ),
    "shell_resize": (
        ProtoMsg(env.PROTO_SHELL, "resize", SID, {"terminal_width": 80, "terminal_height": 24}),
        None,
    ),
}
BODY_TYPES: dict[str, type[m.Open | m.Accept | m.Error]] = {
    "open": m.Open,
    "accept": m.Accept,
    "error": m.Error,
}


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def hdr(**fields: Any) -> bytes:
    return pack({"hdr": fields})


# --- Mender's vectors ------------------------------------------------------------------------


def test_every_vector_has_an_expected_meaning() -> None:
    assert set(VECTORS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_decodes_to_its_meaning(name: str) -> None:
    expected, expected_body = EXPECTED[name]
    msg = decode(VECTORS[name])
    assert msg.proto == expected.proto
    assert msg.typ == expected.typ
    assert msg.sid == expected.sid
    assert msg.props == expected.props
    if expected_body is None:
        assert msg.body == expected.body
    else:
        assert BODY_TYPES[msg.typ].from_body(msg.body) == expected_body


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_reencodes_byte_for_byte(name: str) -> None:
    assert encode(decode(VECTORS[name])) == VECTORS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encoding_the_meaning_gives_the_vector(name: str) -> None:
    expected, body = EXPECTED[name]
    if body is not None:
        expected = ProtoMsg(expected.proto, expected.typ, expected.sid, None, body.to_body())
    assert encode(expected) == VECTORS[name]


# --- omit-empty rules, as Go's omitempty --------------------------------------------------------


def test_minimal_message_is_hdr_with_proto_only() -> None:
    assert encode(ProtoMsg(env.PROTO_SHELL)) == b"\x81\xa3hdr\x81\xa5proto\xcd\x00\x01"


@pytest.mark.parametrize("proto", [0, 1, 0x7F, 0x0100, 0xFFFF])
def test_proto_is_always_a_uint16(proto: int) -> None:
    data = encode(ProtoMsg(proto, "x"))
    assert b"\xa5proto\xcd" + proto.to_bytes(2, "big") in data
    assert decode(data).proto == proto


def test_empty_optional_fields_are_omitted() -> None:
    data = encode(ProtoMsg(env.PROTO_CONTROL, "", "", {}, b""))
    assert msgpack.unpackb(data) == {"hdr": {"proto": 0xFFFF}}


@pytest.mark.parametrize(
    ("msg", "hdr_keys", "has_body"),
    [
        (ProtoMsg(1, typ="new"), {"proto", "typ"}, False),
        (ProtoMsg(1, sid="s"), {"proto", "sid"}, False),
        (ProtoMsg(1, props={"status": 1}), {"proto", "props"}, False),
        (ProtoMsg(1, body=b"x"), {"proto"}, True),
        (ProtoMsg(1, "new", "s", {"status": 1}, b"x"), {"proto", "typ", "sid", "props"}, True),
    ],
)
def test_present_fields_are_written(msg: ProtoMsg, hdr_keys: set[str], has_body: bool) -> None:
    fields = msgpack.unpackb(encode(msg))
    assert set(fields["hdr"]) == hdr_keys
    assert ("body" in fields) is has_body


def test_body_is_msgpack_bin() -> None:
    data = encode(ProtoMsg(1, body=b"hi"))
    assert data.endswith(b"\xa4body\xc4\x02hi")


def test_decode_defaults_absent_fields() -> None:
    assert decode(hdr(proto=1)) == ProtoMsg(1, "", "", None, b"")


def test_decode_treats_nil_as_absent() -> None:
    data = pack({"hdr": {"proto": 1, "typ": None, "sid": None, "props": None}, "body": None})
    assert decode(data) == ProtoMsg(1)


def test_decode_ignores_unknown_fields() -> None:
    data = pack({"hdr": {"proto": 1, "typ": "new", "future": 1}, "body": b"x", "extra": [1]})
    assert decode(data) == ProtoMsg(1, "new", body=b"x")


def test_decode_accepts_any_int_width_for_proto() -> None:
    assert decode(hdr(proto=4)).proto == 4  # a positive fixint, as a non-Go peer may write it


# --- bad input ---------------------------------------------------------------------------------

PING = VECTORS["control_ping"]
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "reserved byte 0xc1": b"\xc1",
    "truncated": PING[:-1],
    "trailing garbage": PING + b"\x00",
    "two messages": PING + PING,
    "bad utf-8 in typ": b"\x81\xa3hdr\x82\xa5proto\x01\xa3typ\xa2\xff\xfe",
    "unhashable map key": b"\x81\x91\x01\x01",
    "nested unhashable key": b"\x81\xa3hdr\x81\x81\x01\x02\x03",
    "bad timestamp ext": b"\xd5\xff\x00\x00",
    "array": pack([1, 2]),
    "string": pack("hdr"),
    "nil": pack(None),
    "no hdr": pack({"body": b"x"}),
    "hdr is nil": pack({"hdr": None}),
    "hdr not a map": pack({"hdr": [1]}),
    "no proto": hdr(typ="ping"),
    "proto nil": hdr(proto=None),
    "proto negative": hdr(proto=-1),
    "proto too large": hdr(proto=0x10000),
    "proto str": hdr(proto="1"),
    "proto float": hdr(proto=1.0),
    "proto true": hdr(proto=True),
    "proto false": hdr(proto=False),
    "typ int": hdr(proto=1, typ=1),
    "typ bin": hdr(proto=1, typ=b"new"),
    "sid int": hdr(proto=1, sid=7),
    "sid list": hdr(proto=1, sid=["s"]),
    "props list": hdr(proto=1, props=[1]),
    "props str": hdr(proto=1, props="status"),
    "props int keys": hdr(proto=1, props={1: "a"}),
    "props bin keys": hdr(proto=1, props={b"status": 1}),
    "body str": pack({"hdr": {"proto": 1}, "body": "text"}),
    "body int": pack({"hdr": {"proto": 1}, "body": 5}),
    "body map": pack({"hdr": {"proto": 1}, "body": {}}),
    # Header fields become NATS subject tokens and header values, and are echoed in errors.
    "sid with a dot": hdr(proto=1, sid="a.b"),
    "sid with a space": hdr(proto=1, sid="a b"),
    "sid with CR LF": hdr(proto=1, sid="a\r\nPUB x 1"),
    "sid too long": hdr(proto=1, sid="s" * 129),
    "typ too long": hdr(proto=1, typ="t" * (env.MAX_TYP_LENGTH + 1)),
    "props nested too deep": hdr(proto=1, props={"a": [[[[[[[[1]]]]]]]]}),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_rejected(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(data)


def test_a_deeply_nested_field_is_malformed_not_a_recursion_error() -> None:
    nested = b"\x91" * 1000 + b"\x01"  # [[[...[1]...]]], 1,000 levels: msgpack reads it
    data = b"\x81\xa3hdr\x81\xa5proto" + nested
    with pytest.raises(MalformedMessage, match="not list"):
        decode(data)
    props = b"\x81\xa3hdr\x82\xa5proto\x01\xa5props\x81\xa1a" + nested
    with pytest.raises(MalformedMessage, match="nests deeper"):
        decode(props)


def test_a_longest_sid_and_typ_are_read() -> None:
    msg = decode(hdr(proto=1, sid="s" * 128, typ="t" * env.MAX_TYP_LENGTH))
    assert (len(msg.sid), len(msg.typ)) == (128, env.MAX_TYP_LENGTH)


def test_trailing_data_is_not_silently_dropped() -> None:
    with pytest.raises(MalformedMessage, match="extra data"):
        decode(PING + b"\x00")


def test_oversize_message_is_rejected_before_parsing() -> None:
    assert decode(PING, max_size=len(PING)).typ == "ping"
    with pytest.raises(MessageTooBig):
        decode(PING, max_size=len(PING) - 1)
    with pytest.raises(MessageTooBig):
        decode(b"\xc1" * 100, max_size=10)  # not even MessagePack: the size check comes first


def test_default_limit_is_menders_server_limit() -> None:
    assert env.DEFAULT_MAX_MESSAGE_SIZE == 8 * 2**20
    with pytest.raises(MessageTooBig):
        decode(encode(ProtoMsg(1, body=b"\x00" * env.DEFAULT_MAX_MESSAGE_SIZE)))


def test_error_classes_are_distinct() -> None:
    assert not issubclass(MessageTooBig, MalformedMessage)
    assert not issubclass(MalformedMessage, MessageTooBig)


# --- properties -----------------------------------------------------------------------------

FUZZ = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what MessagePack can carry
scalars = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Any MessagePack document, keys included: ProtoMsg-shaped or not.
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | ints | st.booleans() | st.none(), inner, max_size=4)
        | st.fixed_dictionaries({"hdr": inner}, optional={"body": inner})
    ),
    max_leaves=16,
)
proto_msgs = st.builds(
    ProtoMsg,
    proto=st.integers(min_value=0, max_value=0xFFFF),
    typ=st.text(max_size=12),
    sid=st.from_regex(env.SID, fullmatch=True) | st.just(""),
    props=st.none() | st.dictionaries(st.text(max_size=12), values, max_size=5),
    body=st.binary(max_size=64),
)


def _decode_or_reject(data: bytes, max_size: int = env.DEFAULT_MAX_MESSAGE_SIZE) -> None:
    try:
        msg = decode(data, max_size)
    except (MalformedMessage, MessageTooBig):
        return
    assert type(msg.proto) is int
    assert isinstance(msg.typ, str)
    assert isinstance(msg.sid, str)
    assert isinstance(msg.body, bytes)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    _decode_or_reject(data, max_size=150)


@FUZZ
@given(st.lists(st.sampled_from(sorted(VECTORS.values())), min_size=1, max_size=1), st.data())
def test_fuzz_mutated_vectors_only_raise_protocol_errors(
    vector: list[bytes], data: st.DataObject
) -> None:
    mutated = bytearray(vector[0])
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        mutated[position] = data.draw(st.integers(min_value=0, max_value=255))
    _decode_or_reject(bytes(mutated))


@FUZZ
@given(documents)
def test_fuzz_msgpack_documents_only_raise_protocol_errors(document: Any) -> None:
    _decode_or_reject(pack(document))


@FUZZ
@given(proto_msgs)
def test_round_trip(msg: ProtoMsg) -> None:
    data = encode(msg)
    decoded = decode(data)
    assert decoded == ProtoMsg(msg.proto, msg.typ, msg.sid, msg.props or None, msg.body)
    assert encode(decoded) == data
    assert msgpack.unpackb(data, raw=False)["hdr"]["proto"] == msg.proto


@FUZZ
@given(proto_msgs)
def test_peek_header_agrees_with_decode(msg: ProtoMsg) -> None:
    assert env.peek_header(encode(msg)) == (msg.proto, msg.typ)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_peek_header_reads_the_vectors(name: str) -> None:
    msg = decode(VECTORS[name])
    assert env.peek_header(VECTORS[name]) == (msg.proto, msg.typ)


# --- the byte examples in docs/protocol.md ---------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"
BODY_CLASSES: dict[tuple[int, str], Any] = {
    (cls.PROTO, cls.TYP): cls
    for cls in (
        m.Open,
        m.Accept,
        m.Error,
        m.Status,
        m.Alert,
        m.AlertAck,
        m.CommandRequest,
        m.CommandResult,
        m.UpdateOffer,
        m.UpdateProgress,
    )
}


def doc_examples() -> list[bytes]:
    blocks = DOC.read_text().split("```hex\n")[1:]
    return [bytes.fromhex(block.partition("```")[0]) for block in blocks]


def test_doc_has_byte_examples() -> None:
    assert len(doc_examples()) >= 10


@pytest.mark.parametrize("data", doc_examples(), ids=lambda data: data.hex()[:40])
def test_doc_example_is_what_the_encoder_writes(data: bytes) -> None:
    msg = decode(data)
    assert encode(msg) == data
    if msg.body and (msg.proto, msg.typ) in BODY_CLASSES:
        body = BODY_CLASSES[msg.proto, msg.typ].from_body(msg.body)
        assert body.to_body() == msg.body
