"""The run timeline: what is kept of each second, and the figures scenarios read from it."""

from __future__ import annotations

from prometheus_client import generate_latest

from backend.shard.metrics import ShardMetrics
from simulator.timeline import (
    Timeline,
    count_at,
    haproxy_5xx,
    last_known,
    peak_rate,
    percentile,
    recovery_time,
    shard_figures,
    tick,
)
from tests.simulator.support import fleet

HAPROXY_METRICS = """\
# HELP haproxy_backend_http_responses_total Total number of HTTP responses with status 100-199 \
returned by this object since the worker process started
# TYPE haproxy_backend_http_responses_total counter
haproxy_backend_http_responses_total{proxy="shards",code="1xx"} 2000
haproxy_backend_http_responses_total{proxy="shards",code="5xx"} 37
haproxy_backend_http_responses_total{proxy="stats",code="5xx"} 1
"""


def timeline(connected: list[int], connects: list[int] | None = None) -> Timeline:
    result = Timeline()
    for t, count in enumerate(connected):
        result.add(float(t), fleet(count, (connects or connected)[t]), {})
    return result


def test_a_shards_metrics_page_gives_its_figures() -> None:
    metrics = ShardMetrics("shard-a")
    metrics.connections.set(812)
    metrics.connects.inc(900)
    metrics.rejected_upgrades.labels("overloaded").inc(40)
    metrics.rejected_upgrades.labels("unauthorized").inc(3)
    metrics.disconnects.labels("keepalive_timeout").inc(7)
    metrics.disconnects.labels("reset").inc(81)
    figures = shard_figures(generate_latest(metrics.registry).decode())
    assert figures == {"connections": 812, "connects": 900, "shed": 40, "reaped": 7}


def test_haproxy_5xx_counts_the_shards_backend_only() -> None:
    assert haproxy_5xx(HAPROXY_METRICS) == 37
    assert haproxy_5xx("") == 0


def test_percentiles_of_a_histogram() -> None:
    counts = {10: 50, 20: 45, 900: 5}
    assert percentile(counts, 0.5) == 10
    assert percentile(counts, 0.95) == 20
    assert percentile(counts, 0.99) == 900
    assert percentile({}, 0.5) is None


def test_each_sample_has_the_alert_latency_of_its_own_second() -> None:
    line = Timeline()
    first = line.add(1.0, fleet(10, 10, acked=100), {10: 100})
    second = line.add(2.0, fleet(10, 10, acked=102), {10: 100, 500: 2})
    third = line.add(3.0, fleet(10, 10, acked=102), {10: 100, 500: 2})
    assert (first["alert_p50_ms"], second["alert_p50_ms"], third["alert_p99_ms"]) == (10, 500, None)
    assert second["alerts_acked"] == 102


def test_the_count_is_the_sum_of_every_processs_changes_per_tick() -> None:
    line = Timeline(origin=1000.0)
    line.count_changes({tick(1000.04): 3, tick(1000.5): 2})  # one worker
    line.count_changes({tick(1000.07): 1, tick(1001.0): -1})  # another
    line.count_changes({tick(1002.21): -4})  # the first, later
    assert line.connected() == [(0.1, 4), (0.6, 6), (1.1, 5), (2.3, 1)]
    assert line.as_dict()["connected"] == line.connected()
    assert (count_at(line.connected(), 0.05), count_at(line.connected(), 0.6)) == (None, 6)


def test_recovery_is_timed_from_the_mark_to_the_count_after_its_low_point() -> None:
    # full, the kill at t=3, low at 5, back to 99% at 7.2, 100% at 9
    points = [(1.0, 1000), (4.0, 600), (5.0, 500), (6.0, 800), (7.2, 995), (8.0, 998), (9.0, 1000)]
    assert count_at(points, 3.0) == 1000
    assert recovery_time(points, 3.0, 990) == 4.2
    assert recovery_time(points, 3.0, 1000) == 6.0
    assert recovery_time(points, 3.0, 1001) is None
    assert recovery_time(points, 99.0, 1000) is None
    assert recovery_time(points, 3.0, 400) == 0.0  # it never fell that far
    # The gateways stop at the end of the run: the return before it counts.
    assert recovery_time([*points, (30.0, 0)], 3.0, 1000) == 6.0


def test_peak_rate_is_the_steepest_second() -> None:
    line = timeline([0, 0, 0, 0], connects=[0, 1000, 1500, 4000])
    assert peak_rate(line.samples, "connects") == 2500
    assert peak_rate(line.samples, "connects", since=1.0) == 2500
    assert peak_rate(line.samples, "connects", since=3.0) is None


def test_a_killed_shard_counts_with_its_last_figures() -> None:
    line = Timeline()
    up = {"connections": 500.0, "connects": 500.0, "shed": 4.0, "reaped": 1.0}
    line.add(1.0, fleet(0, 0), {}, {"shard-a": up, "shard-b": {**up, "shed": 2.0}})
    line.add(2.0, fleet(0, 0), {}, {"shard-a": None, "shard-b": {**up, "shed": 9.0}})
    assert last_known(line.samples, "shed") == 4 + 9
    assert last_known(timeline([1]).samples, "shed") is None
