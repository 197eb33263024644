"""The hold proof: N gateway connections through HAProxy on this one host, held with
keep-alive for a while, measured tier by tier.

Everything is local: a stack sized for N from the open-file limits (NATS, shards, HAProxy
processes sharing the public port) and Locust with several worker processes running
scenarios/mixed_fleet.py on a fault-free wired link (keep-alive on both sides, rare alerts and
status). Reports the connect ramp rate, memory per connection in each tier (the slope of
resident memory over connections during the ramp: each tier's idle size, measured in the same
run, is the baseline it grows from), CPU per tier while holding (against the idle stack's),
drops, and the largest count reached if N is not.

    python bench/hold.py --connections 100000 --hold 600
    python bench/hold.py --connections 20000 --hold 60 --tls

The gateways keep Mender's default keep-alive unless told otherwise (pings after 30 s of
silence, 75 s timeout, a status a minute). The line under the table compares the simulator's
CPU per connection-second with the shards' in the same run: the load generator must not cost
more per gateway than the backend it tests (goal: ratio <= 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.devstack import process
from backend.devstack.stack import LocalStack, StackConfig

REPO = Path(__file__).resolve().parents[1]
PER_WORKER = 15_000  # gateways per Locust process: one socket each within 20,000 open files
SPAWN_RATE = 400.0  # gateways/s by default: what the backend on this 2-core host takes at 100k
STEADY_PROFILE = (
    '[steady]\nbase = "wired"\ndrops_per_hour = 0\nblackholes_per_hour = 0\noffline_per_hour = 0\n'
)
TIERS = ("simulator", "haproxy", "shards", "nats")
GOALS = {False: 2000.0, True: 500.0}  # connections/s, plain and TLS
KEEPALIVE_FACTOR = 2.5  # silence tolerated, in ping intervals (the shard's default: 75 s / 30 s)


@dataclass
class Sample:
    at: float
    connections: int
    rss: dict[str, int]  # bytes per tier
    cpu: dict[str, float]  # seconds per tier


@dataclass
class Run:
    stack: LocalStack
    locust: subprocess.Popen[bytes] | None = None
    samples: list[Sample] = field(default_factory=list)

    def pids(self) -> dict[str, list[int]]:
        simulator = [self.locust.pid, *process.descendants(self.locust.pid)] if self.locust else []
        return {"simulator": simulator, **self.stack.pids()}

    def sample(self) -> Sample:
        pids = self.pids()
        return Sample(
            time.monotonic(),
            self.stack.connections(),
            {tier: sum(process.rss_bytes(pid) for pid in pids[tier]) for tier in TIERS},
            {tier: sum(process.cpu_seconds(pid) for pid in pids[tier]) for tier in TIERS},
        )


def cpu_cores(first: Sample, last: Sample) -> dict[str, float]:
    """CPU used per tier between two samples, in cores (1.0: one core busy)."""
    span = last.at - first.at
    return {tier: (last.cpu[tier] - first.cpu[tier]) / span for tier in TIERS}


def slope(samples: list[Sample], tier: str) -> float:
    """Least-squares bytes of ``tier`` per connection over ``samples``, from 10% of the
    largest count on: before that, the simulator's worker processes are still starting."""
    floor = 0.1 * max(s.connections for s in samples)
    samples = [s for s in samples if s.connections >= floor]
    xs = [s.connections for s in samples]
    ys = [s.rss[tier] for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var if var else 0.0


def locust_argv(args: argparse.Namespace, stack: LocalStack, processes: int) -> list[str]:
    profiles = args.run_dir / "steady-network.toml"
    profiles.write_text(STEADY_PROFILE)
    spawn_rate = args.spawn_rate or SPAWN_RATE
    argv = [
        sys.executable, "-m", "locust", "-f", str(REPO / "scenarios" / "mixed_fleet.py"),
        "--headless", "-u", str(args.connections), "-r", str(spawn_rate),
        "--processes", str(processes), "--host", stack.public_url,
        "--jwt-secret", stack.jwt_secret, "--network-profiles", str(profiles),
        "--network-mix", "steady", "--alerts-per-hour", "1",
        "--status-interval", str(args.status_interval),
        "--run-dir", str(args.run_dir / "simulator"), "--only-summary", "--stop-timeout", "30",
        "--ping-interval", str(args.ping_interval),
        "--keepalive-timeout", str(args.ping_interval * KEEPALIVE_FACTOR),
    ]  # fmt: skip
    if stack.ca_file is not None:
        argv += ["--ca-file", str(stack.ca_file)]
    return argv


def progress(phase: str, sample: Sample, want: int) -> None:
    mib = "  ".join(f"{tier} {sample.rss[tier] / 2**20:,.0f}" for tier in TIERS)
    print(f"  {phase}: {sample.connections:,}/{want:,} connected | RSS MiB {mib}", flush=True)


def ramp(run: Run, args: argparse.Namespace) -> list[Sample]:
    """Sample every second until N are connected or the ramp stalls (the last ``--stall``
    seconds added less than 1% of N); the ramp's samples."""
    samples = [run.sample()]
    while samples[-1].connections < args.connections:
        assert run.locust is not None
        if run.locust.poll() is not None:
            raise RuntimeError(f"Locust exited ({run.locust.returncode}); see {args.log}")
        time.sleep(1.0)
        samples.append(now := run.sample())
        window = [s for s in samples if now.at - s.at <= args.stall]
        if now.at - samples[0].at > args.stall and (
            now.connections - window[0].connections < 0.01 * args.connections
        ):
            print(f"  stalled at {now.connections:,}: under 1% more in {args.stall:.0f}s")
            break
        if len(samples) % 10 == 0:
            progress("ramp", now, args.connections)
    return samples


def hold(run: Run, args: argparse.Namespace) -> list[Sample]:
    samples = [run.sample()]
    deadline = samples[0].at + args.hold
    while time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        samples.append(run.sample())
        progress(f"hold {samples[-1].at - samples[0].at:4.0f}s", samples[-1], args.connections)
    return samples


def idle(run: Run, seconds: float) -> tuple[Sample, Sample]:
    first = run.sample()
    time.sleep(seconds)
    return first, run.sample()


def stop_locust(run: Run, args: argparse.Namespace) -> dict:
    """SIGTERM: Locust stops its users, the plugin writes its summary; that summary."""
    assert run.locust is not None
    workers = process.descendants(run.locust.pid)
    run.locust.send_signal(signal.SIGTERM)
    try:
        run.locust.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.stop(run.locust)
    # Workers still busy with their gateways may miss the master's quit: they would linger
    # for Locust's 60 s master timeout, holding their connections.
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        return dict(json.loads((args.run_dir / "simulator" / "summary.json").read_text()))
    except (OSError, ValueError):
        return {}


def ramp_rates(samples: list[Sample], reached: int) -> tuple[float, float]:
    """Average rate from the first connection to 99% of ``reached``, and the best 10 s."""
    started = next(s for s in samples if s.connections > 0)
    done = next(s for s in samples if s.connections >= 0.99 * reached)
    average = done.connections / max(done.at - started.at, 1e-9)
    window, best = min(10.0, done.at - started.at), 0.0
    for i, first in enumerate(samples):
        later = [s for s in samples[i:] if s.at - first.at >= window > 0]
        if later:
            best = max(best, (later[0].connections - first.connections) / (later[0].at - first.at))
    return average, best


def run_proof(args: argparse.Namespace) -> dict:
    processes = args.processes or math.ceil(args.connections / PER_WORKER)
    keepalive = {
        "ping_interval": str(args.ping_interval),
        "keepalive_timeout": str(args.ping_interval * KEEPALIVE_FACTOR),
    }
    config = StackConfig.sized(
        args.run_dir / "stack", args.connections, None, None, tls=args.tls, shard_options=keepalive
    )
    print(
        f"stack: NATS, {config.shards} shards, {config.haproxies} HAProxy processes"
        f"{' (TLS)' if args.tls else ''}; Locust with {processes} workers; in {args.run_dir}",
        flush=True,
    )
    with LocalStack(config) as stack:
        run = Run(stack)
        idle_first, idle_last = idle(run, 10.0)
        run.locust = process.spawn(locust_argv(args, stack, processes), args.log)
        try:
            ramp_samples = ramp(run, args)
            hold_samples = hold(run, args)
        finally:
            summary = stop_locust(run, args)
    return report_data(args, config, processes, (idle_first, idle_last), ramp_samples,
                       hold_samples, summary)  # fmt: skip


def report_data(
    args: argparse.Namespace,
    config: StackConfig,
    processes: int,
    idle_span: tuple[Sample, Sample],
    ramp_samples: list[Sample],
    hold_samples: list[Sample],
    summary: dict,
) -> dict:
    reached = max(s.connections for s in ramp_samples + hold_samples)
    average, best = ramp_rates(ramp_samples + hold_samples, reached)
    held = min(s.connections for s in hold_samples)
    mean_held = sum(s.connections for s in hold_samples) / len(hold_samples)
    holding = cpu_cores(hold_samples[0], hold_samples[-1])
    idle_cpu = cpu_cores(*idle_span)
    counts = {"simulator": processes + 1, "haproxy": config.haproxies, "shards": config.shards}
    tiers = {
        tier: {
            "processes": counts.get(tier, 1),
            "rss_idle_mib": idle_span[1].rss[tier] / 2**20,
            "rss_held_mib": hold_samples[-1].rss[tier] / 2**20,
            "kib_per_connection": slope(ramp_samples, tier) / 1024,
            "cpu_idle_cores": idle_cpu[tier],
            "cpu_holding_cores": holding[tier],
            "cpu_cores_per_10k": (holding[tier] - idle_cpu[tier]) / max(mean_held, 1) * 10_000,
        }
        for tier in TIERS
    }
    return {
        "command": " ".join(sys.argv),
        "connections_wanted": args.connections,
        "tls": args.tls,
        "ping_interval_s": args.ping_interval,
        "status_interval_s": args.status_interval,
        "reached": reached,
        "held_min": held,
        "held_mean": mean_held,
        "timeline": [(round(s.at - ramp_samples[0].at, 1), s.connections)
                     for s in ramp_samples + hold_samples],
        "hold_s": hold_samples[-1].at - hold_samples[0].at,
        "ramp_per_s": average,
        "ramp_best_10s_per_s": best,
        "tiers": tiers,
        "simulator_summary": {k: summary.get(k) for k in
                              ("gateways", "reconnects", "drops", "unexpected_drops",
                               "connect_failures")},
    }  # fmt: skip


def us_per_connection_s(tier: dict) -> float:
    """CPU microseconds per held connection and second: cores per 10k, rescaled."""
    return float(tier["cpu_cores_per_10k"]) * 100.0


def print_report(data: dict) -> None:
    goal = GOALS[data["tls"]]
    sim = data["simulator_summary"]
    print(
        f"\n{data['reached']:,} of {data['connections_wanted']:,} connected "
        f"({'TLS' if data['tls'] else 'plain'}, pings every {data['ping_interval_s']:.0f}s); "
        f"held {data['hold_s']:.0f}s with at least "
        f"{data['held_min']:,} open; ramp {data['ramp_per_s']:,.0f}/s average, "
        f"{data['ramp_best_10s_per_s']:,.0f}/s best 10 s (goal {goal:,.0f}/s)"
    )
    print(
        f"simulator: reconnects {sim['reconnects']}, drops {sim['drops']}, unexpected "
        f"{sim['unexpected_drops']}, connect failures {sim['connect_failures']}\n"
    )
    print(
        f"{'tier':<10}{'procs':>6}{'RSS idle':>11}{'RSS held':>11}{'KiB/conn':>10}"
        f"{'CPU idle':>10}{'CPU held':>10}{'per 10k':>9}{'us/conn-s':>10}   (CPU in cores)"
    )
    for tier, t in data["tiers"].items():
        print(
            f"{tier:<10}{t['processes']:>6}{t['rss_idle_mib']:>9,.0f}Mi{t['rss_held_mib']:>9,.0f}Mi"
            f"{t['kib_per_connection']:>10.2f}{t['cpu_idle_cores']:>10.3f}"
            f"{t['cpu_holding_cores']:>10.3f}{t['cpu_cores_per_10k']:>9.3f}"
            f"{us_per_connection_s(t):>9.2f}"
        )
    sim, shards = (us_per_connection_s(data["tiers"][tier]) for tier in ("simulator", "shards"))
    ratio = sim / shards if shards > 0 else math.inf
    print(
        f"\nsimulator / shards CPU per connection-second: {sim:.2f} / {shards:.2f} us = "
        f"{ratio:.2f} ({'meets' if ratio <= 1.0 else 'misses'} the goal <= 1.0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000, help="gateways to hold")
    parser.add_argument("--hold", type=float, default=600.0, help="seconds to hold them")
    parser.add_argument("--tls", action="store_true", help="TLS on HAProxy's public port")
    parser.add_argument(
        "--spawn-rate", type=float, default=0.0,
        help=f"gateways per second [{SPAWN_RATE:.0f}]",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, default=0, help=f"Locust workers [N/{PER_WORKER}]")
    parser.add_argument(
        "--stall", type=float, default=180.0,
        help="end the ramp when this long added under 1%% of N (Locust can pause a minute)",
    )  # fmt: skip
    parser.add_argument(
        "--ping-interval", type=float, default=30.0,
        help="keep-alive: shards ping this often, gateways after this much silence",
    )  # fmt: skip
    parser.add_argument(
        "--status-interval", type=float, default=60.0, help="seconds between a gateway's statuses"
    )
    parser.add_argument("--run-dir", type=Path, help="default: runs/bench-hold-<time>")
    args = parser.parse_args()
    args.run_dir = args.run_dir or Path("runs") / time.strftime("bench-hold-%Y%m%d-%H%M%S")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.log = args.run_dir / "locust.log"
    # SIGTERM (and SIGINT, even where a background job ignores it) unwind like Ctrl-C does:
    # Locust and the stack are stopped in order.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        data = run_proof(args)
    except ValueError as exc:  # a stack that cannot hold N: says what to change
        sys.exit(str(exc))
    except KeyboardInterrupt:
        sys.exit("interrupted; Locust and the stack are stopped")
    (args.run_dir / "hold.json").write_text(json.dumps(data, indent=2) + "\n")
    print_report(data)
    print(f"\nfigures in {args.run_dir / 'hold.json'}")


if __name__ == "__main__":
    main()
