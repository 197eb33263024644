"""The ``fleet`` command. Every option can also be set as ``FLEET_<COMMAND>_<OPTION>``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import uvloop

from backend import logs, process, stackctl
from backend.auth import issue_device_token
from backend.shard import ShardConfig, serve
from backend.shard.config import default_max_connections, default_shard_id
from backend.stack import StackConfig, count_or_auto

verbose_option = click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")


@click.group(context_settings={"auto_envvar_prefix": "FLEET", "show_default": True})
def main() -> None:
    """fleetharness: WebSocket backend for IoT gateway fleets, and its load harness."""


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", default=8080, help="Port for devices, /healthz and /metrics (0: any).")
@click.option("--shard-id", default=None, help="Name on the bus [default: shard-<random>].")
@click.option(
    "--nats-url", "nats_urls", multiple=True, default=["nats://127.0.0.1:4222"],
    help="NATS server URL; repeat for a cluster.",
)  # fmt: skip
@click.option("--jwt-secret", default=None, help="HS256 secret for device tokens.")
@click.option(
    "--jwt-public-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="PEM public key for RS256/ES256/EdDSA device tokens.",
)  # fmt: skip
@click.option(
    "--max-connections", type=int, default=None,
    help="Connection cap [default: open-file limit minus a reserve].",
)  # fmt: skip
@click.option("--accept-rate", default=2000.0, help="Upgrades admitted per second.")
@click.option("--accept-burst", default=1000, help="Upgrades admitted at once.")
@click.option("--ping-interval", default=30.0, help="Seconds between keep-alive pings.")
@click.option("--keepalive-timeout", default=75.0, help="Reap connections silent this long.")
@click.option("--max-message-size", default=1 << 20, help="Largest device message (bytes).")
@click.option("--drain-timeout", default=30.0, help="Seconds to wait for devices on shutdown.")
@click.option(
    "--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write {shard, host, port} as JSON here once listening.",
)  # fmt: skip
@verbose_option
def shard(
    verbose: int, max_connections: int | None, shard_id: str | None, **options: object
) -> None:
    """Run one shard: holds device WebSockets, routes through NATS."""
    logs.setup(verbose)
    if not options["jwt_secret"] and options["jwt_public_key_file"] is None:
        raise click.UsageError("set --jwt-secret or --jwt-public-key-file (or FLEET_SHARD_...)")
    config = ShardConfig(
        max_connections=max_connections or default_max_connections(),
        shard_id=shard_id or default_shard_id(),
        **options,  # type: ignore[arg-type]
    )
    uvloop.run(serve(config))


@main.command()
@click.argument("device_id")
@click.option("--jwt-secret", required=True, help="HS256 secret the shards verify with.")
@click.option("--ttl", default=7 * 86400.0, help="Validity in seconds.")
def token(device_id: str, jwt_secret: str, ttl: float) -> None:
    """Print a device token (HS256) for DEVICE_ID."""
    try:
        click.echo(issue_device_token(device_id, jwt_secret, ttl=ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE_ID") from None


SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@main.command()
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
    """A short headless Locust run of every scenario on an embedded stack (NATS + 2 shards).

    Prints the connection gauge, reconnects and alert accounting; exits non-zero when the
    run's verdict fails. Ctrl-C stops it early, with the summary."""
    run_dir = run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    argv = [
        sys.executable, "-m", "locust", "-f", str(SCENARIOS), "--headless",
        "-u", str(gateways), "-r", str(spawn_rate), "-t", duration,
        "--alerts-per-hour", str(alerts_per_hour), "--run-dir", str(run_dir), "--only-summary",
    ]  # fmt: skip
    # Its own session: a Ctrl-C reaches Locust once, from here, so it stops cleanly.
    locust = subprocess.Popen(argv, start_new_session=True, preexec_fn=process.die_with_parent)
    try:
        code = locust.wait()
    except KeyboardInterrupt:
        locust.send_signal(signal.SIGINT)
        code = locust.wait()
    sys.exit(code)


RUNS = Path("runs")
run_dir_option = click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="The stack's run directory [default: the one runs/current points at].",
)  # fmt: skip


class CountOrAuto(click.ParamType):
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


@main.command()
@click.option(
    "--connections", default=0,
    help="Device connections to hold at once: sizes auto counts, refuses too few.",
)  # fmt: skip
@click.option(
    "--shards", type=CountOrAuto(), default="auto",
    help="Shard processes; auto: enough for --connections, at least 2.",
)  # fmt: skip
@click.option(
    "--haproxies", type=CountOrAuto(), default="auto",
    help="HAProxy processes on the public port (0: none); auto: enough for --connections.",
)  # fmt: skip
@click.option("--tls", is_flag=True, help="TLS on the public port, with a local CA.")
@click.option("--port", default=0, help="The public port (0: a free one).")
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Logs, NATS storage and stack.json [default: runs/stack-<time>].",
)  # fmt: skip
def up(
    connections: int,
    shards: int | None,
    haproxies: int | None,
    tls: bool,
    port: int,
    run_dir: Path | None,
) -> None:
    """Run a local stack (NATS, shards, HAProxy) in the foreground until Ctrl-C or fleet down."""
    run_dir = run_dir or RUNS / time.strftime("stack-%Y%m%d-%H%M%S")
    try:
        config = StackConfig.sized(
            run_dir, connections, shards, haproxies, tls=tls, public_port=port
        )
        stackctl.serve(config, click.echo)
    except (ValueError, OSError, RuntimeError, stackctl.StackError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def status(run_dir: Path | None, as_json: bool) -> None:
    """Health and connections of the local stack's shards and HAProxies."""
    try:
        report = stackctl.status(stackctl.load_state(stackctl.find_run_dir(run_dir, RUNS)))
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report, indent=2) if as_json else stackctl.format_status(report))


@main.command()
@click.argument("shard_name", metavar="SHARD")
@run_dir_option
@click.option("--timeout", default=60.0, help="Seconds to wait for the shard to exit.")
def drain(shard_name: str, run_dir: Path | None, timeout: float) -> None:
    """Take SHARD (e.g. shard-a) out of the local stack without refusing a device.

    Every HAProxy stops sending it new connections (runtime API), then the shard closes its
    devices with 1012 and exits; they reconnect through HAProxy to the other shards."""
    try:
        state = stackctl.load_state(stackctl.find_run_dir(run_dir, RUNS))
        count = stackctl.drain(state, shard_name, timeout)
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{shard_name} drained: out of {count} HAProxy processes, exited")


@main.command()
@run_dir_option
def down(run_dir: Path | None) -> None:
    """Stop the local stack started by fleet up, in order; waits until it exited."""
    try:
        pid = stackctl.stop(stackctl.find_run_dir(run_dir, RUNS))
    except stackctl.StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"local stack stopped (pid {pid})")


if __name__ == "__main__":
    main()
