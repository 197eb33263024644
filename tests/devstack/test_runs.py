"""Run directories: listed newest first with their size, pruned to the newest, never a
running stack's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from backend.cli import main
from backend.devstack import runs, stackctl


def make_runs(runs_dir: Path, count: int) -> list[Path]:
    """``count`` run directories, the first the oldest, each with a 1,000-byte log."""
    made = []
    for age in range(count):
        path = runs_dir / f"sim-{age}"
        path.mkdir(parents=True)
        (path / "shard.log").write_bytes(b"x" * 1000)
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
        made.append(path)
    return made


def test_runs_are_listed_newest_first_with_their_size(tmp_path: Path) -> None:
    oldest, middle, newest = make_runs(tmp_path, 3)
    (tmp_path / stackctl.POINTER_FILE).write_text("not a run")  # a file: not a run
    found = runs.run_dirs(tmp_path)
    assert [run.path for run in found] == [newest, middle, oldest]
    assert [run.size for run in found] == [1000, 1000, 1000]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    oldest, middle, newest = make_runs(tmp_path, 3)
    removed = runs.prune(tmp_path, keep=1)
    assert [run.path for run in removed] == [middle, oldest]
    assert [path.exists() for path in (oldest, middle, newest)] == [False, False, True]


def test_prune_never_removes_a_running_stacks_directory(tmp_path: Path) -> None:
    stack, *_ = make_runs(tmp_path, 3)  # the oldest
    state = {"pid": os.getpid(), "run_dir": str(stack.resolve())}  # this process: alive
    (stack / stackctl.STATE_FILE).write_text(json.dumps(state))
    (tmp_path / stackctl.POINTER_FILE).write_text(str(stack))
    runs.prune(tmp_path, keep=0)
    assert [path.name for path in tmp_path.iterdir() if path.is_dir()] == [stack.name]


def test_no_runs_directory_is_no_runs(tmp_path: Path) -> None:
    assert runs.run_dirs(tmp_path / "missing") == []
    assert runs.prune(tmp_path / "missing", keep=0) == []
    with pytest.raises(ValueError, match="keep must be >= 0"):
        runs.prune(tmp_path, keep=-1)


def test_fleet_runs_prune_says_what_it_freed(tmp_path: Path) -> None:
    make_runs(tmp_path, 3)
    argv = ["runs", "prune", "--keep", "1", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert result.output == "removed 2 runs, 0.0 MiB freed\n"
    listed = CliRunner().invoke(main, ["runs", "list", "--runs-dir", str(tmp_path)])
    assert listed.output.endswith("1 runs, 0.0 MiB\n")
