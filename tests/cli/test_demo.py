"""``fleet demo`` (the README's run command) end to end, as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.devstack import process

pytestmark = pytest.mark.integration  # every test here runs real servers

FLEET = [sys.executable, "-m", "backend.cli"]


def test_demo_prints_fleet_figures_and_writes_the_summary(tmp_path: Path) -> None:
    run = subprocess.run(
        [*FLEET, "demo", "--gateways", "20", "--spawn-rate", "20", "--duration", "6s",
         "--alerts-per-hour", "3600", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fleet summary" in run.stdout
    assert "fleet map: http://127.0.0.1:" in run.stderr  # to watch the run on
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gateways"]["peak_connected"] == 20
    assert summary["alerts"]["acked"] > 0
    assert summary["alerts"]["lost"] == 0
    assert (tmp_path / "shard-a.log").exists()


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*FLEET, "demo", "--gateways", "10", "--duration", "5m", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(process.descendants(proc.pid)) < 5:  # locust, nats-server, two shards, HAProxy
        assert time.monotonic() < deadline, "the stack did not start"
        time.sleep(0.2)
    descendants = process.descendants(proc.pid)
    time.sleep(6)  # past HAProxy's first health checks: the run is under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "fleet summary" in out, err[-3000:]
    # An interrupted run is no pass, whatever it measured until then.
    assert proc.returncode == 1, out[-3000:]
    assert "verdict       FAILED" in out
    assert "interrupted after" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"]["failures"][-1].startswith("interrupted after")
    assert summary["unexpected_drops"] == 0  # users stopped before the stack
    assert all(not Path(f"/proc/{pid}").exists() for pid in descendants)
