"""The ``fleet`` command. Every option can also be set as ``FLEET_<COMMAND>_<OPTION>``."""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import uvloop

from backend import logs
from backend.bus import exporter, natsauth
from backend.bus.auth import issue_device_token
from backend.bus.subjects import MAX_REPLICAS
from backend.client.operator import (
    OperatorClient,
    OperatorError,
    format_command,
    format_device,
    format_devices,
    format_rollout,
    format_rollouts,
    raw_mode,
    relay_terminal,
    terminal_size,
)
from backend.devstack import process, stackctl
from backend.devstack.stack import StackConfig, count_or_auto
from backend.operator import api as operator_api
from backend.operator import fleetstate
from backend.operator.config import FleetConfig, load_operator_tokens
from backend.shard import ShardConfig, serve
from backend.shard.config import default_max_connections, default_shard_id
from backend.tools import capacity as capacity_model
from backend.tools.check import check_run

verbose_option = click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")
nats_urls_option = click.option(
    "--nats-url", "nats_urls", multiple=True, default=["nats://127.0.0.1:4222"],
    help="NATS server URL; repeat for a cluster.",
)  # fmt: skip
nats_credentials_option = click.option(
    "--nats-credentials", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="This role's NATS nkey seed file (a path: no secret on the command line).",
)  # fmt: skip
nats_ca_file_option = click.option(
    "--nats-ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="CA certificate to verify NATS' TLS with (tls:// URLs).",
)  # fmt: skip
stream_replicas_option = click.option(
    "--stream-replicas", type=click.IntRange(1, MAX_REPLICAS), default=1,
    help="Copies of each stream and KV bucket, on as many NATS nodes (3 on a 3-node cluster).",
)  # fmt: skip


@click.group(context_settings={"auto_envvar_prefix": "FLEET", "show_default": True})
def main() -> None:
    """fleetharness: WebSocket backend for IoT gateway fleets, and its load harness."""


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", default=8080, help="Port for devices, /healthz and /metrics (0: any).")
@click.option("--shard-id", default=None, help="Name on the bus [default: shard-<random>].")
@nats_urls_option
@nats_credentials_option
@nats_ca_file_option
@stream_replicas_option
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
@click.option(
    "--nats-nodes", default=1,
    help="NATS servers: 1, or 3 for a cluster (streams and KV buckets then keep 3 copies).",
)  # fmt: skip
@click.option("--tls", is_flag=True, help="TLS on the public port, with a local CA.")
@click.option("--port", default=0, help="The public port (0: a free one).")
@click.option("--observe", is_flag=True, help="Also run Prometheus scraping every part.")
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
    run_dir = run_dir or RUNS / time.strftime("stack-%Y%m%d-%H%M%S")
    try:
        config = StackConfig.sized(
            run_dir, connections, shards, haproxies, public_port=port, **options
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


# --- operator side ----------------------------------------------------------------------------


def fleet_config_option(name: str, help_text: str) -> Any:
    """An option for the FleetConfig field ``name``, with the field's default."""
    (default,) = (f.default for f in dataclasses.fields(FleetConfig) if f.name == name)
    return click.option(f"--{name.replace('_', '-')}", default=default, type=type(default),
                        help=help_text)  # fmt: skip


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option("--port", default=8090, help="Port of the API (0: any).")
@nats_urls_option
@nats_credentials_option
@nats_ca_file_option
@stream_replicas_option
@click.option(
    "--operator-tokens-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True, help='JSON {"<bearer token>": "<operator id>", ...}.',
)  # fmt: skip
@fleet_config_option("command_timeout", "Default command deadline (s).")
@fleet_config_option("max_output_bytes", "Command output kept (bytes).")
@click.option("--no-state", is_flag=True, help="Run no fleet state instance in this process.")
@fleet_config_option("shell_idle_timeout", "Close a shell with no bytes either way this long (s).")
@fleet_config_option("max_rollout_devices", "Devices one rollout may target.")
@fleet_config_option("rollout_offer_timeout", "Offer again to a device silent this long (s).")
@fleet_config_option("rollout_offer_attempts", "Offers made before a silent device fails.")
@fleet_config_option("rollout_device_timeout", "Fail a device with no result this long (s).")
@verbose_option
def api(verbose: int, operator_tokens_file: Path, no_state: bool, **options: Any) -> None:
    """Run the operator API (devices, commands; OpenAPI at /openapi.json)."""
    logs.setup(verbose)
    try:
        tokens = load_operator_tokens(operator_tokens_file)
        config = FleetConfig(operator_tokens=tokens, run_state_service=not no_state, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    uvloop.run(operator_api.serve(config))


@main.command()
@nats_urls_option
@nats_credentials_option
@nats_ca_file_option
@stream_replicas_option
@click.option("--durable", default="fleet-state", help="Consumer name the instances share.")
@click.option("--fetch-batch", default=64, help="Events fetched at once.")
@verbose_option
def state(verbose: int, **options: Any) -> None:
    """Run a fleet state instance: alerts, status and presence into per-device state."""
    logs.setup(verbose)
    uvloop.run(fleetstate.serve(FleetConfig(**options)))


api_url_option = click.option(
    "--api-url", envvar="FLEET_API_URL", default="http://127.0.0.1:8090",
    help="The operator API [env FLEET_API_URL].",
)  # fmt: skip
token_option = click.option(
    "--token", envvar="FLEET_API_TOKEN", required=True,
    help="Operator bearer token [env FLEET_API_TOKEN].",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


@main.command()
@click.argument("device_id", required=False)
@click.option("--state", "health", type=click.Choice(["red", "green"]), help="Only these.")
@click.option("--online/--offline", default=None, help="Only connected / disconnected ones.")
@api_url_option
@token_option
@json_option
def devices(
    device_id: str | None,
    health: str | None,
    online: bool | None,
    api_url: str,
    token: str,
    as_json: bool,
) -> None:
    """List devices with their state, or show DEVICE_ID with its open alerts."""
    client = OperatorClient(api_url, token)
    try:
        if device_id is not None:
            found: Any = client.device(device_id)
            text = "" if as_json else format_device(found)
        else:
            found = list(client.all_devices(state=health, online=online))
            text = "" if as_json else format_devices(found)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(found, indent=2) if as_json else text)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("device_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=10.0, help="Seconds to wait for the device's answer.")
@api_url_option
@token_option
@json_option
def cmd(
    device_id: str,
    command: tuple[str, ...],
    timeout: float,
    api_url: str,
    token: str,
    as_json: bool,
) -> None:
    """Run COMMAND on DEVICE_ID (fleet cmd gw-1 -- df -h); exits with its exit code."""
    try:
        result = OperatorClient(api_url, token).run_command(device_id, shlex.join(command), timeout)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_command(result), nl=as_json)
    sys.exit(int(result["exit_code"]))


@main.command()
@click.option("--devices", type=click.IntRange(min=1), required=True, help="Fleet size.")
@click.option(
    "--from", "source", type=click.Path(exists=True, path_type=Path), default=None,
    help="A bench/hold.py run directory or its hold.json [default: the committed proof run].",
)  # fmt: skip
@click.option("--utilisation", default=0.6, help="Share of each process's limits to plan for.")
@click.option("--host-cores", default=16, help="Cores per host.")
@click.option("--host-memory-gib", default=64, help="Memory per host (GiB).")
@click.option("--nats-cores-per-node", default=4, help="Cores per NATS node.")
@click.option(
    "--open-files", default=0, help="Open files per process on the hosts [default: this one's]."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write hosts vs fleet size (10k to 10x --devices) as SVG here.",
)  # fmt: skip
@json_option
def capacity(
    devices: int, source: Path | None, plot: Path | None, as_json: bool, **sizes: Any
) -> None:
    """Size shards, HAProxy, NATS and load generators for DEVICES from measured costs."""
    if source is not None and source.is_dir():
        source = source / "hold.json"
    try:
        costs, run = capacity_model.load_costs(source or capacity_model.MEASURED)
        assumptions = capacity_model.Assumptions(devices, **sizes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    plans = capacity_model.plan(costs, assumptions)
    if as_json:
        click.echo(json.dumps([vars(p) for p in plans], indent=2))
    else:
        click.echo(capacity_model.format_plan(plans, assumptions, run))
    if plot is not None:
        curve = capacity_model.cost_curve(costs, assumptions)
        plot.write_text(capacity_model.curve_svg(curve))
        click.echo(f"plot: {plot}", err=True)


@main.command()
@click.argument("device_id")
@api_url_option
@token_option
def shell(device_id: str, api_url: str, token: str) -> None:
    """An interactive shell on DEVICE_ID; exit, or Ctrl-D on an empty line, ends it."""

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        session = OperatorClient(api_url, token).open_shell(device_id, *terminal_size(stdout))
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    with raw_mode(stdin):
        reason = relay_terminal(session, stdin, stdout, lambda: terminal_size(stdout))
    click.echo(f"\n[{reason}]", err=True)  # the terminal is back in cooked mode here


@main.group()
def rollout() -> None:
    """Update rollouts: create one, follow it, pause, resume or abort it."""


@rollout.command("create")
@click.option("--version", "version", required=True, help="Firmware version to install.")
@click.option("--artifact-url", required=True, help="Where devices download it.")
@click.option("--checksum", required=True, help="SHA-256 of the artifact (64 hex digits).")
@click.option("--size", default=0, help="Artifact size in bytes.")
@click.option("--device", "devices", multiple=True, help="A target device; repeat for more.")
@click.option("--state", "health", type=click.Choice(["red", "green"]), help="Only these.")
@click.option("--firmware", default=None, help="Only devices reporting this firmware.")
@click.option("--prefix", default=None, help="Only device ids starting with this.")
@click.option("--online/--offline", default=None, help="Only connected / disconnected ones.")
@click.option("--percent", type=float, default=None, help="Share of the selection (id order).")
@click.option("--count", type=int, default=None, help="Number of the selection (id order).")
@click.option("--max-concurrent", default=10, help="Devices updating at once, at most.")
@click.option("--rate", default=10.0, help="Offers started per second, at most.")
@api_url_option
@token_option
@json_option
def rollout_create(api_url: str, token: str, as_json: bool, **options: Any) -> None:
    """Offer a firmware to the selected devices (--device..., or the filters)."""

    devices = list(options.pop("devices"))
    filters = {"state": options.pop("health"), "firmware": options.pop("firmware"),
               "prefix": options.pop("prefix"), "online": options.pop("online")}  # fmt: skip
    selector = {"devices": devices} if devices else filters
    spec = {key: value for key, value in options.items() if value is not None}
    spec["selector"] = {key: value for key, value in selector.items() if value is not None}
    try:
        created = OperatorClient(api_url, token).create_rollout(spec)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(created, indent=2) if as_json else format_rollout(created))


@rollout.command("list")
@api_url_option
@token_option
@json_option
def rollout_list(api_url: str, token: str, as_json: bool) -> None:
    """Every rollout, oldest first, with its progress."""

    try:
        found = OperatorClient(api_url, token).rollouts()["rollouts"]
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(found, indent=2) if as_json else format_rollouts(found))


@rollout.command("status")
@click.argument("rollout_id")
@api_url_option
@token_option
@json_option
def rollout_status(rollout_id: str, api_url: str, token: str, as_json: bool) -> None:
    """ROLLOUT_ID's progress and its failed devices with the reasons."""
    _show_rollout(rollout_id, None, api_url, token, as_json)


ROLLOUT_ACTIONS = {
    "pause": "Offer no more devices until resumed (offers made run on).",
    "resume": "Offer devices again after a pause.",
    "abort": "Offer no more devices, for good (offers made run on).",
}


def rollout_action(action: str, help_text: str) -> click.Command:
    """``fleet rollout <action> ROLLOUT_ID``: the same command but for the action."""

    def run(rollout_id: str, api_url: str, token: str, as_json: bool) -> None:
        _show_rollout(rollout_id, action, api_url, token, as_json)

    run.__doc__ = help_text
    for option in (json_option, token_option, api_url_option, click.argument("rollout_id")):
        run = option(run)
    return click.command(action)(run)


for _action, _help in ROLLOUT_ACTIONS.items():
    rollout.add_command(rollout_action(_action, _help))


def _show_rollout(
    rollout_id: str, action: str | None, api_url: str, token: str, as_json: bool
) -> None:
    """Apply ``action`` (None: only look) and print the rollout as it is then."""

    client = OperatorClient(api_url, token)
    try:
        if action is None:
            found = client.rollout(rollout_id)
        else:
            found = client.control_rollout(rollout_id, action)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(found, indent=2) if as_json else format_rollout(found))


@main.command("check")
@click.option(
    "--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
    help="JSON file of metric bounds, e.g. scenarios/baselines/ci.json.",
)  # fmt: skip
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check(baseline: Path, run_dir: Path) -> None:
    """Compare a run's summary.json to a baseline; exit 1 on any regression."""

    try:
        passed, lines = check_run(baseline, run_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"cannot compare {run_dir} to {baseline}: {exc}") from None
    click.echo("\n".join(lines))
    click.echo("no regression" if passed else "REGRESSION against the baseline")
    if not passed:
        sys.exit(1)


main.add_command(exporter.main, name="nats-exporter")
main.add_command(natsauth.main, name="nats-credentials")


if __name__ == "__main__":
    main()
