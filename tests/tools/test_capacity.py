"""The capacity model on a hold run's figures: the arithmetic, the limits it respects, and
``fleet capacity`` as a user runs it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backend.shard.config import default_max_connections
from backend.tools import capacity
from haproxy.config import max_maxconn

# The shape bench/hold.py writes; round figures so the expected plans are easy to check.
RUN: dict[str, Any] = {
    "command": "python bench/hold.py --connections 50000",
    "held_min": 50_000,
    "tiers": {
        "simulator": {"processes": 4, "rss_idle_mib": 400.0, "kib_per_connection": 20.0,
                      "cpu_idle_cores": 0.04, "cpu_cores_per_10k": 0.6},
        "haproxy": {"processes": 6, "rss_idle_mib": 60.0, "kib_per_connection": 5.0,
                    "cpu_idle_cores": 0.0, "cpu_cores_per_10k": 0.05},
        "shards": {"processes": 3, "rss_idle_mib": 300.0, "kib_per_connection": 3.0,
                   "cpu_idle_cores": 0.03, "cpu_cores_per_10k": 0.1},
        "nats": {"processes": 1, "rss_idle_mib": 20.0, "kib_per_connection": 0.5,
                 "cpu_idle_cores": 0.01, "cpu_cores_per_10k": 0.02},
    },
}  # fmt: skip


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    path = tmp_path / "hold.json"
    path.write_text(json.dumps(RUN))
    return path


def plans_by_tier(devices: int, run_file: Path, **assumed: Any) -> dict[str, capacity.TierPlan]:
    costs, _run = capacity.load_costs(run_file)
    plans = capacity.plan(costs, capacity.Assumptions(devices, **assumed))
    return {p.tier: p for p in plans}


def test_costs_are_per_process() -> None:
    cost = capacity.TierCost.from_run(RUN["tiers"]["shards"])
    assert cost == capacity.TierCost(100.0, 3.0, 0.01, 0.1)


def test_a_process_is_planned_within_its_file_limit_or_its_core(run_file: Path) -> None:
    plans = plans_by_tier(10_000_000, run_file)
    shard_limit = int(default_max_connections() * 0.6)
    assert plans["shards"].connections_per_process <= shard_limit
    assert plans["shards"].processes == math.ceil(10_000_000 / shard_limit)
    haproxy_limit = int(max_maxconn() * 0.6)
    assert plans["haproxy"].processes == math.ceil(10_000_000 / haproxy_limit)
    # A Locust worker at 0.6 cores per 10k hits its core before its file limit.
    simulator_limit = int((0.6 - 0.01) / 0.6 * 10_000)
    assert simulator_limit < default_max_connections() * 0.6
    assert plans["simulator"].processes == math.ceil(10_000_000 / simulator_limit)


def test_a_tier_that_measured_no_cpu_is_bound_by_its_files_alone() -> None:
    idle = capacity.TierCost(idle_mib=10.0, kib_per_connection=1.0, idle_cores=0.0,
                             cores_per_10k=0.0)  # fmt: skip
    assert idle.per_process_limit(20_000, 0.5) == 10_000


def test_memory_and_cores_add_up(run_file: Path) -> None:
    shards = plans_by_tier(1_000_000, run_file)["shards"]
    fixed = shards.processes * 100 * 2**20
    per_connection = (3 + capacity.KERNEL_KIB_PER_SOCKET) * 1024  # its RSS and its socket
    expected = (fixed + shards.processes * shards.connections_per_process * per_connection) / 2**30
    assert shards.memory_gib == pytest.approx(expected)
    assert shards.cores == pytest.approx(shards.processes * 0.01 + 100 * 0.1)


def test_nats_keeps_three_nodes_until_its_cpu_needs_more(run_file: Path) -> None:
    assert plans_by_tier(100_000, run_file)["nats"].processes == 3
    big = plans_by_tier(100_000_000, run_file, nats_cores_per_node=4)["nats"]
    assert big.processes == math.ceil((0.01 + 10_000 * 0.02) / (4 * 0.6))


def test_bad_assumptions_and_runs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="utilisation must be in"):
        capacity.Assumptions(10, utilisation=1.5)
    with pytest.raises(ValueError, match=r"no hold run at .*run bench/hold\.py"):
        capacity.load_costs(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"not a hold\.json"):
        capacity.load_costs(tmp_path / "bad.json")


def test_the_curve_grows_with_the_fleet(run_file: Path) -> None:
    costs, _run = capacity.load_costs(run_file)
    curve = capacity.cost_curve(costs, capacity.Assumptions(1_000_000))
    assert [point[0] for point in curve] == [10**4, 10**5, 10**6, 10**7]
    backend_hosts = [point[1] for point in curve]
    assert backend_hosts == sorted(backend_hosts)
    assert backend_hosts[-1] > backend_hosts[0]
    svg = capacity.curve_svg(curve)
    assert svg.startswith("<svg")
    assert svg.count("<polyline") == 3


@pytest.mark.integration
def test_fleet_capacity_prints_a_sizing_table(run_file: Path, tmp_path: Path) -> None:
    plot = tmp_path / "curve.svg"
    argv = [sys.executable, "-m", "backend.cli", "capacity", "--devices", "10000000",
            "--from", str(run_file.parent), "--plot", str(plot)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "10,000,000 devices, from the hold run: python bench/hold.py" in result.stdout
    for tier in ("shards", "haproxy", "nats", "simulator"):
        assert f"\n{tier} " in result.stdout
    assert "backend (shards + HAProxy)" in result.stdout
    assert plot.read_text().startswith("<svg")
    as_json = subprocess.run([*argv[:-2], "--json"], capture_output=True, text=True, timeout=60)
    assert {p["tier"] for p in json.loads(as_json.stdout)} == {
        "shards", "haproxy", "nats", "simulator",
    }  # fmt: skip


def test_without_from_it_reads_the_committed_hold_run() -> None:
    costs, run = capacity.load_costs()
    repo = Path(__file__).resolve().parents[2]
    assert repo / "bench" / "results" / "hold.json" == capacity.MEASURED
    assert run["held_min"] >= 100_000
    assert set(costs) == {"simulator", "haproxy", "shards", "nats"}
