"""The verdict checks of each SRE scenario, from a finished run's record.

Every threshold has a default here and can be overridden per run with ``--threshold
NAME=VALUE`` (the check's name). Pure, like ``simulator.verdicts``: tests build records by
hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator import timeline as tl
from simulator.timeline import Timeline
from simulator.verdicts import AT_MOST, Check, judge

SHARD_KILLED = "shard_killed"  # the timeline mark the storm sets
ROLLOUT_CREATED, ROLLOUT_FINISHED = "rollout_created", "rollout_finished"
ALERT_GOAL = 20_000.0  # alerts/s end to end the backend is meant to sustain
# Every run's bounds. After the drain a healthy backend has stored all but the alerts of
# gateways caught in an offline spell; a backend that refuses or loses them fails.
ALERTS_UNSTORED_PCT = 1.0
# Failed connection tries (refused, 5xx, timed out; not the network model's own faults) as
# a share of all tries: a storm's few HAProxy 503s pass, a shard refusing most devices not.
CONNECT_FAILED_PCT = 5.0
NETWORK_FAULT = "net_"  # the cause prefix of failures the simulated link itself caused


@dataclass(frozen=True)
class RunRecord:
    """What a scenario's checks may look at once the run is over."""

    summary: Mapping[str, Any]
    timeline: Timeline
    users: int
    """Gateways asked for (-u)."""
    shard_settings: Mapping[str, float] = field(default_factory=dict)
    """The embedded shards' accept_rate and accept_burst; empty with --host."""
    shards: int = 0
    overrides: Mapping[str, float] = field(default_factory=dict)

    def threshold(self, name: str, default: float) -> float:
        return self.overrides.get(name, default)

    def latency(self, name: str, key: str) -> float | None:
        entry = self.summary["latency_ms"].get(name)
        return None if entry is None else float(entry[key])

    def alerts(self, key: str) -> float | None:
        value = self.summary["alerts"].get(key)
        return None if value is None else float(value)


def check(record: RunRecord, name: str, measured: float | None, rule: str, default: float,
          unit: str = "") -> Check:  # fmt: skip
    """A check whose threshold the run may override."""
    return judge(name, measured, rule, record.threshold(name, default), unit)


def fleet_checks(record: RunRecord) -> list[Check]:
    """Every run's: the alerts gateways raised were stored, the backend took their tries."""
    unstored, failed = _unstored_pct(record), _connect_failed_pct(record)
    return [
        check(record, "alerts_unstored_pct", unstored, "<=", ALERTS_UNSTORED_PCT, "%"),
        check(record, "connect_failed_pct", failed, "<=", CONNECT_FAILED_PCT, "%"),
    ]


def _unstored_pct(record: RunRecord) -> float:
    """Raised alerts (sent, or refused by a full outbox) missing from the stream after the
    drain; with --host, where the stream is not read back, those still unacked. Alerts held
    by a gateway whose simulated link was down at the end wait for the link, not the
    backend: they count neither way."""
    alerts = record.summary["alerts"]
    held = alerts.get("pending_link_down", 0)
    raised = alerts.get("sent", 0) + alerts.get("refused", 0) - held
    stored = alerts.get("stored")
    if stored is None:
        unstored = alerts.get("pending", 0) - held + alerts.get("refused", 0)
    else:
        unstored = raised - stored
    return 100.0 * max(0, unstored) / raised if raised > 0 else 0.0


def _connect_failed_pct(record: RunRecord) -> float | None:
    """Failed tries over all tries (failed ones and completed handshakes); None: no try."""
    failures: Mapping[str, int] = record.summary["connect_failures"]
    failed = sum(n for cause, n in failures.items() if not cause.startswith(NETWORK_FAULT))
    tries = record.summary["gateways"]["connects"] + sum(failures.values())
    return 100.0 * failed / tries if tries else None


def no_loss(record: RunRecord) -> list[Check]:
    """Acked alerts all in the stream, none twice (needs the embedded stack's stream)."""
    return [
        check(record, "alerts_lost", record.alerts("lost"), "<=", 0),
        check(record, "alerts_duplicated", record.alerts("duplicated"), "<=", 0),
    ]


def storm_checks(record: RunRecord) -> list[Check]:
    """After one of K shards is killed: how fast the fleet is back, within the admission
    budget of the survivors, with no 5xx beyond shedding and no alert lost."""
    samples, killed = record.timeline.samples, record.timeline.marks.get(SHARD_KILLED)
    # The gateways' own count to a tenth of a second, not the workers' last reports.
    count = record.timeline.connected()
    target = tl.count_at(count, killed) if killed is not None else None
    since = killed if killed is not None else float("inf")
    per_shard = record.shard_settings.get("accept_rate", 0) + record.shard_settings.get(
        "accept_burst", 0
    )
    shed, answered_5xx = tl.last_known(samples, "shed"), _last(samples, "haproxy_5xx")
    unexplained = None if shed is None or answered_5xx is None else answered_5xx - shed
    return [
        check(record, "connected_at_kill", target, ">=", 0.99 * record.users, "gateways"),
        check(record, "reconnect_99pct_s", _recovery(count, since, target, 0.99), "<=", 30, "s"),
        check(record, "reconnect_100pct_s", _recovery(count, since, target, 1.0), "<=", 60, "s"),
        # A token bucket admits at most burst + rate in a second, on each surviving shard.
        check(
            record,
            "peak_accept_per_s",
            tl.peak_rate(samples, "connects", since),
            "<=",
            per_shard * max(record.shards - 1, 1),
            "/s",
        ),
        check(record, "haproxy_5xx_beyond_shed", unexplained, "<=", 0),
        *no_loss(record),
        *fleet_checks(record),
    ]


def _recovery(
    connected: list[tl.Point], since: float, target: float | None, share: float
) -> float | None:
    return None if target is None else tl.recovery_time(connected, since, share * target)


def _last(samples: list[tl.Sample], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return values[-1] if values else None


def burst_checks(record: RunRecord) -> list[Check]:
    """Alerts end to end into the durable stream, counted by reading the stream back."""
    return [
        check(record, "alerts_per_s_stored", record.alerts("stored_per_s"), ">=", ALERT_GOAL, "/s"),
        check(record, "alert_p50_ms", record.latency("alert", "p50"), "<=", 250, "ms"),
        check(record, "alert_p99_ms", record.latency("alert", "p99"), "<=", 2000, "ms"),
        *no_loss(record),
        *fleet_checks(record),
    ]


def peak_connected(record: RunRecord, share: float) -> Check:
    """At some point at least ``share`` of the run's gateways were connected at once."""
    peak = record.summary["gateways"]["peak_connected"]
    return check(record, "peak_connected", peak, ">=", share * record.users, "gateways")


def soak_checks(record: RunRecord) -> list[Check]:
    """Held connections stay up; blackholed ones that died were reaped by the shards'
    keep-alive (not by anything else, and none escaped it)."""
    drops: Mapping[str, int] = record.summary["drops"]
    deaths = sum(n for cause, n in drops.items() if cause.startswith("net_blackhole"))
    reaped = tl.last_known(record.timeline.samples, "reaped")
    unreaped = None if reaped is None else max(0.0, deaths - reaped)
    return [
        peak_connected(record, share=1.0),
        check(record, "unexpected_drops", record.summary["unexpected_drops"], "<=", 0),
        check(record, "ping_p99_ms", record.latency("ping", "p99"), "<=", 1000, "ms"),
        check(record, "blackhole_deaths_not_reaped", unreaped, "<=", 0),
        *no_loss(record),
        *fleet_checks(record),
    ]


def day_checks(record: RunRecord) -> list[Check]:
    """A mixed fleet on good and bad links through a day: it connects, stays, loses nothing."""
    return [
        peak_connected(record, share=0.99),
        check(
            record, "connect_p99_ms", record.latency("connect: handshake", "p99"), "<=", 5000, "ms"
        ),
        check(
            record,
            "unexpected_drops",
            record.summary["unexpected_drops"],
            "<=",
            0.01 * record.users,
        ),
        *no_loss(record),
        # On flaky links a device can go offline between being listed and being asked, or
        # sit in an offline spell past the command's deadline: some actions fail with a
        # clear error (409, 504). A broken operator path fails them all.
        check(record, "operator_failed_pct", _operator_failed_pct(record), "<=", 25, "%"),
        check(
            record,
            "rollout_failures_without_reason",
            (record.summary.get("rollout") or {}).get("failures_without_reason"),
            "<=",
            0,
        ),
        *fleet_checks(record),
    ]


def remote_checks(record: RunRecord) -> list[Check]:
    """Operators' streams into houses on flaky links: most succeed, none delivers wrong
    bytes, and the first byte comes soon (a GPRS or satellite link's latency included)."""
    remote = record.summary.get("remote") or {}
    streams = remote.get("streams")
    success = 100.0 * (streams - remote["failed"]) / streams if streams else None
    first_byte = record.latency("remote first byte", "p99")
    return [
        peak_connected(record, share=0.95),
        # A device can go offline between being listed and being reached, or stay in an
        # offline spell past the transfer's deadline: those streams fail, with a reason.
        check(record, "stream_success_pct", success, ">=", 90, "%"),
        check(record, "streams_corrupt", remote.get("corrupt") if streams else None, "<=", 0),
        check(record, "first_byte_p99_ms", first_byte, "<=", 10_000, "ms"),
        *no_loss(record),
        *fleet_checks(record),
    ]


def _operator_failed_pct(record: RunRecord) -> float | None:
    operator = record.summary.get("operator") or {}
    actions = operator.get("actions")
    return 100.0 * operator["failed"] / actions if actions else None


def rollout_checks(record: RunRecord) -> list[Check]:
    """An update rolled out to the fleet: it finished in time, never had more devices in
    flight than allowed (by its own counts and by the gateways'), and every failure the
    gateways reported is listed with its reason."""
    rollout: Mapping[str, Any] = record.summary.get("rollout") or {}
    counts: Mapping[str, int] = rollout.get("counts", {})
    total = rollout.get("total")
    unfinished = None if total is None else total - counts["success"] - counts["failure"]
    reported = record.summary["updates"].get("failure", 0)
    by_devices = rollout.get("failures_by_devices")
    unmatched = None if by_devices is None else abs(by_devices - reported)
    limit = rollout.get("max_concurrent", 0)
    return [
        check(record, "rollout_completion_s", rollout.get("completion_s"), "<=", 300, "s"),
        check(record, "rollout_peak_in_flight", rollout.get("peak_in_flight"), "<=", limit),
        check(record, "gateways_peak_updating", rollout.get("gateways_peak_updating"), "<=", limit),
        check(record, "rollout_devices_unfinished", unfinished, "<=", 0),
        check(record, "failures_without_reason", rollout.get("failures_without_reason"), "<=", 0),
        check(record, "failures_unmatched", unmatched, "<=", 0),
        *fleet_checks(record),
    ]


# Checks over counts of bad events or over peaks: these only grow during a run, so once one is
# over its "<=" threshold no later second can make it pass (what --abort-on-fail stops for).
ONLY_GROW = frozenset(
    {
        "unexpected_drops",
        "alerts_duplicated",
        "haproxy_5xx_beyond_shed",
        "peak_accept_per_s",
        "rollout_peak_in_flight",
        "gateways_peak_updating",
        "failures_without_reason",
        "rollout_failures_without_reason",
    }
)
# Tries with none connected before a failing connect_failed_pct counts as hopeless: the
# wrong --jwt-secret or --host, not a storm's shed tries.
HOPELESS_TRIES = 100


def cannot_pass(failed: Check, record: RunRecord) -> bool:
    """Whether a failing check, judged on a run still going, can no longer pass by its end."""
    if failed.ok or failed.measured is None:
        return False
    if failed.name in ONLY_GROW and failed.rule == AT_MOST:
        return True
    if failed.name == "connect_failed_pct":
        failures: Mapping[str, int] = record.summary["connect_failures"]
        connects = record.summary["gateways"]["connects"]
        return connects == 0 and sum(failures.values()) >= HOPELESS_TRIES
    return False
