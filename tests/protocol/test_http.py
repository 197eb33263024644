"""The HTTP side of the opening handshake, checked against websockets' Sans-I/O classes."""

from __future__ import annotations

import base64

import pytest
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from backend.protocol.errors import (
    HandshakeError,
    InvalidUpgrade,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RequestTooLarge,
    Unauthorized,
    UnsupportedVersion,
    UpgradeRejected,
)
from backend.protocol.http import (
    Request,
    accept_key,
    accept_response,
    check_response,
    check_upgrade,
    chosen_subprotocol,
    client_request,
    error_response,
    http_response,
    parse_request,
    parse_response,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
UPGRADE = (
    b"GET /ws/v1?device=7 HTTP/1.1\r\n"
    b"Host: shard.test:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Authorization: Bearer abc\r\n"
    b"\r\n"
)


def request_with(**headers: str | None) -> Request:
    """The upgrade request above with headers replaced (str) or removed (None)."""
    parsed = parse_request(UPGRADE)
    assert parsed is not None
    fields = dict(parsed[0].headers)
    for name, value in headers.items():
        name = name.replace("_", "-")
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    return Request("GET", "/ws/v1", "/ws/v1", fields)


def response_head(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.split(b": ", 1) for line in lines), body


# --- parse_request -----------------------------------------------------------------------------


def test_parse_request() -> None:
    parsed = parse_request(UPGRADE + b"\x82\x00")
    assert parsed is not None
    request, consumed = parsed
    assert consumed == len(UPGRADE)
    assert (request.method, request.target, request.path) == ("GET", "/ws/v1?device=7", "/ws/v1")
    assert request.headers == {
        "host": "shard.test:8080",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
        "authorization": "Bearer abc",
    }


def test_repeated_headers_are_joined_and_whitespace_trimmed() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-A:  1 \r\nx-a:\t2\r\nEmpty:\r\n\r\n"
    parsed = parse_request(raw)
    assert parsed is not None
    assert parsed[0].headers == {"host": "h", "x-a": "1, 2", "empty": ""}


def test_request_split_across_calls() -> None:
    for cut in range(len(UPGRADE)):
        assert parse_request(UPGRADE[:cut]) is None
    buf = bytearray()
    for byte in UPGRADE:
        buf.append(byte)
        parsed = parse_request(buf)
    assert parsed is not None
    assert parsed[1] == len(UPGRADE)


def test_request_too_large() -> None:
    endless = b"GET / HTTP/1.1\r\nX: " + b"a" * 200
    assert parse_request(endless, max_size=len(endless) + 1) is None
    with pytest.raises(RequestTooLarge) as info:
        parse_request(endless, max_size=len(endless))
    assert info.value.status == 431
    complete = endless + b"\r\n\r\n"
    with pytest.raises(RequestTooLarge):  # ends, but beyond the limit
        parse_request(complete, max_size=len(complete) - 1)
    assert parse_request(complete, max_size=len(complete)) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\n\r\n",
        b"hello\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/2\r\nHost: h\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\n: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\xc3\xa9\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nHost: h\n\r\n",
    ],
)
def test_garbage_requests(raw: bytes) -> None:
    with pytest.raises(InvalidUpgrade) as info:
        parse_request(raw)
    assert type(info.value) is InvalidUpgrade
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [b"GET / HTTP/1.1\n", b"GET / HTTP/1.1\r\nHost: h\n", b"\n"])
def test_bare_lf_is_refused_before_the_head_ends(raw: bytes) -> None:
    # RFC 9112 §2.2: refused at once rather than waited on until the handshake deadline.
    with pytest.raises(InvalidUpgrade, match="bare LF"):
        parse_request(raw)


def test_bare_lf_in_a_response_is_refused() -> None:
    with pytest.raises(InvalidUpgrade, match="bare LF"):
        parse_response(b"HTTP/1.1 101 Switching Protocols\n", KEY)


# --- check_upgrade (RFC 6455 §4.2.1) -----------------------------------------------------------


def test_check_upgrade_returns_the_key() -> None:
    parsed = parse_request(UPGRADE)
    assert parsed is not None
    assert check_upgrade(parsed[0]) == KEY


def test_header_tokens_are_case_insensitive_lists() -> None:
    request = request_with(upgrade="WebSocket", connection="keep-alive, UPGRADE")
    assert check_upgrade(request) == KEY


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"host": None}, 400),
        ({"host": ""}, 400),
        ({"upgrade": None}, 400),
        ({"upgrade": "h2c"}, 400),
        ({"connection": None}, 400),
        ({"connection": "keep-alive"}, 400),
        ({"sec_websocket_key": None}, 400),
        ({"sec_websocket_key": "not base64!"}, 400),
        ({"sec_websocket_key": base64.b64encode(b"x" * 15).decode()}, 400),
        ({"sec_websocket_key": f"{KEY}, {KEY}"}, 400),
        ({"sec_websocket_version": None}, 400),
        ({"sec_websocket_version": "8"}, 426),
        ({"sec_websocket_version": "13, 8"}, 426),
    ],
)
def test_check_upgrade_violations(headers: dict[str, str | None], status: int) -> None:
    with pytest.raises(InvalidUpgrade) as info:
        check_upgrade(request_with(**headers))
    assert info.value.status == status


def test_method_not_allowed() -> None:
    request = Request("POST", "/ws", "/ws", request_with().headers)
    with pytest.raises(MethodNotAllowed) as info:
        check_upgrade(request)
    status, headers, _ = response_head(error_response(info.value))
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert headers[b"Allow"] == b"GET"  # RFC 9110 §15.5.6


def test_unsupported_version_response() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        check_upgrade(request_with(sec_websocket_version="8"))
    status, headers, body = response_head(error_response(info.value))
    assert status == b"HTTP/1.1 426 Upgrade Required"
    assert headers[b"Sec-WebSocket-Version"] == b"13"  # RFC 6455 §4.4
    assert body == b"unsupported Sec-WebSocket-Version 8\n"


# --- Server responses --------------------------------------------------------------------------


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_accept_response() -> None:
    assert accept_response(KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )
    _, headers, _ = response_head(accept_response(KEY, "mender.v1"))
    assert headers[b"Sec-WebSocket-Protocol"] == b"mender.v1"


def test_http_response() -> None:
    assert http_response(200, b"ok\n", headers=[("Cache-Control", "no-store")]) == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\n"
        b"Connection: close\r\n"
        b"Cache-Control: no-store\r\n"
        b"\r\n"
        b"ok\n"
    )
    metrics = http_response(200, b"x 1\n", content_type="text/plain; version=0.0.4")
    assert response_head(metrics)[1][b"Content-Type"] == b"text/plain; version=0.0.4"


@pytest.mark.parametrize(("name", "value"), [("X", "a\r\nSet-Cookie: b"), ("X Y", "a"), ("X", "é")])
def test_http_response_refuses_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="invalid header field"):
        http_response(200, headers=[(name, value)])


@pytest.mark.parametrize(
    ("retry_after", "header"), [(2.1, b"3"), (7, b"7"), (0.2, b"1"), (0, b"1"), (None, None)]
)
def test_error_response_retry_after(retry_after: float | None, header: bytes | None) -> None:
    status, headers, body = response_head(
        error_response(Overloaded("busy", retry_after=retry_after))
    )
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers.get(b"Retry-After") == header
    assert headers[b"Connection"] == b"close"
    assert body == b"busy\n"


@pytest.mark.parametrize(
    ("error", "status_line"),
    [
        (InvalidUpgrade("bad"), b"HTTP/1.1 400 Bad Request"),
        (RequestTooLarge("big"), b"HTTP/1.1 431 Request Header Fields Too Large"),
        (NotFound("nope"), b"HTTP/1.1 404 Not Found"),
        (Unauthorized("token expired"), b"HTTP/1.1 401 Unauthorized"),
    ],
)
def test_error_response_statuses(error: HandshakeError, status_line: bytes) -> None:
    status, headers, body = response_head(error_response(error))
    assert status == status_line
    assert body == f"{error}\n".encode()
    assert int(headers[b"Content-Length"]) == len(body)
    assert (b"WWW-Authenticate" in headers) is isinstance(error, Unauthorized)  # RFC 9110 §11.6.1


# --- Against websockets -----------------------------------------------------------------------


def test_websockets_client_accepted_by_our_server() -> None:
    ws_client = ClientProtocol(parse_uri("ws://shard.test/ws/v1"))
    ws_client.send_request(ws_client.connect())
    [raw] = ws_client.data_to_send()
    parsed = parse_request(raw)
    assert parsed is not None
    request, consumed = parsed
    assert consumed == len(raw)
    ws_client.receive_data(accept_response(check_upgrade(request)))
    [response] = ws_client.events_received()
    assert isinstance(response, Response)
    assert response.status_code == 101
    assert ws_client.state is WsState.OPEN


def test_client_request_accepted_by_websockets_server() -> None:
    raw, key = client_request("shard.test:8080", "/ws/v1?x=1", [("Authorization", "Bearer t")])
    assert len(base64.b64decode(key, validate=True)) == 16
    ws_server = ServerProtocol()
    ws_server.receive_data(raw)
    [request] = ws_server.events_received()
    assert request.path == "/ws/v1?x=1"
    assert request.headers["Host"] == "shard.test:8080"
    assert request.headers["Authorization"] == "Bearer t"
    ws_server.send_response(ws_server.accept(request))
    [response] = ws_server.data_to_send()
    assert ws_server.state is WsState.OPEN
    ws_server.send_binary(b"first frame")
    [frame] = ws_server.data_to_send()
    buf = response + frame
    for cut in range(len(response)):
        assert parse_response(buf[:cut], key) is None
    parsed = parse_response(buf, key)
    assert parsed is not None
    status, headers, consumed = parsed
    assert status == 101
    assert headers["sec-websocket-accept"] == accept_key(key)
    assert buf[consumed:] == frame


def test_client_request_keys_are_fresh() -> None:
    assert client_request("h", "/")[1] != client_request("h", "/")[1]


@pytest.mark.parametrize("path", ["", "/a b", "/\r\nX: y", "/é"])
def test_client_request_refuses_bad_targets(path: str) -> None:
    with pytest.raises(ValueError, match="invalid request target"):
        client_request("h", path)


def test_rejection_with_retry_after() -> None:
    _, key = client_request("h", "/")
    with pytest.raises(UpgradeRejected) as info:
        parse_response(error_response(Overloaded("full", retry_after=6.5)), key)
    assert (info.value.status, info.value.retry_after) == (503, 7.0)


def test_websockets_rejection() -> None:
    ws_server = ServerProtocol()
    raw, key = client_request("h", "/")
    ws_server.receive_data(raw)
    ws_server.events_received()
    response = ws_server.reject(401, "who are you?\n")
    ws_server.send_response(response)
    with pytest.raises(UpgradeRejected) as info:
        parse_response(b"".join(ws_server.data_to_send()), key)
    assert (info.value.status, info.value.retry_after) == (401, None)


@pytest.mark.parametrize("value", ["Fri, 31 Dec 1999 23:59:59 GMT", "-1", "1.5", ""])
def test_retry_after_other_than_delay_seconds_is_ignored(value: str) -> None:
    with pytest.raises(UpgradeRejected) as info:
        check_response(503, {"retry-after": value}, KEY)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    "headers",
    [
        {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-accept": "wrong"},
        {"upgrade": "websocket", "connection": "Upgrade"},
        {"connection": "Upgrade", "sec-websocket-accept": accept_key(KEY)},
        {"upgrade": "websocket", "sec-websocket-accept": accept_key(KEY)},
    ],
)
def test_bad_101_is_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(UpgradeRejected) as info:
        check_response(101, headers, KEY)
    assert info.value.status == 101


def test_websockets_response_headers_round_trip() -> None:
    response = Response(101, "Switching Protocols", Headers(), b"")
    response.headers["Upgrade"] = "websocket"
    response.headers["Connection"] = "Upgrade"
    response.headers["Sec-WebSocket-Accept"] = accept_key(KEY)
    parsed = parse_response(response.serialize(), KEY)
    assert parsed is not None
    assert parsed[0] == 101


@pytest.mark.parametrize(
    "raw", [b"HTTP/1.0 101 OK\r\n\r\n", b"HTTP/1.1 99 X\r\n\r\n", b"ICY 200 OK\r\n\r\n"]
)
def test_malformed_status_line(raw: bytes) -> None:
    with pytest.raises(InvalidUpgrade):
        parse_response(raw, KEY)


def test_status_line_without_reason_phrase() -> None:
    with pytest.raises(UpgradeRejected) as info:
        parse_response(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", KEY)
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (None, None),  # the real Mender client offers none
        ("protomsg/msgpack", "protomsg/msgpack"),
        ("chat, protomsg/msgpack ", "protomsg/msgpack"),
        ("chat", None),
        ("PROTOMSG/MSGPACK", None),  # compared as written
    ],
)
def test_chosen_subprotocol(offered: str | None, chosen: str | None) -> None:
    request = request_with() if offered is None else request_with(sec_websocket_protocol=offered)
    assert chosen_subprotocol(request) == chosen
