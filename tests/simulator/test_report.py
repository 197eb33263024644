"""The HTML run report: verdict table and inline SVG plots, no plotting library."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from simulator.report import (
    WIDTH,
    charts,
    nice_ticks,
    rate_of,
    rates_by_cause,
    render,
    rollout_chart,
    shard_series,
    svg_chart,
)
from simulator.timeline import Timeline
from simulator.verdicts import at_least, at_most
from tests.simulator.support import fleet

SVG = "{http://www.w3.org/2000/svg}"


def storm_timeline() -> Timeline:
    line = Timeline()
    for t, (a, b) in enumerate([(500, 500), (500, 500), (None, 990), (None, 1000)]):
        shards = {
            "shard-a": None if a is None else {"connections": a, "connects": a, "shed": 0,
                                               "reaped": 0},
            "shard-b": {"connections": b, "connects": b, "shed": 0, "reaped": 0},
        }  # fmt: skip
        line.add(float(t), fleet((a or 0) + b, 1000 + t * 200, acked=t * 10), {10: t + 1}, shards)
    line.mark("shard_killed", 1.5)
    return line


def test_a_chart_is_valid_svg_with_one_line_per_series_and_the_marks() -> None:
    svg = svg_chart("Connected", {"a": [(0, 1), (1, 5)], "b": [(0, 2), (2, 3)]}, "n", {"kill": 1})
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    assert len(lines[0].attrib["points"].split()) == 2
    assert "kill" in [text.text for text in root.findall(f"{SVG}text")]


def test_a_chart_without_points_says_so() -> None:
    assert "no data" in svg_chart("Empty", {"a": []})


def test_series_from_the_timeline() -> None:
    samples = storm_timeline().samples
    assert rate_of(samples, "connects") == [(1.0, 200.0), (2.0, 200.0), (3.0, 200.0)]
    per_shard = shard_series(samples)
    assert per_shard["shard-a"] == [(0.0, 500), (1.0, 500)]  # ends where it stopped answering
    assert len(per_shard["shard-b"]) == 4
    assert len(charts(samples, {})) == 7


def test_ticks_are_round_and_reach_the_top() -> None:
    assert nice_ticks(1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(1001)[-1] == 1200
    assert nice_ticks(7.3) == [0, 2, 4, 6, 8]
    assert nice_ticks(0.04) == [0, 0.01, 0.02, 0.03, 0.04]


def test_the_chart_has_a_gridline_and_a_label_per_tick() -> None:
    root = ET.fromstring(svg_chart("Connected", {"connected": [(0, 0), (60, 1000)]}))
    labels = [text.text for text in root.findall(f"{SVG}text")]
    assert {"0", "200", "400", "600", "800", "1,000"} <= set(labels)
    assert {"0 s", "20 s", "40 s", "60 s"} <= set(labels)
    assert len(root.findall(f"{SVG}line")) == 6 + 7  # gridlines across and along


def test_legends_wrap_inside_the_chart_never_clipped() -> None:
    names = [f"net_blackhole (close 100{i}) on a long cause name" for i in range(6)]
    root = ET.fromstring(svg_chart("Drops", {name: [(0, 1), (1, 2)] for name in names}))
    legend = [t for t in root.findall(f"{SVG}text") if t.text in names]
    assert [t.text for t in legend] == names  # every name whole
    assert all(float(t.attrib["x"]) + 6.5 * len(names[0]) <= WIDTH for t in legend)
    assert len({t.attrib["y"] for t in legend}) > 1  # wrapped onto several rows


def test_drops_and_failed_tries_per_cause() -> None:
    line = Timeline()
    for t, (resets, refused) in enumerate([(0, 0), (2, 0), (5, 4)]):
        snapshot = fleet(10, 10)
        snapshot["drops"] = {"net_reset": resets} if resets else {}
        snapshot["connect_failures"] = {"http 503": refused} if refused else {}
        line.add(float(t), snapshot, {})
    assert rates_by_cause(line.samples, "drops") == {"net_reset": [(1.0, 2.0), (2.0, 3.0)]}
    assert rates_by_cause(line.samples, "failed") == {"http 503": [(1.0, 0.0), (2.0, 4.0)]}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_report_has_the_verdict_and_every_plot() -> None:
    line = storm_timeline()
    summary = {
        "host": "ws://127.0.0.1:8080",
        "duration_s": 4.0,
        "gateways": {"connected": 1000, "peak_connected": 1000, "connects": 1600},
        "reconnects": 500,
        "unexpected_drops": 500,
        "alerts": {"sent": 30, "acked": 30, "lost": 0},
        "verdict": {"failures": ["reconnect_99pct_s: measured 31 s"], "ok": False},
        "verdicts": [
            at_most("reconnect_99pct_s", 31, 30, "s").as_dict(),
            at_least("connected_at_kill", 1000, 990).as_dict(),
        ],
    }
    summary["scenarios"] = ["ReconnectStorm"]
    summary["command"] = "locust -f scenarios/reconnect_storm.py --headless -u 1000"
    summary["started_at"] = "2026-12-03 08:00:00 UTC"
    page = render(summary, line.as_dict())
    parser = _Collector()
    parser.feed(page)
    text = " ".join(parser.text)
    assert parser.tags.count("svg") == 5  # drops and failed tries: no data in this run
    assert "ReconnectStorm: FAIL" in text
    assert summary["command"] in text
    assert "2026-12-03 08:00:00 UTC" in text
    assert "reconnect_99pct_s" in text
    assert "31 s" in text
    assert "<= 30 s" in text
    assert "Connections per shard" in text


def test_a_run_with_a_rollout_plots_its_progress() -> None:
    rollout = {"progress": [(10.0, 3, 0, 0), (11.0, 5, 2, 1), (12.0, 0, 7, 1)]}
    chart = rollout_chart(rollout, {"rollout_created": 10.0})
    parser = _Collector()
    parser.feed(chart)
    assert parser.tags.count("svg") == 1
    assert "Update rollout" in " ".join(parser.text)
    assert chart.count("<polyline") == 3
    assert rollout_chart(None, {}) == ""
