"""Sans-I/O HTTP/1.1 for the WebSocket opening handshake (RFC 6455 §4), both sides.

The server parses the upgrade request incrementally, validates it (§4.2.1) and answers with a
101 (§4.2.2) or a complete HTTP error response. The client side builds the request (§4.1) and
checks the 101, surfacing refusals, with their Retry-After, as ``UpgradeRejected``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from backend.protocol.errors import (
    HandshakeError,
    InvalidUpgrade,
    MethodNotAllowed,
    RequestTooLarge,
    Unauthorized,
    UnsupportedVersion,
    UpgradeRejected,
)

MAX_HEADER_SIZE = 8192
DEVICE_PATH = "/api/devices/v1/deviceconnect/connect"
"""Where Mender devices open their WebSocket (deviceconnect's device API)."""
SUBPROTOCOL = "protomsg/msgpack"
"""The subprotocol a device may offer (Sec-WebSocket-Protocol); the real Mender client offers
none, and is answered with none."""
WS_VERSION = "13"  # RFC 6455 §4.1, item 9
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_END = b"\r\n\r\n"
# RFC 9112 §2.2: a recipient MAY take a bare LF as a line terminator; we refuse it (400 at
# once) instead: every client we serve sends CRLF, one strict grammar leaves no room for two
# parsers to disagree on where a field ends, and a head ended by LF alone would otherwise
# never show the CRLF CRLF we wait for and run into the handshake deadline (408).
_BARE_LF = re.compile(rb"(?<!\r)\n")

# RFC 9110 §5.1 field-name = token; §5.5 field-value = VCHAR / SP / HTAB (obs-text refused).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version.
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.1")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
_STATUS_LINE = re.compile(r"HTTP/1\.1 ([1-9][0-9][0-9])(?: [\x20-\x7e\t]*)?")


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request head; header names are lower-cased, repeated headers joined."""

    method: str
    target: str
    path: str
    headers: dict[str, str]


# --- Server side ----------------------------------------------------------------------------


def parse_request(
    buf: bytes | bytearray, max_size: int = MAX_HEADER_SIZE
) -> tuple[Request, int] | None:
    """Parse the request head at the start of ``buf``: (request, bytes consumed), or None
    while it is incomplete. The head, final CRLF included, may be at most ``max_size``."""
    head = _split_head(buf, max_size)
    if head is None:
        return None
    start, fields, consumed = head
    match = _REQUEST_LINE.fullmatch(start)
    if match is None:
        raise InvalidUpgrade("malformed request line")
    method, target = match.groups()
    headers = _parse_fields(fields)
    return Request(method, target, target.partition("?")[0], headers), consumed


def check_upgrade(request: Request) -> str:
    """Validate an opening handshake (RFC 6455 §4.2.1) and return its Sec-WebSocket-Key."""
    if request.method != "GET":  # item 1
        raise MethodNotAllowed(f"method {request.method} not allowed")
    headers = request.headers
    if not headers.get("host"):  # item 2
        raise InvalidUpgrade("missing Host header")
    _check_upgrade_headers(headers)  # items 3 and 4
    key = headers.get("sec-websocket-key")  # item 5
    if key is None or not _is_valid_key(key):
        raise InvalidUpgrade("missing or invalid Sec-WebSocket-Key header")
    version = headers.get("sec-websocket-version")  # item 6
    if version is None:
        raise InvalidUpgrade("missing Sec-WebSocket-Version header")
    if version != WS_VERSION:
        raise UnsupportedVersion(f"unsupported Sec-WebSocket-Version {version}")
    return key


def accept_response(key: str, subprotocol: str | None = None) -> bytes:
    """The 101 Switching Protocols response accepting the upgrade (RFC 6455 §4.2.2 item 5)."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return _head("HTTP/1.1 101 Switching Protocols", headers)


def chosen_subprotocol(request: Request) -> str | None:
    """Ours if the client offered it, else none (RFC 6455 §4.2.2 item 5, /subprotocol/: the
    server picks one of the offered values; they are compared as written)."""
    offered = request.headers.get("sec-websocket-protocol", "")
    return SUBPROTOCOL if SUBPROTOCOL in {item.strip() for item in offered.split(",")} else None


def http_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A complete HTTP/1.1 response after which the server closes the connection."""
    fields = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *headers,
    ]
    return _head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", fields) + body


def error_response(exc: HandshakeError) -> bytes:
    """The HTTP response refusing a handshake with ``exc``'s status."""
    headers: list[tuple[str, str]] = []
    if exc.retry_after is not None:  # RFC 9110 §10.2.3: delay-seconds
        headers.append(("Retry-After", str(max(1, math.ceil(exc.retry_after)))))
    if isinstance(exc, UnsupportedVersion):  # RFC 6455 §4.4
        headers.append(("Sec-WebSocket-Version", WS_VERSION))
    elif isinstance(exc, MethodNotAllowed):  # RFC 9110 §15.5.6
        headers.append(("Allow", "GET"))
    elif isinstance(exc, Unauthorized):  # RFC 9110 §15.5.2
        headers.append(("WWW-Authenticate", "Bearer"))
    return http_response(exc.status, f"{exc}\n".encode(), headers=headers)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


# --- Client side ----------------------------------------------------------------------------


def client_request(
    host: str, path: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[bytes, str]:
    """An opening handshake request (RFC 6455 §4.1) and the Sec-WebSocket-Key it carries."""
    if _REQUEST_LINE.fullmatch(f"GET {path} HTTP/1.1") is None:
        raise ValueError(f"invalid request target {path!r}")
    key = base64.b64encode(os.urandom(16)).decode()  # §4.1 item 7
    fields = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", WS_VERSION),
        *headers,
    ]
    return _head(f"GET {path} HTTP/1.1", fields), key


def parse_response(
    buf: bytes | bytearray, key: str, max_size: int = MAX_HEADER_SIZE
) -> tuple[int, dict[str, str], int] | None:
    """Parse and check the server's answer to the request sent with ``key``: (status,
    headers, bytes consumed), or None while incomplete. Raises ``UpgradeRejected`` unless it
    accepts the upgrade; the WebSocket stream starts right after the consumed bytes."""
    head = _split_head(buf, max_size)
    if head is None:
        return None
    start, fields, consumed = head
    match = _STATUS_LINE.fullmatch(start)
    if match is None:
        raise InvalidUpgrade("malformed status line")
    status = int(match.group(1))
    headers = _parse_fields(fields)
    check_response(status, headers, key)
    return status, headers, consumed


def check_response(status: int, headers: dict[str, str], key: str) -> None:
    """Raise ``UpgradeRejected`` unless this response completes the handshake (§4.1)."""
    if status != 101:
        retry_after = _retry_after(headers.get("retry-after"))
        raise UpgradeRejected(f"server answered {status}", status=status, retry_after=retry_after)
    try:
        _check_upgrade_headers(headers)
    except InvalidUpgrade as exc:
        raise UpgradeRejected(str(exc), status=status) from exc
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise UpgradeRejected("wrong Sec-WebSocket-Accept", status=status)


# --- Helpers --------------------------------------------------------------------------------


def _split_head(buf: bytes | bytearray, max_size: int) -> tuple[str, list[str], int] | None:
    """The start line, field lines and length of a complete head; None if incomplete."""
    end = buf.find(_END, 0, max_size)
    if _BARE_LF.search(buf, 0, end if end >= 0 else max_size):
        raise InvalidUpgrade("bare LF in header block")
    if end < 0:
        if len(buf) >= max_size:
            raise RequestTooLarge(f"header block exceeds {max_size} bytes")
        return None
    try:
        head = buf[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidUpgrade("non-ASCII bytes in header block") from exc
    start, *fields = head.split("\r\n")
    return start, fields, end + len(_END)


def _parse_fields(lines: list[str]) -> dict[str, str]:
    """Header fields (RFC 9112 §5): lower-cased names, repeats joined (RFC 9110 §5.3)."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise InvalidUpgrade("malformed header line")  # obs-fold included (§5.2)
        name = name.lower()
        if name in headers:
            if name == "host":  # RFC 9112 §3.2: exactly one Host
                raise InvalidUpgrade("duplicate Host header")
            value = f"{headers[name]}, {value}"
        headers[name] = value
    return headers


def _check_upgrade_headers(headers: dict[str, str]) -> None:
    """Upgrade lists "websocket" and Connection lists "upgrade" (RFC 6455 §4.2.1 items 3-4)."""
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise InvalidUpgrade("missing or invalid Upgrade header")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise InvalidUpgrade("missing or invalid Connection header")


def _tokens(value: str) -> set[str]:
    """The lower-cased elements of a comma-separated list (RFC 9110 §5.6.1)."""
    return {item.strip(" \t").lower() for item in value.split(",")}


def _is_valid_key(key: str) -> bool:
    """A base64-encoded 16-byte nonce (RFC 6455 §4.2.1 item 5)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def _retry_after(value: str | None) -> float | None:
    """Retry-After as delay-seconds (RFC 9110 §10.2.3); HTTP-dates are ignored."""
    if value is None or not value.isdigit():
        return None
    return float(value)


def _head(start: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """Serialize a start line and header fields, refusing anything that would split them."""
    lines = [start]
    for name, value in fields:
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"invalid header field {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("ascii")
