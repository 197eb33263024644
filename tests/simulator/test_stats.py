"""Fleet accounting: the connection gauge, drops, Locust's request hook, the merge across
workers, and what a snapshot gives the summary, progress line and web UI table."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.stats import (
    REQUEST_TYPE,
    FleetStats,
    format_progress,
    merge_snapshots,
    table_rows,
    verdict,
)


def test_the_gauge_follows_connects_drops_and_stops() -> None:
    stats = FleetStats()
    for _ in range(3):
        stats.gateway_connected()
    stats.gateway_dropped("net_reset", expected=False)
    stats.gateway_dropped("close 1012", expected=True)
    stats.gateway_connected()
    stats.gateway_stopped()
    assert (stats.connected, stats.peak_connected, stats.connects) == (1, 3, 4)
    assert stats.drops == {"net_reset": 1, "close 1012": 1}
    assert stats.unexpected_drops == 1


def test_a_stopped_gateway_is_not_a_drop() -> None:
    stats = FleetStats()
    stats.gateway_connected()
    stats.gateway_stopped()
    assert stats.connected == 0
    assert not stats.drops
    assert stats.unexpected_drops == 0


def test_the_gauges_changes_are_counted_per_tenth_of_a_second_until_taken() -> None:
    now = [100.0]
    stats = FleetStats(clock=lambda: now[0])
    stats.gateway_connected()
    stats.gateway_connected()
    now[0] = 100.05  # the same tick
    stats.gateway_dropped("net_reset", expected=False)
    now[0] = 100.3
    stats.gateway_connected()
    assert stats.take_connected_changes() == {1000: 1, 1003: 1}
    now[0] = 101.0
    stats.gateway_stopped()
    assert stats.take_connected_changes() == {1010: -1}
    assert stats.take_connected_changes() == {}
    assert stats.connected == 1


def test_updates_in_flight_are_counted_until_their_result() -> None:
    stats = FleetStats()
    for _ in range(3):
        stats.update_started()
    stats.update_ended("success")
    stats.update_ended("failure")
    stats.update_started()
    assert (stats.updating, stats.peak_updating) == (2, 3)
    assert stats.updates == {"success": 1, "failure": 1}


def test_request_fires_the_hook_as_locust_expects() -> None:
    calls: list[dict[str, Any]] = []
    stats = FleetStats(request_hook=lambda **kwargs: calls.append(kwargs))
    error = ConnectionRefusedError(111, "refused")
    stats.request("alert", 0.25, length=42)
    stats.request("connect: tcp", 0.0, error=error)
    assert calls == [
        {
            "request_type": "WS",
            "name": "alert",
            "response_time": 250.0,
            "response_length": 42,
            "exception": None,
            "context": {},
        },
        {
            "request_type": REQUEST_TYPE,
            "name": "connect: tcp",
            "response_time": 0.0,
            "response_length": 0,
            "exception": error,
            "context": {},
        },
    ]


def test_snapshot_is_plain_data() -> None:
    stats = FleetStats()
    stats.gateway_connected()
    stats.alerts["sent"] += 2
    stats.connect_failures["tcp"] += 1
    snapshot = stats.snapshot()
    assert snapshot["alerts"] == {"sent": 2}
    assert type(snapshot["alerts"]) is dict
    assert type(snapshot["connect_failures"]) is dict
    stats.alerts["sent"] += 1  # later counting does not change a snapshot already taken
    assert snapshot["alerts"] == {"sent": 2}


def test_merge_sums_scalars_and_nested_counts() -> None:
    first, second = FleetStats(), FleetStats()
    first.gateway_connected()
    first.gateway_connected()
    first.alerts.update(sent=5, acked=4)
    first.drops["net_reset"] = 1
    second.gateway_connected()
    second.alerts.update(sent=3, acked=3, resent=1)
    second.updates["failure"] = 1
    merged = merge_snapshots(
        [{**first.snapshot(), "pending": 1}, {**second.snapshot(), "pending": 0}]
    )
    assert merged["connected"] == 3
    assert merged["peak_connected"] == 3
    assert merged["connects"] == 3
    assert merged["alerts"] == {"sent": 8, "acked": 7, "resent": 1}
    assert merged["drops"] == {"net_reset": 1}
    assert merged["updates"] == {"failure": 1}
    assert merged["pending"] == 1


def test_merge_of_nothing_is_zeros() -> None:
    merged = merge_snapshots([])
    assert merged == FleetStats().snapshot()
    assert merged["connected"] == 0
    assert merged["alerts"] == {}


def test_verdict_passes_a_clean_run() -> None:
    assert verdict({"peak_connected": 5}, {"sent": 3, "acked": 3, "lost": 0}) == []


@pytest.mark.parametrize(
    ("peak", "alerts", "failure"),
    [
        (0, {}, "no gateway ever connected"),
        (5, {"acked": 4, "lost": 2}, "2 acked alerts are missing from the stream"),
        (5, {"duplicated": 1}, "1 alerts were stored more than once"),
    ],
)
def test_verdict_names_each_failure(peak: int, alerts: dict[str, int], failure: str) -> None:
    assert verdict({"peak_connected": peak}, alerts) == [failure]


def snapshot_with_activity() -> dict[str, Any]:
    stats = FleetStats()
    for _ in range(3):
        stats.gateway_connected()
    stats.gateway_dropped("net_reset", expected=False)
    stats.reconnects = 1
    stats.connect_failures["http 503"] = 2
    stats.alerts.update(sent=7, acked=6)
    return stats.snapshot()


def test_progress_line() -> None:
    assert format_progress(snapshot_with_activity()) == (
        "gateways connected 2 (peak 3) | reconnects 1 | drops: net_reset 1 | "
        "alerts sent 7 acked 6 resent 0 | failed tries: http 503 2 (the backend sheds "
        "connections: admission control, or no shard up behind HAProxy)"
    )
    quiet = format_progress(FleetStats().snapshot())
    assert "drops: none" in quiet
    assert "failed tries" not in quiet


def test_progress_line_hints_at_the_commonest_failure() -> None:
    fleet = {**FleetStats().snapshot(), "connect_failures": {"http 401": 117, "tcp": 3}}
    assert format_progress(fleet).endswith(
        "| failed tries: http 401 117, tcp 3 (the backend refuses the device tokens: "
        "check --jwt-secret)"
    )


def test_a_cause_without_a_common_fix_has_no_hint() -> None:
    fleet = {**FleetStats().snapshot(), "connect_failures": {"net_reset": 4}}
    assert format_progress(fleet).endswith("| failed tries: net_reset 4")


def test_table_rows() -> None:
    assert table_rows(snapshot_with_activity()) == [
        ("connected now", 2),
        ("peak connected", 3),
        ("connects", 3),
        ("reconnects", 1),
        ("unexpected drops", 1),
        ("drops: net_reset", 1),
        (
            "failed tries: http 503",
            "2 (the backend sheds connections: admission control, or no shard up behind HAProxy)",
        ),
        ("alerts acked", 6),
        ("alerts sent", 7),
    ]
