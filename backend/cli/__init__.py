"""The ``fleet`` command: the root group (``root``) and, under it, the commands of one module
per command group. Every option can also be set as ``FLEET_<COMMAND>_<OPTION>``."""

from __future__ import annotations

import click

from backend.bus import exporter, natsauth
from backend.cli import client, operator, remote, shard, stack, tools
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
    stack.runs,
    client.devices,
    client.cmd,
    client.shell,
    client.rollout,
    remote.port_forward,
    remote.cp,
    remote.stat,
    tools.token,
    tools.capacity,
    tools.check,
):
    main.add_command(_command)
main.add_command(exporter.main, name="nats-exporter")
main.add_command(natsauth.main, name="nats-credentials")


def _show_environment_variables(group: click.Group) -> None:
    """Every option's ``--help`` line names its variable: click shows it only when asked, option
    by option, and the variables are how the stack and the deployments set options."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option):
                param.show_envvar = True
        if isinstance(command, click.Group):
            _show_environment_variables(command)


_show_environment_variables(main)
