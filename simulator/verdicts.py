"""Pass/fail checks of a run: each names what was measured, the threshold and whether it held.

Scenarios return ``Check``s; the plugin prints them, writes them into ``summary.json`` under
"verdicts" and derives the exit code from them; ``fleet check`` compares them to a baseline.
Pure data, no Locust: tests and the CLI import it without gevent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from backend.tools.check import aligned

AT_MOST, AT_LEAST = "<=", ">="


@dataclass(frozen=True, slots=True)
class Check:
    """``measured`` against ``threshold``; ``measured`` None means it could not be measured,
    which fails: a check that saw nothing proves nothing."""

    name: str
    measured: float | None
    threshold: float
    unit: str
    ok: bool
    rule: str = AT_MOST

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(name: str, measured: float | None, rule: str, threshold: float, unit: str = "") -> Check:
    """A check of ``measured rule threshold`` (rule ``<=`` or ``>=``)."""
    if rule not in (AT_MOST, AT_LEAST):
        raise ValueError(f"rule must be {AT_MOST!r} or {AT_LEAST!r}, not {rule!r}")
    if measured is None or math.isnan(measured):
        return Check(name, None, threshold, unit, False, rule)
    ok = measured <= threshold if rule == AT_MOST else measured >= threshold
    return Check(name, round(measured, 3), threshold, unit, ok, rule)


def at_most(name: str, measured: float | None, threshold: float, unit: str = "") -> Check:
    return judge(name, measured, AT_MOST, threshold, unit)


def at_least(name: str, measured: float | None, threshold: float, unit: str = "") -> Check:
    return judge(name, measured, AT_LEAST, threshold, unit)


def from_dicts(rows: Iterable[Mapping[str, Any]]) -> list[Check]:
    """Checks back from ``summary.json``."""
    return [Check(**row) for row in rows]


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``--threshold NAME=VALUE`` items (repeatable) as a mapping."""
    thresholds = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise ValueError(f"--threshold {item!r}: expected NAME=NUMBER")
        thresholds[name.strip()] = number
    return thresholds


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "not measured"
    text = f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.3g}"
    return f"{text} {unit}".rstrip()


def table(checks: Sequence[Check]) -> list[str]:
    """Aligned lines: check, measured, rule and threshold, PASS/FAIL."""
    rows = [
        (c.name, format_value(c.measured, c.unit), f"{c.rule} {format_value(c.threshold, c.unit)}",
         "PASS" if c.ok else "FAIL")
        for c in checks
    ]  # fmt: skip
    return aligned([("check", "measured", "threshold", "status"), *rows])
