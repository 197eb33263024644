"""Child process helpers: real children, their memory and CPU read from /proc."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from backend.devstack import process

pytestmark = pytest.mark.integration  # every test here runs real servers


def test_rss_and_cpu_of_a_running_process() -> None:
    # This test process holds at least its interpreter in memory and has run some code.
    assert process.rss_bytes(os.getpid()) > 10 * 1024 * 1024
    assert process.cpu_seconds(os.getpid()) > 0


def test_rss_and_cpu_of_a_process_that_is_gone(tmp_path: Path) -> None:
    child = process.spawn([sys.executable, "-c", "pass"], tmp_path / "child.log")
    child.wait()
    assert process.rss_bytes(child.pid) == 0
    assert process.cpu_seconds(child.pid) == 0.0


def test_spawn_logs_and_stop_terminates(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    child = process.spawn(argv, tmp_path / "child.log")
    process.wait_until(
        lambda: "started" in process.tail(tmp_path / "child.log"),
        child,
        "c",
        tmp_path / "child.log",
    )
    assert process.stop(child) == -15  # SIGTERM
    assert child.poll() is not None


def test_a_child_dying_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('no config')"]
    child = process.spawn(argv, tmp_path / "child.log")
    with pytest.raises(RuntimeError, match="child exited with code 1 while starting") as failed:
        process.wait_until(lambda: False, child, "child", tmp_path / "child.log")
    assert "no config" in str(failed.value)  # the log's tail


def test_http_get_says_0_when_nothing_answers() -> None:
    assert process.http_get("http://127.0.0.1:1/", timeout=1) == (0, "")


def test_children_and_descendants_follow_the_process_tree(tmp_path: Path) -> None:
    # A child that starts a grandchild; both sleep until killed.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    log = tmp_path / "child.log"
    child = process.spawn([sys.executable, "-c", script], log)
    grandchildren: list[int] = []
    try:
        process.wait_until(lambda: bool(process.children(child.pid)), child, "child", log)
        grandchildren = process.children(child.pid)
        assert process.children(os.getpid()) == [child.pid]
        assert process.descendants(os.getpid()) == [child.pid, *grandchildren]
        assert len(grandchildren) == 1
    finally:
        for pid in grandchildren:  # not ours once its parent is gone
            os.kill(pid, signal.SIGKILL)
        process.stop(child)
