"""The NATS exporter against a real nats-server: server counters from /varz, streams and
consumers from /jsz, nats_up 0 when nothing answers, and the command serving it all."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, generate_latest

from backend.bus.exporter import NatsCollector
from backend.devstack.natsserver import NatsServer
from backend.devstack.process import free_ports
from backend.devstack.stack import fetch_metrics, metric_sum
from tests.observe_support import spawned

pytestmark = pytest.mark.integration  # every test here runs real servers


def scrape(monitor_url: str) -> str:
    registry = CollectorRegistry()
    registry.register(NatsCollector(monitor_url))
    return generate_latest(registry).decode()


async def test_server_and_jetstream_metrics(nats_server: NatsServer, nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ALERTS", subjects=["alerts.>"])
    for _ in range(3):
        await js.publish("alerts.gw-1", b"{}")
    await js.add_consumer("ALERTS", durable_name="processor")
    text = await asyncio.to_thread(scrape, nats_server.monitor_url)
    assert metric_sum(text, "nats_up") == 1
    assert metric_sum(text, "nats_connections") == 1
    assert metric_sum(text, "nats_in_msgs_total")  # our publishes and JetStream API requests
    assert metric_sum(text, "nats_out_bytes_total")
    assert metric_sum(text, "nats_mem_bytes")
    assert metric_sum(text, "nats_cpu_ratio") is not None
    stream = {"account": "$G", "stream": "ALERTS"}
    assert metric_sum(text, "nats_jetstream_stream_messages", **stream) == 3
    assert metric_sum(text, "nats_jetstream_stream_bytes", **stream)
    consumer = {**stream, "consumer": "processor"}
    assert metric_sum(text, "nats_jetstream_consumer_num_pending", **consumer) == 3
    assert metric_sum(text, "nats_jetstream_consumer_num_ack_pending", **consumer) == 0


def test_nats_up_is_0_when_the_monitor_does_not_answer() -> None:
    text = scrape(f"http://127.0.0.1:{free_ports(1)[0]}")
    assert metric_sum(text, "nats_up") == 0
    assert metric_sum(text, "nats_connections") is None


def test_the_command_serves_metrics_configured_from_the_environment(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    env = {"FLEET_NATS_EXPORTER_NATS_MONITOR_URL": nats_server.monitor_url}
    argv = [sys.executable, "-m", "backend.bus.exporter", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with spawned("natsexporter", argv, f"{url}/metrics", tmp_path / "exporter.log", env):
        text = fetch_metrics(url)
    assert metric_sum(text, "nats_up") == 1
    assert metric_sum(text, "nats_connections") == 0
    assert nats_server.monitor_url in (tmp_path / "exporter.log").read_text()
