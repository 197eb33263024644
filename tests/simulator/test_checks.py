"""The SRE scenarios' verdict checks on hand-built run records."""

from __future__ import annotations

import copy
from typing import Any

from simulator.checks import (
    HOPELESS_TRIES,
    SHARD_KILLED,
    RunRecord,
    burst_checks,
    cannot_pass,
    day_checks,
    fleet_checks,
    remote_checks,
    rollout_checks,
    soak_checks,
    storm_checks,
)
from simulator.timeline import Timeline
from tests.simulator.support import fleet

SUMMARY: dict[str, Any] = {
    "gateways": {"connected": 1000, "peak_connected": 1000, "connects": 1500},
    "unexpected_drops": 0,
    "drops": {},
    "connect_failures": {"http 503": 2, "net_drop": 40},
    "alerts": {"sent": 500, "acked": 500, "pending": 0, "stored": 500, "duplicated": 0,
               "lost": 0, "stored_per_s": 3800.0},
    "latency_ms": {
        "alert": {"count": 500, "p50": 12, "p95": 40, "p99": 90, "max": 300},
        "ping": {"count": 900, "p50": 80, "p95": 150, "p99": 240, "max": 400},
        "connect: handshake": {"count": 1500, "p50": 3, "p95": 20, "p99": 60, "max": 90},
    },
}  # fmt: skip
SETTINGS = {"accept_rate": 2000.0, "accept_burst": 1000.0, "keepalive_timeout": 25.0}


def by_name(checks: list[Any]) -> dict[str, Any]:
    return {check.name: check for check in checks}


def storm(connected: list[int], connects: list[int], five: list[float], shed: float) -> Timeline:
    """Two shards; shard-a dies at t=3.5 having shed ``shed`` upgrades. The gateways' own
    count is ``connected[t]`` from t s into the run; the samples' lags a second behind."""
    line = Timeline()
    for t, count in enumerate(connected):
        up = {"connections": count / 2, "connects": 0.0, "shed": shed, "reaped": 0.0}
        shards = {"shard-a": up if t <= 3 else None, "shard-b": {**up, "shed": 0.0}}
        reported = connected[max(t - 1, 0)]
        line.add(float(t), fleet(reported, connects[t]), {}, shards, five[t])
        line.count_changes({10 * t - 1: count - (connected[t - 1] if t else 0)})
    line.mark(SHARD_KILLED, 3.5)
    return line


def test_a_storm_that_recovers_within_budget_passes() -> None:
    line = storm(
        [1000, 1000, 1000, 1000, 520, 900, 992, 1000],
        [1000, 1000, 1000, 1000, 1010, 1400, 1492, 1500],
        [0, 0, 0, 0, 20, 30, 30, 30],
        shed=30,
    )
    checks = by_name(storm_checks(RunRecord(SUMMARY, line, 1000, SETTINGS, shards=2)))
    assert {name: c.measured for name, c in checks.items()} == {
        "connected_at_kill": 1000,
        "reconnect_99pct_s": 2.5,
        "reconnect_100pct_s": 3.5,
        "peak_accept_per_s": 390,
        "haproxy_5xx_beyond_shed": 0,
        "alerts_lost": 0,
        "alerts_duplicated": 0,
        "alerts_unstored_pct": 0,
        "connect_failed_pct": 0.13,  # 2 HAProxy 503s in 1,542 tries
    }
    assert all(c.ok for c in checks.values())
    assert checks["peak_accept_per_s"].threshold == 3000  # (2,000/s + 1,000) x 1 survivor


def test_a_storm_over_budget_with_unexplained_5xx_and_no_full_recovery_fails() -> None:
    line = storm(
        [1000, 1000, 1000, 1000, 500, 900, 995, 995],
        [1000, 1000, 1000, 1000, 1000, 4400, 4495, 4495],
        [0, 0, 0, 0, 50, 60, 60, 60],
        shed=10,
    )
    checks = by_name(storm_checks(RunRecord(SUMMARY, line, 1000, SETTINGS, shards=2)))
    failed = {name for name, c in checks.items() if not c.ok}
    assert failed == {"reconnect_100pct_s", "peak_accept_per_s", "haproxy_5xx_beyond_shed"}
    assert checks["reconnect_100pct_s"].measured is None
    assert checks["haproxy_5xx_beyond_shed"].measured == 50


def test_a_storm_without_a_kill_measures_nothing() -> None:
    line = Timeline()
    line.add(1.0, fleet(10, 10), {})
    checks = by_name(storm_checks(RunRecord(SUMMARY, line, 10, SETTINGS, shards=2)))
    assert checks["reconnect_99pct_s"].measured is None
    assert not checks["connected_at_kill"].ok


def test_the_burst_is_judged_on_the_stream_rate_against_the_goal() -> None:
    checks = by_name(burst_checks(RunRecord(SUMMARY, Timeline(), 200)))
    assert (checks["alerts_per_s_stored"].measured, checks["alerts_per_s_stored"].ok) == (
        3800,
        False,
    )
    assert checks["alert_p99_ms"].ok
    assert checks["alert_p50_ms"].measured == 12
    lowered = burst_checks(
        RunRecord(SUMMARY, Timeline(), 200, overrides={"alerts_per_s_stored": 3000})
    )
    assert all(check.ok for check in lowered)


def test_a_lost_or_duplicated_alert_fails_every_scenario() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["alerts"].update(lost=1, duplicated=2)
    for checks in (burst_checks, soak_checks, day_checks):
        failed = {c.name for c in checks(RunRecord(summary, Timeline(), 1000)) if not c.ok}
        assert {"alerts_lost", "alerts_duplicated"} <= failed


def test_soak_blackhole_deaths_must_be_keepalive_reaps() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["drops"] = {"net_blackhole (reset)": 6, "net_blackhole (eof)": 2, "net_drop": 5}
    line = Timeline()
    figures = {"connections": 500.0, "connects": 500.0, "shed": 0.0, "reaped": 4.0}
    line.add(1.0, fleet(1000, 1000), {}, {"shard-a": figures, "shard-b": figures})
    checks = by_name(soak_checks(RunRecord(summary, line, 1000, SETTINGS, shards=2)))
    assert checks["blackhole_deaths_not_reaped"].measured == 0  # 8 deaths, 8 reaps
    assert checks["ping_p99_ms"].measured == 240
    assert all(c.ok for c in checks.values())
    summary["drops"]["net_blackhole (reset)"] = 9
    checks = by_name(soak_checks(RunRecord(summary, line, 1000, SETTINGS, shards=2)))
    assert checks["blackhole_deaths_not_reaped"].measured == 3
    assert not checks["blackhole_deaths_not_reaped"].ok


def a_day() -> dict[str, Any]:
    summary = copy.deepcopy(SUMMARY)
    summary["operator"] = {"actions": 20, "failed": 1}
    summary["rollout"] = {"failures_without_reason": 0}
    return summary


def test_a_day_tolerates_a_few_unexpected_drops_but_not_a_thin_fleet() -> None:
    summary = a_day()
    summary["unexpected_drops"] = 10
    assert all(c.ok for c in day_checks(RunRecord(summary, Timeline(), 1000)))
    summary["gateways"]["peak_connected"] = 900
    failed = [c.name for c in day_checks(RunRecord(summary, Timeline(), 1000)) if not c.ok]
    assert failed == ["peak_connected"]


def test_a_day_needs_its_operator_to_get_answers() -> None:
    summary = a_day()
    summary["operator"] = {"actions": 20, "failed": 6}
    summary["rollout"] = {"failures_without_reason": 1}
    checks = by_name(day_checks(RunRecord(summary, Timeline(), 1000)))
    assert (checks["operator_failed_pct"].measured, checks["operator_failed_pct"].ok) == (30, False)
    assert not checks["rollout_failures_without_reason"].ok
    summary["operator"] = {"actions": 0, "failed": 0}  # no operator: nothing was proven
    assert not by_name(day_checks(RunRecord(summary, Timeline(), 1000)))["operator_failed_pct"].ok


ROLLOUT = {
    "total": 100, "counts": {"success": 90, "failure": 10}, "max_concurrent": 10,
    "completion_s": 95.0, "peak_in_flight": 10, "gateways_peak_updating": 9,
    "failures_without_reason": 0, "failures_by_devices": 10,
}  # fmt: skip


def rollout_record(rollout: dict[str, Any] | None, gateway_failures: int = 10) -> RunRecord:
    summary = {**SUMMARY, "rollout": rollout, "updates": {"failure": gateway_failures}}
    return RunRecord(summary, Timeline(), users=100)


def test_a_rollout_within_its_limits_with_every_failure_explained_passes() -> None:
    checks = by_name(rollout_checks(rollout_record(ROLLOUT)))
    assert all(check.ok for check in checks.values()), checks
    assert checks["rollout_peak_in_flight"].threshold == 10


def test_a_rollout_over_its_limits_or_with_unexplained_failures_fails() -> None:
    rollout = {**ROLLOUT, "peak_in_flight": 11, "failures_without_reason": 2,
               "counts": {"success": 85, "failure": 10}}  # fmt: skip
    checks = by_name(rollout_checks(rollout_record(rollout, gateway_failures=12)))
    assert not checks["rollout_peak_in_flight"].ok
    assert not checks["failures_without_reason"].ok
    assert (checks["failures_unmatched"].measured, checks["failures_unmatched"].ok) == (2, False)
    assert (checks["rollout_devices_unfinished"].measured, checks["gateways_peak_updating"].ok) == (
        5,
        True,
    )


def test_a_rollout_that_never_started_measures_nothing() -> None:
    fleet_wide = {check.name for check in fleet_checks(rollout_record(None))}
    checks = [c for c in rollout_checks(rollout_record(None)) if c.name not in fleet_wide]
    assert all(check.measured is None and not check.ok for check in checks)


def a_remote_access() -> dict[str, Any]:
    first_byte = {"count": 40, "p50": 700, "p95": 4000, "p99": 5500, "max": 5600}
    latency = {**SUMMARY["latency_ms"], "remote first byte": first_byte}
    return {"remote": {"streams": 40, "failed": 2, "corrupt": 0}, "latency_ms": latency}


def test_remote_access_passes_with_a_few_lost_streams_but_never_a_corrupt_one() -> None:
    summary = {**copy.deepcopy(SUMMARY), **a_remote_access()}
    judged = by_name(remote_checks(RunRecord(summary, Timeline(), 1000)))
    assert all(check.ok for check in judged.values())
    assert judged["stream_success_pct"].measured == 95
    summary["remote"] = {"streams": 40, "failed": 8, "corrupt": 1}
    judged = by_name(remote_checks(RunRecord(summary, Timeline(), 1000)))
    failed = sorted(name for name, check in judged.items() if not check.ok)
    assert failed == ["stream_success_pct", "streams_corrupt"]


def test_remote_access_without_streams_or_slow_first_bytes_fails() -> None:
    summary = {**copy.deepcopy(SUMMARY), "remote": {"streams": 0, "failed": 0, "corrupt": 0}}
    judged = by_name(remote_checks(RunRecord(summary, Timeline(), 1000)))
    assert not judged["stream_success_pct"].ok  # nothing was proven
    assert not judged["streams_corrupt"].ok
    assert not judged["first_byte_p99_ms"].ok
    summary = {**copy.deepcopy(SUMMARY), **a_remote_access()}
    summary["latency_ms"]["remote first byte"]["p99"] = 12_000
    assert not by_name(remote_checks(RunRecord(summary, Timeline(), 1000)))["first_byte_p99_ms"].ok


# --- every scenario's checks ----------------------------------------------------------------

SCENARIOS = (storm_checks, burst_checks, soak_checks, day_checks, rollout_checks, remote_checks)


def a_healthy_run() -> dict[str, Any]:
    """A summary every scenario's checks can read (a day's operator, a rollout's figures)."""
    return {**a_day(), "rollout": ROLLOUT, "updates": {"failure": 10}, **a_remote_access()}


def a_broken_shards_run() -> dict[str, Any]:
    """The review's run: most alerts never stored, most new connections refused."""
    summary = a_healthy_run()
    summary["alerts"] = {"sent": 1554, "acked": 592, "pending": 962, "stored": 592,
                         "duplicated": 0, "lost": 0}  # fmt: skip
    summary["gateways"] = {**SUMMARY["gateways"], "connects": 1601}
    summary["connect_failures"] = {"http 503": 2474}
    return summary


def test_a_run_that_stored_few_alerts_and_refused_most_tries_fails_every_scenario() -> None:
    for checks in SCENARIOS:
        judged = by_name(checks(RunRecord(a_broken_shards_run(), Timeline(), 1000)))
        assert judged["alerts_unstored_pct"].measured == 61.905  # 962 of 1,554
        assert judged["connect_failed_pct"].measured == 60.712  # 2,474 of 4,075 tries
        assert not judged["alerts_unstored_pct"].ok
        assert not judged["connect_failed_pct"].ok


def test_a_healthy_run_passes_the_fleet_checks_of_every_scenario() -> None:
    for checks in SCENARIOS:
        judged = by_name(checks(RunRecord(a_healthy_run(), Timeline(), 1000)))
        assert judged["alerts_unstored_pct"].ok
        assert judged["connect_failed_pct"].ok


def test_the_fleet_checks_bounds() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["alerts"].update(sent=995, refused=5, stored=990)  # 10 of 1,000 raised unstored
    summary["connect_failures"] = {"tcp": 70, "net_offline": 400, "net_blackhole (eof)": 30}
    judged = by_name(fleet_checks(RunRecord(summary, Timeline(), 1000)))
    assert (judged["alerts_unstored_pct"].measured, judged["alerts_unstored_pct"].ok) == (1, True)
    # The network model's own faults are tries too, but not the backend's failures.
    assert (judged["connect_failed_pct"].measured, judged["connect_failed_pct"].ok) == (3.5, True)
    summary["connect_failures"]["upgrade"] = 40  # 110 of 2,040
    assert not by_name(fleet_checks(RunRecord(summary, Timeline(), 1000)))["connect_failed_pct"].ok


def test_without_the_stream_the_unacked_alerts_count_as_unstored() -> None:
    summary = copy.deepcopy(SUMMARY)
    del summary["alerts"]["stored"]  # --host: the stream is not read back
    summary["alerts"].update(sent=400, pending=8)
    judged = by_name(fleet_checks(RunRecord(summary, Timeline(), 1000)))
    assert (judged["alerts_unstored_pct"].measured, judged["alerts_unstored_pct"].ok) == (2, False)


def test_a_run_without_alerts_or_tries() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["alerts"] = {"sent": 0, "pending": 0}
    summary["gateways"] = {**SUMMARY["gateways"], "connects": 0}
    summary["connect_failures"] = {}
    judged = by_name(fleet_checks(RunRecord(summary, Timeline(), 1000)))
    assert judged["alerts_unstored_pct"].ok  # nothing raised, nothing unstored
    assert judged["connect_failed_pct"].measured is None  # no try proves nothing
    assert not judged["connect_failed_pct"].ok
    overridden = RunRecord(SUMMARY, Timeline(), 1000, overrides={"connect_failed_pct": 0})
    assert not by_name(fleet_checks(overridden))["connect_failed_pct"].ok


def test_a_failed_count_of_bad_events_cannot_pass_any_more() -> None:
    summary = {**a_day(), "unexpected_drops": 50}
    record = RunRecord(summary, Timeline(), 1000)
    judged = by_name(day_checks(record))
    assert not judged["unexpected_drops"].ok
    assert cannot_pass(judged["unexpected_drops"], record)
    assert not cannot_pass(judged["peak_connected"], record)  # passing


def test_a_failing_share_or_latency_may_still_recover() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["connect_failures"] = {"http 503": 600}  # 600 of 2,100 tries, but some connected
    summary["latency_ms"]["ping"]["p99"] = 5000
    record = RunRecord(summary, Timeline(), 1000)
    judged = by_name(soak_checks(record))
    assert not judged["connect_failed_pct"].ok
    assert not cannot_pass(judged["connect_failed_pct"], record)
    assert not judged["ping_p99_ms"].ok
    assert not cannot_pass(judged["ping_p99_ms"], record)


def test_tries_that_all_failed_are_hopeless_once_there_are_enough() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["gateways"] = {"connected": 0, "peak_connected": 0, "connects": 0}
    summary["connect_failures"] = {"http 401": HOPELESS_TRIES - 1}
    record = RunRecord(summary, Timeline(), 1000)
    failed = by_name(fleet_checks(record))["connect_failed_pct"]
    assert not failed.ok
    assert not cannot_pass(failed, record)  # too few tries to tell yet
    summary["connect_failures"] = {"http 401": HOPELESS_TRIES}
    record = RunRecord(summary, Timeline(), 1000)
    assert cannot_pass(by_name(fleet_checks(record))["connect_failed_pct"], record)


def test_an_unmeasured_check_is_never_hopeless() -> None:
    record = RunRecord(copy.deepcopy(SUMMARY), Timeline(), 1000)
    unmeasured = by_name(storm_checks(record))["reconnect_99pct_s"]  # no kill yet
    assert unmeasured.measured is None
    assert not cannot_pass(unmeasured, record)


def test_alerts_held_by_a_link_that_is_down_count_neither_way() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["alerts"].update(sent=31, stored=30, pending=1)  # 1 of 31 unstored: 3.2 %
    assert not by_name(fleet_checks(RunRecord(summary, Timeline(), 300)))["alerts_unstored_pct"].ok
    summary["alerts"]["pending_link_down"] = 1  # its gateway was in a blackhole at the end
    judged = by_name(fleet_checks(RunRecord(summary, Timeline(), 300)))["alerts_unstored_pct"]
    assert (judged.measured, judged.ok) == (0, True)
    del summary["alerts"]["stored"]  # --host: pending ones count, but not those
    judged = by_name(fleet_checks(RunRecord(summary, Timeline(), 300)))["alerts_unstored_pct"]
    assert (judged.measured, judged.ok) == (0, True)
