"""Our RFC 6455 codec against websockets' Sans-I/O Protocol: memory per idle connection and
time per frame, both measured in the same run, in this process.

Memory: N server-side connections held at once; what tracemalloc counts as allocated while
they are made and still alive once they are, divided by N. The list holding them is allocated
beforehand and one connection is made first, so shared objects (the logger, caches, interned
strings) are not counted. Like with like, the framing state only: our ``WebSocketConnection``
against websockets' ``ServerProtocol`` (neither our ProtoMsg session nor an asyncio
connection), twice: made OPEN, and after a real opening handshake (our request parsed, the
101 written) with one 200-byte message each way, everything drained.

Time: a masked 200-byte binary frame parsed (server: ``receive_data``, then
``events_received``) and one encoded (client, which masks: ``send_binary``, then
``data_to_send``); the best of R runs of F frames, garbage collection off. Both mask with
websockets' C ``apply_mask``.

    python bench/codec.py --connections 10000 --frames 200000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.version import version as websockets_version

from backend.protocol import http
from backend.protocol import websocket as ws

URI = parse_uri("ws://gateway.test/")


@dataclass(frozen=True)
class Row:
    what: str
    ours: float
    theirs: float
    unit: str


# --- memory ---------------------------------------------------------------------------------


def bytes_per_connection(make: Callable[[], object], count: int) -> float:
    """Bytes still allocated per object after making ``count`` of them, all held."""
    make()  # first-use allocations (caches, loggers) are not per connection
    held: list[object] = [None] * count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            held[index] = make()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


def masked_frame(payload: bytes) -> bytes:
    return Frame(Opcode.BINARY, payload).serialize(mask=True)


def ours_open() -> ws.WebSocketConnection:
    return ws.WebSocketConnection(ws.Role.SERVER)


def theirs_open() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN)


def ours_used(payload: bytes) -> ws.WebSocketConnection:
    """What our server keeps of a connection after its handshake and a message each way."""
    request, _key = http.client_request("gateway.test", "/ws")
    parsed = http.parse_request(request)
    assert parsed is not None
    http.accept_response(http.check_upgrade(parsed[0]))
    conn = ws.WebSocketConnection(ws.Role.SERVER)
    conn.receive_data(masked_frame(payload))
    assert len(conn.events_received()) == 1
    conn.send_binary(payload)
    conn.data_to_send()
    return conn


def theirs_used(payload: bytes) -> ServerProtocol:
    """The same through websockets' ServerProtocol, from CONNECTING."""
    request, _key = http.client_request("gateway.test", "/ws")
    protocol = ServerProtocol()
    protocol.receive_data(request)
    [ws_request] = protocol.events_received()
    assert isinstance(ws_request, Request)
    protocol.send_response(protocol.accept(ws_request))
    protocol.receive_data(masked_frame(payload))
    assert len(protocol.events_received()) == 1
    protocol.send_binary(payload)
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    return protocol


def memory_rows(count: int, payload: bytes) -> list[Row]:
    return [
        Row(
            "OPEN, nothing received yet",
            bytes_per_connection(ours_open, count),
            bytes_per_connection(theirs_open, count),
            "B",
        ),
        Row(
            f"after a real handshake and a {len(payload)}-byte message each way",
            bytes_per_connection(lambda: ours_used(payload), count),
            bytes_per_connection(lambda: theirs_used(payload), count),
            "B",
        ),
    ]


# --- time -----------------------------------------------------------------------------------


def best_us(step: Callable[[], object], frames: int, repeat: int) -> float:
    """Microseconds per call of ``step``, the best of ``repeat`` runs of ``frames`` calls."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(frames):
                step()
            best = min(best, time.perf_counter() - started)
    finally:
        gc.enable()
    return best / frames * 1e6


def ours_parse(frame: bytes) -> Callable[[], object]:
    conn = ws.WebSocketConnection(ws.Role.SERVER)

    def step() -> object:
        conn.receive_data(frame)
        return conn.events_received()

    return step


def theirs_parse(frame: bytes) -> Callable[[], object]:
    protocol = ServerProtocol(state=State.OPEN)

    def step() -> object:
        protocol.receive_data(frame)
        return protocol.events_received()

    return step


def ours_encode(payload: bytes) -> Callable[[], object]:
    conn = ws.WebSocketConnection(ws.Role.CLIENT)

    def step() -> object:
        conn.send_binary(payload)
        return conn.data_to_send()

    return step


def theirs_encode(payload: bytes) -> Callable[[], object]:
    protocol = ClientProtocol(URI, state=State.OPEN)

    def step() -> object:
        protocol.send_binary(payload)
        return protocol.data_to_send()

    return step


def check_parsers(frame: bytes, payload: bytes) -> None:
    """Both parse the benchmark's frame to its payload: the loops time real work."""
    conn = ws.WebSocketConnection(ws.Role.SERVER)
    conn.receive_data(frame)
    assert conn.events_received() == [ws.Message(payload)]
    protocol = ServerProtocol(state=State.OPEN)
    protocol.receive_data(frame)
    assert protocol.events_received() == [Frame(Opcode.BINARY, payload)]


def time_rows(size: int, frames: int, repeat: int) -> list[Row]:
    payload = os.urandom(size)
    frame = masked_frame(payload)
    check_parsers(frame, payload)
    return [
        Row(
            "parse (server: receive_data + events_received)",
            best_us(ours_parse(frame), frames, repeat),
            best_us(theirs_parse(frame), frames, repeat),
            "us",
        ),
        Row(
            "encode (client, masked: send_binary + data_to_send)",
            best_us(ours_encode(payload), frames, repeat),
            best_us(theirs_encode(payload), frames, repeat),
            "us",
        ),
    ]


# --- the report -----------------------------------------------------------------------------


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title:<64}{'ours':>10}{'websockets':>12}{'ratio':>8}")
    for row in rows:
        if row.unit == "B":
            ours, theirs = f"{row.ours:,.0f} B", f"{row.theirs:,.0f} B"
        else:
            ours, theirs = f"{row.ours:.2f} us", f"{row.theirs:.2f} us"
        print(f"  {row.what:<62}{ours:>10}{theirs:>12}{row.theirs / row.ours:>7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="held at once")
    parser.add_argument("--frames", type=int, default=200_000, help="per timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--size", type=int, default=200, help="payload bytes per frame")
    args = parser.parse_args()
    print(
        f"fleetharness WebSocketConnection vs websockets {websockets_version} "
        f"ServerProtocol/ClientProtocol, Python {platform.python_version()}"
    )
    payload = os.urandom(args.size)
    memory = memory_rows(args.connections, payload)
    timing = time_rows(args.size, args.frames, args.repeat)
    print_rows(f"memory per connection ({args.connections:,} held, tracemalloc)", memory)
    print_rows(f"time per masked {args.size}-byte frame (best of {args.repeat} x "
               f"{args.frames:,})", timing)  # fmt: skip
    fresh, used = (row.theirs / row.ours for row in memory)
    parse, encode = (row.theirs / row.ours for row in timing)
    print(
        f"\nour codec holds an idle connection in {fresh:.1f}x (fresh) to {used:.1f}x (used) less "
        f"memory, parses a frame {parse:.1f}x and encodes one {encode:.1f}x faster than "
        "websockets' Protocol"
    )


if __name__ == "__main__":
    main()
