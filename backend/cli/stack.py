"""The local stack: ``fleet demo``, ``fleet up``, ``status``, ``drain`` and ``down``; the run
directories they leave: ``fleet runs list`` and ``prune``."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from backend.cli.root import config_option, json_option
from backend.devstack import process, stackctl
from backend.devstack import runs as rundirs
from backend.devstack.stack import StackConfig, count_or_auto

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
run_dir_option = click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="The stack's run directory [default: the one runs/current points at].",
)  # fmt: skip


@click.command()
@click.option("--gateways", default=1000, help="Virtual gateways (Locust users).")
@click.option("--spawn-rate", default=200.0, help="Gateways started per second.")
@click.option("--duration", default="45s", help="Run time (Locust syntax: 45s, 5m...).")
@click.option("--alerts-per-hour", default=60.0, help="Alerts per gateway per hour.")
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Logs, NATS storage and summary.json [default: runs/demo-<time>].",
)  # fmt: skip
def demo(
    gateways: int, spawn_rate: float, duration: str, alerts_per_hour: float, run_dir: Path | None
) -> None:
    """A short headless Locust run of every scenario on an embedded stack (NATS + 2 shards,
    HAProxy, the operator API: its fleet map's URL is printed at the start).

    Prints the connection gauge, reconnects and alert accounting; exits non-zero when the
    run's verdict fails. Ctrl-C stops it early, with the summary."""
    run_dir = run_dir or stackctl.RUNS / time.strftime("demo-%Y%m%d-%H%M%S")
    argv = [
        sys.executable, "-m", "locust", "-f", str(SCENARIOS), "--headless",
        "-u", str(gateways), "-r", str(spawn_rate), "-t", duration,
        "--alerts-per-hour", str(alerts_per_hour), "--run-dir", str(run_dir), "--only-summary",
        "--operator-api",  # the fleet map to watch the run on
    ]  # fmt: skip
    # Python leaves SIGINT ignored when it started ignored (a background job): Ctrl-C, or
    # SIGINT from a supervisor, must still stop the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Its own session: a Ctrl-C reaches Locust once, from here, so it stops cleanly.
    locust = subprocess.Popen(argv, start_new_session=True, preexec_fn=process.die_with_parent)
    try:
        code = locust.wait()
    except KeyboardInterrupt:
        locust.send_signal(signal.SIGINT)
        code = locust.wait()
    sys.exit(code)


class CountOrAuto(click.ParamType[int | None]):
    """A process count, or "auto" (None): derived from --connections."""

    name = "count|auto"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or isinstance(value, int):
            return value
        try:
            return count_or_auto(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


stack_option = functools.partial(config_option, StackConfig)


@click.command()
@stack_option(
    "connections", "Device connections to hold at once: sizes auto counts, refuses too few."
)
# The process counts default to "auto", not to StackConfig's: sized for --connections.
@click.option(
    "--shards", type=CountOrAuto(), default="auto",
    help="Shard processes; auto: enough for --connections, at least 2.",
)  # fmt: skip
@click.option(
    "--haproxies", type=CountOrAuto(), default="auto",
    help="HAProxy processes on the public port (0: none); auto: enough for --connections.",
)  # fmt: skip
@stack_option(
    "nats_nodes",
    "NATS servers: 1, or 3 for a cluster (streams and KV buckets then keep 3 copies).",
)
@stack_option("tls", "TLS on the public port, with a local CA.")
@stack_option("public_port", "The public port (0: a free one).", "--port")
@stack_option("observe", "Also run Prometheus scraping every part.")
@stack_option(
    "operator_api",
    "Also run the operator API; its URL and token are printed.",
    "--api",
    "operator_api",
)
# Prometheus' usual port, where a person looks for it; StackConfig's 0 (a free port) is for
# stacks that tests and scenarios embed.
@click.option("--prometheus-port", default=9090, help="Prometheus' port with --observe.")
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Logs, NATS storage and stack.json [default: runs/stack-<time>].",
)  # fmt: skip
def up(
    connections: int,
    shards: int | None,
    haproxies: int | None,
    run_dir: Path | None,
    port: int,
    **options: Any,
) -> None:
    """Run a local stack (NATS, shards, HAProxy) in the foreground until Ctrl-C or fleet down."""
    run_dir = run_dir or stackctl.RUNS / time.strftime("stack-%Y%m%d-%H%M%S")
    try:
        config = StackConfig.sized(
            run_dir, connections, shards, haproxies, public_port=port, **options
        )
        stackctl.serve(config, click.echo)
    except (ValueError, OSError, RuntimeError, stackctl.StackError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@run_dir_option
@json_option
def status(run_dir: Path | None, as_json: bool) -> None:
    """Health and connections of the local stack's shards and HAProxies."""
    try:
        report = stackctl.status(stackctl.running_stack(run_dir))
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report, indent=2) if as_json else stackctl.format_status(report))


@click.command()
@click.argument("shard_name", metavar="SHARD")
@run_dir_option
@click.option("--timeout", default=60.0, help="Seconds to wait for the shard to exit.")
def drain(shard_name: str, run_dir: Path | None, timeout: float) -> None:
    """Take SHARD (e.g. shard-a) out of the local stack without refusing a device.

    Every HAProxy stops sending it new connections (runtime API), then the shard closes its
    devices with 1012 and exits; they reconnect through HAProxy to the other shards."""
    try:
        state = stackctl.running_stack(run_dir)
        count = stackctl.drain(state, shard_name, timeout)
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{shard_name} drained: out of {count} HAProxy processes, exited")


@click.command()
@run_dir_option
def down(run_dir: Path | None) -> None:
    """Stop the local stack started by fleet up, in order; waits until it exited."""
    try:
        pid = stackctl.stop(stackctl.find_run_dir(run_dir, stackctl.RUNS))
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"local stack stopped (pid {pid})")


@click.group()
def runs() -> None:
    """The run directories under runs/ (logs, NATS storage, reports)."""


runs_dir_option = click.option(
    "--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=stackctl.RUNS,
    help="Where the runs are.",
)  # fmt: skip


@runs.command("list")
@runs_dir_option
def runs_list(runs_dir: Path) -> None:
    """Every run directory, newest first, with its size."""
    found = rundirs.run_dirs(runs_dir)
    for run in found:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.modified))
        click.echo(f"{stamp}  {_mib(run.size):>10}  {run.path}")
    click.echo(f"{len(found)} runs, {_mib(sum(run.size for run in found))}")


@runs.command("prune")
@click.option("--keep", type=click.IntRange(min=0), default=10, help="Newest runs to keep.")
@runs_dir_option
def runs_prune(keep: int, runs_dir: Path) -> None:
    """Remove all but the newest runs (never a running stack's)."""
    removed = rundirs.prune(runs_dir, keep)
    click.echo(f"removed {len(removed)} runs, {_mib(sum(run.size for run in removed))} freed")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
