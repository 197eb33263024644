"""Fuzz a live shard: a million generated upgrade heads, RFC 6455 frames and ProtoMsg envelopes.

One shard process (``fleet shard``, as the local stack runs it) on a real NATS server.
``backend.tools.fuzzdevice`` plays ``--count`` cases of ``backend.tools.fuzzcases`` over
``--connections`` workers, several cases per connection, while a legit device raises alerts that
must be acked and ``--mute`` connections send big pings they never read. Prints inputs sent,
connections opened, answers by kind, shard RSS before/peak/after, the legit device's round trips and
latency, inputs per second, and each input answered wrongly with how to rebuild it. Exits 1
if the shard failed a check.

    python bench/fuzz.py --count 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import uvloop

from backend.devstack import process
from backend.devstack.stack import LocalStack, StackConfig
from backend.tools.fuzzdevice import SHARD_OPTIONS, FuzzSettings, FuzzTarget, fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=1_000_000, help="cases to play")
    parser.add_argument("--connections", type=int, default=32, help="concurrent workers")
    parser.add_argument("--mute", type=int, default=2, help="connections that never read")
    parser.add_argument("--mute-mib", type=int, default=128, help="pings each mute one sends")
    parser.add_argument("--run-dir", type=Path, help="default: runs/bench-fuzz-<time>")
    args = parser.parse_args()
    run_dir = args.run_dir or Path("runs") / time.strftime("bench-fuzz-%Y%m%d-%H%M%S")
    settings = FuzzSettings(
        args.seed, args.count, args.connections, args.mute, args.mute_mib * 2**20
    )
    config = StackConfig(run_dir, shards=1, shard_options=SHARD_OPTIONS)
    with LocalStack(config) as stack:
        print(f"fuzzing shard pid {stack.pids()['shards'][0]} with {settings}; in {run_dir}")
        report = uvloop.run(fuzz(FuzzTarget.first_shard(stack), settings))
    for line in report.lines():
        print(line)
    failures = report.failures()
    for line in failures:
        print(f"FAILED: {line}")
    if failures:
        log = run_dir / "shard-a.log"
        print(f"the shard's log {log} ends with:\n{process.tail(log)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
