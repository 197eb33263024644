"""``fleet shard``: one shard of the device edge."""

from __future__ import annotations

from pathlib import Path

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
from backend.shard import ShardConfig, serve
from backend.shard.config import default_max_connections, default_shard_id


@click.command()
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
