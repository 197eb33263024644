"""The CI regression gate: a run's ``summary.json`` against committed thresholds.

A baseline file names figures of the summary by path and bounds each one::

    {"metrics": {"gateways/peak_connected": {"min": 1980},
                 "verdicts/reconnect_100pct_s": {"max": 60},
                 "alerts/lost": {"max": 0}}}

A path walks the summary's keys, ``/`` separated; ``verdicts/<name>`` is the measured figure
of that verdict check. A figure that is missing, unmeasured or out of bounds is a regression.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOUNDS = {"min": ">=", "max": "<="}


@dataclass(frozen=True)
class Row:
    metric: str
    rule: str
    threshold: float
    measured: float | None

    @property
    def ok(self) -> bool:
        if self.measured is None:
            return False
        if self.rule == ">=":
            return self.measured >= self.threshold
        return self.measured <= self.threshold


def figure(summary: Mapping[str, Any], path: str) -> float | None:
    """The number at ``path`` in the summary; None if it is not there or not a number."""
    node: Any = summary
    for key in path.split("/"):
        if key and isinstance(node, list):  # the verdicts: a list of checks by name
            node = next((item.get("measured") for item in node if item.get("name") == key), None)
        elif isinstance(node, Mapping):
            node = node.get(key)
        else:
            return None
    return float(node) if isinstance(node, int | float) else None


def compare(baseline: Mapping[str, Any], summary: Mapping[str, Any]) -> list[Row]:
    """One row per bound in the baseline."""
    rows = []
    for path, bounds in baseline["metrics"].items():
        unknown = set(bounds) - set(BOUNDS)
        if unknown:
            raise ValueError(f"{path}: unknown bound {', '.join(sorted(unknown))} (min, max)")
        measured = figure(summary, path)
        rows += [Row(path, BOUNDS[b], float(bounds[b]), measured) for b in BOUNDS if b in bounds]
    return rows


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def table(rows: Sequence[Row]) -> list[str]:
    """metric, baseline threshold, measured, status: one line each."""
    cells = [
        (row.metric, f"{row.rule} {row.threshold:g}",
         "missing" if row.measured is None else f"{row.measured:g}",
         "ok" if row.ok else "REGRESSION")
        for row in rows
    ]  # fmt: skip
    return aligned([("metric", "baseline", "measured", "status"), *cells])


def check_run(baseline_file: Path, run_dir: Path) -> tuple[bool, list[str]]:
    """(passed, the table) for the run in ``run_dir``."""
    baseline = json.loads(baseline_file.read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = compare(baseline, summary)
    return all(row.ok for row in rows), table(rows)
