"""NATS server metrics for Prometheus, read from nats-server's monitoring endpoint.

nats-server serves JSON (/varz, /jsz) on its monitoring port (``-m``/``--http_port``), not the
Prometheus text format; this collector translates each scrape, so it needs neither a broker
client nor NATS credentials. Run ``python -m backend.bus.exporter --help``; every option can
also be set as ``FLEET_NATS_EXPORTER_<OPTION>``.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import click
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.devstack import process

JSZ_PATH = "/jsz?streams=true&consumers=true"
# (metric, /varz field, help): counters get their _total suffix from prometheus_client.
VARZ_COUNTERS = (
    ("nats_in_msgs", "in_msgs", "Messages received (clients, routes, leaf nodes)"),
    ("nats_out_msgs", "out_msgs", "Messages sent"),
    ("nats_in_bytes", "in_bytes", "Payload bytes received"),
    ("nats_out_bytes", "out_bytes", "Payload bytes sent"),
    ("nats_slow_consumers", "slow_consumers", "Clients disconnected for not reading fast enough"),
)
VARZ_GAUGES = (
    ("nats_connections", "connections", "Client connections open now"),
    ("nats_subscriptions", "subscriptions", "Subscriptions held now"),
    ("nats_mem_bytes", "mem", "Resident memory of nats-server"),
)


class NatsCollector(Collector):
    """Reads /varz and /jsz of ``monitor_url`` at every scrape; ``nats_up`` says if it could."""

    def __init__(self, monitor_url: str, timeout: float = 2.0) -> None:
        self.monitor_url = monitor_url.rstrip("/")
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        varz = self._get("/varz")
        yield GaugeMetricFamily(
            "nats_up", "1 if nats-server's monitoring endpoint answered", int(varz is not None)
        )
        if varz is None:
            return
        yield from server_metrics(varz)
        jsz = self._get(JSZ_PATH)
        if jsz is not None:
            yield from jetstream_metrics(jsz)

    def _get(self, path: str) -> dict[str, Any] | None:
        status, body = process.http_get(self.monitor_url + path, self.timeout)
        if status != 200:
            return None
        answer: dict[str, Any] = json.loads(body)
        return answer


def server_metrics(varz: dict[str, Any]) -> Iterator[Metric]:
    for name, field, doc in VARZ_COUNTERS:
        yield CounterMetricFamily(name, doc, varz[field])
    for name, field, doc in VARZ_GAUGES:
        yield GaugeMetricFamily(name, doc, varz[field])
    # /varz gives percent of one core, averaged by nats-server over its last sample.
    yield GaugeMetricFamily(
        "nats_cpu_ratio", "CPU use of nats-server (1: one core)", varz["cpu"] / 100
    )


def jetstream_metrics(jsz: dict[str, Any]) -> Iterator[Metric]:
    """Per stream and consumer; the account is a label too, as stream names repeat across
    accounts. Without JetStream, /jsz has no account details: families without samples."""
    streams = ["account", "stream"]
    stream_messages = GaugeMetricFamily(
        "nats_jetstream_stream_messages", "Messages stored in the stream", labels=streams
    )
    stream_bytes = GaugeMetricFamily(
        "nats_jetstream_stream_bytes", "Bytes stored in the stream", labels=streams
    )
    consumers = [*streams, "consumer"]
    pending = GaugeMetricFamily(
        "nats_jetstream_consumer_num_pending",
        "Messages in the stream the consumer has not been sent yet",
        labels=consumers,
    )
    ack_pending = GaugeMetricFamily(
        "nats_jetstream_consumer_num_ack_pending",
        "Messages sent to the consumer and not acknowledged yet",
        labels=consumers,
    )
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            labels = [account["name"], stream["name"]]
            stream_messages.add_metric(labels, stream["state"]["messages"])
            stream_bytes.add_metric(labels, stream["state"]["bytes"])
            for consumer in stream.get("consumer_detail", []):
                pending.add_metric([*labels, consumer["name"]], consumer["num_pending"])
                ack_pending.add_metric([*labels, consumer["name"]], consumer["num_ack_pending"])
    yield from (stream_messages, stream_bytes, pending, ack_pending)


@click.command(context_settings={"auto_envvar_prefix": "FLEET_NATS_EXPORTER", "show_default": True})
@click.option(
    "--nats-monitor-url", default="http://127.0.0.1:8222",
    help="nats-server's monitoring endpoint (its -m / --http_port).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", help="Address to serve /metrics on.")
@click.option("--port", default=7777, help="Port to serve /metrics on.")
def main(nats_monitor_url: str, host: str, port: int) -> None:
    """Serve nats-server's /varz and /jsz as Prometheus metrics on /metrics."""
    registry = CollectorRegistry()
    registry.register(NatsCollector(nats_monitor_url))
    try:
        start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None
    click.echo(f"NATS metrics of {nats_monitor_url} on http://{host}:{port}/metrics", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()  # the server runs in a daemon thread; SIGTERM ends the process


if __name__ == "__main__":
    main()
