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

- command round trips (``--command-gateways N``, 0: skipped): a local stack of processes
  (NATS, shards, the operator API) holding N idle gateways (``bench/command_fleet.py``, in
  Locust processes of at most 10,000 each), ``--command-rate`` commands a second for
  ``--command-seconds`` through the API (``POST /devices/{id}/commands``, ``echo``, random
  gateways, open loop); baseline: ``GET /healthz`` of the same API at the same rate.

    python bench/streams.py --megabytes 32 --devices 100 --per-device 10 --seconds 5 \
        --command-gateways 20000 --command-rate 1000 --command-seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from backend.bus.auth import issue_device_token
from backend.client.operator import OperatorClient
from backend.client.portforward import ForwardSpec, forward, open_forward
from backend.devstack import process
from backend.devstack.natsserver import NatsServer
from backend.devstack.stack import LocalStack, StackConfig
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


def line(what: str, ours: str, baseline: str, against: str = "direct TCP") -> None:
    print(f"{what:<46} {ours:>22}   {against}: {baseline}")


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


async def streams(args: argparse.Namespace) -> None:
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


# --- command round trips with many gateways connected ---------------------------------------


def commands(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    per_process = 10_000
    processes = -(-args.command_gateways // per_process)
    config = StackConfig(run_dir, shards=max(2, processes), operator_api=True)
    with LocalStack(config) as stack:
        fleets, ids = [], []
        try:
            for n in range(processes):
                users = min(per_process, args.command_gateways - n * per_process)
                fleets.append(spawn_fleet(stack, run_dir, f"gw{n}", users))
                ids += gateway_ids(f"gw{n}", users)
            wait_connected(stack, args.command_gateways, fleets)
            settle(stack, args.command_gateways)
            base = uvloop.run(paced(stack, ids, args, command=False))
            ours = uvloop.run(paced(stack, ids, args, command=True))
        finally:
            for proc in fleets:
                process.stop(proc)
    for name, figures in (("commands", ours), ("GET /healthz", base)):
        print(f"{name} at {args.command_rate:g}/s for {args.command_seconds:g}s with "
              f"{len(ids)} gateways: {figures}")  # fmt: skip
    line(
        f"command round trip, {len(ids)} gateways, {args.command_rate:g}/s",
        f"p50 {ours['p50']:.1f} p99 {ours['p99']:.1f} ms",
        f"p99 {base['p99']:.1f} ms",
        "GET /healthz",
    )


def spawn_fleet(stack: LocalStack, run_dir: Path, prefix: str, users: int) -> Any:
    argv = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("command_fleet.py")),
        "--headless", "-u", str(users), "-r", "500", "--host", ",".join(stack.shard_urls),
        "--jwt-secret", stack.jwt_secret, "--fleet-prefix", prefix,
        "--run-dir", str(run_dir / f"sim-{prefix}"),
    ]  # fmt: skip
    return process.spawn(argv, run_dir / f"{prefix}-locust.log")


def wait_connected(stack: LocalStack, want: int, fleets: list[Any]) -> None:
    deadline = time.monotonic() + 600
    while (count := stack.connections()) < want:
        if time.monotonic() > deadline or any(p.poll() is not None for p in fleets):
            raise RuntimeError(f"only {count}/{want} gateways connected")
        time.sleep(1.0)


def settle(stack: LocalStack, want: int, timeout: float = 300.0) -> None:
    """Wait until the API's fleet state (in the same process) has taken in every gateway's
    connect: measured during that catch-up, commands would queue behind it."""
    client = OperatorClient(stack.api_url, stack.operator_token)
    deadline = time.monotonic() + timeout
    while sum(1 for _ in client.all_devices(online=True)) < want:
        if time.monotonic() > deadline:
            print(f"the fleet state did not list all {want} gateways online within {timeout:g}s")
            return
        time.sleep(5.0)


def gateway_ids(prefix: str, users: int) -> list[str]:
    """The ids a Locust process of ``bench/command_fleet.py`` gives its gateways
    (``simulator.fleet``: prefix, scenario class, worker, index)."""
    return [f"{prefix}-commandfleet-w0-{index:06d}" for index in range(users)]


async def paced(
    stack: LocalStack, ids: list[str], args: argparse.Namespace, *, command: bool
) -> dict[str, float]:
    """Open loop: one request every 1/rate s whatever the answers do; latency figures in ms."""
    headers = {"Authorization": f"Bearer {stack.operator_token}"}
    rng = random.Random(1)
    latencies: list[float] = []
    failures = 0
    total = int(args.command_rate * args.command_seconds)
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one(device_id: str) -> None:
            nonlocal failures
            started = time.perf_counter()
            try:
                if command:
                    url = f"{stack.api_url}/devices/{device_id}/commands"
                    async with http.post(url, json={"command": "echo hi"}) as resp:
                        ok = resp.status == 200 and (await resp.json())["output"] == "hi\n"
                else:
                    async with http.get(f"{stack.api_url}/healthz") as resp:
                        ok = resp.status == 200
                        await resp.read()
            except aiohttp.ClientError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            failures += not ok

        started = time.perf_counter()
        tasks = []
        for n in range(total):
            await asyncio.sleep(max(0.0, started + n / args.command_rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(rng.choice(ids))))
        await asyncio.gather(*tasks)
        achieved = total / (time.perf_counter() - started)
    latencies.sort()
    return {
        "sent": total, "failed": failures, "achieved_per_s": round(achieved, 1),
        "p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
        "max": latencies[-1],
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=32, help="bytes through one stream, MB")
    parser.add_argument("--window", type=int, default=16, help="our gateway's forwards in flight")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="our gateway's forward size")
    parser.add_argument("--devices", type=int, default=100, help="devices holding connections")
    parser.add_argument("--per-device", type=int, default=10, help="connections per device")
    parser.add_argument("--seconds", type=float, default=5.0, help="new connections timed so long")
    parser.add_argument(
        "--command-gateways",
        type=int,
        default=0,
        help="idle gateways connected while commands are timed; 0: no command figure",
    )
    parser.add_argument("--command-rate", type=float, default=1000.0, help="commands a second")
    parser.add_argument(
        "--command-seconds", type=float, default=20.0, help="commands timed so long"
    )
    arguments = parser.parse_args()
    uvloop.run(streams(arguments))
    if arguments.command_gateways:
        commands(arguments)
