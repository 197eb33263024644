"""The run directories under ``runs/`` (``fleet demo``, ``fleet up``, Locust runs, benchmarks):
each keeps its logs and NATS storage, so they add up; ``prune`` keeps the newest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from backend.devstack import stackctl


@dataclass(frozen=True)
class RunDir:
    path: Path
    modified: float
    size: int
    """Bytes of its files."""


def run_dirs(runs_dir: Path) -> list[RunDir]:
    """The run directories in ``runs_dir``, newest first."""
    if not runs_dir.is_dir():
        return []
    found = [
        RunDir(path, path.stat().st_mtime, _size(path))
        for path in runs_dir.iterdir()
        if path.is_dir() and not path.is_symlink()
    ]
    return sorted(found, key=lambda run: run.modified, reverse=True)


def prune(runs_dir: Path, keep: int) -> list[RunDir]:
    """Remove all but the ``keep`` newest run directories, never a running stack's; the ones
    removed."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    running = _running_stack(runs_dir)
    removed = [run for run in run_dirs(runs_dir)[keep:] if run.path.resolve() != running]
    for run in removed:
        shutil.rmtree(run.path)
    return removed


def _running_stack(runs_dir: Path) -> Path | None:
    try:
        state = stackctl.running_stack(runs_dir=runs_dir)
    except stackctl.StackError:
        return None
    return Path(state["run_dir"]).resolve()


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
