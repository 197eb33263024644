"""``fleet up`` / ``status`` / ``down`` as a user runs them: real processes, a tmp run dir."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from backend.bus.auth import issue_device_token
from backend.devstack import process
from backend.protocol.http import DEVICE_PATH
from tests.support import wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers

FLEET = [sys.executable, "-m", "backend.cli"]


def fleet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEET, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def status(run_dir: Path) -> dict[str, Any]:
    result = fleet("status", "--run-dir", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_for_stack(up: subprocess.Popen[str], run_dir: Path) -> None:
    wait_until(lambda: (run_dir / "stack.json").exists() or up.poll() is not None, 60, "the stack")
    assert up.poll() is None, up.communicate()


def test_up_status_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "stack"  # as fleet up's default, runs/ below the cwd
    up = subprocess.Popen(
        [*FLEET, "up", "--shards", "2", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_stack(up, run_dir)
        assert (tmp_path / "runs" / "current").read_text().strip() == str(run_dir.resolve())
        report = status(run_dir)
        assert [s["healthz"] for s in report["shards"]] == ["200", "200"]
        [haproxy] = report["haproxies"]
        assert haproxy["servers_total"] > 0
        assert haproxy["servers_up"] == haproxy["servers_total"]
        state = json.loads((run_dir / "stack.json").read_text())
        assert state["nats_urls"] == [state["nats_url"]]  # one NATS server by default
        issued = fleet("token", "gw-1", cwd=tmp_path)  # no --jwt-secret: the stack's
        assert issued.returncode == 0, issued.stderr
        token = issued.stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        with connect(state["public_url"] + DEVICE_PATH, additional_headers=headers) as ws:
            ws.recv(timeout=5)  # the shard's "open": it counts the device by then
            report = status(run_dir)
        assert sum(s["connections"] for s in report["shards"]) == 1
        assert report["haproxies"][0]["current_sessions"] == 1
        children = process.descendants(up.pid)
        assert len(children) == 1 + 2 + 1  # NATS, shards, HAProxy
        down = fleet("down", "--run-dir", str(run_dir))
        assert down.returncode == 0, down.stderr
        assert up.poll() == 0
    finally:
        up.kill()  # only if an assertion failed while it ran
        out, _ = up.communicate(timeout=30)
    assert "fleet down stops it" in out
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert not (tmp_path / "runs" / "current").exists()


def test_status_and_down_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    for command in ("status", "down"):
        result = fleet(command, cwd=tmp_path)
        assert result.returncode == 1
        assert "no local stack running: start one with fleet up" in result.stderr


def test_up_with_a_taken_port_fails_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = fleet("up", "--port", port, "--run-dir", str(tmp_path / "stack"))
    assert result.returncode == 1
    assert f"port {port} is not free" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack").exists()


def test_up_with_too_few_shards_for_the_connections_fails_before_starting(tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    result = fleet("up", "--connections", "100000", "--shards", "2", "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert "100000 connections need at least" in result.stderr
    assert "raise --shards" in result.stderr
    assert not run_dir.exists()
    result = fleet("up", "--haproxies", "several", "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert "expected a number or auto, not 'several'" in result.stderr
    result = fleet("up", "--nats-nodes", "2", "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert "nats_nodes must be 1 or 3 (a cluster), not 2" in result.stderr
    assert not run_dir.exists()


def test_drain_moves_a_shards_devices_to_the_others(tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    up = subprocess.Popen(
        [*FLEET, "up", "--shards", "2", "--haproxies", "2", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_stack(up, run_dir)
        state = json.loads((run_dir / "stack.json").read_text())
        drained = fleet("drain", "shard-a", "--run-dir", str(run_dir))
        assert drained.returncode == 0, drained.stderr
        assert "shard-a drained: out of 2 HAProxy processes, exited" in drained.stdout
        report = status(run_dir)
        assert [s["healthz"] for s in report["shards"]] == ["down", "200"]
        token = issue_device_token("gw-1", state["jwt_secret"])
        headers = {"Authorization": f"Bearer {token}"}
        with connect(state["public_url"] + DEVICE_PATH, additional_headers=headers) as ws:
            ws.recv(timeout=5)
            report = status(run_dir)
        assert [s["connections"] for s in report["shards"]] == [None, 1]
        again = fleet("drain", "shard-a", "--run-dir", str(run_dir))
        assert again.returncode == 1
        assert "shard-a is not running (drained already?)" in again.stderr
        unknown = fleet("drain", "shard-z", "--run-dir", str(run_dir))
        assert "no shard 'shard-z': the stack runs shard-a, shard-b" in unknown.stderr
        assert fleet("down", "--run-dir", str(run_dir)).returncode == 0
        assert up.wait(timeout=30) == 0
    finally:
        up.kill()
        up.communicate(timeout=30)
