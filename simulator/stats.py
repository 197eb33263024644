"""Fleet-wide accounting of one simulator process, and its merge across Locust workers.

Latencies (connect, reconnect, alert end to end, command, ping) go through Locust's one
event hook, ``events.request.fire``, so they land in Locust's statistics; this module keeps
what Locust has no place for: the connection gauge, drops by cause and alert accounting.

An event costs Locust ~20 us; at 100,000 gateways the pings, connect steps and a burst's
alerts would be thousands a second, so those are sampled (``sample``): at most
``samples_per_second`` of each name per process go to Locust, the rest are only counted
(``unsampled``). Their latency percentiles stay Locust's; their counts there are samples.
Statuses carry no latency and are only counted. Failures always go to Locust.
Workers send an absolute snapshot with every report; the master sums the latest one of each.
A snapshot also gives the run's verdict, the headless progress line and the web UI table.
The connected gauge's changes per tick of wall time go with each report too, those since
the last one (``take_connected_changes``): the timeline adds them up to the fleet's count
at any moment, which the snapshots, up to a report interval old, cannot tell.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.timeline import tick

RequestHook = Callable[..., None]
REQUEST_TYPE = "WS"
SAMPLES_PER_SECOND = 100.0


def _no_hook(**_: Any) -> None:
    pass


@dataclass
class FleetStats:
    """Counters of one process. ``request_hook`` is Locust's ``events.request.fire``."""

    request_hook: RequestHook = _no_hook
    samples_per_second: float = SAMPLES_PER_SECOND
    clock: Callable[[], float] = time.time
    """Wall time: the clock the changes of ``connected`` are counted by, shared by workers."""
    connected: int = 0
    peak_connected: int = 0
    connects: int = 0
    reconnects: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    unexpected_drops: int = 0
    alerts: Counter[str] = field(default_factory=Counter)  # sent / acked / resent / refused
    commands: int = 0
    statuses: int = 0
    unsampled: Counter[str] = field(default_factory=Counter)  # successes not sent to Locust
    updates: Counter[str] = field(default_factory=Counter)  # success / failure
    updating: int = 0  # gateways between an update offer and their final result
    peak_updating: int = 0  # merged over workers: the sum of their peaks, an upper bound
    connected_changes: Counter[int] = field(default_factory=Counter)
    """Net change of ``connected`` per tick (``timeline.tick``) since they were last taken."""
    _windows: dict[str, list[float]] = field(default_factory=dict, repr=False)
    """Per sampled name: [start of its current one-second window, samples in it]."""

    def request(
        self, name: str, seconds: float, length: int = 0, error: BaseException | None = None
    ) -> None:
        report_request(self.request_hook, REQUEST_TYPE, name, seconds, length, error)

    def sample(self, name: str, seconds: float, now: float) -> None:
        """A success of a frequent kind: to Locust unless this second's samples are spent."""
        window = self._windows.get(name)
        if window is None or now - window[0] >= 1.0:
            self._windows[name] = [now, 1.0]
        elif window[1] < self.samples_per_second:
            window[1] += 1
        else:
            self.unsampled[name] += 1
            return
        report_request(self.request_hook, REQUEST_TYPE, name, seconds)

    def gateway_connected(self) -> None:
        self._count_connected(1)
        self.connects += 1
        self.peak_connected = max(self.peak_connected, self.connected)

    def gateway_dropped(self, cause: str, expected: bool) -> None:
        self._count_connected(-1)
        self.drops[cause] += 1
        if not expected:
            self.unexpected_drops += 1

    def update_started(self) -> None:
        self.updating += 1
        self.peak_updating = max(self.peak_updating, self.updating)

    def update_ended(self, outcome: str) -> None:
        """The gateway reported the final result, "success" or "failure"."""
        self.updating -= 1
        self.updates[outcome] += 1

    def gateway_stopped(self) -> None:
        """The run ended with this gateway connected: not a drop."""
        self._count_connected(-1)

    def _count_connected(self, change: int) -> None:
        self.connected += change
        self.connected_changes[tick(self.clock())] += change

    def take_connected_changes(self) -> dict[int, int]:
        """The changes of ``connected`` since the last call, for the timeline."""
        changes, self.connected_changes = dict(self.connected_changes), Counter()
        return changes

    def snapshot(self) -> dict[str, Any]:
        """Plain data for a worker report or the JSON summary."""
        return {
            "connected": self.connected,
            "peak_connected": self.peak_connected,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": dict(self.connect_failures),
            "drops": dict(self.drops),
            "unexpected_drops": self.unexpected_drops,
            "alerts": dict(self.alerts),
            "commands": self.commands,
            "statuses": self.statuses,
            "unsampled": dict(self.unsampled),
            "updates": dict(self.updates),
            "updating": self.updating,
            "peak_updating": self.peak_updating,
        }


def report_request(
    hook: RequestHook,
    request_type: str,
    name: str,
    seconds: float,
    length: int = 0,
    error: BaseException | None = None,
) -> None:
    """One request through Locust's hook, as ``events.request.fire`` takes it."""
    hook(
        request_type=request_type,
        name=name,
        response_time=seconds * 1000.0,
        response_length=length,
        exception=error,
        context={},
    )


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum snapshots field by field (dicts key by key); an empty input gives zeros."""
    total: dict[str, Any] = FleetStats().snapshot()
    for snapshot in snapshots:
        for key, value in snapshot.items():
            if isinstance(value, Mapping):
                merged = Counter(total.get(key, {}))
                merged.update(value)
                total[key] = dict(merged)
            else:
                total[key] = total.get(key, 0) + value
    return total


def verdict(fleet: Mapping[str, Any], alerts: Mapping[str, int]) -> list[str]:
    """Why the run failed (empty when it passed), from totals and the audited alerts."""
    failures = []
    if fleet["peak_connected"] == 0:
        failures.append("no gateway ever connected")
    if alerts.get("lost"):
        failures.append(f"{alerts['lost']} acked alerts are missing from the stream")
    if alerts.get("duplicated"):
        failures.append(f"{alerts['duplicated']} alerts were stored more than once")
    return failures


# What to check first for the failed-try causes an SRE meets most ("tcp" is a refused or
# timed-out TCP connect, "http N" the status an upgrade was refused with).
FAILURE_HINTS = {
    "http 401": "the backend refuses the device tokens: check --jwt-secret",
    "http 403": "the backend refuses the device tokens: check --jwt-secret and --fleet-prefix",
    "http 404": "no device endpoint at that address: check --host",
    "http 503": "the backend sheds connections: admission control, or no shard up behind HAProxy",
    "tcp": "nothing accepts connections at --host: is the backend up and the address right?",
    "tls": "the TLS handshake failed: check --ca-file and the host name in --host",
}


def failure_hint(cause: str) -> str | None:
    """What to check for a failed-try cause; None for causes with no common fix."""
    return FAILURE_HINTS.get(cause)


def failed_tries(failures: Mapping[str, int]) -> str:
    """ "http 401 117, tcp 3 (hint)": the counts by cause, with the hint of the commonest;
    "none" without a failed try."""
    if not failures:
        return "none"
    counts = ", ".join(f"{cause} {n}" for cause, n in sorted(failures.items()))
    hint = failure_hint(max(failures, key=lambda cause: failures[cause]))
    return counts + (f" ({hint})" if hint else "")


def format_progress(fleet: Mapping[str, Any]) -> str:
    """One headless progress line."""
    drops = ", ".join(f"{cause} {n}" for cause, n in sorted(fleet["drops"].items())) or "none"
    alerts, failures = fleet["alerts"], fleet["connect_failures"]
    line = (
        f"gateways connected {fleet['connected']} (peak {fleet['peak_connected']}) | "
        f"reconnects {fleet['reconnects']} | drops: {drops} | alerts sent {alerts.get('sent', 0)} "
        f"acked {alerts.get('acked', 0)} resent {alerts.get('resent', 0)}"
    )
    return f"{line} | failed tries: {failed_tries(failures)}" if failures else line


def table_rows(fleet: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(metric, value) rows of the web UI's "Gateways" tab."""
    rows: list[tuple[str, Any]] = [
        ("connected now", fleet["connected"]),
        ("peak connected", fleet["peak_connected"]),
        ("connects", fleet["connects"]),
        ("reconnects", fleet["reconnects"]),
        ("unexpected drops", fleet["unexpected_drops"]),
    ]
    rows += [(f"drops: {cause}", n) for cause, n in sorted(fleet["drops"].items())]
    rows += [
        (f"failed tries: {why}", _with_hint(n, failure_hint(why)))
        for why, n in sorted(fleet["connect_failures"].items())
    ]
    rows += [(f"alerts {what}", n) for what, n in sorted(fleet["alerts"].items())]
    return rows


def _with_hint(count: int, hint: str | None) -> int | str:
    return f"{count} ({hint})" if hint else count
