"""The operator's commands against the operator API (``backend.client``): ``fleet devices``,
``cmd``, ``shell`` and the ``rollout`` group."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from backend.cli.root import json_option
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
from backend.devstack import stackctl

DEFAULT_API_URL = "http://127.0.0.1:8090"


def _stack_api() -> dict[str, str]:
    """The operator API of the running ``fleet up --api`` stack: url and token; {} if none."""
    try:
        state = stackctl.running_stack()
    except stackctl.StackError:
        return {}
    return {"url": state["api_url"], "token": state["operator_token"]} if state["api_url"] else {}


def _api_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    return value or _stack_api().get("url", DEFAULT_API_URL)


def _token(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    token = value or _stack_api().get("token")
    if not token:
        raise click.UsageError(
            "no operator token: give --token or set FLEET_API_TOKEN (with a stack started by "
            "`fleet up --api`, its API and token are the defaults)"
        )
    return token


api_url_option = click.option(
    "--api-url", envvar="FLEET_API_URL", callback=_api_url,
    help=f"The operator API [default: the `fleet up --api` stack's, else {DEFAULT_API_URL}].",
)  # fmt: skip
token_option = click.option(
    "--token", envvar="FLEET_API_TOKEN", callback=_token,
    help="Operator bearer token [default: the `fleet up --api` stack's].",
)  # fmt: skip


def api_error(exc: OperatorError) -> click.ClickException:
    """The API's refusal as a one-line error; for no answer at all, what to check."""
    if exc.status == 0:
        return click.ClickException(
            f"{exc}; is the operator API running there? (start it with `fleet api` or "
            "`fleet up --api`, or point --api-url / FLEET_API_URL at it)"
        )
    return click.ClickException(str(exc))


@click.command()
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
        raise api_error(exc) from None
    click.echo(json.dumps(found, indent=2) if as_json else text)


@click.command(context_settings={"ignore_unknown_options": True})
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
        raise api_error(exc) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_command(result), nl=as_json)
    sys.exit(int(result["exit_code"]))


@click.command()
@click.argument("device_id")
@api_url_option
@token_option
def shell(device_id: str, api_url: str, token: str) -> None:
    """An interactive shell on DEVICE_ID; exit, or Ctrl-D on an empty line, ends it."""

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        session = OperatorClient(api_url, token).open_shell(device_id, *terminal_size(stdout))
    except OperatorError as exc:
        raise api_error(exc) from None
    with raw_mode(stdin):
        reason = relay_terminal(session, stdin, stdout, lambda: terminal_size(stdout))
    click.echo(f"\n[{reason}]", err=True)  # the terminal is back in cooked mode here


@click.group()
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
        raise api_error(exc) from None
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
        raise api_error(exc) from None
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
        raise api_error(exc) from None
    click.echo(json.dumps(found, indent=2) if as_json else format_rollout(found))
