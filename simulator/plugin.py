"""Locust integration: options, the embedded stack, fleet accounting across workers, the
"Gateways" web UI tab, headless progress lines, the end-of-run summary and exit code.

Imported by ``simulator.user``, so every scenario that uses ``GatewayUser`` gets it. Hooks are
registered once, at import. Master and local runners own the embedded stack and the summary;
local and worker runners own gateways.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from backend.stack import LocalStack, StackConfig, count_or_auto
from simulator import audit
from simulator.metrics import SimulatorMetrics
from simulator.stats import FleetStats, format_progress, merge_snapshots, table_rows, verdict

log = logging.getLogger("fleet.simulator")

DRAIN = "fleet_drain"  # master -> workers: drain now, then send FINAL_REPORT
FINAL_REPORT = "fleet_final"
PROGRESS_INTERVAL = 10.0


class PluginState:
    """What this process knows beyond Locust's own state."""

    def __init__(self) -> None:
        self.stats = FleetStats()
        self.stack: LocalStack | None = None
        self.run_dir: Path | None = None
        self.worker_snapshots: dict[str, dict[str, Any]] = {}
        self.pending = 0  # alerts still in outboxes after the drain
        self.final_reports: dict[str, dict[str, Any]] = {}  # master: workers' after the drain
        self.drained = False
        self.fleet_peak = 0  # master: the peak of the sum, not the sum of workers' peaks
        self.started = time.monotonic()


state = PluginState()


# --- options --------------------------------------------------------------------------------


# (flag, help, extra keyword arguments); every option is also LOCUST_<NAME> in the environment.
_HIDDEN = {"include_in_web_ui": False}
OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--network-mix", "network profiles by share, e.g. 'lte:70,3g:25,gprs:5' (wired, lte, "
     "3g, gprs, satellite, or from --network-profiles); default: the scenario's", {}),
    ("--network-profiles", "TOML file of custom network profiles", {"default": ""}),
    ("--alerts-per-hour", "alerts raised per gateway per hour (each is cleared later)",
     {"type": float}),
    ("--status-interval", "seconds between status reports", {"type": float}),
    ("--fleet-prefix", "device id prefix", {"default": "gw"}),
    ("--jwt-secret", "HS256 secret to sign device tokens; the embedded stack makes its own",
     {"default": "", "is_secret": True}),
    ("--ca-file", "CA certificate to trust for wss://", {"default": ""}),
    ("--source-addresses", "local addresses to connect from: a,b,c or a range like "
     "127.0.0.2-127.0.0.9; 'auto' spreads loopback targets over 8", {"default": "auto"}),
    ("--shards", "shard processes of the embedded stack (used when there is no --host); "
     "auto: enough for -u gateways, at least 2", {"default": "auto", **_HIDDEN}),
    ("--shard-option", "KEY=VALUE for the embedded shards, e.g. keepalive_timeout=10 "
     "(repeatable)", {"action": "append", "default": [], **_HIDDEN}),
    ("--haproxies", "HAProxy processes in front of the embedded shards, on one port; 0: "
     "gateways connect straight to the shards; auto: enough for -u gateways",
     {"default": "auto", **_HIDDEN}),
    ("--tls", "the embedded stack's HAProxy terminates TLS (wss://), with a local CA that "
     "gateways trust", {"action": "store_true", "default": False, **_HIDDEN}),
    ("--run-dir", "where logs, NATS storage and summary.json go (default runs/sim-<time>)",
     {"default": "", **_HIDDEN}),
    ("--drain-timeout", "at the end, seconds to wait for outstanding alert acks",
     {"type": float, "default": 10.0}),
    ("--metrics-port", "serve Prometheus metrics on this port (+ worker index); 0: off",
     {"type": int, "default": 0, **_HIDDEN}),
    ("--seed", "seed the simulation (per process: seed + worker index)",
     {"type": int, **_HIDDEN}),
)  # fmt: skip


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    # Locust's own parser, not an argument group: only it knows include_in_web_ui/is_secret.
    for flag, help_text, extra in OPTIONS:
        parser.add_argument(flag, help=help_text, **{"default": None, **extra})


# --- start ----------------------------------------------------------------------------------


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library, without Locust's command line
        return
    runner = environment.runner
    is_worker = isinstance(runner, WorkerRunner)
    if not is_worker:
        state.run_dir = Path(options.run_dir or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}")
        options.fleet_run_id = secrets.token_hex(3)
        if not environment.host:
            start_embedded_stack(environment)
        elif not options.jwt_secret:
            # SystemExit passes Locust's handler guard: stop before any gateway tries.
            sys.exit("--host given without --jwt-secret (or LOCUST_JWT_SECRET): gateways "
                     "need it to sign their device tokens")  # fmt: skip
        _extend_web_ui(environment)
        if options.headless:
            gevent.spawn(_print_progress, environment).link_exception(_crashed)
    if isinstance(runner, MasterRunner):
        runner.register_message(FINAL_REPORT, _final_report_received)
    if is_worker:
        runner.register_message(DRAIN, drain_here, concurrent=True)
    if options.metrics_port and not isinstance(runner, MasterRunner):
        metrics = SimulatorMetrics(state.stats)
        environment.events.request.add_listener(metrics.observe)
        port = options.metrics_port + (runner.worker_index if is_worker else 0)
        metrics.serve(port)
        log.info("simulator metrics on :%d/metrics", port)


def start_embedded_stack(environment: Environment) -> None:
    """No --host: run NATS, shards and HAProxy locally for the length of the run."""
    options = environment.parsed_options
    assert options is not None
    assert state.run_dir is not None
    try:
        config = StackConfig.sized(
            state.run_dir,
            options.num_users or 0,
            count_or_auto(options.shards),
            count_or_auto(options.haproxies),
            shard_options=dict(_key_value(item) for item in options.shard_option),
            tls=options.tls,
        )
    except ValueError as exc:
        sys.exit(f"the embedded stack cannot start: {exc}")
    log.info(
        "starting the embedded stack (NATS, %d shards, %d HAProxy) in %s",
        config.shards,
        config.haproxies,
        state.run_dir,
    )
    state.stack = stack = LocalStack(config).start()
    # Like a real deployment: every gateway on HAProxy's one public port.
    environment.host = stack.public_url or ",".join(stack.shard_urls)
    # Both reach workers with the spawn message.
    options.jwt_secret = stack.jwt_secret
    if stack.ca_file is not None:
        options.ca_file = str(stack.ca_file)
    log.info("embedded stack ready: %s", environment.host)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--shard-option {item!r}: expected KEY=VALUE")
    return key, value


# --- accounting across processes -------------------------------------------------------------


@events.report_to_master.add_listener
def on_report_to_master(data: dict[str, Any], **_: Any) -> None:
    data["fleet"] = state.stats.snapshot()


@events.worker_report.add_listener
def on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    if "fleet" in data and client_id not in state.final_reports:
        state.worker_snapshots[client_id] = data["fleet"]
        connected = sum(snapshot["connected"] for snapshot in state.worker_snapshots.values())
        state.fleet_peak = max(state.fleet_peak, connected)


def _final_report_received(environment: Environment, msg: Any, **_: Any) -> None:
    state.worker_snapshots[msg.node_id] = state.final_reports[msg.node_id] = msg.data


def totals(environment: Environment) -> dict[str, Any]:
    if isinstance(environment.runner, MasterRunner):
        merged = merge_snapshots(state.worker_snapshots.values())
        merged["peak_connected"] = state.fleet_peak  # sampled at each report: a lower bound
        return merged
    snapshot = state.stats.snapshot()
    snapshot["pending"] = state.pending
    return snapshot


# --- stop -----------------------------------------------------------------------------------


@events.test_stopping.add_listener
def on_test_stopping(environment: Environment, **_: Any) -> None:
    """Before Locust kills the gateways: stop new alerts and let outstanding acks arrive.
    A master asks its workers to drain and waits for their final figures."""
    if isinstance(environment.runner, MasterRunner):
        _drain_workers(environment.runner, _drain_timeout(environment))
    else:
        drain_here(environment)


def drain_here(environment: Environment, **_: Any) -> None:
    from simulator.user import fleets_of

    fleets = fleets_of(environment)
    if state.drained or not fleets:
        return
    state.drained = True
    timeout = _drain_timeout(environment)
    log.info("draining: waiting up to %.0fs for outstanding alert acks", timeout)
    pending = [gevent.spawn(fleet.drain, timeout) for fleet in fleets]
    gevent.joinall(pending)
    state.pending = sum(greenlet.value or 0 for greenlet in pending)
    if isinstance(environment.runner, WorkerRunner):
        final = state.stats.snapshot()
        final["pending"] = state.pending
        environment.runner.send_message(FINAL_REPORT, final)


def _drain_workers(runner: MasterRunner, timeout: float) -> None:
    expected = runner.worker_count
    if not expected:
        return
    runner.send_message(DRAIN)
    deadline = time.monotonic() + timeout + 5  # their drain, plus the messages' way back
    while len(state.final_reports) < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)


def _drain_timeout(environment: Environment) -> float:
    options = environment.parsed_options
    return float(options.drain_timeout) if options else 10.0


@events.quitting.add_listener
def on_quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    try:
        if state.run_dir is not None:
            summary = build_summary(environment)
            print_summary(summary)
            write_summary(summary, state.run_dir / "summary.json")
            if summary["verdict"]["failures"]:
                environment.process_exit_code = 1
    finally:
        if state.stack is not None:
            state.stack.stop()
            state.stack = None


def build_summary(environment: Environment) -> dict[str, Any]:
    fleet = totals(environment)
    alerts = dict(fleet.get("alerts", {}))
    alerts["pending"] = fleet.get("pending", 0)
    stored = None
    if state.stack is not None and environment.parsed_options is not None:
        stored = audit.audit_stream(state.stack.nats_url, environment.parsed_options.fleet_run_id)
        alerts["stored"] = stored["unique"]
        alerts["duplicated"] = stored["duplicates"]
        # Acked means the stream had stored it: an acked alert missing from it is lost.
        alerts["lost"] = max(0, alerts.get("acked", 0) - stored["unique"])
    stats = environment.stats.total
    failures = verdict(fleet, alerts)
    return {
        "host": environment.host,
        "duration_s": round(time.monotonic() - state.started, 1),
        "gateways": {key: fleet[key] for key in ("connected", "peak_connected", "connects")},
        "reconnects": fleet["reconnects"],
        "connect_failures": fleet["connect_failures"],
        "drops": fleet["drops"],
        "unexpected_drops": fleet["unexpected_drops"],
        "alerts": alerts,
        "commands": fleet["commands"],
        "updates": fleet["updates"],
        "requests": {"count": stats.num_requests, "failures": stats.num_failures},
        "latency_ms": _latencies(environment),
        "verdict": {"failures": failures, "ok": not failures},
    }


def _latencies(environment: Environment) -> dict[str, dict[str, float]]:
    result = {}
    for (name, _method), entry in sorted(environment.stats.entries.items()):
        if entry.num_requests:
            result[name] = {
                "count": entry.num_requests,
                "p50": entry.get_response_time_percentile(0.5),
                "p95": entry.get_response_time_percentile(0.95),
                "p99": entry.get_response_time_percentile(0.99),
                "max": entry.max_response_time,
            }
    return result


def print_summary(summary: Mapping[str, Any]) -> None:
    alerts = summary["alerts"]
    lines = [
        "",
        "fleet summary",
        f"  gateways      peak connected {summary['gateways']['peak_connected']}, "
        f"connects {summary['gateways']['connects']}, reconnects {summary['reconnects']}",
        f"  drops         {_counts(summary['drops'])} (unexpected {summary['unexpected_drops']})",
        f"  failed tries  {_counts(summary['connect_failures'])}",
        "  alerts        " + ", ".join(f"{k} {v}" for k, v in alerts.items()),
        f"  commands      {summary['commands']}; updates {_counts(summary['updates'])}",
        f"  verdict       {'OK' if summary['verdict']['ok'] else 'FAILED'}",
        *(f"    - {failure}" for failure in summary["verdict"]["failures"]),
    ]
    print("\n".join(lines), flush=True)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


def write_summary(summary: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("summary written to %s", path)


def _print_progress(environment: Environment) -> None:
    while True:
        gevent.sleep(PROGRESS_INTERVAL)
        log.info("%s", format_progress(totals(environment)))


def _crashed(greenlet: gevent.Greenlet) -> None:
    log.error("simulator greenlet crashed: %r", greenlet.exception)


# --- web UI -----------------------------------------------------------------------------------


def _extend_web_ui(environment: Environment) -> None:
    """A "Gateways" tab next to Locust's own: the connection gauge and fleet accounting."""
    web_ui = environment.web_ui
    if web_ui is None:
        return
    web_ui.template_args["extendedTabs"] = [{"title": "Gateways", "key": "gateways"}]
    web_ui.template_args["extendedTables"] = [
        {"key": "gateways", "structure": [
            {"key": "metric", "title": "Metric"}, {"key": "value", "title": "Value"},
        ]},
    ]  # fmt: skip

    @web_ui.app.after_request
    def add_fleet_rows(response: Any) -> Any:
        from flask import request

        if request.path != "/stats/requests" or not response.is_json:
            return response
        rows = [{"metric": k, "value": v} for k, v in table_rows(totals(environment))]
        body = {**response.json, "extended_stats": [{"key": "gateways", "data": rows}]}
        response.set_data(json.dumps(body))
        return response
