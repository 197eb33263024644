"""The test device's port forwards against a real TCP target on loopback, driven by the
backend's end of the core, message by message: Mender's 4 KiB stop-and-wait, the stop after
the target closes, and a refused dial's text."""

from __future__ import annotations

import asyncio
import socket

from backend.devstack.devforward import DeviceForwards
from backend.protocol import envelope as env
from backend.protocol import portforward as pf


async def echo_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the first 10,000 bytes with themselves, then closes."""
    writer.write(await reader.readexactly(10_000))
    await writer.drain()
    writer.close()


async def test_bytes_cross_in_4_kib_forwards_one_at_a_time_then_stop() -> None:
    target = await asyncio.start_server(echo_then_close, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    answers: asyncio.Queue[env.ProtoMsg] = asyncio.Queue()

    async def send(msgs: list[env.ProtoMsg]) -> None:
        for msg in msgs:
            answers.put_nowait(env.decode(env.encode(msg)))

    device = DeviceForwards(send, window=pf.MENDER_WINDOW, chunk=pf.MENDER_CHUNK)
    server = pf.PortForward("s1", pf.Role.SERVER)
    server.open("c1", pf.Target("127.0.0.1", port))
    received, forwards, unacked = b"", [], 0
    async with asyncio.timeout(10):
        while True:
            for msg in server.outgoing():
                await device.receive(env.decode(env.encode(msg)))
            msg = await answers.get()
            if msg.typ == "forward":
                forwards.append(len(msg.body))
                unacked += 1
                assert unacked == 1  # stop-and-wait: never two in flight
            server.receive(msg)
            for event in server.events():
                if isinstance(event, pf.Opened):
                    server.send("c1", b"e" * 10_000)
                elif isinstance(event, pf.Data):
                    received += event.data
                    server.consumed("c1")
                    unacked -= 1
                elif isinstance(event, pf.Ended):
                    assert event.by_peer  # the target closed: the device said stop
                    assert received == b"e" * 10_000
                    assert max(forwards) <= pf.MENDER_CHUNK
                    target.close()
                    return


async def test_a_refused_dial_is_an_error_with_the_os_text() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sent: list[env.ProtoMsg] = []

    async def send(msgs: list[env.ProtoMsg]) -> None:
        sent.extend(msgs)

    device = DeviceForwards(send, window=1, chunk=4096)
    server = pf.PortForward("s1", pf.Role.SERVER)
    server.open("c1", pf.Target("127.0.0.1", port))
    for msg in server.outgoing():
        await device.receive(msg)
    [error] = sent
    assert error.typ == "error"
    text = pf.ForwardError.from_body(error.body).err
    assert text.startswith(f"dial tcp 127.0.0.1:{port}: ")
    assert "refused" in text.lower(), text
