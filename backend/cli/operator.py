"""The operator plane's services: ``fleet api`` and ``fleet state``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import uvloop

from backend import logs
from backend.cli.root import (
    nats_ca_file_option,
    nats_credentials_option,
    nats_urls_option,
    stream_replicas_option,
    verbose_option,
)
from backend.operator import api as operator_api
from backend.operator import fleetstate
from backend.operator.config import FleetConfig, load_operator_tokens


def fleet_config_option(name: str, help_text: str) -> Callable[[Callable[..., Any]], Any]:
    """An option for the FleetConfig field ``name``, with the field's default."""
    (default,) = (f.default for f in dataclasses.fields(FleetConfig) if f.name == name)
    return click.option(f"--{name.replace('_', '-')}", default=default, type=type(default),
                        help=help_text)  # fmt: skip


@click.command()
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


@click.command()
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
