"""Helpers of the observability tests: the committed dashboards and their queries, and
helper processes started for a test."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backend.devstack import process
from backend.devstack.prometheus import find_prometheus

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
# Grafana's own variables, as Grafana would fill them in at a few seconds' scrape interval.
GRAFANA_VARIABLES = {"__rate_interval": "30s"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The promtool beside the Prometheus the stack runs, e.g. ``promtool("check", "config",
    path)``."""
    argv = [str(Path(find_prometheus()).with_name("promtool")), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=cwd)


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable as the "All" choice sets it, and Grafana's own variables."""
    own = {var["name"]: var["allValue"] for var in dashboard["templating"]["list"]}
    return {**GRAFANA_VARIABLES, **own}


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target, variables filled in; KeyError on one undefined."""
    values = variable_values(dashboard)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], VARIABLE.sub(lambda m: values[m[1]], target["expr"])


@contextlib.contextmanager
def spawned(
    what: str,
    argv: Sequence[str],
    ready_url: str,
    log_file: Path,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` started and running once ``ready_url`` answers 200; stopped on exit."""
    proc = process.spawn(argv, log_file, env)
    try:
        process.wait_until(lambda: process.answers_ok(ready_url), proc, what, log_file)
        yield proc
    finally:
        process.stop(proc)
