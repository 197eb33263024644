"""A run's timeline: one sample a second of the fleet (summed over workers), the alert latency
of that second and, with the embedded stack, each shard's figures and HAProxy's 5xx count;
plus marks (named moments, e.g. when a shard was killed). Scenarios read their verdicts
from it and the HTML report plots it.

The samples' connected count is what the workers had last reported (every 3 s, later on
busy cores), so beside it the timeline keeps the gateways' own count to a tenth of a
second: each process counts the changes of its connected gauge per tenth of a second of
wall time (``FleetStats.connected_changes``, the one clock all workers share) and the sum
of those changes is the fleet's count at any moment.

Pure: the plugin's sampler greenlet fetches the figures and hands them in.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.devstack.stack import metric_sum

Sample = dict[str, Any]
ShardFigures = dict[str, float]
Point = tuple[float, int]
"""(seconds into the run, gateways connected then)."""
TICKS_PER_SECOND = 10  # the resolution of the gateways' own count


def shard_figures(metrics_text: str) -> ShardFigures:
    """What the timeline keeps of a shard's /metrics page."""
    disconnects = "fleet_shard_disconnects_total"
    return {
        "connections": metric_sum(metrics_text, "fleet_shard_connections") or 0.0,
        "connects": metric_sum(metrics_text, "fleet_shard_connects_total") or 0.0,
        # Upgrades refused by admission control (503 + Retry-After): the shed ones.
        "shed": metric_sum(metrics_text, "fleet_shard_rejected_upgrades_total", reason="overloaded")
        or 0.0,
        "reaped": metric_sum(metrics_text, disconnects, reason="keepalive_timeout") or 0.0,
    }


def haproxy_5xx(metrics_text: str) -> float:
    """5xx answers HAProxy passed on or made for the shards' backend."""
    name = "haproxy_backend_http_responses_total"
    return metric_sum(metrics_text, name, proxy="shards", code="5xx") or 0.0


def percentile(counts: Mapping[int, int], fraction: float) -> float | None:
    """The ``fraction`` percentile of a {value: occurrences} histogram; None when empty."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = fraction * total, 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return float(value)
    return float(max(counts))


@dataclass
class Timeline:
    origin: float = 0.0
    """The wall time (``time.time()``) of t = 0."""
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    changes: Counter[int] = field(default_factory=Counter)
    """Net change of the fleet's connected count per tick of wall time (``tick``)."""
    _alert_times: dict[int, int] = field(default_factory=dict)

    def add(
        self,
        t: float,
        fleet: Mapping[str, Any],
        alert_times: Mapping[int, int],
        shards: Mapping[str, ShardFigures | None] | None = None,
        haproxy: float | None = None,
    ) -> Sample:
        """One sample at ``t`` s into the run. ``alert_times`` is Locust's cumulative histogram
        of alert latencies (ms): the difference to the previous one is this second's."""
        new = {ms: n - self._alert_times.get(ms, 0) for ms, n in alert_times.items()}
        self._alert_times = dict(alert_times)
        sample: Sample = {
            "t": round(t, 2),
            "connected": fleet["connected"],
            "connects": fleet["connects"],
            "reconnects": fleet["reconnects"],
            "unexpected_drops": fleet["unexpected_drops"],
            "drops": dict(fleet["drops"]),  # by cause, since the start
            "failed": dict(fleet["connect_failures"]),  # failed tries by cause, likewise
            "alerts_acked": fleet["alerts"].get("acked", 0),
            "alert_p50_ms": percentile(new, 0.5),
            "alert_p99_ms": percentile(new, 0.99),
            "shards": dict(shards or {}),
            "haproxy_5xx": haproxy,
        }
        self.samples.append(sample)
        return sample

    def mark(self, name: str, t: float) -> None:
        self.marks[name] = round(t, 2)

    def count_changes(self, changes: Mapping[int, int]) -> None:
        """Add a process's changes of its connected count since it last handed them in."""
        self.changes.update(changes)

    def connected(self) -> list[Point]:
        """The gateways' own count after each tick in which it changed."""
        ticks = sorted(self.changes)
        counts = itertools.accumulate(self.changes[tick] for tick in ticks)
        return [
            (round((tick + 1) / TICKS_PER_SECOND - self.origin, 2), count)
            for tick, count in zip(ticks, counts, strict=True)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {"marks": self.marks, "samples": self.samples, "connected": self.connected()}


def tick(wall_time: float) -> int:
    """The tick ``wall_time`` falls in: all processes of a run count changes in the same."""
    return int(wall_time * TICKS_PER_SECOND)


def count_at(points: Sequence[Point], t: float) -> int | None:
    """The connected count at ``t`` (after the last change before it); None before any."""
    earlier = [count for at, count in points if at <= t]
    return earlier[-1] if earlier else None


def recovery_time(points: Sequence[Point], since: float, target: float) -> float | None:
    """Seconds from ``since`` until the connected count, once fallen below ``target``, is
    back at it (0 if it never fell below); None if it never is, or nothing was counted
    since. The first return counts: the gateways stopping at the end are no new fall."""
    after = [(t, count) for t, count in points if t > since]
    if not after:
        return None
    fell = next((i for i, (_t, count) in enumerate(after) if count < target), None)
    if fell is None:
        return 0.0
    back = next((t for t, count in after[fell:] if count >= target), None)
    return None if back is None else round(back - since, 2)


def peak_rate(samples: Sequence[Sample], key: str, since: float = 0.0) -> float | None:
    """The highest per-second increase of counter ``key`` between consecutive samples from
    ``since``; None with fewer than two samples."""
    after = [s for s in samples if s["t"] >= since]
    rates = [
        (b[key] - a[key]) / (b["t"] - a["t"])
        for a, b in itertools.pairwise(after)
        if b["t"] > a["t"]
    ]
    return max(rates) if rates else None


def last_known(samples: Sequence[Sample], key: str) -> float | None:
    """Sum over shards of each one's last reported ``key``: a killed shard counts with what it
    said before it died. None when no shard was ever sampled."""
    last: dict[str, float] = {}
    for sample in samples:
        for name, figures in sample["shards"].items():
            if figures is not None:
                last[name] = figures[key]
    return sum(last.values()) if last else None
