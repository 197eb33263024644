"""``fleet demo`` (the README's run command) end to end, as a user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FLEET = [sys.executable, "-m", "backend.cli"]


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.append(int(status.parent.name))
    return found


def test_demo_shows_alerts_stored_and_exits_cleanly(tmp_path: Path) -> None:
    run = subprocess.run(
        [*FLEET, "demo", "--duration", "6", "--devices", "3", "--interval", "0.5",
         "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "via shard-a" in run.stdout
    assert "via shard-b" in run.stdout
    summary = re.search(r"(\d+) alerts sent, (\d+) acked .*, (\d+) read back", run.stdout)
    assert summary is not None
    sent, acked, stored = map(int, summary.groups())
    assert sent > 0
    assert acked >= sent - 3  # the last alert of each device may be cut by the stop
    assert stored >= acked
    assert (tmp_path / "shard-a.log").exists()


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*FLEET, "demo", "--devices", "2", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(children_of(proc.pid)) < 3:  # nats-server and two shards
        assert time.monotonic() < deadline, "the stack did not start"
        time.sleep(0.1)
    children = children_of(proc.pid)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping" in out
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
