"""The operator plane's services, ``fleet api`` and ``fleet state``: options derived from
``FleetConfig``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click
import uvloop

from backend import logs
from backend.cli.root import (
    build_config,
    config_option,
    existing_file,
    nats_options,
    run_service,
    verbose_option,
)
from backend.operator import api as operator_api
from backend.operator import fleetstate
from backend.operator.config import FleetConfig, load_operator_tokens

fleet_option = functools.partial(config_option, FleetConfig)


@click.command()
@fleet_option("host", "Address to listen on.")
@fleet_option("port", "Port of the API (0: any).")
@nats_options(FleetConfig)
@click.option(
    "--operator-tokens-file", type=existing_file, required=True,
    help='JSON {"<bearer token>": "<operator id>", ...}.',
)  # fmt: skip
@fleet_option("command_timeout", "Default command deadline (s).")
@fleet_option("max_output_bytes", "Command output kept (bytes).")
# The negation of run_state_service: a flag for the case that is not the default.
@click.option("--no-state", is_flag=True, help="Run no fleet state instance in this process.")
@fleet_option("shell_idle_timeout", "Close a shell with no bytes either way this long (s).")
@fleet_option("session_ttl", "How long a sign-in to the fleet map lasts (s).")
@fleet_option("forward_idle_timeout", "Close a port forward idle this long (s).")
@fleet_option("max_transfer_bytes", "Largest file fleet cp moves (bytes).")
@fleet_option("max_rollout_devices", "Devices one rollout may target.")
@fleet_option("rollout_offer_timeout", "Offer again to a device silent this long (s).")
@fleet_option("rollout_offer_attempts", "Offers made before a silent device fails.")
@fleet_option("rollout_device_timeout", "Fail a device with no result this long (s).")
@verbose_option
def api(verbose: int, operator_tokens_file: Path, no_state: bool, **options: Any) -> None:
    """Run the operator API (devices, commands; OpenAPI at /openapi.json) and its fleet map (/)."""
    logs.setup(verbose)
    try:
        tokens = load_operator_tokens(operator_tokens_file)
        config = build_config(
            FleetConfig, {**options, "operator_tokens": tokens, "run_state_service": not no_state}
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_service(operator_api.serve(config), config.host, config.port)


@click.command()
@nats_options(FleetConfig)
@fleet_option("durable", "Consumer name the instances share.")
@fleet_option("fetch_batch", "Events fetched at once.")
@verbose_option
def state(verbose: int, **options: Any) -> None:
    """Run a fleet state instance: alerts, status and presence into per-device state."""
    logs.setup(verbose)
    uvloop.run(fleetstate.serve(build_config(FleetConfig, options)))
