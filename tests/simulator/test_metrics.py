"""The Prometheus view of a simulator process: counters read from FleetStats at scrape time,
latency histograms fed by Locust's request events."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from simulator.metrics import SimulatorMetrics
from simulator.stats import FleetStats

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: SimulatorMetrics) -> Samples:
    """Every sample of the text exposition, by name and labels."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_are_read_at_scrape_time() -> None:
    stats = FleetStats()
    metrics = SimulatorMetrics(stats)
    assert scrape(metrics)[("fleet_sim_gateways_connected", ())] == 0
    for _ in range(3):
        stats.gateway_connected()
    stats.gateway_dropped("net_reset", expected=False)
    stats.reconnects = 4
    stats.commands = 2
    stats.connect_failures["http 503"] += 5
    stats.alerts.update(sent=7, acked=6)
    stats.updates["success"] += 1
    samples = scrape(metrics)
    assert samples[("fleet_sim_gateways_connected", ())] == 2
    assert samples[("fleet_sim_connects_total", ())] == 3
    assert samples[("fleet_sim_reconnects_total", ())] == 4
    assert samples[("fleet_sim_commands_total", ())] == 2
    assert samples[("fleet_sim_connect_failures_total", (("stage", "http 503"),))] == 5
    assert samples[("fleet_sim_drops_total", (("cause", "net_reset"),))] == 1
    assert samples[("fleet_sim_alerts_total", (("outcome", "sent"),))] == 7
    assert samples[("fleet_sim_alerts_total", (("outcome", "acked"),))] == 6
    assert samples[("fleet_sim_updates_total", (("outcome", "success"),))] == 1


def test_observe_feeds_the_histogram_in_seconds() -> None:
    metrics = SimulatorMetrics(FleetStats())
    metrics.observe("alert", 120.0)
    metrics.observe("alert", 30.0, response_length=0, request_type="WS", context={})
    metrics.observe("ping", 4.0)
    samples = scrape(metrics)
    alert = (("name", "alert"),)
    assert samples[("fleet_sim_latency_seconds_count", alert)] == 2
    assert samples[("fleet_sim_latency_seconds_sum", alert)] == pytest.approx(0.15)
    assert samples[("fleet_sim_latency_seconds_bucket", (("le", "0.025"), *alert))] == 0
    assert samples[("fleet_sim_latency_seconds_bucket", (("le", "0.05"), *alert))] == 1
    assert samples[("fleet_sim_latency_seconds_bucket", (("le", "0.25"), *alert))] == 2
    assert samples[("fleet_sim_latency_seconds_count", (("name", "ping"),))] == 1


def test_failures_and_count_only_events_are_not_latencies() -> None:
    metrics = SimulatorMetrics(FleetStats())
    metrics.observe("connect: tcp", 0.0, exception=ConnectionRefusedError())
    metrics.observe("drop", 12.0, exception=ConnectionError("net_reset"))
    metrics.observe("status", 0.0)
    names = {name for name, _ in scrape(metrics)}
    assert not {name for name in names if name.startswith("fleet_sim_latency_seconds")}
