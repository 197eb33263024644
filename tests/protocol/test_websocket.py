"""WebSocketConnection against websockets' own Sans-I/O implementation as an oracle."""

from __future__ import annotations

import os
import sys

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask
from websockets.uri import parse_uri

from backend.protocol.errors import (
    FrameError,
    InvalidPayload,
    MalformedMessage,
    MessageTooBig,
    ProtocolError,
    UnsupportedData,
)
from backend.protocol.http import client_request, parse_response
from backend.protocol.websocket import (
    Closed,
    Event,
    Failed,
    Message,
    Ping,
    Pong,
    Role,
    State,
    WebSocketConnection,
    _apply_mask_py,
)

# --- Helpers --------------------------------------------------------------------------------


def ws_frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A valid frame as websockets serializes it (masked: from a client)."""
    return Frame(opcode, data, fin).serialize(mask=mask, extensions=[])


def raw_frame(head1: int, payload: bytes = b"", *, mask: bool = True) -> bytes:
    """A frame with an arbitrary first byte, e.g. one websockets refuses to serialize."""
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = bytes((head1, mask_bit | length))
    elif length < 0x10000:
        header = bytes((head1, mask_bit | 126)) + length.to_bytes(2)
    else:
        header = bytes((head1, mask_bit | 127)) + length.to_bytes(8)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + apply_mask(payload, key)


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame, as our server queues it."""
    payload = code.to_bytes(2) + reason
    return bytes((0x88, len(payload))) + payload


def server(max_message_size: int = 8 * 2**20) -> WebSocketConnection:
    return WebSocketConnection(Role.SERVER, max_message_size)


def receive(conn: WebSocketConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return conn.events_received()


def ws_client() -> ClientProtocol:
    """A websockets client already past the handshake: it parses our server's frames."""
    return ClientProtocol(parse_uri("ws://gateway.test/"), state=WsState.OPEN, max_size=None)


def frames_from_server(data: bytes) -> list[Frame]:
    client = ws_client()
    client.receive_data(data)
    return [event for event in client.events_received() if isinstance(event, Frame)]


def handshaken_ws_server() -> ServerProtocol:
    """A websockets server that accepted our client's opening handshake."""
    request, key = client_request("gateway.test", "/ws")
    ws_server = ServerProtocol(max_size=None)
    ws_server.receive_data(request)
    [ws_request] = ws_server.events_received()
    ws_server.send_response(ws_server.accept(ws_request))
    [response] = ws_server.data_to_send()
    assert parse_response(response, key) is not None
    assert ws_server.state is WsState.OPEN
    return ws_server


# --- Receiving valid frames -----------------------------------------------------------------


def test_single_binary_frame() -> None:
    conn = server()
    assert receive(conn, ws_frame(Opcode.BINARY, b"hello")) == [Message(b"hello")]
    assert conn.data_to_send() == b""
    assert conn.state is State.OPEN


def test_several_frames_in_one_chunk() -> None:
    conn = server()
    data = (
        ws_frame(Opcode.BINARY, b"a") + ws_frame(Opcode.BINARY, b"") + ws_frame(Opcode.PONG, b"p")
    )
    assert receive(conn, data) == [Message(b"a"), Message(b""), Pong(b"p")]


def test_fragmented_message() -> None:
    conn = server()
    data = (
        ws_frame(Opcode.BINARY, b"ab", fin=False)
        + ws_frame(Opcode.CONT, b"", fin=False)
        + ws_frame(Opcode.CONT, b"cd", fin=False)
        + ws_frame(Opcode.CONT, b"e")
    )
    assert receive(conn, data) == [Message(b"abcde")]
    assert conn._message is None


def test_ping_interleaved_in_a_fragmented_message() -> None:
    conn = server()
    data = (
        ws_frame(Opcode.BINARY, b"ab", fin=False)
        + ws_frame(Opcode.PING, b"are you there")
        + ws_frame(Opcode.CONT, b"cd")
    )
    assert receive(conn, data) == [Ping(b"are you there"), Message(b"abcd")]
    [pong] = frames_from_server(conn.data_to_send())
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")  # RFC 6455 §5.5.2


@pytest.mark.parametrize("size", [125, 126, 300, 0xFFFF, 0x10000, 70_000])
def test_extended_payload_lengths(size: int) -> None:
    data = os.urandom(size)
    assert receive(server(), ws_frame(Opcode.BINARY, data)) == [Message(data)]


def test_message_of_exactly_max_size_is_accepted() -> None:
    conn = server(max_message_size=10)
    data = ws_frame(Opcode.BINARY, b"12345", fin=False) + ws_frame(Opcode.CONT, b"67890")
    assert receive(conn, data) == [Message(b"1234567890")]


STREAM = (
    ws_frame(Opcode.BINARY, b"first")
    + ws_frame(Opcode.BINARY, b"frag", fin=False)
    + ws_frame(Opcode.PING, b"ping")
    + ws_frame(Opcode.CONT, b"mented")
    + ws_frame(Opcode.BINARY, bytes(range(256)) * 2)
    + ws_frame(Opcode.BINARY, b"\x07" * 70_000)
    + ws_frame(Opcode.PONG, b"")
    + ws_frame(Opcode.CLOSE, (1000).to_bytes(2) + b"bye")
)
STREAM_EVENTS: list[Event] = [
    Message(b"first"),
    Ping(b"ping"),
    Message(b"fragmented"),
    Message(bytes(range(256)) * 2),
    Message(b"\x07" * 70_000),
    Pong(b""),
    Closed(1000, "bye"),
]


def test_stream_in_one_chunk() -> None:
    conn = server()
    assert receive(conn, STREAM) == STREAM_EVENTS
    assert conn.state is State.CLOSED


def test_stream_one_byte_at_a_time() -> None:
    conn = server()
    events: list[Event] = []
    for i in range(len(STREAM)):
        events += receive(conn, STREAM[i : i + 1])
    assert events == STREAM_EVENTS
    frames = [(frame.opcode, frame.data) for frame in frames_from_server(conn.data_to_send())]
    assert frames == [(Opcode.PONG, b"ping"), (Opcode.CLOSE, (1000).to_bytes(2) + b"bye")]


def test_client_receives_server_stream_one_byte_at_a_time() -> None:
    ws_server = ServerProtocol(state=WsState.OPEN)
    ws_server.send_binary(b"a" * 300)
    ws_server.send_binary(b"b" * 70_000)
    ws_server.send_close()  # no code: an empty close frame
    stream = b"".join(ws_server.data_to_send())
    client = WebSocketConnection(Role.CLIENT)
    events: list[Event] = []
    for i in range(len(stream)):
        events += receive(client, stream[i : i + 1])
    assert events == [Message(b"a" * 300), Message(b"b" * 70_000), Closed(1005, "")]


def test_split_at_every_byte_boundary() -> None:
    head = STREAM[:600]  # the small frames and the start of the 512-byte one
    for cut in range(len(head) + 1):
        conn = server()
        events = receive(conn, head[:cut]) + receive(conn, head[cut:] + STREAM[600:])
        assert events == STREAM_EVENTS, cut


def test_incomplete_tail_is_buffered_only_while_pending() -> None:
    conn = server()
    frame = ws_frame(Opcode.BINARY, b"payload")
    assert receive(conn, frame + frame[:3]) == [Message(b"payload")]
    assert conn._buffer == frame[:3]
    assert receive(conn, frame[3:] + frame + frame[:1]) == [Message(b"payload")] * 2
    assert conn._buffer == frame[:1]
    assert receive(conn, frame[1:]) == [Message(b"payload")]
    assert conn._buffer is None


def test_idle_connection_is_small() -> None:
    conn = server()
    receive(conn, ws_frame(Opcode.BINARY, b"x" * 100, fin=False) + ws_frame(Opcode.CONT, b"y"))
    conn.send_binary(b"z" * 100)
    conn.data_to_send()
    assert (conn._buffer, conn._message, conn._events, conn._outgoing) == (None,) * 4
    assert sys.getsizeof(conn) <= 200


# --- Interoperability with websockets --------------------------------------------------------


def test_client_frames_parsed_by_websockets_server() -> None:
    ws_server = handshaken_ws_server()
    client = WebSocketConnection(Role.CLIENT)
    big = os.urandom(70_000)
    client.send_binary(b"hello")
    client.send_binary(big)
    client.send_ping(b"p")
    client.send_pong(b"q")
    client.send_close(1001, "bye")
    ws_server.receive_data(client.data_to_send())
    frames = [(event.opcode, bytes(event.data)) for event in ws_server.events_received()]
    assert frames == [
        (Opcode.BINARY, b"hello"),
        (Opcode.BINARY, big),
        (Opcode.PING, b"p"),
        (Opcode.PONG, b"q"),
        (Opcode.CLOSE, (1001).to_bytes(2) + b"bye"),
    ]
    assert client.state is State.CLOSING
    # websockets answers the ping and echoes the close: the closing handshake completes.
    assert receive(client, b"".join(ws_server.data_to_send())) == [
        Pong(b"p"),
        Closed(1001, "bye"),
    ]
    assert client.state is State.CLOSED


def test_client_masks_every_frame_with_a_fresh_key() -> None:
    client = WebSocketConnection(Role.CLIENT)
    client.send_binary(b"same")
    client.send_binary(b"same")
    data = client.data_to_send()
    first, second = data[:10], data[10:]
    assert first[1] == second[1] == 0x80 | 4  # masked (RFC 6455 §5.3)
    assert first[2:6] != second[2:6]
    assert apply_mask(first[6:], first[2:6]) == apply_mask(second[6:], second[2:6]) == b"same"


def test_server_frames_parsed_by_websockets_client() -> None:
    conn = server()
    big = os.urandom(0x10000)
    conn.send_binary(b"hello")
    conn.send_binary(b"m" * 126)
    conn.send_binary(big)
    conn.send_ping()
    conn.send_close()
    frames = [
        (frame.opcode, bytes(frame.data)) for frame in frames_from_server(conn.data_to_send())
    ]
    assert frames == [
        (Opcode.BINARY, b"hello"),
        (Opcode.BINARY, b"m" * 126),
        (Opcode.BINARY, big),
        (Opcode.PING, b""),
        (Opcode.CLOSE, (1000).to_bytes(2)),
    ]


def test_websockets_server_frames_parsed_by_our_client() -> None:
    ws_server = ServerProtocol(state=WsState.OPEN)
    ws_server.send_binary(b"to the gateway")
    ws_server.send_binary(b"frag", fin=False)
    ws_server.send_ping(b"hb")
    ws_server.send_continuation(b"ment", fin=True)
    ws_server.send_close(1012, "restart")
    client = WebSocketConnection(Role.CLIENT)
    assert receive(client, b"".join(ws_server.data_to_send())) == [
        Message(b"to the gateway"),
        Ping(b"hb"),
        Message(b"fragment"),
        Closed(1012, "restart"),
    ]
    # Our pong and close echo are masked client frames websockets accepts.
    ws_server.receive_data(client.data_to_send())
    assert [(f.opcode, bytes(f.data)) for f in ws_server.events_received()] == [
        (Opcode.PONG, b"hb"),
        (Opcode.CLOSE, (1012).to_bytes(2) + b"restart"),
    ]


def test_websockets_client_frames_parsed_by_our_server() -> None:
    ws_client_ = ClientProtocol(parse_uri("ws://gateway.test/"), state=WsState.OPEN)
    ws_client_.send_binary(b"from the gateway")
    ws_client_.send_binary(b"x" * 1000, fin=False)
    ws_client_.send_continuation(b"y", fin=True)
    ws_client_.send_close(1000)
    conn = server()
    assert receive(conn, b"".join(ws_client_.data_to_send())) == [
        Message(b"from the gateway"),
        Message(b"x" * 1000 + b"y"),
        Closed(1000, ""),
    ]
    assert conn.data_to_send() == close_frame(1000)


# --- Closing ----------------------------------------------------------------------------------


def test_peer_close_is_echoed_and_closes() -> None:
    conn = server()
    assert receive(conn, ws_frame(Opcode.CLOSE, (1001).to_bytes(2) + "adiós".encode())) == [
        Closed(1001, "adiós")
    ]
    assert conn.data_to_send() == close_frame(1001, "adiós".encode())  # RFC 6455 §5.5.1
    assert conn.state is State.CLOSED


def test_empty_close_means_no_status() -> None:
    conn = server()
    assert receive(conn, ws_frame(Opcode.CLOSE, b"")) == [Closed(1005, "")]  # RFC 6455 §7.1.5
    assert conn.data_to_send() == b"\x88\x00"


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert receive(server(), ws_frame(Opcode.CLOSE, code.to_bytes(2))) == [Closed(code, "")]


def test_closing_handshake_we_start() -> None:
    conn = server()
    conn.send_close(4001, "replaced")
    assert conn.state is State.CLOSING
    assert conn.data_to_send() == close_frame(4001, b"replaced")
    # RFC 6455 §1.4: data still arrives until the peer's close; §5.5.2: a ping still gets
    # its pong, since no close was received.
    data = ws_frame(Opcode.BINARY, b"late") + ws_frame(Opcode.PING, b"p")
    assert receive(conn, data) == [Message(b"late"), Ping(b"p")]
    assert conn.data_to_send() == raw_frame(0x8A, b"p", mask=False)
    conn.send_binary(b"dropped")
    conn.send_ping(b"dropped")
    conn.send_pong(b"dropped")
    conn.send_close()
    assert conn.data_to_send() == b""
    assert receive(conn, ws_frame(Opcode.CLOSE, (4001).to_bytes(2))) == [Closed(4001, "")]
    assert conn.data_to_send() == b""  # no echo: we sent our close already
    assert conn.state is State.CLOSED


def test_input_after_close_is_ignored() -> None:
    conn = server()
    receive(conn, ws_frame(Opcode.CLOSE, b"") + ws_frame(Opcode.BINARY, b"after"))
    conn.data_to_send()
    assert receive(conn, ws_frame(Opcode.BINARY, b"later")) == []
    assert conn.data_to_send() == b""
    assert conn._buffer is None


@pytest.mark.parametrize(
    ("code", "reason"),
    [(999, ""), (1004, ""), (1005, ""), (1015, ""), (5000, ""), (1000, "é" * 62)],
)
def test_send_close_refuses_what_cannot_be_sent(code: int, reason: str) -> None:
    conn = server()
    with pytest.raises(ValueError):  # noqa: PT011 - RFC 6455 §7.4.1 code or §5.5 length
        conn.send_close(code, reason)
    assert conn.state is State.OPEN


def test_control_payloads_are_limited() -> None:
    conn = server()
    conn.send_ping(b"x" * 125)
    with pytest.raises(ValueError, match="125"):
        conn.send_ping(b"x" * 126)
    with pytest.raises(ValueError, match="125"):
        conn.send_pong(b"x" * 126)
    assert frames_from_server(conn.data_to_send())[0].data == b"x" * 125


# --- Failing the connection -------------------------------------------------------------------

MASKED_BINARY = ws_frame(Opcode.BINARY, b"data")

FAILURES: list[tuple[str, Role, bytes, type[ProtocolError]]] = [
    ("unmasked client frame", Role.SERVER, ws_frame(Opcode.BINARY, b"x", mask=False), FrameError),
    ("masked server frame", Role.CLIENT, MASKED_BINARY, FrameError),
    ("rsv1", Role.SERVER, raw_frame(0xC2, b"x"), FrameError),
    ("rsv2", Role.SERVER, raw_frame(0xA2, b"x"), FrameError),
    ("rsv3", Role.SERVER, raw_frame(0x92, b"x"), FrameError),
    *(
        (f"opcode {op:#x}", Role.SERVER, raw_frame(0x80 | op, b"x"), FrameError)
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    ("fragmented ping", Role.SERVER, raw_frame(0x09, b"x"), FrameError),
    ("fragmented close", Role.SERVER, raw_frame(0x08, b""), FrameError),
    ("ping over 125", Role.SERVER, raw_frame(0x89, b"x" * 126)[:4], FrameError),
    ("stray continuation", Role.SERVER, ws_frame(Opcode.CONT, b"x"), FrameError),
    (
        "binary inside a fragmented message",
        Role.SERVER,
        ws_frame(Opcode.BINARY, b"a", fin=False) + MASKED_BINARY,
        FrameError,
    ),
    ("64-bit length with top bit", Role.SERVER, b"\x82\xff" + b"\x80" + b"\x00" * 7, FrameError),
    # Size and text are refused from the header alone, before any payload arrives.
    ("too big, 16-bit header", Role.SERVER, b"\x82\xfe\x04\x01", MessageTooBig),
    ("too big, 64-bit header", Role.SERVER, b"\x82\xff" + (2**40).to_bytes(8), MessageTooBig),
    (
        "too big in fragments",
        Role.SERVER,
        ws_frame(Opcode.BINARY, b"x" * 1000, fin=False) + b"\x80\xfe\x00\x19",
        MessageTooBig,
    ),
    ("text frame header", Role.SERVER, b"\x81\xfe", UnsupportedData),
    (
        "text frame from server",
        Role.CLIENT,
        ws_frame(Opcode.TEXT, b"t", mask=False),
        UnsupportedData,
    ),
    ("close of 1 byte", Role.SERVER, raw_frame(0x88, b"\x03"), FrameError),
    *(
        (f"close code {code}", Role.SERVER, raw_frame(0x88, code.to_bytes(2)), FrameError)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    ),
    ("close reason not UTF-8", Role.SERVER, raw_frame(0x88, b"\x03\xe8\xff"), InvalidPayload),
]


@pytest.mark.parametrize(
    ("role", "data", "error_class"),
    [failure[1:] for failure in FAILURES],
    ids=[failure[0] for failure in FAILURES],
)
def test_failures(role: Role, data: bytes, error_class: type[ProtocolError]) -> None:
    conn = WebSocketConnection(role, max_message_size=1024)
    events = receive(conn, data)
    assert isinstance(events[-1], Failed)
    error = events[-1].error
    assert type(error) is error_class
    assert error.close_code is not None
    queued = conn.data_to_send()
    expected_payload = error.close_code.to_bytes(2) + error.reason.encode()
    if role is Role.SERVER:
        assert queued == close_frame(error.close_code, error.reason.encode())
    else:  # a client masks its close frame
        assert queued[:2] == bytes((0x88, 0x80 | len(expected_payload)))
        assert apply_mask(queued[6:], queued[2:6]) == expected_payload
    assert conn.state is State.CLOSED
    # Once failed, the connection ignores any further input.
    assert receive(conn, MASKED_BINARY + data) == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("error", "code"),
    [(FrameError("x"), 1002), (MessageTooBig("x"), 1009), (UnsupportedData("x"), 1003)],
)
def test_fail_queues_the_error_close_code(error: ProtocolError, code: int) -> None:
    conn = server()
    conn.fail(error)
    assert conn.events_received() == [Failed(error)]
    assert conn.data_to_send() == close_frame(code, error.reason.encode())
    conn.fail(FrameError("again"))
    assert conn.events_received() == []
    assert conn.data_to_send() == b""


def test_fail_while_closing_sends_no_second_close() -> None:
    conn = server()
    conn.send_close()
    conn.data_to_send()
    error = FrameError("late garbage")
    conn.fail(error)
    assert conn.events_received() == [Failed(error)]
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED


def test_fail_refuses_errors_that_keep_the_connection_open() -> None:
    with pytest.raises(ValueError, match="does not close"):
        server().fail(MalformedMessage("not msgpack"))


def test_failure_after_good_frames_keeps_their_events() -> None:
    conn = server()
    events = receive(conn, MASKED_BINARY + ws_frame(Opcode.TEXT, b"t"))
    assert events[0] == Message(b"data")
    assert isinstance(events[1], Failed)


# --- Draining -------------------------------------------------------------------------------


def test_events_and_output_are_drained() -> None:
    conn = server()
    assert conn.events_received() == []
    assert conn.data_to_send() == b""
    receive(conn, ws_frame(Opcode.PING, b"1") + ws_frame(Opcode.PING, b"2"))
    assert conn.events_received() == []
    assert len(frames_from_server(conn.data_to_send())) == 2
    assert conn.data_to_send() == b""


def test_python_mask_fallback_matches_c() -> None:
    for size in (0, 1, 3, 4, 5, 125, 126, 1000):
        data, mask = os.urandom(size), os.urandom(4)
        assert _apply_mask_py(data, mask) == apply_mask(data, mask)
        assert _apply_mask_py(memoryview(data), mask) == apply_mask(data, mask)
