"""Port-forward streams through the whole backend, each figure beside a direct-TCP baseline
measured in the same run, in this process: nats-server, two shards, the operator API, test
devices (on shard b) and the ``fleet port-forward`` client core (through the API, whose
device requests travel to shard b over NATS).

- throughput of one stream: a TCP source on loopback sends ``--megabytes`` through one
  forwarded connection, with Mender's 4 KiB stop-and-wait (what mender-connect does) and with
  our device's announced window (``--window`` forwards of ``--chunk`` bytes); baseline: the
  same source read directly.
- concurrent connections: ``--devices`` devices, ``--per-device`` connections each held open
  at once, each doing one 1 KiB round trip; baseline: as many direct connections.
- new connections per second: connections opened, one 100-byte round trip, closed, by 20
  workers for ``--seconds``, through one forward; baseline: the same directly.

    python bench/streams.py --megabytes 32 --devices 100 --per-device 10 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import uvloop

from backend.bus.auth import issue_device_token
from backend.client.portforward import ForwardSpec, forward, open_forward
from backend.devstack.natsserver import NatsServer
from backend.devstack.testdevice import TestDevice
from backend.operator.api import OperatorApi
from backend.operator.config import FleetConfig
from backend.protocol import portforward as pf
from backend.shard import Shard, ShardConfig

SECRET = "bench-streams-secret-0123456789abcdef"
TOKEN = "bench-operator-token-0123456789"


async def source_server(total: int) -> tuple[asyncio.Server, int]:
    """Each connection: reads one line, then (for b"bulk") gets ``total`` bytes, or is echoed."""
    block = b"\x5a" * 65536

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line == b"bulk\n":
            for _ in range(total // len(block)):
                writer.write(block)
                await writer.drain()
        else:
            writer.write(line)
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    return server, server.sockets[0].getsockname()[1]


async def bulk_seconds(port: int, total: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(b"bulk\n")
    got = 0
    while data := await reader.read(1 << 20):
        got += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    assert got == total, (got, total)
    return elapsed


async def round_trip(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()


@contextlib.asynccontextmanager
async def opened_forward(api: OperatorApi, device_id: str, target: int) -> AsyncIterator[int]:
    """A running forward to ``target`` on the device: its local port."""
    spec = ForwardSpec.parse(f"0:127.0.0.1:{target}")
    ws = await open_forward(f"http://127.0.0.1:{api.port}", TOKEN, device_id, spec)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        forward(ws, spec, "tcp", lambda note: None, lambda _a, port: listening.set_result(port))
    )
    try:
        yield await listening
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ws.close()


async def device(shard: Shard, device_id: str, window: int, chunk: int) -> TestDevice:
    dev = TestDevice(
        device_id, issue_device_token(device_id, SECRET), f"ws://127.0.0.1:{shard.port}",
        forward_window=window, forward_chunk=chunk,
    )  # fmt: skip
    await dev.connect()
    await asyncio.wait_for(dev.handshake.wait(), 10)
    while shard.devices[device_id].registration is None:  # noqa: ASYNC110 (no event for it)
        await asyncio.sleep(0.01)
    return dev


def line(what: str, ours: str, baseline: str) -> None:
    print(f"{what:<46} {ours:>22}   direct TCP: {baseline}")


async def throughput(api: OperatorApi, shard: Shard, args: argparse.Namespace) -> None:
    total = args.megabytes << 20
    server, port = await source_server(total)
    direct = total / await bulk_seconds(port, total) / 1e6
    for name, window, chunk in (
        ("Mender 4 KiB stop-and-wait", pf.MENDER_WINDOW, pf.MENDER_CHUNK),
        (f"our gateway, window {args.window} x {args.chunk // 1024} KiB", args.window, args.chunk),
    ):
        dev = await device(shard, f"tp-{window}", window, chunk)
        async with opened_forward(api, dev.device_id, port) as local:
            rate = total / await bulk_seconds(local, total) / 1e6
        line(f"one stream, {name}", f"{rate:.1f} MB/s", f"{direct:.0f} MB/s")
        await dev.close()
    server.close()


async def concurrent(api: OperatorApi, shard: Shard, args: argparse.Namespace) -> None:
    server, port = await source_server(0)
    count = args.devices * args.per_device
    payload = b"x" * 1023 + b"\n"

    async def hold(local: int, opened: list[asyncio.StreamWriter]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        opened.append(writer)

    async def held(ports: list[int]) -> tuple[int, float]:
        opened: list[asyncio.StreamWriter] = []
        started = time.perf_counter()
        results = await asyncio.gather(
            *(hold(p, opened) for p in ports for _ in range(args.per_device)),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
        for writer in opened:
            writer.close()
        return sum(r is None for r in results), elapsed

    direct_ok, direct_s = await held([port] * args.devices)
    devices = [await device(shard, f"cc-{n}", 8, 65536) for n in range(args.devices)]
    async with contextlib.AsyncExitStack() as stack:
        ports = [
            await stack.enter_async_context(opened_forward(api, d.device_id, port)) for d in devices
        ]
        ok, ours_s = await held(ports)
    line(
        f"{count} connections held at once ({args.devices} devices)",
        f"{ok}/{count} in {ours_s:.2f}s", f"{direct_ok}/{count} in {direct_s:.2f}s",
    )  # fmt: skip
    for d in devices:
        await d.close()
    server.close()


async def rate(api: OperatorApi, shard: Shard, args: argparse.Namespace) -> None:
    server, port = await source_server(0)
    payload = b"y" * 99 + b"\n"

    async def per_second(target: int) -> float:
        done = 0
        deadline = time.perf_counter() + args.seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await round_trip(target, payload)
                done += 1

        await asyncio.gather(*(worker() for _ in range(20)))
        return done / args.seconds

    direct = await per_second(port)
    dev = await device(shard, "rate-1", pf.MENDER_WINDOW, pf.MENDER_CHUNK)
    async with opened_forward(api, dev.device_id, port) as local:
        ours = await per_second(local)
    line("new connections per second (one forward)", f"{ours:.0f}/s", f"{direct:.0f}/s")
    await dev.close()
    server.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as nats_server:
        urls = (nats_server.url,)
        shard_a = Shard(ShardConfig(shard_id="a", port=0, nats_urls=urls, jwt_secret=SECRET))
        shard_b = Shard(ShardConfig(shard_id="b", port=0, nats_urls=urls, jwt_secret=SECRET))
        config = FleetConfig(port=0, nats_urls=urls, operator_tokens={TOKEN: "op-bench"},
                             run_state_service=False)  # fmt: skip
        async with shard_a, shard_b, OperatorApi(config) as api:
            steps: list[Callable[..., Awaitable[None]]] = [throughput, concurrent, rate]
            for step in steps:
                await step(api, shard_b, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--per-device", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    uvloop.run(main(parser.parse_args()))
