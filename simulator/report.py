"""The run's HTML report: the verdict table, the headline figures and line plots of the
timeline (connected gateways, reconnects, alert latency, per-shard connections) as inline
SVG, so it needs no plotting library and opens anywhere, offline.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simulator.timeline import Sample
from simulator.verdicts import format_value, from_dicts

Series = Mapping[str, Sequence[tuple[float, float]]]

WIDTH, HEIGHT, MARGIN = 720, 240, 56
TITLE_HEIGHT, LEGEND_ROW, CHAR_WIDTH = 22, 14, 6.5  # CHAR_WIDTH: 11 px sans-serif, roughly
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
TICKS = 5


def nice_ticks(top: float, count: int = TICKS) -> list[float]:
    """At most ``count`` + 1 round steps (1, 2 or 5 times a power of ten) from 0, the last
    tick at or above ``top``."""
    top = max(top, 1e-9)
    power = 10 ** math.floor(math.log10(top / count))
    step = next(
        m * power for m in (1, 2, 5, 10) if math.ceil(top / (m * power) - 1e-9) <= count + 1
    )
    return [round(step * i, 12) for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


def _legend(names: Sequence[str]) -> tuple[list[tuple[str, float, float]], float]:
    """Each name's (name, x, y) in rows under the title, wrapped to the chart's width; and the
    height the rows take. Inside the SVG, so a long name is never clipped."""
    placed: list[tuple[str, float, float]] = []
    x, row = float(MARGIN), 0
    for name in names:
        width = 14 + CHAR_WIDTH * len(name) + 12
        if x + width > WIDTH - 8 and x > MARGIN:
            x, row = float(MARGIN), row + 1
        placed.append((name, x, TITLE_HEIGHT + 12 + LEGEND_ROW * row))
        x += width
    return placed, float(LEGEND_ROW * (row + 1)) if names else 0.0


def svg_chart(
    title: str, series: Series, unit: str = "", marks: Mapping[str, float] | None = None
) -> str:
    """A line chart of ``series`` (name: [(t, value)]) with gridlines, labelled ticks, a legend
    and vertical lines at ``marks``."""
    marks = marks or {}
    points = [p for line in series.values() for p in line]
    if not points:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    legend, legend_height = _legend(list(series))
    top = TITLE_HEIGHT + legend_height + 8
    height = HEIGHT + legend_height
    t_ticks = nice_ticks(max(max(t for t, _ in points), *marks.values(), 1.0))
    y_ticks = nice_ticks(max(max(v for _, v in points), 1.0))

    def x(t: float) -> float:
        return MARGIN + (WIDTH - 1.5 * MARGIN) * t / t_ticks[-1]

    def y(v: float) -> float:
        return height - MARGIN + (top + 4 - height + MARGIN) * v / y_ticks[-1]

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        _grid(t_ticks, y_ticks, unit, x, y),
        *_marks(marks, x, y(0), y(y_ticks[-1])),
    ]
    for index, ((name, line), (_, lx, ly)) in enumerate(zip(series.items(), legend, strict=True)):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
            f'<rect x="{lx:.1f}" y="{ly - 8:.1f}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly + 1:.1f}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _grid(
    t_ticks: Sequence[float],
    y_ticks: Sequence[float],
    unit: str,
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> str:
    """Axes, light gridlines at every tick, and each tick's value; the unit along the y axis."""
    x0, x1, y0, y1 = x(0), x(t_ticks[-1]), y(0), y(y_ticks[-1])
    grey = 'stroke="#e3e3e3"'
    across = [
        f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y(v):.1f}" y2="{y(v):.1f}" {grey}/>'
        f'<text x="{x0 - 4:.1f}" y="{y(v) + 4:.1f}" text-anchor="end">{_tick_label(v)}</text>'
        for v in y_ticks
    ]
    along = [
        f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0:.1f}" y2="{y1:.1f}" {grey}/>'
        f'<text x="{x(t):.1f}" y="{y0 + 15:.1f}" text-anchor="middle">{_tick_label(t)} s</text>'
        for t in t_ticks
    ]
    unit_label = (
        f'<text transform="translate(12 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#555">{html.escape(unit)}</text>'
    )
    axes = (
        f'<path fill="none" stroke="#000" d="M{x0:.1f},{y1:.1f} L{x0:.1f},{y0:.1f} '
        f'L{x1:.1f},{y0:.1f}"/>'
    )
    return "".join([unit_label, *across, *along, axes])


def _marks(
    marks: Mapping[str, float], x: Callable[[float], float], bottom: float, top: float
) -> list[str]:
    return [
        f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{bottom:.1f}" y2="{top:.1f}" '
        f'stroke="#555" stroke-dasharray="4 3"/><text x="{x(t) + 3:.1f}" '
        f'y="{top + 10:.1f}" fill="#333">{html.escape(name)}</text>'
        for name, t in marks.items()
    ]


def series_of(samples: Sequence[Sample], *keys: str) -> dict[str, list[tuple[float, float]]]:
    """Named lines of sample fields, skipping seconds without a value."""
    return {
        key: [(s["t"], float(s[key])) for s in samples if s.get(key) is not None] for key in keys
    }


def rate_of(samples: Sequence[Sample], key: str) -> list[tuple[float, float]]:
    """A counter's increase per second between samples."""
    pairs = itertools.pairwise(samples)
    return [(b["t"], (b[key] - a[key]) / (b["t"] - a["t"])) for a, b in pairs if b["t"] > a["t"]]


def rates_by_cause(samples: Sequence[Sample], key: str) -> dict[str, list[tuple[float, float]]]:
    """Per cause, the increase per second of a sample's {cause: count} field (drops, failed
    tries); samples before a cause first appeared count it as 0."""
    causes = sorted({cause for sample in samples for cause in sample.get(key, {})})
    return {
        cause: [
            (b["t"], (b[key].get(cause, 0) - a[key].get(cause, 0)) / (b["t"] - a["t"]))
            for a, b in itertools.pairwise(samples)
            if b["t"] > a["t"] and key in a and key in b
        ]
        for cause in causes
    }


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
        svg_chart("Drops per second, by cause", rates_by_cause(samples, "drops"), "per s", marks),
        svg_chart(
            "Failed connection tries per second, by cause",
            rates_by_cause(samples, "failed"),
            "per s",
            marks,
        ),
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
    """The whole report page, for the run directory."""
    return page(f"fleet run: {_scenario(summary)}", body(summary, timeline))


def page(title: str, content: str, head: str = "") -> str:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style>{head}</head><body>{content}</body></html>\n"
    )


def body(summary: Mapping[str, Any], timeline: Mapping[str, Any]) -> str:
    """The report's content: what ran and its verdict, the headline figures and the plots."""
    ok = summary["verdict"]["ok"]
    samples, marks = timeline["samples"], timeline["marks"]
    facts = {
        "command": summary.get("command", ""),
        "started": summary.get("started_at", ""),
        "target": summary["host"],
        "duration": f"{summary['duration_s']} s",
        "peak connected": summary["gateways"]["peak_connected"],
        "reconnects": summary["reconnects"],
        "unexpected drops": summary["unexpected_drops"],
        "alerts": ", ".join(f"{k} {v}" for k, v in summary["alerts"].items()),
    }
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in summary["verdict"]["failures"])
    state = summary.get("state") or ("PASS" if ok else "FAIL")
    return (
        f"<h1>{html.escape(_scenario(summary))}: {html.escape(state)}</h1>"
        f"<table>{rows}</table><ul>{failures}</ul><h2>Verdict</h2>"
        f"{verdict_table(summary.get('verdicts', []))}<h2>Timeline</h2>"
        + "".join(f"<div>{chart}</div>" for chart in charts(samples, marks))
        + rollout_chart(summary.get("rollout"), marks)
    )


def _scenario(summary: Mapping[str, Any]) -> str:
    return ", ".join(summary.get("scenarios", [])) or "fleet run"
