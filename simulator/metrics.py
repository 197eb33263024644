"""Prometheus view of one simulator process: the fleet counters plus latency histograms.

Counters are read from ``FleetStats`` at scrape time (one source of truth); latencies are fed
from the same request events Locust records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from simulator.stats import FleetStats

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class FleetCollector(Collector):
    def __init__(self, stats: FleetStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily(
            "fleet_sim_gateways_connected", "Virtual gateways connected now", stats.connected
        )
        yield CounterMetricFamily(
            "fleet_sim_connects", "Connections established (handshake done)", stats.connects
        )
        yield CounterMetricFamily(
            "fleet_sim_reconnects", "Reconnects after a drop", stats.reconnects
        )
        yield _labelled(
            "fleet_sim_connect_failures", "Failed attempts", "stage", stats.connect_failures
        )
        yield _labelled("fleet_sim_drops", "Connections lost, by cause", "cause", stats.drops)
        yield _labelled("fleet_sim_alerts", "Alert accounting", "outcome", stats.alerts)
        yield _labelled("fleet_sim_updates", "Update outcomes", "outcome", stats.updates)
        yield CounterMetricFamily("fleet_sim_commands", "Commands answered", stats.commands)


def _labelled(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class SimulatorMetrics:
    """A registry per process; ``observe`` is a Locust request listener."""

    def __init__(self, stats: FleetStats) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(stats))
        self.latency = Histogram(
            "fleet_sim_latency_seconds",
            "Latency by operation (connect stages, reconnect, alert ack, command, ping)",
            ["name"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, name: str, response_time: float, exception: Any = None, **_: Any) -> None:
        if exception is None and response_time:
            self.latency.labels(name).observe(response_time / 1000.0)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, host, registry=self.registry)
