"""Memory per idle connection: the shard against a plain ``websockets`` server, same run.

Both servers run as their own processes on uvloop with keep-alive on and compression off;
one client process opens N connections to each in turn (for the shard: a signed token and the
Mender open/accept handshake, so the connection is authenticated and its session live), lets
them settle, and the server's resident memory growth is divided by N.

    python bench/conn_memory.py --connections 15000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from backend.bus.auth import issue_device_token
from backend.devstack import process
from backend.devstack.natsserver import NatsServer
from backend.protocol import http
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.http import DEVICE_PATH

SETTLE = 3.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the client side: many raw connections driven by the Sans-I/O codecs ---------------------


class BenchDevice(asyncio.Protocol):
    """Upgrade, answer the server's handshake and pings, otherwise stay idle."""

    def __init__(self, host: str, path: str, token: str, upgraded: asyncio.Future[None]) -> None:
        self.request, self.key = http.client_request(
            host, path, [("Authorization", f"Bearer {token}")] if token else []
        )
        self.upgraded = upgraded
        self.buffer = b""
        self.codec: ws.WebSocketConnection | None = None
        self.session = ps.DeviceSession(ps.Role.DEVICE, device_id="bench")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.codec is None:
            self._receive_response(data)
        else:
            self._receive_frames(data)

    def _receive_response(self, data: bytes) -> None:
        self.buffer += data
        try:
            parsed = http.parse_response(self.buffer, self.key)
        except Exception as exc:
            self.upgraded.set_exception(exc)
            return
        if parsed is not None:
            _status, _headers, consumed = parsed
            self.codec = ws.WebSocketConnection(ws.Role.CLIENT)
            self.upgraded.set_result(None)
            rest, self.buffer = self.buffer[consumed:], b""
            if rest:
                self._receive_frames(rest)

    def _receive_frames(self, data: bytes) -> None:
        assert self.codec is not None
        assert self.transport is not None
        self.codec.receive_data(data)
        for event in self.codec.events_received():
            if isinstance(event, ws.Message):
                self.session.receive_message(event.data)
        self.session.events_received()
        for message in self.session.messages_to_send():
            self.codec.send_binary(message)
        self.transport.write(self.codec.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed before upgrade: {exc}"))


async def hold_connections(port: int, path: str, count: int, secret: str) -> None:
    loop = asyncio.get_running_loop()
    held = []
    batch = 500
    for start in range(0, count, batch):
        waits = []
        for index in range(start, min(count, start + batch)):
            token = issue_device_token(f"bench-{index}", secret) if secret else ""
            upgraded: asyncio.Future[None] = loop.create_future()
            held.append(
                await loop.create_connection(
                    lambda t=token, u=upgraded: BenchDevice("127.0.0.1", path, t, u),
                    "127.0.0.1",
                    port,
                )
            )
            waits.append(upgraded)
        await asyncio.gather(*waits)
    print(json.dumps({"connected": len(held)}), flush=True)
    await asyncio.Event().wait()  # hold until terminated


# --- the baseline server ------------------------------------------------------------------


async def serve_websockets(ready_file: Path) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ready_file.write_text(json.dumps({"port": port}))  # noqa: ASYNC240 (once, at start)
        await asyncio.Event().wait()


# --- the run --------------------------------------------------------------------------------


def measure(name: str, server_pid: int, port: int, path: str, count: int, secret: str) -> dict:
    before = rss_kib(server_pid)
    argv = [sys.executable, __file__, "--client", str(port), path, str(count), secret]
    started = time.monotonic()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline() if client.stdout else ""
        if not line:
            raise RuntimeError(f"{name}: the client died before holding {count} connections")
        ramp = time.monotonic() - started
        time.sleep(SETTLE)
        after = rss_kib(server_pid)
    finally:
        process.stop(client)  # type: ignore[arg-type]
    return {
        "server": name,
        "connections": json.loads(line)["connected"],
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_conn": (after - before) / count,
        "ramp_per_s": count / ramp,
    }


def start_server(argv: list[str], run_dir: Path, name: str, env: dict[str, str] | None = None):
    ready = run_dir / f"{name}.ready"
    log_file = run_dir / f"{name}.log"
    proc = process.spawn([*argv, "--ready-file", str(ready)], log_file, env)
    process.wait_until(ready.exists, proc, name, log_file)
    return proc, json.loads(ready.read_text())["port"]


def run(count: int) -> None:
    secret = secrets.token_hex(24)  # never starts with "-": it is an argument of --client
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp)) as nats_server:
        run_dir = Path(tmp)
        shard_argv = [
            sys.executable, "-m", "backend.cli", "shard", "--port", "0", "--shard-id", "bench",
            "--nats-url", nats_server.url, "--accept-rate", "100000", "--accept-burst", "100000",
            "--ping-interval", "30", "--keepalive-timeout", "75",
        ]  # fmt: skip
        shard, shard_port = start_server(
            shard_argv, run_dir, "shard", {"FLEET_SHARD_JWT_SECRET": secret}
        )
        try:
            results = [measure("fleetharness shard", shard.pid, shard_port, DEVICE_PATH,
                               count, secret)]  # fmt: skip
        finally:
            process.stop(shard)
        baseline, port = start_server(
            [sys.executable, __file__, "--serve-websockets"], run_dir, "websockets"
        )
        try:
            results.append(measure("websockets.asyncio.server", baseline.pid, port, "/", count, ""))
        finally:
            process.stop(baseline)
    report(results)


def report(results: list[dict]) -> None:
    print(f"\n{'server':<28}{'conns':>8}{'RSS before':>12}{'RSS after':>12}{'KiB/conn':>10}"
          f"{'ramp/s':>9}")  # fmt: skip
    for r in results:
        print(
            f"{r['server']:<28}{r['connections']:>8}{r['rss_before_mib']:>10.1f}Mi"
            f"{r['rss_after_mib']:>10.1f}Mi{r['kib_per_conn']:>10.2f}{r['ramp_per_s']:>9.0f}"
        )
    ratio = results[1]["kib_per_conn"] / results[0]["kib_per_conn"]
    print(f"\nthe shard holds an idle connection in {ratio:.1f}x less memory than the baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=15_000)
    parser.add_argument("--client", nargs=4, metavar=("PORT", "PATH", "COUNT", "SECRET"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--serve-websockets", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        port, path, count, secret = args.client
        uvloop.run(hold_connections(int(port), path, int(count), secret))
    elif args.serve_websockets:
        uvloop.run(serve_websockets(args.ready_file))
    else:
        run(args.connections)


if __name__ == "__main__":
    main()
