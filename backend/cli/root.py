"""The ``fleet`` root group and the options its command groups share. Every option can also be
set as ``FLEET_<COMMAND>_<OPTION>``."""

from __future__ import annotations

from pathlib import Path

import click

from backend.bus.subjects import MAX_REPLICAS


@click.group(context_settings={"auto_envvar_prefix": "FLEET", "show_default": True})
def main() -> None:
    """fleetharness: WebSocket backend for IoT gateway fleets, and its load harness."""


verbose_option = click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
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
