"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gevent

from backend.bus.auth import issue_device_token
from backend.devstack import process
from backend.devstack.process import free_ports
from backend.protocol import websocket as ws
from backend.protocol.http import DEVICE_PATH
from backend.shard import Shard
from haproxy.config import HEALTH_PATH, HaproxyConfig, find_haproxy, write
from simulator.fleet import Fleet
from simulator.gateway.driver import Gateway

JWT_SECRET = "test-secret-not-for-production-0123456789"

T = TypeVar("T")
ShardFactory = Callable[..., contextlib.AbstractAsyncContextManager[Shard]]


def device_token(device_id: str, **kwargs: Any) -> str:
    return issue_device_token(device_id, JWT_SECRET, **kwargs)


def tls_client_context(ca_file: Path) -> ssl.SSLContext:
    """Trusts only ``ca_file``. Pinned to TLS 1.2: websockets' sync client reads in a thread
    while it writes the upgrade, and with TLS 1.3 the session tickets arriving then sometimes
    stall CPython's ssl (about 1 connect in 30 hangs). TLS 1.3 itself is covered by the
    simulator's single-threaded gateways."""
    context = ssl.create_default_context(cafile=ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- raw device connections ---------------------------------------------------------------


def raw_device(
    host: str, port: int, token: str, receive_buffer: int | None = None
) -> socket.socket:
    """An upgraded device connection on a plain socket, to do what a hostile or broken
    device does (never read, send past a limit); blocking: beside an in-process shard, run
    it in a thread. With ``receive_buffer``, a small kernel buffer."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, port))
    sock.sendall(
        f"GET {DEVICE_PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: what follows the head stays unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frames(*messages: bytes) -> bytes:
    codec = ws.WebSocketConnection(ws.Role.CLIENT)
    for message in messages:
        codec.send_binary(message)
    return codec.data_to_send()


def close_code(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """Read until the shard's close frame; its code, or None if the socket ended without one
    (a reset or a bare EOF)."""
    codec = ws.WebSocketConnection(ws.Role.CLIENT, max_message_size=1 << 24)
    sock.settimeout(timeout)
    try:
        while data := sock.recv(65536):
            codec.receive_data(data)
            for event in codec.events_received():
                if isinstance(event, ws.Closed):
                    return event.code
    except ConnectionResetError:
        return None
    return None


# --- HAProxy ------------------------------------------------------------------------------


def make_config(run_dir: Path, shard_count: int = 1, **overrides: Any) -> HaproxyConfig:
    port, stats_port = free_ports(2)
    values: dict[str, Any] = {
        "port": port,
        "stats_port": stats_port,
        "shards": [(f"shard-{chr(97 + i)}", "127.0.0.1", 9001 + i) for i in range(shard_count)],
        "admin_socket": run_dir / "haproxy.sock",
        "pidfile": run_dir / "haproxy.pid",
    }
    return HaproxyConfig(**{**values, **overrides})


@contextlib.contextmanager
def running_haproxy(
    config: HaproxyConfig, run_dir: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy in the foreground (-db) on ``config`` with ``env`` added to its environment,
    until its stats port answers the probes' path (which asks for no credentials even with
    stats_auth); always stopped."""
    path, log = run_dir / "haproxy.cfg", run_dir / "haproxy.log"
    write(config, path)
    proc = process.spawn([find_haproxy(), "-db", "-f", str(path)], log, env)
    try:
        health = f"http://127.0.0.1:{config.stats_port}{HEALTH_PATH}"
        process.wait_until(lambda: process.answers_ok(health), proc, "haproxy", log)
        yield proc
    finally:
        process.stop(proc)


# --- virtual gateways (gevent, without monkey patching) ----------------------------------


@contextlib.contextmanager
def running(fleet: Fleet, count: int) -> Iterator[list[Gateway]]:
    """``count`` gateways in the fleet's engine, stopped on exit; a crashed engine fails the
    test."""
    gateways = [fleet.new_gateway(Gateway) for _ in range(count)]
    for gateway in gateways:
        gateway.start()
    try:
        yield gateways
        assert fleet.engine.failures == 0, "a gateway's code raised (see the log)"
    finally:
        for gateway in gateways:
            gateway.stop()
        fleet.engine.close()


# --- waiting for a condition: one deadline loop for gevent (or plain threads), one for asyncio


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds. gevent's sleep lets
    gateways run meanwhile; outside greenlets it just sleeps."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:.0f}s"
        gevent.sleep(0.1)


async def until(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something other than None (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while (found := await probe()) is None:
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return found


async def until_true(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def probe() -> bool | None:
        return True if condition() else None

    await until(probe, timeout)
