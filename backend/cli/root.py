"""The ``fleet`` root group and the options its command groups share.

An option that sets a field of a service's config dataclass is derived from that field
(``config_option``): its default is the field's, so the CLI and the Python API cannot drift
apart, and the command builds its one config object from its options (``build_config``).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import uvloop

from backend.bus.subjects import MAX_REPLICAS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

F = TypeVar("F", bound=Callable[..., Any])
ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


@click.group(
    context_settings={
        "auto_envvar_prefix": "FLEET",
        "show_default": True,
        "help_option_names": ["-h", "--help"],
    }
)
@click.version_option(package_name="fleetharness", message="%(prog)s %(version)s")
def main() -> None:
    """fleetharness: WebSocket backend for IoT gateway fleets, and its load harness."""


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
verbose_option = click.option("-v", "--verbose", count=True, help="More logs (-v info, -vv debug).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


# --- options derived from config fields ----------------------------------------------------


class ConfigOption(click.Option):
    """An option that sets the field ``field`` of the dataclass ``config``."""

    def __init__(
        self,
        param_decls: Sequence[str],
        *,
        config: type[DataclassInstance],
        field: str,
        **attrs: Any,
    ) -> None:
        super().__init__(param_decls, **attrs)
        self.config = config
        self.field = field


def config_field(config: type[DataclassInstance], name: str) -> dataclasses.Field[Any]:
    """The field ``name`` of ``config``; a ValueError if it has none."""
    (found,) = (field for field in dataclasses.fields(config) if field.name == name)
    return found


def default_of(field: dataclasses.Field[Any]) -> dict[str, Any]:
    """``click.option``'s default for ``field``: the field's own; None for a default factory
    (left out of the config, the factory makes the value); none for a field without either,
    which the command must be given."""
    if field.default is not dataclasses.MISSING:
        return {"default": field.default}
    if field.default_factory is not dataclasses.MISSING:
        return {"default": None}
    return {}


def config_option(
    config: type[DataclassInstance], name: str, help_text: str, *decls: str, **attrs: Any
) -> Callable[[F], F]:
    """``--<name>`` for the field ``name`` of ``config``, with the field's default; click
    takes its type from the default, a bool makes it a flag. ``decls`` replace the option's
    names as in ``click.option``: the parameter name they give is also the one in its
    ``FLEET_*`` variable. ``attrs`` go to ``click.option`` as they are, e.g. the type of a
    field whose default is None."""
    default = default_of(config_field(config, name))
    if isinstance(default.get("default"), bool):
        attrs.setdefault("is_flag", True)
    names = decls or (f"--{name.replace('_', '-')}",)
    return click.option(
        *names, cls=ConfigOption, config=config, field=name, help=help_text, **default, **attrs
    )


def nats_options(config: type[DataclassInstance]) -> Callable[[F], F]:
    """How a service reaches NATS (servers, credentials, CA, stream copies): the fields every
    service's config has, as options."""
    options = (
        config_option(config, "nats_urls", "NATS server URL; repeat for a cluster.",
                      "--nats-url", "nats_urls", multiple=True),
        config_option(config, "nats_credentials",
                      "This role's NATS nkey seed file (a path: no secret on the command line).",
                      type=existing_file),
        config_option(config, "nats_ca_file",
                      "CA certificate to verify NATS' TLS with (tls:// URLs).", type=existing_file),
        config_option(config, "stream_replicas",
                      "Copies of each stream and KV bucket, on as many NATS nodes (3 on a 3-node "
                      "cluster).", type=click.IntRange(1, MAX_REPLICAS)),
    )  # fmt: skip

    def decorate(command: F) -> F:
        for option in reversed(options):  # decorators apply bottom up
            command = option(command)
        return command

    return decorate


def build_config(config: type[ConfigT], options: Mapping[str, Any]) -> ConfigT:
    """``config`` from a command's options, by field name. An option of a field with a default
    factory given empty (unset, "" or 0) is left out: the factory makes the value."""
    factories = {
        field.name
        for field in dataclasses.fields(config)
        if field.default_factory is not dataclasses.MISSING
    }
    return config(
        **{name: value for name, value in options.items() if value or name not in factories}
    )


def run_service(service: Coroutine[Any, Any, None], host: str, port: int) -> None:
    """Run a service until it stops; an address it cannot listen on is a one-line error that
    says what to change, not a traceback."""
    try:
        uvloop.run(service)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"{host}:{port} is already in use: stop what listens there or choose another "
                "--port (0: any free port)"
            ) from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port"
            ) from None
        raise
