"""The test device's port forwards (proto 3), served as mender-connect serves them: each
connection dials its target (TCP or UDP), reads at most ``chunk`` bytes per "forward" and
keeps ``window`` forwards in flight until acked (Mender: 4,096 bytes, one), acks every
forward it wrote out, and ends with "stop" when the target closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from backend.protocol import portforward as pf
from backend.protocol.envelope import ProtoMsg

log = logging.getLogger("fleet.testdevice")

Send = Callable[[list[ProtoMsg]], Awaitable[None]]


@dataclass(slots=True)
class _Link:
    """One dialled connection: how to write to the target, and the window's wake-up."""

    write: Callable[[bytes], None]
    close: Callable[[], None]
    drain: Callable[[], Awaitable[None]]
    acked: asyncio.Event = field(default_factory=asyncio.Event)


class DeviceForwards:
    def __init__(self, send: Send, *, window: int, chunk: int) -> None:
        self.send = send
        self.window = window
        self.chunk = chunk
        self.forwards: dict[str, pf.PortForward] = {}
        self._links: dict[tuple[str, str], _Link] = {}
        self._pumps: set[asyncio.Task[None]] = set()  # held: a task outlives its link entry

    async def receive(self, msg: ProtoMsg) -> None:
        forward = self.forwards.get(msg.sid)
        if forward is None:
            forward = pf.PortForward(msg.sid, pf.Role.DEVICE, window=self.window, chunk=self.chunk)
            self.forwards[msg.sid] = forward
        forward.receive(msg)
        for event in forward.events():
            await self._handle(forward, event)
        await self._flush(forward)

    def close_all(self) -> None:
        """The device's connection is gone: so are its forwards (Mender ends them too)."""
        for link in self._links.values():
            link.close()
        for task in self._pumps:
            task.cancel()
        self._links.clear()
        self.forwards.clear()

    async def _handle(self, forward: pf.PortForward, event: pf.Event) -> None:
        key = (forward.sid, event.connection_id)
        match event:
            case pf.NewRequested(cid, target):
                await self._dial(forward, cid, target)
            case pf.Data(cid, data):
                link = self._links.get(key)
                if link is not None:
                    link.write(data)
                    await link.drain()
                    forward.consumed(cid)
            case pf.Acked():
                if (link := self._links.get(key)) is not None:
                    link.acked.set()
            case pf.Ended():
                if (link := self._links.pop(key, None)) is not None:
                    link.close()
                    link.acked.set()  # wakes its pump, which then sees the connection gone
            case pf.Opened() | pf.Rejected():
                pass

    async def _dial(self, forward: pf.PortForward, cid: str, target: pf.Target) -> None:
        key = (forward.sid, cid)
        try:
            if target.protocol == "udp":
                link = await self._dial_udp(forward, cid, target)
            else:
                reader, writer = await asyncio.open_connection(
                    target.remote_host, target.remote_port
                )
                link = _Link(writer.write, writer.close, writer.drain)
                self._spawn(self._pump(forward, cid, reader, link))
        except OSError as exc:
            # mender-connect answers with the dial's error text, e.g. "dial tcp ...: connect:
            # connection refused"; ours is the OS's.
            forward.refuse(cid, f"dial {target.protocol} {target.remote_host}:"
                                f"{target.remote_port}: {exc.strerror or exc}")  # fmt: skip
            return
        self._links[key] = link
        forward.accept(cid)

    async def _dial_udp(self, forward: pf.PortForward, cid: str, target: pf.Target) -> _Link:
        loop = asyncio.get_running_loop()
        protocol = _Datagrams(lambda data: self._datagram(forward, cid, data))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, remote_addr=(target.remote_host, target.remote_port)
        )

        async def drained() -> None:
            return None

        return _Link(transport.sendto, transport.close, drained)

    def _datagram(self, forward: pf.PortForward, cid: str, data: bytes) -> None:
        forward.send(cid, data)
        self._spawn(self._flush(forward))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _pump(
        self, forward: pf.PortForward, cid: str, reader: asyncio.StreamReader, link: _Link
    ) -> None:
        """Target -> server: read a chunk only once the previous ones left the window."""
        try:
            while data := await reader.read(self.chunk):
                forward.send(cid, data)
                await self._flush(forward)
                while forward.queued(cid) or self._in_flight(forward, cid) >= self.window:
                    if cid not in forward.connections:
                        return
                    link.acked.clear()
                    await link.acked.wait()
        except OSError as exc:
            forward.fail(cid, str(exc))
        else:
            forward.finish(cid)
        self._links.pop((forward.sid, cid), None)
        link.close()
        await self._flush(forward)

    @staticmethod
    def _in_flight(forward: pf.PortForward, cid: str) -> int:
        conn = forward.connections.get(cid)
        return conn.flow.in_flight if conn is not None else 0

    async def _flush(self, forward: pf.PortForward) -> None:
        messages = forward.outgoing()
        if messages:
            await self.send(messages)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes], None]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received(data)

    def error_received(self, exc: Exception) -> None:
        log.info("port forward: udp target: %s", exc)
