"""Memory per idle virtual gateway: our GatewayUser against a naive websocket-client user.

One embedded stack (NATS + shards); two Locust processes in turn hold N idle connections to
it: ours (scenarios/mixed_fleet.py, no alerts, hourly status, a perfect link) and
bench/naive_ws_user.py. Each ramps to N/10, idles and is sampled, ramps to N, idles and is
sampled again; the resident memory growth divided by the 9N/10 extra users is the cost of one
connection (the process's fixed cost cancels out). The CPU it burns over the last idle spell
is the second figure. A third process parks N plain greenlets in ``gevent.sleep``: the floor
every gevent user pays on this interpreter.

    python bench/gateway_density.py --connections 10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from backend.devstack import process
from backend.devstack.stack import LocalStack, StackConfig

REPO = Path(__file__).resolve().parents[1]
GOAL_KIB = 4.0
GOAL_DENSER = 3.0  # times fewer KiB per connection than the naive user
MAX_CONNECTIONS = 19_000  # per process, shard or Locust: 20,000 open files, not raisable
PER_SHARD = 15_000
STALL = 30.0  # seconds without a new connection before a ramp counts as failed
IDLE_PROFILE = "[idle]\n"  # no base: a perfect link (no latency, no faults), as the naive has


def rss_kib(pid: int) -> float:
    return process.rss_bytes(pid) / 1024


def wait_connections(
    stack: LocalStack, want: int, proc: subprocess.Popen[bytes], name: str, log_file: Path
) -> None:
    """Block until the shards hold ``want`` connections; a progress line every two seconds."""
    last, last_change, last_print = -1, time.monotonic(), 0.0
    while (count := stack.connections()) != want:
        now = time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{process.tail(log_file)}")
        if count != last:
            last, last_change = count, now
        elif now - last_change > STALL:
            raise RuntimeError(f"{name} stuck at {count}/{want} connections; see {log_file}")
        if now - last_print >= 2.0:
            print(f"  {name}: {count}/{want} connected", flush=True)
            last_print = now
        time.sleep(0.25)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def swarm(web_port: int, users: int, rate: float) -> None:
    """Ask Locust's web UI for ``users`` users, as its Start/Edit form does."""
    form = urllib.parse.urlencode({"user_count": users, "spawn_rate": rate}).encode()
    url = f"http://127.0.0.1:{web_port}/swarm"
    with urllib.request.urlopen(url, data=form, timeout=10) as resp:
        if not json.loads(resp.read()).get("success"):
            raise RuntimeError(f"Locust refused /swarm with {users} users")


def measure(
    name: str,
    locust_args: list[str],
    stack: LocalStack,
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
) -> dict:
    """RSS of one Locust process at N/10 and at N idle users, and its CPU while idle."""
    first, count = max(1, args.connections // 10), args.connections
    web_port, log_file = free_port(), args.run_dir / f"{name.split()[0]}-locust.log"
    argv = [
        sys.executable, "-m", "locust", *locust_args, "--host", ",".join(stack.shard_urls),
        "--autostart", "-u", str(first), "-r", str(args.rate),
        "--web-host", "127.0.0.1", "--web-port", str(web_port),
    ]  # fmt: skip
    print(f"{name}: ramping to {first}, then {count}", flush=True)
    proc = process.spawn(argv, log_file, env)
    try:
        wait_connections(stack, first, proc, name, log_file)
        time.sleep(args.hold)
        rss_first = rss_kib(proc.pid)
        swarm(web_port, count, args.rate)
        wait_connections(stack, count, proc, name, log_file)
        cpu_before = process.cpu_seconds(proc.pid)
        time.sleep(args.hold)
        cpu_idle = process.cpu_seconds(proc.pid) - cpu_before
        rss_all = rss_kib(proc.pid)
        if (held := stack.connections()) != count:
            raise RuntimeError(f"{name} lost connections while idle: {held}/{count}")
    finally:
        process.stop(proc)
    wait_until_zero(stack)
    per_conn = (rss_all - rss_first) / (count - first)
    mib = {"rss_first_mib": rss_first / 1024, "rss_all_mib": rss_all / 1024}
    return {"name": name, **mib, "kib_per_conn": per_conn, "cpu_idle": cpu_idle}


def wait_until_zero(stack: LocalStack, timeout: float = 60.0) -> None:
    """The shards have seen every connection of the last client go, so counts start at 0."""
    deadline = time.monotonic() + timeout
    while (left := stack.connections()) and time.monotonic() < deadline:
        time.sleep(0.25)
    if left:
        raise RuntimeError(f"{left} connections still open {timeout:.0f}s after the client quit")


# --- the greenlet floor -----------------------------------------------------------------------


def park_greenlets(count: int) -> None:
    """In a subprocess: the RSS growth per greenlet parked in ``gevent.sleep``, as JSON."""
    import gevent

    def park() -> None:
        gevent.sleep(3600)

    first = max(1, count // 10)
    parked = [gevent.spawn(park) for _ in range(first)]
    gevent.sleep(0.5)
    before = rss_kib(os.getpid())
    parked += [gevent.spawn(park) for _ in range(count - first)]
    gevent.sleep(0.5)
    per = (rss_kib(os.getpid()) - before) / (count - first)
    print(json.dumps({"kib_per_greenlet": per}), flush=True)


def greenlet_floor(count: int) -> float:
    argv = [sys.executable, __file__, "--park-greenlets", str(count)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["kib_per_greenlet"])


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    profiles = args.run_dir / "idle-network.toml"
    profiles.write_text(IDLE_PROFILE)
    config = StackConfig(args.run_dir, shards=args.shards)
    print(f"starting NATS + {args.shards} shards in {args.run_dir}", flush=True)
    with LocalStack(config) as stack:
        ours = [
            "-f", str(REPO / "scenarios" / "mixed_fleet.py"), "--jwt-secret", stack.jwt_secret,
            "--alerts-per-hour", "0", "--status-interval", "3600",
            "--network-profiles", str(profiles), "--network-mix", "idle",
            "--run-dir", str(args.run_dir / "sim"),
        ]  # fmt: skip
        naive = ["-f", str(Path(__file__).with_name("naive_ws_user.py"))]
        secret = {"FLEET_BENCH_JWT_SECRET": stack.jwt_secret}
        results = [
            measure("fleetharness GatewayUser", ours, stack, args),
            measure("naive websocket-client", naive, stack, args, secret),
        ]
    print(f"parking {args.connections} greenlets", flush=True)
    report(results, greenlet_floor(args.connections), args)


def report(results: list[dict], floor: float, args: argparse.Namespace) -> None:
    count, first = args.connections, max(1, args.connections // 10)
    ours, naive = results[0]["kib_per_conn"], results[1]["kib_per_conn"]
    print(
        f"\n{count} idle connections over {args.shards} shards; RSS at {first} and {count} "
        f"users, CPU over the last {args.hold:.0f}s idle\n"
    )
    print(
        f"{'':<26}{'conns':>7}{'RSS N/10':>11}{'RSS N':>10}{'KiB/conn':>10}{'x ours':>8}"
        f"{'CPU s':>7}"
    )
    for r in results:
        print(
            f"{r['name']:<26}{count:>7}{r['rss_first_mib']:>9.1f}Mi{r['rss_all_mib']:>8.1f}Mi"
            f"{r['kib_per_conn']:>10.2f}{r['kib_per_conn'] / ours:>8.2f}{r['cpu_idle']:>7.2f}"
        )
    print(f"{'parked gevent greenlet':<26}{count:>7}{'':>21}{floor:>10.2f}{floor / ours:>8.2f}")
    print(f"{'goal':<26}{'':>28}{GOAL_KIB:>10.2f}{GOAL_KIB / ours:>8.2f}")
    met = ours <= GOAL_KIB and naive / ours >= GOAL_DENSER
    print(
        f"\nours {'meets' if met else 'misses'} the goal ({GOAL_KIB:.0f} KiB, "
        f"{GOAL_DENSER:.0f}x denser than naive): {ours:.2f} KiB, the naive user takes "
        f"{naive / ours:.2f}x as much; a bare parked greenlet alone is {floor:.2f} KiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connections", type=int, default=5000, help="idle connections per client (up to ~18,000)"
    )
    parser.add_argument(
        "--shards", type=int, default=0, help=f"default: 1 per {PER_SHARD} conns, 2+"
    )
    parser.add_argument("--hold", type=float, default=10.0, help="seconds idle before sampling")
    parser.add_argument("--rate", type=float, default=500.0, help="users spawned per second")
    parser.add_argument("--run-dir", type=Path, help="default: runs/bench-density-<time>")
    parser.add_argument("--park-greenlets", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.park_greenlets:
        park_greenlets(args.park_greenlets)
        return
    if not 20 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections: 20 to {MAX_CONNECTIONS} (one process's open-file limit)")
    args.run_dir = args.run_dir or Path("runs") / time.strftime("bench-density-%Y%m%d-%H%M%S")
    args.shards = args.shards or max(2, math.ceil(args.connections / PER_SHARD))
    if args.connections > args.shards * MAX_CONNECTIONS:
        parser.error(f"--shards: {args.shards} cannot hold {args.connections} connections")
    try:
        run(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; Locust and the stack are stopped")


if __name__ == "__main__":
    main()
