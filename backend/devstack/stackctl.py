"""``fleet up`` / ``status`` / ``down``: a long-running local stack, found by other commands.

``fleet up`` writes ``<run_dir>/stack.json`` and a pointer ``<run_dir>/../current`` (so
``runs/current`` for the default ``runs/stack-<time>``) holding the run directory's path; the
other commands read them, so they need no arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.bus.natsauth import API
from backend.devstack.process import http_get
from backend.devstack.stack import (
    CHECK_PASSED,
    LocalStack,
    StackConfig,
    connections_of,
    fetch_metrics,
    metric_sum,
)
from backend.protocol.errors import FleetError
from backend.protocol.http import DEVICE_PATH
from haproxy import runtime

STATE_FILE = "stack.json"
RUNS = Path("runs")
"""Where run directories go by default, below the working directory."""
POINTER_FILE = "current"
NO_STACK = "no local stack running: start one with fleet up"


class StackError(FleetError):
    """A user-facing failure: the message says what to do."""


def pointer_file(run_dir: Path) -> Path:
    return run_dir.parent / POINTER_FILE


def find_run_dir(run_dir: Path | None, runs_dir: Path) -> Path:
    """``run_dir``, else the one ``runs_dir/current`` points at."""
    if run_dir is not None:
        return run_dir
    try:
        return Path((runs_dir / POINTER_FILE).read_text().strip())
    except FileNotFoundError:
        raise StackError(NO_STACK) from None


def running_stack(run_dir: Path | None = None, runs_dir: Path = RUNS) -> dict[str, Any]:
    """The stack.json of ``run_dir``'s stack, else of the one ``runs_dir/current`` points at;
    StackError when none is running."""
    return load_state(find_run_dir(run_dir, runs_dir))


def pid_alive(pid: int) -> bool:
    """Running and not a zombie: an exited ``fleet up`` stays a zombie until its parent reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def load_state(run_dir: Path) -> dict[str, Any]:
    """The running stack's stack.json; StackError when there is none or its process is gone."""
    try:
        state: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        raise StackError(NO_STACK) from None
    if not pid_alive(state["pid"]):
        raise StackError(NO_STACK)
    return state


def stack_state(stack: LocalStack) -> dict[str, Any]:
    shards = zip(stack.shard_names, stack.shard_urls, stack.pids()["shards"], strict=True)
    return {
        "pid": os.getpid(),
        "run_dir": str(stack.run_dir.resolve()),
        "public_url": stack.public_url,
        "nats_url": stack.nats_url,
        "nats_urls": stack.nats_urls,
        "nats_credentials": {role: str(path) for role, path in stack.nats_credentials.items()},
        "api_command": shlex.join(
            ["fleet", "api", *stack.nats_args(API), "--operator-tokens-file", "tokens.json"]
        ),
        "shards": [{"name": name, "url": url, "pid": pid} for name, url, pid in shards],
        "haproxies": [
            {"stats_url": url, "admin_socket": str(sock)}
            for url, sock in zip(stack.haproxy_stats_urls, stack.haproxy_admin_sockets, strict=True)
        ],
        "ca_file": str(stack.ca_file) if stack.ca_file else None,
        "prometheus_url": stack.prometheus_url,
        "api_url": stack.api_url,  # "" without an operator API
        "operator_token": stack.operator_token,
        # A load test against this stack names its metrics port there (Prometheus' file
        # discovery); "" without --observe.
        "simulator_targets_dir": str(stack.simulator_targets_dir) if stack.prometheus_url else "",
        "jwt_secret": stack.jwt_secret,
    }


def check_startable(config: StackConfig) -> None:
    """Fail before anything starts: HAProxy would only find a taken port after the shards."""
    pointer = pointer_file(config.run_dir)
    if pointer.exists():
        try:
            state = load_state(Path(pointer.read_text().strip()))
        except StackError:
            pass  # a stale pointer, left by a killed stack
        else:
            raise StackError(
                f"a local stack is already running (pid {state['pid']}, {state['run_dir']}): "
                "stop it with fleet down"
            )
    wanted = {"port": config.public_port}
    if config.observe:
        wanted["prometheus port"] = config.prometheus_port
    for what, port in wanted.items():
        if port:
            check_free(what, config.host, port)


def check_free(what: str, host: str, port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(f"{what} {port} is not free: {exc}") from None


def _api_lines(state: dict[str, Any]) -> list[str]:
    if not state["api_url"]:
        return [f"  operator API        {state['api_command']} (or fleet up --api)"]
    return [
        f"  operator API        {state['api_url']}, token {state['operator_token']}",
        "                      (fleet devices, cmd, shell and rollout use both by default)",
        f"  fleet map           {state['api_url']}/ in a browser: sign in with that token",
    ]


def summary(state: dict[str, Any]) -> str:
    url = state["public_url"] or state["shards"][0]["url"]
    lines = [
        f"local stack up (pid {state['pid']})",
        f"  devices connect to  {url}{DEVICE_PATH}",
        *(f"  {s['name']:<18}  {s['url']}" for s in state["shards"]),
        *(f"  haproxy stats       {h['stats_url']}/stats" for h in state["haproxies"]),
        f"  nats                {' '.join(state['nats_urls'])}",
        f"  a device token      fleet token gw-1 --jwt-secret {state['jwt_secret']}",
        *_api_lines(state),
        f"  nats credentials    {Path(state['nats_credentials'][API]).parent} (one per role)",
    ]
    if state["ca_file"]:
        lines.append(f"  trust this CA       {state['ca_file']}")
    if state["prometheus_url"]:
        lines += [
            f"  prometheus          {state['prometheus_url']} (Grafana: docs/observability.md)",
            f"  load tests          locust -f scenarios --host {url} --jwt-secret "
            f"{state['jwt_secret']} --metrics-port 9646: Prometheus scrapes them while they run",
        ]
    lines += [
        f"  logs                {state['run_dir']}",
        "fleet status shows it; Ctrl-C or fleet down stops it.",
    ]
    return "\n".join(lines)


def serve(config: StackConfig, echo: Callable[[str], None]) -> None:
    """Run the stack until SIGINT or SIGTERM, announced by stack.json and the pointer file."""
    check_startable(config)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds a start in progress like Ctrl-C does: what already runs is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pointer = pointer_file(config.run_dir)
    try:
        with LocalStack(config) as stack:
            state = stack_state(stack)
            (config.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            pointer.write_text(state["run_dir"] + "\n")
            echo(summary(state))
            # Blocked, not handled: a second Ctrl-C cannot interrupt the ordered teardown.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            echo("stopping...")
    except KeyboardInterrupt:
        return
    finally:
        if pointer.exists() and pointer.read_text().strip() == str(config.run_dir.resolve()):
            pointer.unlink()


def stop(run_dir: Path, timeout: float = 30.0) -> int:
    """SIGTERM the stack's ``fleet up``, wait until it exited; its pid."""
    pid = int(load_state(run_dir)["pid"])
    terminate(pid, f"the stack (pid {pid})", timeout)
    return pid


def terminate(pid: int, what: str, timeout: float) -> None:
    """SIGTERM ``pid`` and wait until it exited (a zombie counts as exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not stop within {timeout:.0f} s")
        time.sleep(0.1)


def drain(state: dict[str, Any], name: str, timeout: float = 60.0) -> int:
    """``LocalStack.drain_shard`` for the stack of ``fleet up``: every HAProxy stops sending
    ``name`` new connections, then the shard drains; how many HAProxy processes drained it."""
    shards = {shard["name"]: shard for shard in state["shards"]}
    if name not in shards:
        raise StackError(f"no shard {name!r}: the stack runs {', '.join(shards)}")
    if not pid_alive(shards[name]["pid"]):
        raise StackError(f"{name} is not running (drained already?)")
    try:
        for haproxy in state["haproxies"]:
            runtime.set_shard_state(Path(haproxy["admin_socket"]), name, "drain")
    except runtime.RuntimeApiError as exc:
        raise StackError(f"{exc}; is the stack still running? (fleet status)") from None
    terminate(shards[name]["pid"], name, timeout)
    return len(state["haproxies"])


@dataclass
class ShardStatus:
    name: str
    url: str
    healthz: str
    connections: int | None


@dataclass
class HaproxyStatus:
    stats_url: str
    current_sessions: float | None
    servers_up: int
    servers_total: int


def shard_status(name: str, url: str) -> ShardStatus:
    code, _ = http_get(url.replace("ws://", "http://", 1) + "/healthz")
    return ShardStatus(name, url, str(code) if code else "down", connections_of(url))


def haproxy_status(stats_url: str) -> HaproxyStatus:
    try:
        metrics = fetch_metrics(stats_url)
    except OSError:
        return HaproxyStatus(stats_url, None, 0, 0)
    checks = CHECK_PASSED.findall(metrics)
    sessions = metric_sum(metrics, "haproxy_frontend_current_sessions", proxy="devices")
    up = sum(float(value) == 1 for _server, value in checks)
    return HaproxyStatus(stats_url, sessions, up, len(checks))


def status(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "pid": state["pid"],
        "run_dir": state["run_dir"],
        "public_url": state["public_url"],
        "shards": [vars(shard_status(s["name"], s["url"])) for s in state["shards"]],
        "haproxies": [vars(haproxy_status(h["stats_url"])) for h in state["haproxies"]],
    }


def number(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def row(*cells: object) -> str:
    return "  ".join(f"{cell!s:<{width}}" for cell, width in zip(cells, (9, 27, 8, 0), strict=True))


def format_status(report: dict[str, Any]) -> str:
    lines = [f"stack pid {report['pid']}  {report['public_url']}  ({report['run_dir']})"]
    lines.append(row("shard", "url", "healthz", "connections"))
    lines += [
        row(s["name"], s["url"], s["healthz"], number(s["connections"])) for s in report["shards"]
    ]
    if report["haproxies"]:
        lines.append(row("haproxy", "stats", "sessions", "server lines up"))
    lines += [
        row(
            index,
            h["stats_url"],
            number(h["current_sessions"]),
            f"{h['servers_up']}/{h['servers_total']}",
        )
        for index, h in enumerate(report["haproxies"])
    ]
    return "\n".join(lines)
