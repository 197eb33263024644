"""``fleet demo``: an embedded local stack showing alerts flow device → shard → JetStream.

Starts a real nats-server and two shard processes under one run directory, connects a few
built-in test devices that raise and clear alerts, and prints every alert as it is read back
from the durable stream. Ctrl-C (or ``--duration``) stops everything, children included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import nats
from nats.js.api import DeliverPolicy

from backend import bus
from backend.protocol import messages
from backend.stack import LocalStack, StackConfig
from backend.testdevice import TestDevice

PROBLEMS = (
    ("temp-high", "warning", "Boiler temperature above 80 °C", "Check the circulation pump"),
    ("door-open", "info", "Front door open for 10 minutes", "Close the front door"),
    ("smoke", "critical", "Smoke detected in the kitchen", "Call the fire brigade"),
    ("battery-low", "warning", "Window sensor battery at 5%", "Replace the CR2032 battery"),
)


@dataclass
class DemoStats:
    sent: int = 0
    acked: int = 0
    stored: int = 0
    started: float = field(default_factory=time.monotonic)


async def print_stored_alerts(nats_url: str, stats: DemoStats) -> None:
    """Read the alert stream back, as any consumer of it would, and print each alert."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("fleet.alerts.>", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.NEW)  # fmt: skip
        async for msg in sub.messages:
            alert = messages.Alert.from_body(msg.data)
            stats.stored += 1
            headers = msg.headers or {}
            click.echo(
                f"  stored #{msg.metadata.sequence.stream:<5} "
                f"{headers.get(bus.DEVICE_HEADER, '?'):<7} via {headers.get(bus.SHARD_HEADER, '?')}"
                f"  {alert.state:<7} {alert.severity:<8} {alert.description}"
            )
    finally:
        await nc.close()


async def run_device(device: TestDevice, stats: DemoStats, interval: float) -> None:
    """Connect, then raise and clear alerts at random, reconnecting if the shard goes away."""
    counter = itertools.count(1)
    while True:
        try:
            await device.connect()
            while True:
                code, severity, description, fix = random.choice(PROBLEMS)
                for state in ("raised", "cleared"):
                    await asyncio.sleep(random.uniform(0.5, 2) * interval)
                    alert = messages.Alert(
                        f"{device.device_id}-{next(counter)}", code, severity, state,
                        description, fix, time.time(),
                    )  # fmt: skip
                    await device.send_alert(alert)
                    stats.sent += 1
                    async with asyncio.timeout(10):
                        await device.wait_acked(alert.id)
                    stats.acked += 1
        except (OSError, TimeoutError) as exc:
            click.echo(f"  {device.device_id}: {exc}; reconnecting", err=True)
            await asyncio.sleep(1 + random.random())


@contextlib.asynccontextmanager
async def devices(stack: LocalStack, count: int) -> AsyncIterator[list[TestDevice]]:
    urls = stack.shard_urls
    made = [
        TestDevice(f"gw-{i:03d}", stack.token(f"gw-{i:03d}"), urls[i % len(urls)])
        for i in range(1, count + 1)
    ]
    try:
        yield made
    finally:
        for device in made:
            with contextlib.suppress(Exception):
                await device.close()


async def stop_requested() -> None:
    """Return on Ctrl-C or SIGTERM, so the stack is torn down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    click.echo("\nstopping: shards drain, then NATS stops")


async def run_demo(run_dir: Path, device_count: int, interval: float, duration: float) -> None:
    stats = DemoStats()
    with LocalStack(StackConfig(run_dir, shards=2)) as stack:
        urls = ", ".join(stack.shard_urls)
        click.echo(f"nats {stack.nats_url}; shards {urls}; logs in {run_dir}")
        click.echo(f"{device_count} devices raising and clearing alerts; Ctrl-C to stop\n")
        async with devices(stack, device_count) as fleet:
            tasks = [asyncio.create_task(print_stored_alerts(stack.nats_url, stats))]
            tasks += [asyncio.create_task(run_device(d, stats, interval)) for d in fleet]
            stop = asyncio.create_task(stop_requested())
            try:
                await asyncio.wait([*tasks, stop], timeout=duration or None,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                stop.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - stats.started
    click.echo(
        f"\n{stats.sent} alerts sent, {stats.acked} acked after the stream stored them, "
        f"{stats.stored} read back from {bus.ALERTS_STREAM} in {elapsed:.0f}s"
    )
