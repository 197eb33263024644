"""The ``fleet`` command: the root group (``root``) and, under it, the commands of one module
per command group. Every option can also be set as ``FLEET_<COMMAND>_<OPTION>``."""

from __future__ import annotations

from backend.bus import exporter, natsauth
from backend.cli import client, operator, shard, stack, tools
from backend.cli.root import main

__all__ = ["main"]

for _command in (
    shard.shard,
    operator.api,
    operator.state,
    stack.demo,
    stack.up,
    stack.status,
    stack.drain,
    stack.down,
    client.devices,
    client.cmd,
    client.shell,
    client.rollout,
    tools.token,
    tools.capacity,
    tools.check,
):
    main.add_command(_command)
main.add_command(exporter.main, name="nats-exporter")
main.add_command(natsauth.main, name="nats-credentials")
