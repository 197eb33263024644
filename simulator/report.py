"""The run's HTML report: the verdict table, the headline figures and line plots of the
timeline (connected gateways, reconnects, alert latency, per-shard connections) as inline
SVG, so it needs no plotting library and opens anywhere, offline.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simulator.timeline import Sample
from simulator.verdicts import format_value, from_dicts

Series = Mapping[str, Sequence[tuple[float, float]]]

WIDTH, HEIGHT, MARGIN = 720, 220, 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def svg_chart(
    title: str, series: Series, unit: str = "", marks: Mapping[str, float] | None = None
) -> str:
    """A line chart of ``series`` (name: [(t, value)]) with vertical lines at ``marks``."""
    marks = marks or {}
    points = [p for line in series.values() for p in line]
    if not points:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    t_max = max(max(t for t, _ in points), *marks.values(), 1.0)
    y_max = max(max(v for _, v in points), 1.0)

    def x(t: float) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * t / t_max

    def y(v: float) -> float:
        return HEIGHT - MARGIN + (2 * MARGIN - HEIGHT) * v / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN}" y="16" font-size="13">{html.escape(title)}</text>',
        _axes(t_max, y_max, unit, x, y),
    ]
    for name, t in marks.items():
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y(0):.1f}" y2="{y(y_max):.1f}" '
            f'stroke="#888" stroke-dasharray="4 3"/><text x="{x(t) + 3:.1f}" '
            f'y="{y(y_max) + 10:.1f}" fill="#555">{html.escape(name)}</text>'
        )
    for index, (name, line) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - MARGIN + 4}" y="{MARGIN + 14 * index}" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    t_max: float, y_max: float, unit: str, x: Callable[[float], float], y: Callable[[float], float]
) -> str:
    """Both axes with their end values: enough to read a run's scale."""
    return (
        f'<line x1="{x(0)}" x2="{x(t_max)}" y1="{y(0)}" y2="{y(0)}" stroke="#000"/>'
        f'<line x1="{x(0)}" x2="{x(0)}" y1="{y(0)}" y2="{y(y_max)}" stroke="#000"/>'
        f'<text x="{x(0) - 4}" y="{y(0) + 4}" text-anchor="end">0</text>'
        f'<text x="{x(0) - 4}" y="{y(y_max) + 4}" text-anchor="end">{y_max:,.0f}</text>'
        f'<text x="{x(0)}" y="{y(0) + 16}">0 s</text>'
        f'<text x="{x(t_max)}" y="{y(0) + 16}" text-anchor="end">{t_max:,.0f} s</text>'
        f'<text x="{x(0)}" y="{y(y_max) - 6}">{html.escape(unit)}</text>'
    )


def series_of(samples: Sequence[Sample], *keys: str) -> dict[str, list[tuple[float, float]]]:
    """Named lines of sample fields, skipping seconds without a value."""
    return {
        key: [(s["t"], float(s[key])) for s in samples if s.get(key) is not None] for key in keys
    }


def rate_of(samples: Sequence[Sample], key: str) -> list[tuple[float, float]]:
    """A counter's increase per second between samples."""
    pairs = itertools.pairwise(samples)
    return [(b["t"], (b[key] - a[key]) / (b["t"] - a["t"])) for a, b in pairs if b["t"] > a["t"]]


def shard_series(samples: Sequence[Sample]) -> dict[str, list[tuple[float, float]]]:
    """Connections per shard; a shard that stopped answering ends its line there."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        for name, figures in sample["shards"].items():
            if figures is not None:
                lines.setdefault(name, []).append((sample["t"], figures["connections"]))
    return lines


def charts(samples: Sequence[Sample], marks: Mapping[str, float]) -> list[str]:
    return [
        svg_chart("Connected gateways", series_of(samples, "connected"), "gateways", marks),
        svg_chart(
            "Reconnects and connects per second",
            {
                "reconnects/s": rate_of(samples, "reconnects"),
                "connects/s": rate_of(samples, "connects"),
            },
            "per s",
            marks,
        ),
        svg_chart(
            "Alert latency (per second)",
            series_of(samples, "alert_p50_ms", "alert_p99_ms"),
            "ms",
            marks,
        ),
        svg_chart(
            "Alerts acked per second", {"acked/s": rate_of(samples, "alerts_acked")}, "per s", marks
        ),
        svg_chart("Connections per shard", shard_series(samples), "connections", marks),
    ]


def rollout_chart(rollout: Mapping[str, Any] | None, marks: Mapping[str, float]) -> str:
    """The update rollout's devices in flight, succeeded and failed over time; "" without one."""
    if not rollout:
        return ""
    progress = rollout["progress"]
    series = {
        name: [(point[0], point[column]) for point in progress]
        for column, name in enumerate(("in flight", "succeeded", "failed"), start=1)
    }
    return f"<div>{svg_chart('Update rollout', series, 'devices', marks)}</div>"


def verdict_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>This scenario has no verdict checks.</p>"
    body = "".join(
        f"<tr class={'pass' if c.ok else 'fail'}><td>{html.escape(c.name)}</td>"
        f"<td>{html.escape(format_value(c.measured, c.unit))}</td>"
        f"<td>{html.escape(c.rule)} {html.escape(format_value(c.threshold, c.unit))}</td>"
        f"<td>{'PASS' if c.ok else 'FAIL'}</td></tr>"
        for c in from_dicts(rows)
    )
    return (
        f"<table><tr><th>check</th><th>measured</th><th>threshold</th><th></th></tr>{body}</table>"
    )


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:60em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    ".pass td:last-child{color:#2ca02c}.fail td:last-child{color:#d62728;font-weight:bold}"
)


def render(summary: Mapping[str, Any], timeline: Mapping[str, Any]) -> str:
    """The whole report page."""
    ok = summary["verdict"]["ok"]
    samples, marks = timeline["samples"], timeline["marks"]
    facts = {
        "target": summary["host"],
        "duration": f"{summary['duration_s']} s",
        "peak connected": summary["gateways"]["peak_connected"],
        "reconnects": summary["reconnects"],
        "unexpected drops": summary["unexpected_drops"],
        "alerts": ", ".join(f"{k} {v}" for k, v in summary["alerts"].items()),
    }
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in summary["verdict"]["failures"])
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>fleet run</title>"
        f"<style>{STYLE}</style></head><body><h1>Fleet run: {'PASS' if ok else 'FAIL'}</h1>"
        f"<table>{rows}</table><ul>{failures}</ul><h2>Verdict</h2>"
        f"{verdict_table(summary.get('verdicts', []))}<h2>Timeline</h2>"
        + "".join(f"<div>{chart}</div>" for chart in charts(samples, marks))
        + rollout_chart(summary.get("rollout"), marks)
        + "</body></html>\n"
    )
