"""``fleet port-forward``'s side of a port forward: a local listener whose connections travel
over one operator API WebSocket to ``REMOTE_HOST:REMOTE_PORT`` as the device sees it (the
frames: ``backend.operator.portforward``).

Each local TCP connection is one forwarded connection: it is dialled on the device first
(a refusal closes the local connection and says why), then bytes go both ways within the
device's window (``window`` frames of at most ``chunk`` bytes unacked), and every frame from
the device is acked once written to the local socket. UDP (``--udp``): one connection per
local peer address, datagrams as they come (one dropped when the window is full, as UDP may).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as connect_sync

from backend.client.operator import OperatorError, answer_refusal
from backend.protocol import portforward as pf

Note = Callable[[str], None]
_HOST = r"\[[^\]]+\]|[^:\[\]]+"  # a name, an IPv4 address or a [bracketed IPv6] one
SPEC = re.compile(rf"(?:(?P<addr>{_HOST}):)?(?P<lport>\d+):(?P<host>{_HOST}):(?P<rport>\d+)")


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """ssh -L style: ``[LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT``."""

    local_addr: str
    local_port: int
    remote_host: str
    remote_port: int

    @classmethod
    def parse(cls, text: str) -> ForwardSpec:
        found = SPEC.fullmatch(text)
        if found is None:
            raise ValueError(
                f"{text!r} is not [LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT "
                "(e.g. 8080:127.0.0.1:80)"
            )
        lport, rport = int(found["lport"]), int(found["rport"])
        if not (0 <= lport < 65536 and 0 < rport < 65536):
            raise ValueError(f"ports are 1..65535 (0 for any local port), not {text!r}")
        addr = (found["addr"] or "127.0.0.1").strip("[]")
        return cls(addr, lport, found["host"].strip("[]"), rport)


async def open_forward(
    api_url: str, token: str, device_id: str, spec: ForwardSpec, protocol: str = "tcp"
) -> ClientConnection:
    """The forward's WebSocket; OperatorError with the API's message if it is refused."""
    query = urllib.parse.urlencode(
        {"host": spec.remote_host, "port": spec.remote_port, "protocol": protocol}
    )
    path = f"/devices/{urllib.parse.quote(device_id)}/port-forward?{query}"
    url = "ws" + api_url.rstrip("/").removeprefix("http") + path
    try:
        return await connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
            max_size=2 * pf.MAX_CHUNK, open_timeout=30,
        )  # fmt: skip
    except InvalidStatus as exc:
        raise answer_refusal(exc.response.status_code, exc.response.body or b"") from None
    except (OSError, TimeoutError) as exc:
        raise OperatorError(f"no answer from {api_url}: {exc}", status=0) from None


@dataclass(slots=True)
class _Conn:
    """One forwarded connection, as the local side sees it."""

    write: Callable[[bytes], None]
    close: Callable[[], Any]
    opened: asyncio.Future[tuple[int, int]]
    credits: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    ended: bool = False
    drain: Callable[[], Any] | None = None


class Forwarder:
    """Joins a local listener to an open forward WebSocket."""

    def __init__(self, ws: ClientConnection, note: Note) -> None:
        self.ws = ws
        self.note = note
        self.conns: dict[str, _Conn] = {}
        self._ids = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> str:
        """Relay the API's frames until the forward ends; returns why it ended."""
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    self._data(*pf.split_frame(frame))
                else:
                    self._control(json.loads(frame))
        except ConnectionClosed:
            pass
        for cid in list(self.conns):
            self._end(cid, "the forward ended")
        received = self.ws.protocol.close_rcvd
        if received is None:
            return "the operator API went away"
        return received.reason or f"closed ({received.code})"

    # --- local TCP connections ----------------------------------------------------------------

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer.write, writer.close, asyncio.get_running_loop().create_future())
        conn.drain = writer.drain
        cid = await self.open_connection(conn)
        if cid is None:
            return
        try:
            _window, chunk = await conn.opened
        except ConnectionError:
            writer.close()
            return
        try:
            while data := await reader.read(chunk):
                await conn.credits.acquire()
                if conn.ended:
                    return
                await self.ws.send(pf.data_frame(cid, data))
        except (OSError, ConnectionClosed):
            pass
        if not conn.ended:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"op": "close", "id": cid}))

    async def open_connection(self, conn: _Conn) -> str | None:
        self._ids += 1
        cid = f"c{self._ids}"
        self.conns[cid] = conn
        try:
            await self.ws.send(json.dumps({"op": "open", "id": cid}))
        except ConnectionClosed:
            conn.close()
            return None
        return cid

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- local UDP peers -----------------------------------------------------------------------

    def udp_endpoint(self) -> asyncio.DatagramProtocol:
        return _UdpPeers(self)

    # --- frames from the API --------------------------------------------------------------------

    def _data(self, cid: str, data: bytes) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return
        conn.write(data)
        self.spawn(self._ack_when_written(cid, conn))

    async def _ack_when_written(self, cid: str, conn: _Conn) -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            if conn.drain is not None:
                await conn.drain()
            await self.ws.send(json.dumps({"op": "ack", "id": cid}))

    def _control(self, message: dict[str, Any]) -> None:
        op, cid = message.get("op"), str(message.get("id", ""))
        conn = self.conns.get(cid)
        if "error" in message:
            self.note(f"the API refused a frame: {message.get('message')}")
        elif conn is None:
            return
        elif op == "opened":
            for _ in range(int(message["window"])):
                conn.credits.release()
            conn.opened.set_result((int(message["window"]), int(message["chunk"])))
        elif op == "ack":
            conn.credits.release()
        elif op == "closed":
            self._end(cid, str(message.get("reason", "")))

    def _end(self, cid: str, reason: str) -> None:
        conn = self.conns.pop(cid, None)
        if conn is None:
            return
        conn.ended = True
        conn.credits.release()  # wakes a reader waiting for the window
        if not conn.opened.done():
            conn.opened.set_exception(ConnectionError(reason))
            self.note(f"connection {cid} refused by the device: {reason}")
        elif reason not in ("stopped", ""):
            self.note(f"connection {cid} closed: {reason}")
        conn.close()


class _UdpPeers(asyncio.DatagramProtocol):
    """Local UDP peers, one forwarded connection each (datagrams beyond the window drop)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.transport: Any = None  # uvloop's is no asyncio.DatagramTransport subclass
        self.peers: dict[tuple[Any, ...], str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.forwarder.spawn(self._send(data, addr))

    async def _send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        cid = self.peers.get(addr)
        forwarder = self.forwarder
        if cid is None or cid not in forwarder.conns:
            transport = self.transport
            conn = _Conn(
                lambda d: transport.sendto(d, addr), lambda: self.peers.pop(addr, None),
                asyncio.get_running_loop().create_future(),
            )  # fmt: skip
            opened = await forwarder.open_connection(conn)
            if opened is None:
                return
            cid = self.peers[addr] = opened
        conn = forwarder.conns[cid]
        with contextlib.suppress(ConnectionError, ConnectionClosed):
            await conn.opened
            if not conn.credits.locked():
                await conn.credits.acquire()
                await forwarder.ws.send(pf.data_frame(cid, data))


async def forward(
    ws: ClientConnection, spec: ForwardSpec, protocol: str, note: Note,
    ready: Callable[[str, int], None] | None = None,
) -> str:  # fmt: skip
    """Listen on ``spec``'s local side and relay until the forward ends; returns why."""
    forwarder = Forwarder(ws, note)
    loop = asyncio.get_running_loop()
    if protocol == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            forwarder.udp_endpoint, local_addr=(spec.local_addr, spec.local_port)
        )
        port = transport.get_extra_info("sockname")[1]
        closer: Callable[[], Any] = transport.close
    else:
        server = await asyncio.start_server(forwarder.serve_tcp, spec.local_addr, spec.local_port)
        port = server.sockets[0].getsockname()[1]
        closer = server.close
    if ready is not None:
        ready(spec.local_addr, port)
    try:
        return await forwarder.run()
    finally:
        closer()


@dataclass(frozen=True, slots=True)
class Fetched:
    """One forwarded connection's exchange: the answer, and when its first byte came."""

    answer: bytes
    first_byte_s: float
    seconds: float


def fetch_once(
    api_url: str, token: str, device_id: str, target: tuple[str, int], request: bytes,
    timeout: float = 30.0,
) -> Fetched:  # fmt: skip
    """Blocking: one connection to ``target`` on the device, ``request`` sent, everything the
    target answers until it closes (an operator's browser fetching one page; the scenarios
    use it from gevent). OperatorError with the reason if it fails."""
    query = urllib.parse.urlencode({"host": target[0], "port": target[1]})
    path = f"/devices/{urllib.parse.quote(device_id)}/port-forward?{query}"
    url = "ws" + api_url.rstrip("/").removeprefix("http") + path
    started = time.monotonic()
    try:
        ws = connect_sync(url, additional_headers={"Authorization": f"Bearer {token}"},
                          compression=None, open_timeout=timeout)  # fmt: skip
    except InvalidStatus as exc:
        raise answer_refusal(exc.response.status_code, exc.response.body or b"") from None
    except (OSError, TimeoutError) as exc:
        raise OperatorError(f"no answer from {api_url}: {exc}", status=0) from None
    answer, first = b"", 0.0
    try:
        with ws:
            ws.send(json.dumps({"op": "open", "id": "c1"}))
            while True:
                frame = ws.recv(timeout=max(0.0, started + timeout - time.monotonic()))
                if isinstance(frame, bytes):
                    first = first or time.monotonic() - started
                    answer += pf.split_frame(frame)[1]
                    ws.send(json.dumps({"op": "ack", "id": "c1"}))
                    continue
                message = json.loads(frame)
                if message.get("op") == "opened":
                    ws.send(pf.data_frame("c1", request))
                elif message.get("op") == "closed":
                    if not answer:
                        reason = message.get("reason")
                        raise OperatorError(f"connection refused: {reason}", status=0)
                    return Fetched(answer, first, time.monotonic() - started)
    except (ConnectionClosed, TimeoutError) as exc:
        raise OperatorError(f"the forward ended early: {exc}", status=0) from None
