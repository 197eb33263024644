"""Capacity planning: size shards, HAProxy processes, NATS nodes and load generators for a
fleet from per-connection costs measured in a hold run (``bench/hold.py``'s ``hold.json``).

The model (docs/capacity.md): every tier's memory grows linearly with the connections it
holds (its idle size plus the measured bytes per connection) and so does its CPU while
holding (the measured cores per 10k connections on top of its idle CPU). A process holds at
most its open-file limit's worth of connections and uses at most one core (shards, HAProxy
processes and Locust workers are single-threaded). Each is sized to ``utilisation`` of its
limits, so the planned fleet leaves headroom for bursts, reconnect storms and a lost host.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.shard.config import FD_RESERVE, default_max_connections
from haproxy.config import max_maxconn

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO / "bench" / "results" / "hold.json"
"""The committed proof run: the default costs."""
GIB = 2**30
KERNEL_KIB_PER_SOCKET = 3.9
"""Kernel slab per established TCP socket (measured on Linux 6, 15,000 idle sockets): not in
any process's RSS, but every host pays it for every socket it holds."""
SOCKETS_PER_CONNECTION = {"shards": 1, "haproxy": 2, "simulator": 1}


@dataclass(frozen=True)
class TierCost:
    """What one tier's process pays: fixed, and per open connection."""

    idle_mib: float
    kib_per_connection: float
    idle_cores: float
    cores_per_10k: float

    @classmethod
    def from_run(cls, tier: dict[str, Any]) -> TierCost:
        per_process = max(1, tier["processes"])
        return cls(
            idle_mib=tier["rss_idle_mib"] / per_process,
            kib_per_connection=tier["kib_per_connection"],
            idle_cores=tier["cpu_idle_cores"] / per_process,
            cores_per_10k=max(0.0, tier["cpu_cores_per_10k"]),
        )

    def per_process_limit(self, fd_limit: int, utilisation: float) -> int:
        """Connections one process may plan to hold: within its open files and one core."""
        spare = utilisation - self.idle_cores
        by_cpu = spare / self.cores_per_10k * 10_000 if self.cores_per_10k > 0 else math.inf
        return max(1, int(min(fd_limit * utilisation, by_cpu)))


@dataclass(frozen=True)
class Assumptions:
    devices: int
    utilisation: float = 0.6
    """Share of each process's file limit and core the plan may use."""
    host_cores: int = 16
    host_memory_gib: int = 64
    nats_cores_per_node: int = 4
    nats_nodes_min: int = 3
    """A JetStream cluster with replicas 3 needs three nodes; more only for its CPU."""
    open_files: int = 0
    """Open files per process on the planned hosts; 0: this machine's limit. Raising it on
    real hosts means fewer, bigger processes."""

    def __post_init__(self) -> None:
        if self.devices <= 0:
            raise ValueError(f"devices must be positive, not {self.devices}")
        if not 0 < self.utilisation <= 1:
            raise ValueError(f"utilisation must be in (0, 1], not {self.utilisation}")


@dataclass(frozen=True)
class TierPlan:
    tier: str
    processes: int
    connections_per_process: int
    memory_gib: float
    cores: float


def load_costs(path: Path = MEASURED) -> tuple[dict[str, TierCost], dict[str, Any]]:
    """Per-tier costs of a hold run, and the run's own record (command, counts)."""
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no hold run at {path}: run bench/hold.py, or give --from") from None
    except ValueError:
        raise ValueError(f"{path} is not a hold.json written by bench/hold.py") from None
    return {name: TierCost.from_run(tier) for name, tier in run["tiers"].items()}, run


def plan_tier(tier: str, cost: TierCost, devices: int, limit: int) -> TierPlan:
    processes = math.ceil(devices / limit)
    per_process = math.ceil(devices / processes)
    kib = cost.kib_per_connection + SOCKETS_PER_CONNECTION[tier] * KERNEL_KIB_PER_SOCKET
    memory = processes * (cost.idle_mib * 2**20 + per_process * kib * 1024)
    cores = processes * cost.idle_cores + devices / 10_000 * cost.cores_per_10k
    return TierPlan(tier, processes, per_process, memory / GIB, cores)


def plan(costs: dict[str, TierCost], assumptions: Assumptions) -> list[TierPlan]:
    """One plan per tier for ``assumptions.devices`` connections."""
    devices, util = assumptions.devices, assumptions.utilisation
    sockets = assumptions.open_files or default_max_connections()
    proxied = assumptions.open_files // 2 if assumptions.open_files else max_maxconn()
    limits = {
        "shards": costs["shards"].per_process_limit(sockets, util),
        "haproxy": costs["haproxy"].per_process_limit(proxied, util),
        "simulator": costs["simulator"].per_process_limit(sockets, util),
    }
    plans = [plan_tier(tier, costs[tier], devices, limit) for tier, limit in limits.items()]
    nats = costs["nats"]
    nats_cores = nats.idle_cores + devices / 10_000 * nats.cores_per_10k
    nodes = max(assumptions.nats_nodes_min,
                math.ceil(nats_cores / (assumptions.nats_cores_per_node * util)))  # fmt: skip
    nats_memory = nodes * nats.idle_mib * 2**20 + devices * nats.kib_per_connection * 1024
    plans.append(TierPlan("nats", nodes, math.ceil(devices / nodes), nats_memory / GIB, nats_cores))
    return plans


def hosts_needed(plans: list[TierPlan], assumptions: Assumptions, tiers: set[str]) -> int:
    """Hosts of the assumed size for ``tiers``: by cores (at the utilisation) or by memory."""
    chosen = [p for p in plans if p.tier in tiers]
    by_cores = sum(p.cores for p in chosen) / (assumptions.host_cores * assumptions.utilisation)
    by_memory = sum(p.memory_gib for p in chosen) / (assumptions.host_memory_gib * 0.8)
    return max(1, math.ceil(max(by_cores, by_memory)))


def format_plan(plans: list[TierPlan], assumptions: Assumptions, run: dict[str, Any]) -> str:
    lines = [
        f"{assumptions.devices:,} devices, from the hold run: {run.get('command', '?')}",
        f"  measured at {run.get('held_min', 0):,} held connections; each process planned at "
        f"{assumptions.utilisation:.0%} of its open-file limit "
        f"({assumptions.open_files or default_max_connections() + FD_RESERVE:,}) and of one core",
        "",
        f"{'tier':<10}{'processes':>10}{'conns each':>12}{'memory':>10}{'cores':>8}",
    ]
    lines += [
        f"{p.tier:<10}{p.processes:>10,}{p.connections_per_process:>12,}"
        f"{p.memory_gib:>8.1f}Gi{p.cores:>8.1f}"
        for p in plans
    ]
    backend = hosts_needed(plans, assumptions, {"shards", "haproxy"})
    load = hosts_needed(plans, assumptions, {"simulator"})
    nats = next(p.processes for p in plans if p.tier == "nats")
    lines += [
        "",
        f"hosts of {assumptions.host_cores} cores / {assumptions.host_memory_gib} GiB: "
        f"{backend} backend (shards + HAProxy), {nats} NATS nodes "
        f"({assumptions.nats_cores_per_node} cores each), {load} load generators",
    ]
    return "\n".join(lines)


Curve = list[tuple[int, int, int, int]]


def cost_curve(costs: dict[str, TierCost], assumptions: Assumptions) -> Curve:
    """(devices, backend hosts, NATS nodes, load hosts) for fleets of 10k, 100k, ... up to ten
    times the planned one."""
    top = math.ceil(math.log10(assumptions.devices * 10))
    curve = []
    for devices in (10**n for n in range(4, max(top, 5) + 1)):
        at = dataclasses.replace(assumptions, devices=devices)
        plans = plan(costs, at)
        nats = next(p.processes for p in plans if p.tier == "nats")
        curve.append((devices, hosts_needed(plans, at, {"shards", "haproxy"}), nats,
                      hosts_needed(plans, at, {"simulator"})))  # fmt: skip
    return curve


def curve_svg(curve: Curve) -> str:
    """Hosts per tier against fleet size (log-log), as a small standalone SVG."""
    width, height, pad = 640, 360, 50
    xs = [math.log10(point[0]) for point in curve]
    top = math.log10(max(max(point[1:]) for point in curve) * 2)

    def at(x: float, hosts: int) -> str:
        px = pad + (x - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (width - 2 * pad)
        py = height - pad - math.log10(max(hosts, 1)) / top * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    series = [("backend hosts", 1, "#d62728"), ("NATS nodes", 2, "#1f77b4"),
              ("load hosts", 3, "#2ca02c")]  # fmt: skip
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{pad}" y="20">hosts needed vs fleet size (log-log)</text>',
    ]
    for name, column, colour in series:
        points = " ".join(at(x, p[column]) for x, p in zip(xs, curve, strict=True))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        )
        parts.append(
            f'<text x="{width - 150}" y="{30 + 15 * column}" fill="{colour}">{name}</text>'
        )
    for x, point in zip(xs, curve, strict=True):
        label_x = at(x, 1).split(",")[0]
        parts.append(f'<text x="{label_x}" y="{height - 20}">{point[0]:.0e}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
