"""One device's connection on a live shard: backpressure, error budget, lingering close.

Raw sockets with the project's own client-side codec, so a test can do what a hostile or
broken device does: never read, send garbage at line rate, keep sending past a limit.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from backend.protocol import envelope as env
from backend.shard import Shard
from backend.shard.connection import ERROR_WINDOW, MAX_ERRORS, MAX_WRITE_BUFFER
from tests.shard.support import connected, metric, still_serves
from tests.support import (
    ShardFactory,
    close_code,
    device_token,
    frames,
    raw_device,
    until_true,
)


def shard_device(shard: Shard, device_id: str, receive_buffer: int | None = None) -> socket.socket:
    return raw_device("127.0.0.1", shard.port, device_token(device_id), receive_buffer)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def send_without_reading(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Bytes the shard took in ``seconds`` of trying: it stops reading a device that does not
    read its answers, so the kernel buffers fill and sends block."""
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(data)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


async def test_a_device_that_does_not_read_is_pushed_back_then_cut_off(
    start_shard: ShardFactory, sockets: list[socket.socket]
) -> None:
    """Each control ping of 60 KiB is answered with a pong of 60 KiB the device never reads:
    the shard stops reading it over 64 KiB unsent and cuts it off past MAX_WRITE_BUFFER."""
    async with start_shard() as shard:
        bystander = await connected("gw-b", shard)
        sockets.append(mute := await asyncio.to_thread(shard_device, shard, "gw-mute", 4096))
        ping = env.encode(env.ProtoMsg(env.PROTO_CONTROL, env.TYP_PING, "p", None, b"x" * 61440))
        taken = await asyncio.to_thread(send_without_reading, mute, frames(ping) * 16, 5.0)
        # What it took is bounded by the kernel's buffers and the shard's limits, not by
        # how much it tried to send (5 s at loopback speed would be gigabytes).
        assert taken < 64 * 2**20
        assert metric(shard, "fleet_shard_input_paused_total", cause="write") >= 1
        for conn in shard.devices.values():
            assert conn.transport is not None
            assert conn.transport.get_write_buffer_size() <= MAX_WRITE_BUFFER + 65536
        await still_serves(shard, bystander, "b-1")
        await bystander.close()


async def test_a_device_that_keeps_sending_garbage_is_closed_with_1008(
    start_shard: ShardFactory, sockets: list[socket.socket]
) -> None:
    async with start_shard() as shard:
        sockets.append(sock := await asyncio.to_thread(shard_device, shard, "gw-junk"))
        junk = frames(*[b"\xc1junk"] * (MAX_ERRORS + 500))
        await asyncio.to_thread(sock.sendall, junk)
        assert await asyncio.to_thread(close_code, sock) == 1008
        errors = metric(shard, "fleet_shard_protocol_errors_total", reason="malformed")
        assert errors == MAX_ERRORS + 1  # what came after the close frame went unanswered
        sock.close()
        await until_true(
            lambda: metric(shard, "fleet_shard_disconnects_total", reason="too_many_errors") == 1
        )


async def test_a_few_errors_spread_out_are_forgiven(
    start_shard: ShardFactory, sockets: list[socket.socket]
) -> None:
    async with start_shard() as shard:
        sockets.append(sock := await asyncio.to_thread(shard_device, shard, "gw-clumsy"))
        await asyncio.to_thread(sock.sendall, frames(*[b"\xc1"] * MAX_ERRORS))
        await until_true(
            lambda: (
                metric(shard, "fleet_shard_protocol_errors_total", reason="malformed") == MAX_ERRORS
            )
        )
        (conn,) = shard.devices.values()
        conn.errors_since -= ERROR_WINDOW + 1  # as if the errors were a window ago
        await asyncio.to_thread(sock.sendall, frames(b"\xc1"))
        await until_true(
            lambda: (
                metric(shard, "fleet_shard_protocol_errors_total", reason="malformed")
                == MAX_ERRORS + 1
            )
        )
        assert "gw-clumsy" in shard.devices


async def test_an_oversize_message_gets_1009_every_time(
    start_shard: ShardFactory, sockets: list[socket.socket]
) -> None:
    """The device is still sending when the shard fails the connection (through HAProxy,
    tests/devstack/test_stack_haproxy.py, a reset used to come instead)."""
    async with start_shard(max_message_size=65536) as shard:
        codes = []
        for attempt in range(10):
            sockets.append(
                sock := await asyncio.to_thread(shard_device, shard, f"gw-big-{attempt}")
            )
            sender = asyncio.to_thread(sock.sendall, frames(b"\x00" * (4 << 20)))
            code = asyncio.to_thread(close_code, sock)
            results = await asyncio.gather(sender, code, return_exceptions=True)
            codes.append(results[1])
        assert codes == [1009] * 10
