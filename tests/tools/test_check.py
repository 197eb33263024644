"""The CI regression gate: ``fleet check --baseline <file> <run-dir>``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backend.cli import main
from backend.tools.check import Row, compare, figure

REPO = Path(__file__).resolve().parents[2]

SUMMARY: dict[str, Any] = {
    "gateways": {"connected": 0, "peak_connected": 2000, "connects": 3010},
    "alerts": {"acked": 620, "stored": 620, "lost": 0, "duplicated": 0, "stored_per_s": 9.8},
    "latency_ms": {"connect: handshake": {"count": 3010, "p50": 4, "p99": 41}},
    "verdict": {"failures": [], "ok": True},
    "verdicts": [
        {"name": "reconnect_99pct_s", "measured": 6.1, "threshold": 30, "unit": "s",
         "ok": True, "rule": "<="},
        {"name": "reconnect_100pct_s", "measured": None, "threshold": 60, "unit": "s",
         "ok": False, "rule": "<="},
    ],
}  # fmt: skip


def run_dir(tmp_path: Path, summary: dict[str, Any] = SUMMARY) -> Path:
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def baseline(tmp_path: Path, metrics: dict[str, Any]) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"metrics": metrics}))
    return path


def test_figures_are_found_by_path() -> None:
    assert figure(SUMMARY, "gateways/peak_connected") == 2000
    assert figure(SUMMARY, "latency_ms/connect: handshake/p99") == 41
    assert figure(SUMMARY, "verdicts/reconnect_99pct_s") == 6.1
    assert figure(SUMMARY, "verdict/ok") == 1
    assert figure(SUMMARY, "verdicts/reconnect_100pct_s") is None  # not measured
    assert figure(SUMMARY, "verdicts/nonexistent") is None
    assert figure(SUMMARY, "gateways/peak_connected/more") is None


def test_each_bound_is_a_row() -> None:
    rows = compare({"metrics": {"gateways/peak_connected": {"min": 1980, "max": 2000}}}, SUMMARY)
    assert rows == [
        Row("gateways/peak_connected", ">=", 1980, 2000),
        Row("gateways/peak_connected", "<=", 2000, 2000),
    ]
    assert all(row.ok for row in rows)
    with pytest.raises(ValueError, match="unknown bound"):
        compare({"metrics": {"alerts/lost": {"exactly": 0}}}, SUMMARY)


def test_the_committed_baseline_reads_figures_the_summary_has() -> None:
    committed = json.loads((REPO / "scenarios/baselines/ci.json").read_text())
    paths = committed["metrics"].keys()
    assert {"gateways/peak_connected", "alerts/lost", "verdicts/reconnect_99pct_s"} <= paths
    # The fleet checks every run has gate CI too, at the storm's own thresholds.
    assert {"verdicts/alerts_unstored_pct", "verdicts/connect_failed_pct"} <= paths
    assert all(set(bounds) <= {"min", "max"} for bounds in committed["metrics"].values())


def test_a_run_within_the_baseline_passes(tmp_path: Path) -> None:
    limits = {
        "gateways/peak_connected": {"min": 1980},
        "verdicts/reconnect_99pct_s": {"max": 30},
        "alerts/lost": {"max": 0},
        "verdict/ok": {"min": 1},
    }
    result = CliRunner().invoke(
        main, ["check", "--baseline", str(baseline(tmp_path, limits)), str(run_dir(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["metric", "baseline", "measured", "status"]
    assert lines[2].split() == ["verdicts/reconnect_99pct_s", "<=", "30", "6.1", "ok"]
    assert lines[-1] == "no regression"


def test_a_regression_fails_with_a_readable_table(tmp_path: Path) -> None:
    limits = {
        "gateways/peak_connected": {"min": 1980},
        "verdicts/reconnect_99pct_s": {"max": 5},  # measured 6.1
        "verdicts/reconnect_100pct_s": {"max": 60},  # not measured
        "alerts/stored_per_s": {"min": 10},  # 9.8
    }
    result = CliRunner().invoke(
        main, ["check", "--baseline", str(baseline(tmp_path, limits)), str(run_dir(tmp_path))]
    )
    assert result.exit_code == 1
    status = {line.split()[0]: line.split()[-1] for line in result.output.splitlines()[1:-1]}
    assert status == {
        "gateways/peak_connected": "ok",
        "verdicts/reconnect_99pct_s": "REGRESSION",
        "verdicts/reconnect_100pct_s": "REGRESSION",
        "alerts/stored_per_s": "REGRESSION",
    }
    assert "missing" in result.output
    assert result.output.splitlines()[-1] == "REGRESSION against the baseline"


def test_a_run_without_a_summary_is_an_error(tmp_path: Path) -> None:
    limits = baseline(tmp_path, {"alerts/lost": {"max": 0}})
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["check", "--baseline", str(limits), str(empty)])
    assert result.exit_code == 1
    assert "summary.json" in result.output
