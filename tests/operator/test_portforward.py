"""Port forwards through the operator API: real nats-server, two in-process shards, test
devices serving proto 3 as mender-connect does, real TCP targets on loopback, and the
``fleet port-forward`` client core as the operator."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from backend.client.operator import OperatorError
from backend.client.portforward import ForwardSpec, forward, open_forward
from backend.operator.api import OperatorApi
from backend.protocol.session import DEVICE_PROTOCOLS
from tests.operator.support import OPERATOR_TOKEN, ApiFactory, base, connected
from tests.support import ShardFactory, until_true

BODY = bytes(range(256)) * (10 * 4096)  # 10 MiB, every byte value


@contextlib.asynccontextmanager
async def web_target() -> AsyncIterator[int]:
    """An HTTP server on loopback: GET /big is BODY, POST /echo answers with what it got."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=len(BODY) + 1)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class Forward:
    """A running ``fleet port-forward`` core: its local port and what it said."""

    def __init__(self) -> None:
        self.port = 0
        self.notes: list[str] = []
        self.task: asyncio.Task[str] | None = None
        self.listening = asyncio.Event()

    def ready(self, addr: str, port: int) -> None:
        self.port = port
        self.listening.set()

    async def ended(self) -> str:
        assert self.task is not None
        async with asyncio.timeout(15):
            return await self.task


async def start_forward(
    api: OperatorApi, device_id: str, remote: str, protocol: str = "tcp"
) -> Forward:
    spec = ForwardSpec.parse(f"0:{remote}")
    ws = await open_forward(base(api), OPERATOR_TOKEN, device_id, spec, protocol)
    running = Forward()
    running.task = asyncio.create_task(forward(ws, spec, protocol, running.notes.append,
                                               running.ready))  # fmt: skip
    async with asyncio.timeout(10):
        await running.listening.wait()
    return running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(api: OperatorApi, name: str, **labels: str) -> float:
    return api.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_http_request_and_a_10_mib_body_cross_two_shards_intact(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with (
        start_shard(shard_id="a"), start_shard(shard_id="b") as shard_b,
        start_api(run_state_service=False) as api, web_target() as target,
    ):  # fmt: skip
        await connected("gw-1", shard_b)  # Mender's 4 KiB stop-and-wait
        running = await start_forward(api, "gw-1", f"127.0.0.1:{target}")
        local = f"http://127.0.0.1:{running.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{local}/big") as resp:
                got = await resp.read()
            async with http.post(f"{local}/echo", data=BODY[: 1 << 20]) as resp:
                echoed = await resp.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()
        assert echoed == BODY[: 1 << 20]
        assert sample(api, "fleet_api_port_forward_bytes_total", direction="from_device") >= len(
            BODY
        )
        assert sample(api, "fleet_api_port_forward_bytes_total", direction="to_device") >= 1 << 20
        assert sample(api, "fleet_api_port_forward_connections_total", outcome="opened") >= 1


async def test_many_connections_at_once_on_one_forward_with_a_larger_window(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with (
        start_shard() as shard, start_api(run_state_service=False) as api,
        web_target() as target,
    ):  # fmt: skip
        await connected("gw-1", shard, forward_window=8, forward_chunk=64 * 1024)
        running = await start_forward(api, "gw-1", f"127.0.0.1:{target}")
        url = f"http://127.0.0.1:{running.port}/echo"
        connector = aiohttp.TCPConnector(force_close=True)  # one forwarded connection each

        async def post(http: aiohttp.ClientSession, n: int) -> bytes:
            async with http.post(url, data=bytes([n]) * (100_000 + n)) as resp:
                return await resp.read()

        async with aiohttp.ClientSession(connector=connector) as http:
            answers = await asyncio.gather(*(post(http, n) for n in range(12)))
        assert answers == [bytes([n]) * (100_000 + n) for n in range(12)]
        assert sample(api, "fleet_api_port_forward_connections_total", outcome="opened") == 12
        await until_true(
            lambda: sample(api, "fleet_api_port_forward_connections_open") == 0, timeout=10
        )


async def test_a_refused_dial_closes_the_local_connection_and_says_why(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        await connected("gw-1", shard)
        running = await start_forward(api, "gw-1", f"127.0.0.1:{free_port()}")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the forward
        writer.close()
        await until_true(lambda: bool(running.notes))
        assert "refused by the device" in running.notes[0]
        assert "connection refused" in running.notes[0].lower()
        assert sample(api, "fleet_api_port_forward_connections_total", outcome="refused") == 1


async def test_an_unreachable_host_is_the_device_s_error_text(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        await connected("gw-1", shard)
        running = await start_forward(api, "gw-1", "no-such-host.invalid:80")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        async with asyncio.timeout(15):
            assert await reader.read() == b""
        writer.close()
        await until_true(lambda: bool(running.notes), timeout=15)
        assert "dial tcp no-such-host.invalid:80" in running.notes[0]


async def test_a_device_dropping_ends_the_forward_and_its_connections(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with (
        start_shard() as shard, start_api(run_state_service=False) as api,
        web_target() as target,
    ):  # fmt: skip
        device = await connected("gw-1", shard)
        running = await start_forward(api, "gw-1", f"127.0.0.1:{target}")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.readexactly(12)).startswith(b"HTTP/1.1 200")
        await device.drop()
        reason = await running.ended()
        assert "disconnected" in reason
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass  # the rest of what came, then the close
        writer.close()
        assert sample(api, "fleet_api_port_forwards_total", outcome="device_gone") == 1


async def test_an_idle_forward_is_closed(start_shard: ShardFactory, start_api: ApiFactory) -> None:
    async with (
        start_shard() as shard,
        start_api(run_state_service=False, forward_idle_timeout=0.5) as api,
    ):
        await connected("gw-1", shard)
        running = await start_forward(api, "gw-1", "127.0.0.1:80")
        assert await running.ended() == "idle for 0.5s"


async def test_an_offline_or_unknown_device_is_refused_before_the_upgrade(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        await device.close()
        spec = ForwardSpec.parse("0:127.0.0.1:80")
        await until_true(lambda: shard.devices.get("gw-1") is None)
        await asyncio.sleep(0.2)  # its presence written offline
        with pytest.raises(OperatorError, match="not connected") as offline:
            await open_forward(base(api), OPERATOR_TOKEN, "gw-1", spec)
        assert offline.value.status == 409
        with pytest.raises(OperatorError, match="ever connected") as unknown:
            await open_forward(base(api), OPERATOR_TOKEN, "gw-404", spec)
        assert unknown.value.status == 404
        bad = ForwardSpec("127.0.0.1", 0, "", 80)
        with pytest.raises(OperatorError, match="host") as refused:
            await open_forward(base(api), OPERATOR_TOKEN, "gw-1", bad)
        assert refused.value.status == 400


async def test_a_device_whose_accept_lists_no_port_forward_is_refused_before_the_upgrade(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=DEVICE_PROTOCOLS)  # 1, 2, 0x101...
        spec = ForwardSpec.parse("0:127.0.0.1:80")
        try:
            with pytest.raises(OperatorError, match="does not serve port forward") as refused:
                await open_forward(base(api), OPERATOR_TOKEN, "gw-1", spec)
        finally:
            await device.close()
    assert refused.value.status == 409
    assert "it serves shell (0x0001)" in str(refused.value)
    assert sample(api, "fleet_api_rejected_total", reason="unsupported", field="") == 1


async def test_udp_datagrams_go_both_ways(start_shard: ShardFactory, start_api: ApiFactory) -> None:
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            answers.put_nowait(data)

    async with start_shard() as shard, start_api(run_state_service=False) as api:
        await connected("gw-1", shard)
        port = echo.get_extra_info("sockname")[1]
        running = await start_forward(api, "gw-1", f"127.0.0.1:{port}", "udp")
        client, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", running.port)
        )
        client.sendto(b"hello")
        async with asyncio.timeout(10):
            assert await answers.get() == b"HELLO"
        client.close()
    echo.close()
