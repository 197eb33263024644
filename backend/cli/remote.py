"""Remote access to a device through the operator API: ``fleet port-forward``."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from backend.cli.client import api_error, api_url_option, token_option
from backend.client.operator import OperatorError
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
