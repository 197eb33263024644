"""Remote access to a device through the operator API: ``fleet port-forward``, ``cp`` and
``stat``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import click

from backend.cli.client import api_error, api_url_option, token_option
from backend.cli.root import json_option
from backend.client.files import download, format_stat, upload
from backend.client.operator import OperatorClient, OperatorError
from backend.client.portforward import ForwardSpec, forward, open_forward


@click.command("port-forward")
@click.argument("device_id")
@click.argument("spec", metavar="[LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT")
@click.option("--udp", is_flag=True, help="Forward UDP datagrams instead of TCP connections.")
@api_url_option
@token_option
def port_forward(device_id: str, spec: str, udp: bool, api_url: str, token: str) -> None:
    """Forward a local port to REMOTE_HOST:REMOTE_PORT as DEVICE_ID sees it (ssh -L style);
    Ctrl-C ends it."""
    try:
        parsed = ForwardSpec.parse(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    protocol = "udp" if udp else "tcp"
    try:
        reason = asyncio.run(_forward(api_url, token, device_id, parsed, protocol))
    except OperatorError as exc:
        raise api_error(exc) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {parsed.local_addr}:{parsed.local_port}: {exc.strerror or exc}; "
            "choose another LOCAL_PORT"
        ) from None
    if reason is not None:
        raise click.ClickException(f"the port forward ended: {reason}")


async def _forward(
    api_url: str, token: str, device_id: str, spec: ForwardSpec, protocol: str
) -> str | None:
    """Why the forward ended, or None when the operator stopped it (Ctrl-C, SIGTERM)."""
    ws = await open_forward(api_url, token, device_id, spec, protocol)

    def ready(addr: str, port: int) -> None:
        click.echo(f"forwarding {protocol} {addr}:{port} -> {spec.remote_host}:"
                   f"{spec.remote_port} on {device_id} (Ctrl-C to stop)", err=True)  # fmt: skip

    def note(text: str) -> None:
        click.echo(text, err=True)

    relay = asyncio.ensure_future(forward(ws, spec, protocol, note, ready))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, relay.cancel)
    try:
        return await relay
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await ws.close()
        return None


def remote_path(text: str) -> tuple[str, str] | None:
    """``DEVICE:PATH`` as (device, path); None for a local path (no colon before a slash)."""
    device, colon, path = text.partition(":")
    if not colon or "/" in device or not device or not path:
        return None
    return device, path


@click.command("cp")
@click.argument("source")
@click.argument("target")
@api_url_option
@token_option
def cp(source: str, target: str, api_url: str, token: str) -> None:
    """Copy a file from or to a device: fleet cp DEVICE:PATH LOCAL, or fleet cp LOCAL
    DEVICE:PATH. The sha256 of what was written is checked against what was read."""
    client = OperatorClient(api_url, token)
    down, up = remote_path(source), remote_path(target)
    if (down is None) == (up is None):
        raise click.UsageError("exactly one of SOURCE and TARGET is DEVICE:PATH")
    try:
        if down is not None:
            local = Path(target)
            if local.is_dir():
                local = local / PurePosixPath(down[1]).name
            size = client.stat_file(*down)["size"]
            with _progress(size, f"{source} -> {local}") as bar:
                done = download(client, down[0], down[1], local, bar)
        else:
            assert up is not None
            local = Path(source)
            if not local.is_file():
                raise click.UsageError(f"{source} is not a file")
            with _progress(local.stat().st_size, f"{source} -> {target}") as bar:
                done = upload(client, local, up[0], up[1], bar)
    except OperatorError as exc:
        raise api_error(exc) from None
    click.echo(f"{done['size']} bytes, sha256 {done['sha256']}", err=True)


@click.command("stat")
@click.argument("remote", metavar="DEVICE:PATH")
@api_url_option
@token_option
@json_option
def stat(remote: str, api_url: str, token: str, as_json: bool) -> None:
    """A file's size, mode, owner and modification time on the device."""
    parsed = remote_path(remote)
    if parsed is None:
        raise click.BadParameter("give DEVICE:PATH", param_hint="DEVICE:PATH")
    try:
        info = OperatorClient(api_url, token).stat_file(*parsed)
    except OperatorError as exc:
        raise api_error(exc) from None
    click.echo(json.dumps(info) if as_json else format_stat(info))


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal's stderr; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
