"""The short fuzz run (``bench/fuzz.py`` plays a million): 50,000 generated upgrade heads,
RFC 6455 frames and ProtoMsg envelopes against a shard process on a real NATS server.

Passes when every input got an answer the protocol allows for it (an HTTP status before the
upgrade; after it a close code, a ProtoMsg error or the message's own answer), within 10 s
and with the TCP connection closed after a refusal; the shard process is still there with
/healthz answering 200 throughout; its RSS peaked at most 64 MiB over its RSS before the run,
though a mute connection sent 128 MiB of pings without reading a pong; and a legit device
alongside had each of its alerts acked within 5 s (``backend.tools.fuzzdevice`` holds the bounds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import uvloop

from backend.devstack.stack import LocalStack, StackConfig
from backend.tools.fuzzdevice import SHARD_OPTIONS, FuzzSettings, FuzzTarget, fuzz

pytestmark = pytest.mark.integration  # every test here runs real servers

SETTINGS = FuzzSettings(seed=20240611, count=50_000, connections=32, mute=1)


def test_a_shard_serves_a_legit_device_through_50000_hostile_inputs(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path, shards=1, shard_options=SHARD_OPTIONS)) as stack:
        target = FuzzTarget.first_shard(stack)
        report = uvloop.run(fuzz(target, SETTINGS))
        assert stack.pids()["shards"] == [target.pid]
    figures = "\n".join(report.lines())
    assert report.total_inputs >= SETTINGS.count, figures
    assert report.connections > 1000, figures  # many inputs per connection, yet many of them
    assert report.failures() == [], figures
