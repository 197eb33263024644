"""``fleet shard``: one shard of the device edge, its options derived from ``ShardConfig``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from backend import logs
from backend.cli.root import (
    build_config,
    config_option,
    existing_file,
    nats_options,
    run_service,
    verbose_option,
)
from backend.shard import ShardConfig, serve

shard_option = functools.partial(config_option, ShardConfig)


@click.command()
@shard_option("host", "Address to listen on.")
@shard_option("port", "Port for devices, /healthz and /metrics (0: any).")
@shard_option("shard_id", "Name on the bus [default: shard-<random>].")
@nats_options(ShardConfig)
@shard_option("jwt_secret", "HS256 secret for device tokens.")
@shard_option(
    "jwt_public_key_file", "PEM public key for RS256/ES256/EdDSA device tokens.",
    type=existing_file,
)  # fmt: skip
@shard_option(
    "max_connections", "Connection cap [default: open-file limit minus a reserve].", type=int
)
@shard_option("accept_rate", "Upgrades admitted per second.")
@shard_option("accept_burst", "Upgrades admitted at once.")
@shard_option("ping_interval", "Seconds between keep-alive pings.")
@shard_option("keepalive_timeout", "Reap connections silent this long.")
@shard_option("max_message_size", "Largest device message (bytes).")
@shard_option("drain_timeout", "Seconds to wait for devices on shutdown.")
@shard_option(
    "ready_file", "Write {shard, host, port} as JSON here once listening.",
    type=click.Path(dir_okay=False, path_type=Path),
)  # fmt: skip
@verbose_option
def shard(verbose: int, **options: Any) -> None:
    """Run one shard: holds device WebSockets, routes through NATS."""
    logs.setup(verbose)
    if not options["jwt_secret"] and options["jwt_public_key_file"] is None:
        raise click.UsageError(
            "set --jwt-secret or --jwt-public-key-file (or FLEET_SHARD_JWT_SECRET, "
            "FLEET_SHARD_JWT_PUBLIC_KEY_FILE)"
        )
    config = build_config(ShardConfig, options)
    run_service(serve(config), config.host, config.port)
