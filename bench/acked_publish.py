"""The shard's acked alert publishes (``backend.bus.acked``) beside nats-py's
``JetStreamContext.publish_async``, the baseline, in the same run against one real
nats-server: the client's CPU per acked publish (what a shard spends on it; the server's
side is the same for both) and the rate, with the shard's three alert headers, ``--window``
publishes in flight.

    python bench/acked_publish.py --alerts 50000 --window 2000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import uvloop

from backend.bus import subjects
from backend.bus.acked import AckedPublisher
from backend.devstack.natsserver import NatsServer

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[asyncio.Future[Any]]]


async def run(publish: Publish, alerts: int, window: int, run_id: str) -> tuple[float, float]:
    """(client CPU us per acked publish, publishes per second) for ``alerts`` publishes."""
    in_flight: set[asyncio.Future[Any]] = set()
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(alerts):
        headers = {
            subjects.MSG_ID_HEADER: f"{run_id}/gw-{n % 1000}/a-{n}",
            subjects.DEVICE_HEADER: f"gw-{n % 1000}",
            subjects.SHARD_HEADER: "shard-a",
        }
        future = await publish(subjects.alert_subject(f"gw-{n % 1000}"), b"x" * 120, headers)
        in_flight.add(future)
        future.add_done_callback(in_flight.discard)
        if len(in_flight) >= window:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*in_flight)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / alerts * 1e6, alerts / wall


async def main(alerts: int, window: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp)) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream(publish_async_max_pending=window)
        await subjects.ensure_streams(js)
        ours = AckedPublisher(nc, timeout=30.0)
        await ours.start()
        contenders: dict[str, Publish] = {
            "nats-py publish_async": lambda s, p, h: js.publish_async(s, p, headers=h),
            "AckedPublisher": ours.publish,
        }
        print(f"{alerts:,} acked publishes, {window:,} in flight, best of {rounds} rounds")
        print(f"{'client':<24}{'us CPU each':>12}{'per second':>12}")
        for name, publish in contenders.items():
            figures = [await run(publish, alerts, window, f"{name[:4]}{r}") for r in range(rounds)]
            cpu, rate = min(f[0] for f in figures), max(f[1] for f in figures)
            print(f"{name:<24}{cpu:>12.1f}{rate:>12,.0f}")
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    uvloop.run(main(options.alerts, options.window, options.rounds))
