"""The SRE scenarios end to end: small real Locust runs on the embedded stack, in child
processes (the plugin patches with gevent), checked through their verdicts and run records."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest

from tests.simulator.support import run_locust, summary_of

pytestmark = pytest.mark.integration  # every test here runs real servers

RECORD_FILES = (
    "summary.json", "verdicts.json", "timeline.json", "report.html", "locust.html",
    "locust_stats.csv", "locust_failures.csv", "locust_exceptions.csv",
)  # fmt: skip


def test_a_reconnect_storm_is_judged_and_leaves_a_full_run_record(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/reconnect_storm.py", "--headless", "-u", "100", "-r", "100"),
        *("--kill-after", "2", "--recovery-time", "25", "-t", "50s"),
        timeout=100,
    )
    assert "reconnect storm: killed shard-a" in result.stderr
    summary = summary_of(tmp_path)
    checks = {check["name"]: check for check in summary["verdicts"]}
    assert set(checks) == {
        "connected_at_kill", "reconnect_99pct_s", "reconnect_100pct_s", "peak_accept_per_s",
        "haproxy_5xx_beyond_shed", "alerts_lost", "alerts_duplicated", "alerts_unstored_pct",
        "connect_failed_pct",
    }  # fmt: skip
    # The checks decide the exit code, not the drops the kill provoked.
    assert summary["unexpected_drops"] > 0
    assert result.returncode == (0 if summary["verdict"]["ok"] else 1), result.stderr[-3000:]
    assert checks["connected_at_kill"]["measured"] == 100
    assert 0 < checks["reconnect_99pct_s"]["measured"] <= checks["reconnect_100pct_s"]["measured"]
    assert checks["haproxy_5xx_beyond_shed"]["measured"] is not None
    assert checks["alerts_lost"]["ok"]
    assert checks["alerts_duplicated"]["ok"]
    assert "reconnect_99pct_s" in result.stdout
    assert "threshold" in result.stdout
    for name in RECORD_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "verdicts.json").read_text()) == summary["verdicts"]
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert "shard_killed" in timeline["marks"]
    assert timeline["samples"][0]["shards"].keys() == {"shard-a", "shard-b"}
    assert timeline["samples"][-1]["shards"]["shard-a"] is None  # killed
    with (tmp_path / "locust_stats.csv").open() as file:
        names = {row["Name"] for row in csv.DictReader(file)}
    assert {"connect: handshake", "reconnect", "Aggregated"} <= names
    report = (tmp_path / "report.html").read_text()
    assert report.count("<svg") >= 6  # the kill's drops by cause; 503s when some were shed
    assert "ReconnectStorm: " in report
    causes = timeline["samples"][-1]["drops"]  # the kill's
    assert causes
    assert all(f">{html.escape(cause)}</text>" in report for cause in causes)  # in a legend


def test_an_update_rollout_keeps_its_limit_and_explains_its_failures(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/update_rollout.py", "--headless", "-u", "40", "-r", "40", "-t", "90s"),
        *("--rollout-after", "1", "--rollout-max-concurrent", "8", "--rollout-rate", "20"),
        *("--threshold", "rollout_completion_s=80"),
        timeout=130,
    )
    summary = summary_of(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checks = {check["name"]: check for check in summary["verdicts"]}
    assert all(check["ok"] for check in checks.values()), checks
    rollout = summary["rollout"]
    assert (rollout["state"], rollout["total"]) == ("finished", 40)
    assert 0 < rollout["peak_in_flight"] <= 8
    # 10% of installs fail, each with the reason the gateway gave.
    assert rollout["counts"]["failure"] == summary["updates"].get("failure", 0)
    assert all(entry["reason"] for entry in rollout["failed"])
    assert rollout["counts"]["success"] == summary["updates"]["success"] > 0
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert {"rollout_created", "rollout_finished"} <= timeline["marks"].keys()
    assert "Update rollout" in (tmp_path / "report.html").read_text()


def test_a_day_in_the_life_has_an_operator_and_a_rollout(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/day_in_the_life.py", "--headless", "-u", "60", "-r", "60", "-t", "40s"),
        timeout=90,
    )
    summary = summary_of(tmp_path)
    checks = {check["name"]: check for check in summary["verdicts"]}
    assert checks["operator_failed_pct"]["measured"] is not None
    assert checks["rollout_failures_without_reason"]["ok"]
    assert summary["operator"]["actions"] >= 4  # from 8 s on, every 5 s
    assert {"operator command", "operator shell"} <= summary["latency_ms"].keys()
    assert summary["rollout"]["total"] == 12  # a fifth of the fleet
    assert result.returncode == (0 if summary["verdict"]["ok"] else 1), result.stderr[-3000:]


def test_remote_access_fetches_pages_and_copies_files_intact(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/remote_access.py", "--headless", "-u", "30", "-r", "30", "-t", "40s"),
        timeout=90,
    )
    summary = summary_of(tmp_path)
    assert summary["remote"]["streams"] >= 10  # three operators from 4 s on
    assert summary["remote"]["corrupt"] == 0
    assert {"remote page", "remote first byte", "remote copy"} <= summary["latency_ms"].keys()
    assert result.returncode == (0 if summary["verdict"]["ok"] else 1), result.stderr[-3000:]


def test_an_alert_burst_counts_what_the_stream_stored_and_misses_the_goal(
    tmp_path: Path,
) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/alert_burst.py", "--headless", "-u", "20", "-r", "20", "-t", "8s"),
        *("--alert-window", "4", "--threshold", "alert_p99_ms=60000"),
    )
    summary = summary_of(tmp_path)
    alerts = summary["alerts"]
    assert alerts["stored"] >= alerts["acked"] > 20 * 4  # each gateway refilled its window
    assert (alerts["lost"], alerts["duplicated"]) == (0, 0)
    checks = {check["name"]: check for check in summary["verdicts"]}
    assert checks["alert_p99_ms"]["threshold"] == 60000  # overridden
    rate = checks["alerts_per_s_stored"]
    assert rate["measured"] == alerts["stored_per_s"] > 1
    # Far below the 20,000/s goal on a test machine: a failed check fails the run.
    assert (rate["threshold"], rate["ok"]) == (20000, False)
    assert "alerts_per_s_stored: measured" in result.stdout
    assert result.returncode == 1
    assert summary["verdict"]["ok"] is False


def test_the_storm_refuses_an_external_backend(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", "scenarios/reconnect_storm.py", "--headless", "-u", "1", "-t", "2s"),
        *("--host", "ws://127.0.0.1:9", "--jwt-secret", "x"),
    )
    assert result.returncode != 0
    assert "needs the embedded stack" in result.stderr
