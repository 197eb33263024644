"""Tools: ``fleet token`` (a device token), ``fleet capacity`` (sizing), ``fleet check`` (the
CI gate)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from backend.bus.auth import issue_device_token
from backend.cli.root import build_config, config_option, existing_file, json_option
from backend.devstack import stackctl
from backend.tools import capacity as capacity_model
from backend.tools.check import check_run


@click.command()
@click.argument("device_id")
@click.option(
    "--jwt-secret", default=None,
    help="HS256 secret the shards verify with [default: the running `fleet up` stack's].",
)  # fmt: skip
@click.option("--ttl", default=7 * 86400.0, help="Validity in seconds.")
def token(device_id: str, jwt_secret: str | None, ttl: float) -> None:
    """Print a device token (HS256) for DEVICE_ID."""
    if not jwt_secret:
        try:
            jwt_secret = stackctl.running_stack()["jwt_secret"]
        except stackctl.StackError:
            raise click.UsageError(
                "give --jwt-secret (or FLEET_TOKEN_JWT_SECRET), or start a local stack with "
                "fleet up: its secret is the default"
            ) from None
    try:
        click.echo(issue_device_token(device_id, jwt_secret, ttl=ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE_ID") from None


assumption_option = functools.partial(config_option, capacity_model.Assumptions)


@click.command()
@assumption_option("devices", "Fleet size.", type=click.IntRange(min=1), required=True)
@click.option(
    "--from", "source", type=click.Path(exists=True, path_type=Path), default=None,
    help="A bench/hold.py run directory or its hold.json [default: the committed proof run].",
)  # fmt: skip
@assumption_option("utilisation", "Share of each process's limits to plan for.")
@assumption_option("host_cores", "Cores per host.")
@assumption_option("host_memory_gib", "Memory per host (GiB).")
@assumption_option("nats_cores_per_node", "Cores per NATS node.")
@assumption_option("open_files", "Open files per process on the hosts [default: this one's].")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write hosts vs fleet size (10k to 10x --devices) as SVG here.",
)  # fmt: skip
@json_option
def capacity(source: Path | None, plot: Path | None, as_json: bool, **assumed: Any) -> None:
    """Size shards, HAProxy, NATS and load generators for DEVICES from measured costs."""
    if source is not None and source.is_dir():
        source = source / "hold.json"
    try:
        costs, run = capacity_model.load_costs(source or capacity_model.MEASURED)
        assumptions = build_config(capacity_model.Assumptions, assumed)
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


@click.command("check")
@click.option(
    "--baseline", type=existing_file, required=True,
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
