"""The test device's file transfer on a directory, driven by the backend's end of the core
(what the API's relay runs), message by message."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.devstack.devfiles import DeviceFiles
from backend.protocol import envelope as env
from backend.protocol import filetransfer as ft


def partials(folder: Path) -> list[Path]:
    return list(folder.glob(".*.part"))


class Wire:
    """The device's answers, as the backend receives them."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[env.ProtoMsg] = asyncio.Queue()

    async def send(self, msgs: list[env.ProtoMsg]) -> None:
        for msg in msgs:
            self.answers.put_nowait(env.decode(env.encode(msg)))


async def run(files: DeviceFiles, wire: Wire, server: ft.FileTransfer, data: bytes = b"") -> list[
    ft.Event
]:  # fmt: skip
    """Drive ``server``'s transfer against the device until it ends; its events."""
    events: list[ft.Event] = []
    while True:
        for msg in server.outgoing():
            await files.receive(env.decode(env.encode(msg)))
        if server.phase is ft.Phase.ENDED and wire.answers.empty():
            return events
        async with asyncio.timeout(5):
            server.receive(await wire.answers.get())
        for event in server.events():
            events.append(event)
            if isinstance(event, ft.Ready):
                server.send(data)
                server.end()


async def test_put_stat_and_get_on_the_root(tmp_path: Path) -> None:
    wire = Wire()
    files = DeviceFiles(wire.send, tmp_path)
    data = bytes(range(256)) * 700
    put = ft.FileTransfer("t1", ft.Role.SERVER)
    put.put(ft.PutFile("/sub/../f.bin", len(data), 0o600))
    assert (await run(files, wire, put, data))[-1] == ft.Done(len(data))
    assert (tmp_path / "f.bin").read_bytes() == data
    assert not partials(tmp_path)
    stat = ft.FileTransfer("t2", ft.Role.SERVER)
    stat.stat("/f.bin")
    [info] = await run(files, wire, stat)
    assert isinstance(info, ft.Info)
    assert info.info.size == len(data)
    get = ft.FileTransfer("t3", ft.Role.SERVER)
    get.get("/f.bin")
    events = await run(files, wire, get)
    assert b"".join(e.data for e in events if isinstance(e, ft.Chunk)) == data
    assert events[-1] == ft.Done(len(data))
    assert files.transfers == {}


async def test_refusals_are_the_device_s_own_text(tmp_path: Path) -> None:
    wire = Wire()
    files = DeviceFiles(wire.send, tmp_path / "root", max_size=10)
    (tmp_path / "root").mkdir()
    outside = ft.FileTransfer("t1", ft.Role.SERVER)
    outside.stat("../secret")
    assert await run(files, wire, outside) == [
        ft.Failed("access denied: ../secret is outside root/", True)
    ]
    big = ft.FileTransfer("t2", ft.Role.SERVER)
    big.put(ft.PutFile("/x", 11))
    assert await run(files, wire, big) == [
        ft.Failed("file too large: 11 bytes, the limit is 10", True)
    ]
