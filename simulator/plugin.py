"""Locust integration: options, the embedded stack, fleet accounting across workers, the
"Gateways" web UI tab, headless progress lines, the end-of-run summary and exit code.

Imported by ``simulator.user``, so every scenario that uses ``GatewayUser`` gets it. Hooks are
registered once, at import. Master and local runners own the embedded stack and the summary;
local and worker runners own gateways. What a run knows beyond Locust's own state is one
``RunState`` per Locust ``Environment`` (``run_state``).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from weakref import WeakKeyDictionary

import gevent
from locust import User, argument_parser, events, runners
from locust.env import Environment
from locust.event import EventHook
from locust.html import get_html_report
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from backend.bus import natsauth
from backend.devstack import stackctl
from backend.devstack.prometheus import target_file
from backend.devstack.stack import (
    LocalStack,
    StackConfig,
    count_or_auto,
    fetch_metrics,
    shard_settings,
)
from simulator import report, verdicts, webui
from simulator.audit import audit_stream
from simulator.checks import RunRecord, cannot_pass, fleet_checks
from simulator.fleet import Fleet, parse_targets, source_addresses
from simulator.gateway.engine import Engine
from simulator.metrics import SimulatorMetrics
from simulator.network import load_profiles, scenario_mix
from simulator.operator import REQUEST_TYPE as OPERATOR
from simulator.remote import CORRUPT
from simulator.remote import REQUEST_TYPE as REMOTE
from simulator.stats import (
    REQUEST_TYPE,
    FleetStats,
    failed_tries,
    format_progress,
    merge_snapshots,
    table_rows,
    verdict,
)
from simulator.timeline import ShardFigures, Timeline, haproxy_5xx, shard_figures
from simulator.verdicts import Check

if TYPE_CHECKING:
    from simulator.rollout import RolloutWatch

log = logging.getLogger("fleet.simulator")

DRAIN = "fleet_drain"  # master -> workers: drain now, then send FINAL_REPORT
FINAL_REPORT = "fleet_final"
CONNECTED_CHANGES = "connected_changes"  # in worker reports: FleetStats.take_connected_changes
PROGRESS_INTERVAL = 10.0
TIMELINE_INTERVAL = 1.0
# Shard settings the verdicts judge against: the admission budget.
SHARD_SETTINGS = ("accept_rate", "accept_burst")


class RunState:
    """What this process knows of one run (one Locust ``Environment``) beyond Locust's own
    state."""

    def __init__(self) -> None:
        self.stats = FleetStats()
        self.fleets: dict[type[User], Fleet] = {}  # local/worker: each scenario class's gateways
        self.engine = Engine()  # local/worker: runs every gateway of this process
        self.stack: LocalStack | None = None
        self.run_dir: Path | None = None
        self.worker_snapshots: dict[str, dict[str, Any]] = {}
        # Alerts still in outboxes after the drain, and those of them on gateways whose
        # simulated link was down then.
        self.pending = {"pending": 0, "pending_link_down": 0}
        self.final_reports: dict[str, dict[str, Any]] = {}  # master: workers' after the drain
        self.drained = False
        self.fleet_peak = 0  # master: the peak of the sum, not the sum of workers' peaks
        self.started = time.monotonic()
        self.timeline = Timeline(origin=time.time())  # master/local: sampled every second
        self.shard_options: dict[str, str] = {}  # the embedded shards' settings
        self.sampler: gevent.Greenlet[[Environment], None] | None = None
        self.rollout: RolloutWatch | None = None  # the update rollout scenario's
        # A scenario's own greenlets: end with the test.
        self.scenario_tasks: list[gevent.Greenlet[..., None]] = []
        self.summary_text = ""  # printed last, after Locust's own tables
        self.aborted: str | None = None  # why --abort-on-fail ended the run
        self.quitting = False
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    def elapsed(self) -> float:
        """Seconds since this process started the run: the timeline's clock."""
        return time.monotonic() - self.started

    def start_scenario_task(self, run: Callable[..., None], *args: Any) -> None:
        """A scenario's own greenlet (an operator, a rollout watch): killed when the test
        stops, before the stack it talks to."""
        task = gevent.spawn(run, *args)
        task.link_exception(report_crash)
        self.scenario_tasks.append(task)


# Keyed weakly: a finished Environment (a test's, a library user's) takes its state with it.
_run_states: WeakKeyDictionary[Environment, RunState] = WeakKeyDictionary()


def run_state(environment: Environment) -> RunState:
    """The state of the run ``environment`` drives, made on first use (Locust's init)."""
    state = _run_states.get(environment)
    if state is None:
        state = _run_states[environment] = RunState()
    return state


def owns_stack(environment: Environment) -> bool:
    """Master and local runners own the embedded stack, the summary and the timeline."""
    return not isinstance(environment.runner, WorkerRunner)


Listener = TypeVar("Listener", bound=Callable[..., None])


def listener(hook: EventHook) -> Callable[[Listener], Listener]:
    """``@hook.add_listener`` that keeps the listener's type: Locust's own is unannotated."""

    def add(handler: Listener) -> Listener:
        hook.add_listener(handler)
        return handler

    return add


# Workers send a heartbeat a second; by default three missed ones make the master drop a worker
# and hand its users to the others. Ramping thousands of gateways keeps a worker's CPU busy for
# longer than that: allow 30 s (the setting Locust's maintainers point to for busy workers).
runners.HEARTBEAT_LIVENESS = max(runners.HEARTBEAT_LIVENESS, 30)
# A worker handling a spawn message calls default_args_dict() once per option it received,
# and each call builds Locust's whole argument parser: during a ramp, with a spawn message
# a second, that was most of a worker's CPU. Locust's own defaults never change: build once.
argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)


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
    ("--ping-interval", "seconds of server silence before a gateway pings (default 30)",
     {"type": float}),
    ("--keepalive-timeout", "seconds of silence before a gateway gives its connection up "
     "(default 75)", {"type": float}),
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
    ("--operator-api", "the embedded stack also runs the operator API: its fleet map's URL "
     "and token are printed", {"action": "store_true", "default": False, **_HIDDEN}),
    ("--run-dir", "where logs, NATS storage and summary.json go (default runs/sim-<time>)",
     {"default": "", **_HIDDEN}),
    ("--drain-timeout", "at the end, seconds to wait for outstanding alert acks",
     {"type": float, "default": 10.0}),
    ("--metrics-port", "serve Prometheus metrics on this port (+ worker index); 0: off",
     {"type": int, "default": 0, **_HIDDEN}),
    ("--seed", "seed the simulation (per process: seed + worker index)",
     {"type": int, **_HIDDEN}),
    ("--threshold", "NAME=VALUE: override a verdict check's threshold, e.g. "
     "reconnect_99pct_s=20 (repeatable)", {"action": "append", "default": [], **_HIDDEN}),
    ("--abort-on-fail", "end the run early, failed, once a verdict check can no longer pass "
     "(a count of bad events over its bound; every one of 100+ tries failed)",
     {"action": "store_true", "default": False, **_HIDDEN}),
    ("--alert-window", "alert burst: alerts each gateway keeps unacked (in flight)",
     {"type": int, "default": 8}),
    ("--kill-after", "reconnect storm: seconds after the fleet is connected to kill a shard",
     {"type": float, "default": 5.0, **_HIDDEN}),
    ("--recovery-time", "reconnect storm: seconds to watch after the kill before stopping",
     {"type": float, "default": 45.0, **_HIDDEN}),
    ("--rollout-after", "update rollout: seconds after the fleet is connected to start it",
     {"type": float, "default": 5.0, **_HIDDEN}),
    ("--rollout-max-concurrent", "update rollout: devices updating at once, at most",
     {"type": int, "default": 50, **_HIDDEN}),
    ("--rollout-rate", "update rollout: offers started per second, at most",
     {"type": float, "default": 20.0, **_HIDDEN}),
)  # fmt: skip


@listener(events.init_command_line_parser)
def add_options(parser: Any) -> None:
    # Locust's own parser, not an argument group: only it knows include_in_web_ui/is_secret.
    # Every option is also an environment variable, as Locust's own are (LOCUST_<NAME>).
    for flag, help_text, extra in OPTIONS:
        env_var = "LOCUST_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(
            flag, help=f"{help_text} [env: {env_var}]", env_var=env_var,
            **{"default": None, **extra},
        )  # fmt: skip


# --- start ----------------------------------------------------------------------------------


def _check_network_options(environment: Environment, options: Any) -> None:
    """``--network-profiles`` loads, and each scenario's network mix (``--network-mix`` or its
    own) parses as its gateways will parse it; a ValueError or OSError that says which value
    is wrong."""
    path = options.network_profiles
    loaded = load_profiles(Path(path)) if path else {}
    for user_class in environment.user_classes:
        spec = options.network_mix or getattr(user_class, "network_mix", "")
        if not spec:
            continue  # not a gateway (an operator user)
        try:
            scenario_mix(spec, getattr(user_class, "network_profiles", {}), loaded)
        except ValueError as exc:
            where = "--network-mix" if options.network_mix else f"{user_class.__name__}.network_mix"
            raise ValueError(f"{where} {spec!r}: {exc}") from None


def _check_threshold_names(environment: Environment, overrides: Mapping[str, float]) -> None:
    """Every --threshold names a check of this run: the checks, judged on an empty run."""
    if not overrides:
        return
    record = run_record(environment, build_summary(environment, audit=False))
    names = sorted(check.name for check in run_checks(environment, record)[0])
    if unknown := sorted(set(overrides) - set(names)):
        raise ValueError(
            f"--threshold {', '.join(unknown)}: no check of that name in this run "
            f"(its checks: {', '.join(names)})"
        )


def _check_target_options(environment: Environment, options: Any) -> None:
    """With --host: every URL parses, the source addresses and the CA file are usable."""
    if not environment.host:
        return
    targets = parse_targets(environment.host)
    source_addresses(options.source_addresses or "auto", targets)
    ca_file = options.ca_file
    if ca_file and not Path(ca_file).is_file():
        raise ValueError(f"--ca-file {ca_file!r}: no such file")


@listener(events.init)
def on_init(environment: Environment, **_: Any) -> None:
    state = run_state(environment)
    # Locust gives these two the report, not the Environment: bind them to the run's state.
    environment.events.report_to_master.add_listener(functools.partial(on_report_to_master, state))
    environment.events.worker_report.add_listener(functools.partial(on_worker_report, state))
    options = environment.parsed_options
    if options is None:  # used as a library, without Locust's command line
        return
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        state.run_dir = Path(options.run_dir or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}")
        options.fleet_run_id = secrets.token_hex(3)
        try:  # a typo fails now, before the stack starts, not after the run
            _check_threshold_names(environment, verdicts.parse_thresholds(options.threshold))
            _check_network_options(environment, options)
            _check_target_options(environment, options)
        except (OSError, ValueError) as exc:
            sys.exit(str(exc))
        if not environment.host:
            start_embedded_stack(environment)
        elif not options.jwt_secret:
            # SystemExit passes Locust's handler guard: stop before any gateway tries.
            sys.exit("--host given without --jwt-secret (or LOCUST_JWT_SECRET): gateways "
                     "need it to sign their device tokens")  # fmt: skip
        # Locust writes its HTML report itself at the end, if it knows where.
        options.html_file = options.html_file or str(state.run_dir / "locust.html")
        environment.events.quit.add_listener(functools.partial(print_summary_last, state))
        _extend_web_ui(environment)
        gevent.spawn(_watch, environment).link_exception(report_crash)
        if options.headless:
            # Our progress line every 10 s instead of Locust's table every 2 s, which buries
            # it; --print-stats brings the table back. Its final tables are printed either way.
            options.only_summary = options.only_summary or not options.print_stats
        state.sampler = gevent.spawn(_sample_timeline, environment)
        state.sampler.link_exception(report_crash)
    if isinstance(runner, MasterRunner):
        runner.register_message(FINAL_REPORT, _final_report_received)
    worker_index = 0
    if isinstance(runner, WorkerRunner):
        runner.register_message(DRAIN, drain_here, concurrent=True)
        worker_index = runner.worker_index
    if options.metrics_port and not isinstance(runner, MasterRunner):
        metrics = SimulatorMetrics(state.stats)
        environment.events.request.add_listener(metrics.observe)
        port = options.metrics_port + worker_index
        metrics.serve(port)
        log.info("simulator metrics on :%d/metrics", port)
        announce_to_prometheus(environment, port)


def announce_to_prometheus(environment: Environment, port: int) -> None:
    """When the run targets the local stack of ``fleet up --observe``: a discovery file in its
    run directory names this process's metrics port, so its Prometheus scrapes the load test
    too, for as long as the process runs."""
    try:
        stack = stackctl.running_stack()
    except stackctl.StackError:
        return
    urls = {stack["public_url"], *(shard["url"] for shard in stack["shards"])}
    targets = set((environment.host or "").replace(",", " ").split())
    if not stack.get("simulator_targets_dir") or not urls & targets:
        return
    path = Path(stack["simulator_targets_dir"]) / f"locust-{os.getpid()}.json"
    path.write_text(target_file([f"127.0.0.1:{port}"]))
    environment.events.quitting.add_listener(lambda **_: path.unlink(missing_ok=True))
    log.info("the local stack's Prometheus scrapes this run (%s)", path)


def start_embedded_stack(environment: Environment) -> None:
    """No --host: run NATS, shards and HAProxy locally for the length of the run."""
    options = environment.parsed_options
    assert options is not None
    state = run_state(environment)
    assert state.run_dir is not None
    # The scenarios' own shard settings first; --shard-option beats them.
    for user_class in environment.user_classes:
        state.shard_options.update(getattr(user_class, "shard_options", {}))
    state.shard_options.update(_key_value(item) for item in options.shard_option)
    try:
        config = StackConfig.sized(
            state.run_dir,
            options.num_users or 0,
            count_or_auto(options.shards),
            count_or_auto(options.haproxies),
            shard_options=dict(state.shard_options),
            tls=options.tls,
            operator_api=options.operator_api
            or any(getattr(c, "operator_api", False) for c in environment.user_classes),
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
    if stack.api_url:
        log.info("fleet map: %s/ (sign in with the operator token %s)", stack.api_url,
                 stack.operator_token)  # fmt: skip


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--shard-option {item!r}: expected KEY=VALUE")
    return key, value


# --- accounting across processes -------------------------------------------------------------


def on_report_to_master(state: RunState, data: dict[str, Any], **_: Any) -> None:
    data["fleet"] = state.stats.snapshot()
    data[CONNECTED_CHANGES] = state.stats.take_connected_changes()


def on_worker_report(state: RunState, client_id: str, data: dict[str, Any], **_: Any) -> None:
    state.timeline.count_changes(data.get(CONNECTED_CHANGES, {}))
    if "fleet" in data and client_id not in state.final_reports:
        state.worker_snapshots[client_id] = data["fleet"]
        connected = sum(snapshot["connected"] for snapshot in state.worker_snapshots.values())
        state.fleet_peak = max(state.fleet_peak, connected)


def _final_report_received(environment: Environment, msg: Any, **_: Any) -> None:
    state = run_state(environment)
    state.timeline.count_changes(msg.data.pop(CONNECTED_CHANGES, {}))
    state.worker_snapshots[msg.node_id] = state.final_reports[msg.node_id] = msg.data


def worker_figures(environment: Environment) -> dict[str, dict[str, Any]]:
    """A master's figures of each worker, named as in its device ids ("w0", …): the final
    report after its drain, or its last report if none came. Empty on other runners."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return {}
    snapshots = run_state(environment).worker_snapshots
    by_index = {runner.get_worker_index(node): fig for node, fig in snapshots.items()}
    return {f"w{index}": by_index[index] for index in sorted(by_index)}


def totals(environment: Environment) -> dict[str, Any]:
    state = run_state(environment)
    if isinstance(environment.runner, MasterRunner):
        merged = merge_snapshots(state.worker_snapshots.values())
        merged["peak_connected"] = state.fleet_peak  # sampled at each report: a lower bound
        return merged
    return {**state.stats.snapshot(), **state.pending}


# --- stop -----------------------------------------------------------------------------------


@listener(events.test_stopping)
def on_test_stopping(environment: Environment, **_: Any) -> None:
    """Before Locust kills the gateways: stop new alerts and let outstanding acks arrive.
    A master asks its workers to drain and waits for their final figures."""
    state = run_state(environment)
    gevent.killall(state.scenario_tasks)  # the operator stops; a rollout keeps its last status
    if isinstance(environment.runner, MasterRunner):
        _drain_workers(environment.runner, state, _drain_timeout(environment))
    else:
        drain_here(environment)


def drain_here(environment: Environment, **_: Any) -> None:
    state = run_state(environment)
    fleets = list(state.fleets.values())
    if state.drained or not fleets:
        return
    state.drained = True
    timeout = _drain_timeout(environment)
    log.info("draining: waiting up to %.0fs for outstanding alert acks", timeout)
    pending = [gevent.spawn(fleet.drain, timeout) for fleet in fleets]
    gevent.joinall(pending)
    state.pending = {
        "pending": sum(greenlet.value or 0 for greenlet in pending),
        "pending_link_down": sum(fleet.held_by_links() for fleet in fleets),
    }
    if isinstance(environment.runner, WorkerRunner):
        changes = {CONNECTED_CHANGES: state.stats.take_connected_changes()}
        environment.runner.send_message(
            FINAL_REPORT, {**state.stats.snapshot(), **state.pending, **changes}
        )


def _drain_workers(runner: MasterRunner, state: RunState, timeout: float) -> None:
    expected = runner.worker_count
    if not expected:
        return
    runner.send_message(DRAIN)
    deadline = time.monotonic() + timeout + 5  # their drain, plus the messages' way back
    while len(state.final_reports) < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    if missing := expected - len(state.final_reports):
        # Their last regular report (up to 3 s old, pending alerts unknown) stands in.
        log.warning("%d of %d workers sent no final report after the drain", missing, expected)


def _drain_timeout(environment: Environment) -> float:
    options = environment.parsed_options
    return float(options.drain_timeout) if options else 10.0


@listener(events.quitting)
def on_quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    state = run_state(environment)
    state.quitting = True  # the record is written below, not by the test's stop
    interrupted_after = None
    try:
        if environment.runner is not None:
            # Locust fires "quitting" before it stops the users (Ctrl-C, SIGTERM): stop them
            # (and drain their alerts) first, or they would see their backend vanish below.
            # Users still running then: the run did not end by itself (-t, its shape, Stop).
            if users_running(environment):
                interrupted_after = state.elapsed()
            environment.runner.stop()
        if state.run_dir is not None:
            if state.sampler is not None:
                state.sampler.kill()
            summary, judged_by_scenario = judged_summary(environment, interrupted_after)
            write_run_record(environment, summary, state.run_dir)
            html_file = Path(getattr(environment.parsed_options, "html_file", ""))
            if not html_file.is_file():  # Locust writes it before "quitting", but not on SIGTERM
                write_locust_html(environment, html_file)
            state.summary_text = summary_text(summary, state.run_dir)
            if summary["verdict"]["failures"]:
                environment.process_exit_code = 1
            elif judged_by_scenario:  # its checks passed: drops it provoked are no failure
                environment.process_exit_code = 0
    finally:
        if state.stack is not None:
            state.stack.stop()
            state.stack = None


@listener(events.test_stop)
def on_test_stop(environment: Environment, **_: Any) -> None:
    """The web UI's Stop: the test's record now, as at the end of a headless run (which writes
    it once, when Locust quits)."""
    options, state = environment.parsed_options, run_state(environment)
    if options is None or options.headless or state.run_dir is None or state.quitting:
        return
    if not owns_stack(environment):
        return
    summary = judged_summary(environment, None)[0]
    write_run_record(environment, summary, state.run_dir)
    write_locust_html(environment, Path(options.html_file))
    ok = "OK" if summary["verdict"]["ok"] else "FAILED"
    log.info("test stopped: verdict %s; run record in %s/", ok, state.run_dir)


def write_locust_html(environment: Environment, path: Path) -> None:
    """Locust's own HTML report, as it writes it with --html."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(get_html_report(environment, show_download_link=False), encoding="utf-8")


def users_running(environment: Environment) -> bool:
    runner = environment.runner
    return runner is not None and runner.state in (runners.STATE_SPAWNING, runners.STATE_RUNNING)


def judged_summary(
    environment: Environment, interrupted_after: float | None
) -> tuple[dict[str, Any], bool]:
    """The run's summary with its verdict, and whether the scenario's own checks made it. A run
    without a scenario's verdict (the whole fleet, `fleet demo`) still has the checks every
    scenario has. An interrupted or aborted run fails."""
    summary = build_summary(environment)
    record = run_record(environment, summary)
    checks, by_scenario = run_checks(environment, record)
    add_verdicts(summary, checks)
    failures = summary["verdict"]["failures"]
    if (aborted := run_state(environment).aborted) is not None:
        failures.append(aborted)
    if interrupted_after is not None:
        failures.append(
            f"interrupted after {interrupted_after:.0f} s (Ctrl-C or SIGTERM): the figures "
            "cover only that part of the run"
        )
    summary["verdict"]["ok"] = not failures
    return summary, by_scenario


def run_checks(environment: Environment, record: RunRecord) -> tuple[list[Check], bool]:
    """The scenarios' checks, or the checks every run has when no scenario brings its own;
    and whether the scenarios' did."""
    scenario = scenario_checks(environment, record)
    return scenario or fleet_checks(record), bool(scenario)


def build_summary(environment: Environment, *, audit: bool = True) -> dict[str, Any]:
    """The run's figures; ``audit``: read this run's alerts back from the stream (at the end;
    the live views skip it)."""
    state = run_state(environment)
    fleet = totals(environment)
    alerts = dict(fleet.get("alerts", {}))
    alerts["pending"] = fleet.get("pending", 0)
    alerts["pending_link_down"] = fleet.get("pending_link_down", 0)
    stored = None
    if audit and state.stack is not None and environment.parsed_options is not None:
        stored = audit_stream(
            state.stack.nats_url,
            environment.parsed_options.fleet_run_id,
            credentials=state.stack.nats_credentials[natsauth.AUDIT],
        )
        alerts["stored"] = stored["unique"]
        alerts["duplicated"] = stored["duplicates"]
        alerts["stream_span_s"] = round(stored["span_s"], 3)  # first stored to last
        # The rate the stream took this run's alerts at, from its own timestamps.
        alerts["stored_per_s"] = (
            round(stored["unique"] / stored["span_s"], 1) if stored["span_s"] else 0
        )
        # Acked means the stream had stored it: an acked alert missing from it is lost.
        alerts["lost"] = max(0, alerts.get("acked", 0) - stored["unique"])
    stats = environment.stats.total
    failures = verdict(fleet, alerts)
    return {
        "scenarios": [cls.__name__ for cls in dict.fromkeys(environment.user_classes)],
        "command": command_line(sys.argv),
        "started_at": state.started_at,
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
        "rollout": _rollout_figures(state.rollout, fleet),
        "operator": _operator_figures(environment),
        "remote": _remote_figures(environment),
        "workers": worker_figures(environment),
        "requests": {"count": stats.num_requests, "failures": stats.num_failures},
        "latency_ms": _latencies(environment),
        "verdict": {"failures": failures, "ok": not failures},
    }


SECRET_OPTIONS = ("--jwt-secret",)


def command_line(argv: list[str]) -> str:
    """The command that started the run, as the report shows it: secrets masked."""
    program = Path(argv[0]) if argv else Path("locust")
    # "python -m locust" leaves .../locust/__main__.py in argv[0]
    words = [program.parent.name if program.name == "__main__.py" else program.name]
    hide_next = False
    for word in argv[1:]:
        flag, sep, _ = word.partition("=")
        if hide_next:
            word, hide_next = "***", False
        elif flag in SECRET_OPTIONS:
            word, hide_next = (f"{flag}=***", False) if sep else (word, True)
        words.append(shlex.quote(word))
    return " ".join(words)


def _rollout_figures(
    rollout: RolloutWatch | None, fleet: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The update rollout scenario's rollout, and the gateways' view of it."""
    if rollout is None:
        return None
    return {**rollout.figures(), "gateways_peak_updating": fleet["peak_updating"]}


def _operator_figures(environment: Environment) -> dict[str, int]:
    """A scenario operator's commands and shells: how many, how many failed."""
    entries = [e for (_, kind), e in environment.stats.entries.items() if kind == OPERATOR]
    return {
        "actions": sum(entry.num_requests for entry in entries),
        "failed": sum(entry.num_failures for entry in entries),
    }


def _remote_figures(environment: Environment) -> dict[str, int]:
    """Operators' port-forward pages and file copies: how many, failed, corrupt."""
    streams = [e for (name, kind), e in environment.stats.entries.items()
               if kind == REMOTE and name in ("remote page", "remote copy")]  # fmt: skip
    errors = environment.stats.errors.values()
    return {
        "streams": sum(entry.num_requests for entry in streams),
        "failed": sum(entry.num_failures for entry in streams),
        "corrupt": sum(e.occurrences for e in errors if CORRUPT in str(e.error)),
    }


def run_record(environment: Environment, summary: Mapping[str, Any]) -> RunRecord:
    """What the checks judge: the summary, the timeline and the run's settings."""
    options = environment.parsed_options
    assert options is not None
    state = run_state(environment)
    collect_connected_changes(state)
    return RunRecord(
        summary,
        state.timeline,
        users=options.num_users or 0,
        shard_settings=_shard_settings(state),
        shards=state.stack.config.shards if state.stack is not None else 0,
        overrides=verdicts.parse_thresholds(options.threshold),
    )


def scenario_checks(environment: Environment, record: RunRecord) -> list[Check]:
    """The verdict checks of every scenario class in the run, each check once (scenarios
    run together share the fleet checks)."""
    classes = dict.fromkeys(environment.user_classes)  # unique, in order
    found = [check for cls in classes if hasattr(cls, "checks") for check in cls.checks(record)]
    return list({check.name: check for check in found}.values())


def _shard_settings(state: RunState) -> dict[str, float]:
    """The embedded shards' admission settings; none with --host."""
    if state.stack is None:
        return {}
    return shard_settings(state.shard_options, SHARD_SETTINGS)


def add_verdicts(summary: dict[str, Any], checks: list[Check]) -> None:
    """Checks under "verdicts"; a failed one also fails the run's verdict."""
    summary["verdicts"] = [check.as_dict() for check in checks]
    failures = summary["verdict"]["failures"]
    failures += [
        f"{c.name}: measured {verdicts.format_value(c.measured, c.unit)}, "
        f"threshold {c.rule} {verdicts.format_value(c.threshold, c.unit)}"
        for c in checks
        if not c.ok
    ]
    summary["verdict"]["ok"] = not failures


def _latencies(environment: Environment) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
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


def print_summary_last(state: RunState, **_: Any) -> None:
    """On Locust's ``quit``, which fires after it printed its tables: the verdict stays the
    last thing on screen."""
    if state.summary_text:
        print(state.summary_text, flush=True)


def summary_text(summary: Mapping[str, Any], run_dir: Path) -> str:
    alerts = summary["alerts"]
    lines = [
        "",
        "fleet summary",
        f"  gateways      peak connected {summary['gateways']['peak_connected']}, "
        f"connects {summary['gateways']['connects']}, reconnects {summary['reconnects']}",
        f"  drops         {_counts(summary['drops'])} (unexpected {summary['unexpected_drops']})",
        f"  failed tries  {failed_tries(summary['connect_failures'])}",
        "  alerts        " + ", ".join(f"{k} {v}" for k, v in alerts.items()),
        f"  commands      {summary['commands']}; updates {_counts(summary['updates'])}",
        *(f"  worker {name:<6} {format_progress(fig)}" for name, fig in summary["workers"].items()),
        *(f"  {line}" for line in _verdict_lines(summary)),
        f"  verdict       {'OK' if summary['verdict']['ok'] else 'FAILED'}",
        *(f"    - {failure}" for failure in summary["verdict"]["failures"]),
        f"  run record    {run_dir}/ (report.html, summary.json, locust.html)",
    ]
    return "\n".join(lines)


def _verdict_lines(summary: Mapping[str, Any]) -> list[str]:
    checks = verdicts.from_dicts(summary.get("verdicts", []))
    return ["checks", *(f"  {line}" for line in verdicts.table(checks))] if checks else []


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


def write_summary(summary: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("summary written to %s", path)


def write_run_record(environment: Environment, summary: Mapping[str, Any], run_dir: Path) -> None:
    """summary.json, verdicts.json, the timeline, the HTML report with plots and Locust's
    CSV tables; Locust itself writes locust.html."""
    write_summary(summary, run_dir / "summary.json")
    (run_dir / "verdicts.json").write_text(json.dumps(summary["verdicts"], indent=2) + "\n")
    timeline = run_state(environment).timeline.as_dict()
    (run_dir / "timeline.json").write_text(json.dumps(timeline) + "\n")
    (run_dir / "report.html").write_text(report.render(summary, timeline))
    write_locust_csv(environment, run_dir)


def write_locust_csv(environment: Environment, run_dir: Path) -> None:
    """What ``--csv locust`` would leave at the end: requests, failures, exceptions."""
    tables = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for name, write in (
        ("stats", tables.requests_csv),
        ("failures", tables.failures_csv),
        ("exceptions", tables.exceptions_csv),
    ):
        with (run_dir / f"locust_{name}.csv").open("w", newline="") as file:
            write(csv.writer(file))


def _sample_timeline(environment: Environment) -> None:
    state = run_state(environment)
    while True:
        gevent.sleep(TIMELINE_INTERVAL)
        # Not stats.get(): that would create an empty "alert" row in runs without alerts.
        alerts = environment.stats.entries.get(("alert", REQUEST_TYPE))
        shards, answered_5xx = _stack_figures(state.stack)
        times = alerts.response_times if alerts is not None else {}
        collect_connected_changes(state)
        state.timeline.add(state.elapsed(), totals(environment), times, shards, answered_5xx)


def collect_connected_changes(state: RunState) -> None:
    """This process's own gateways' changes into the timeline (a master's come in reports)."""
    state.timeline.count_changes(state.stats.take_connected_changes())


def _stack_figures(
    stack: LocalStack | None,
) -> tuple[dict[str, ShardFigures | None], float | None]:
    """Each embedded shard's figures (None: not answering) and HAProxy's 5xx count."""
    if stack is None:
        return {}, None
    shards = {
        name: _shard_figures(url)
        for name, url in zip(stack.shard_names, stack.shard_urls, strict=True)
    }
    try:
        answered = [haproxy_5xx(fetch_metrics(url)) for url in stack.haproxy_stats_urls]
    except OSError:
        return shards, None
    return shards, sum(answered) if answered else None


def _shard_figures(url: str) -> ShardFigures | None:
    try:
        return shard_figures(fetch_metrics(url))
    except OSError:
        return None


def _watch(environment: Environment) -> None:
    """Every 10 s: the headless progress line and, with --abort-on-fail, the run's checks on
    its figures so far; a check that can no longer pass ends the run."""
    options = environment.parsed_options
    assert options is not None
    state = run_state(environment)
    while state.aborted is None:
        gevent.sleep(PROGRESS_INTERVAL)
        if options.headless:
            log.info("%s", format_progress(totals(environment)))
        if options.abort_on_fail and users_running(environment):
            _abort_if_hopeless(environment, state)


def _abort_if_hopeless(environment: Environment, state: RunState) -> None:
    checks, record = live_checks(environment)
    hopeless = [check for check in checks if cannot_pass(check, record)]
    if not hopeless or environment.runner is None:
        return
    failed = hopeless[0]
    state.aborted = (
        f"aborted by --abort-on-fail after {state.elapsed():.0f} s: {failed.name} measured "
        f"{verdicts.format_value(failed.measured, failed.unit)}, threshold {failed.rule} "
        f"{verdicts.format_value(failed.threshold, failed.unit)}, and cannot pass any more"
    )
    log.error("%s", state.aborted)
    if environment.parsed_options is not None and environment.parsed_options.headless:
        environment.runner.quit()  # the headless run ends: Locust's shutdown, our record
    else:
        environment.runner.stop()  # the web UI stays, with the record of the stopped test


def live_checks(environment: Environment) -> tuple[list[Check], RunRecord]:
    """The run's checks judged on its figures so far (the stream is not read back)."""
    record = run_record(environment, build_summary(environment, audit=False))
    checks, _ = run_checks(environment, record)
    return checks, record


def report_crash(greenlet: gevent.Greenlet[..., Any]) -> None:
    log.error("simulator greenlet crashed: %r", greenlet.exception)


# --- web UI -----------------------------------------------------------------------------------


def _extend_web_ui(environment: Environment) -> None:
    if environment.web_ui is None:
        return
    webui.extend(
        environment.web_ui,
        webui.LiveViews(
            fleet_rows=lambda: table_rows(totals(environment)),
            checks=lambda: live_checks(environment)[0],
            report=lambda: live_report(environment),
        ),
    )


def live_report(environment: Environment) -> str:
    """The report's content from the figures so far, with the checks judged on them."""
    summary = build_summary(environment, audit=False)
    checks, _ = run_checks(environment, run_record(environment, summary))
    add_verdicts(summary, checks)
    summary["state"] = "running" if users_running(environment) else "stopped"
    return report.body(summary, run_state(environment).timeline.as_dict())
