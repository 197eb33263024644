"""Connecting to NATS as a role of ``backend.bus.natsauth``, and what its credentials refuse:
shared by the tests of the credentials and of the local stacks that run with them."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from backend.bus import natsauth, subjects
from backend.bus.routing import DeviceRouter
from backend.devstack.natsserver import NatsServer
from backend.devstack.stack import LocalStack
from backend.devstack.testdevice import TestDevice
from backend.protocol import session as ps
from backend.protocol.errors import DeviceOffline, DeviceTimeout

Seeds = dict[str, Path]
"""Role -> its seed file."""


@contextlib.contextmanager
def secured_server(directory: Path, roles: Iterable[str]) -> Iterator[tuple[NatsServer, Seeds]]:
    """A nats-server that knows new credentials for ``roles`` and no one else; their seeds."""
    made = natsauth.write_credentials(directory / "credentials", roles)
    config = natsauth.render_authorization({role: c.public_key for role, c in made.items()})
    with NatsServer(directory / "nats", config=config) as server:
        yield server, {role: c.seed_file for role, c in made.items()}


# nats-py's text of a -ERR, lower-cased: 'permissions violation for publish to "<subject>"'.
VIOLATION = re.compile(r'permissions violation for (?:publish|subscription) to "(.*)"')


async def connect_as(
    servers: str | list[str],
    role: str,
    seed_file: Path,
    errors: list[Exception],
    ca_file: Path | None = None,
) -> NATS:
    """A client of ``role``; what the server refuses it lands in ``errors``."""

    async def record(error: Exception) -> None:
        errors.append(error)

    return await nats.connect(
        servers, allow_reconnect=False, connect_timeout=3, error_cb=record,
        **natsauth.connect_options(role, natsauth.Settings(seed_file, ca_file)),
    )  # fmt: skip


def violations(stack: LocalStack) -> list[str]:
    """What the stack's NATS nodes logged as refused: none while its parts do their work."""
    logs = (node.log_file.read_text() for node in stack.nats_nodes)
    return [line for text in logs for line in text.splitlines() if "Violation" in line]


def refused(errors: list[Exception]) -> list[str]:
    """The subjects of the permission violations among ``errors`` (lower case, as reported)."""
    return [match[1] for error in errors if (match := VIOLATION.search(str(error)))]


async def refusals(
    servers: str | list[str], role: str, seed_file: Path, actions: list[tuple[str, str]]
) -> list[str]:
    """Try each ("publish" or "subscribe", subject) as ``role``; the subjects refused."""
    errors: list[Exception] = []
    nc = await connect_as(servers, role, seed_file, errors)
    try:
        for kind, subject in actions:
            if kind == "publish":
                await nc.publish(subject, b"")
            else:
                await nc.subscribe(subject)
            # The -ERR comes before the flush's PONG; its callback runs just after.
            await nc.flush()
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return refused(errors)


async def held_by_a_shard(router: DeviceRouter, device_id: str) -> str:
    """The shard presence names for ``device_id``, once the shard registered it."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await router.shard_of(device_id)
            except DeviceOffline:
                await asyncio.sleep(0.05)


def commands_seen(device: TestDevice) -> int:
    seen = 0
    while not device.events.empty():
        seen += isinstance(device.events.get_nowait(), ps.CommandRequested)
    return seen


async def only_the_api_commands_devices(stack: LocalStack) -> None:
    """On a running stack: every node refuses a client without credentials; a shard's
    credentials cannot send a command to a shard (NATS refuses the publish, the device sees
    nothing), the operator API's can."""
    for url in stack.nats_urls:
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=3)
    device = TestDevice("gw-1", stack.token("gw-1"), stack.shard_urls[0])
    await device.connect()
    errors: list[Exception] = []
    seeds = stack.nats_credentials
    api = await connect_as(stack.nats_urls, natsauth.API, seeds[natsauth.API], errors)
    shard = await connect_as(stack.nats_urls, natsauth.SHARD, seeds[natsauth.SHARD], errors)
    try:
        as_api = DeviceRouter(api, await api.jetstream().key_value(subjects.PRESENCE_BUCKET))
        holder = await held_by_a_shard(as_api, "gw-1")
        as_shard = DeviceRouter(shard, await shard.jetstream().key_value(subjects.PRESENCE_BUCKET))
        with pytest.raises(DeviceTimeout):
            await as_shard.run_command("gw-1", "echo from a shard", timeout=0.5)
        assert refused(errors) == [subjects.shard_subject(holder)]
        assert commands_seen(device) == 0
        result = await as_api.run_command("gw-1", "echo from the api", timeout=5)
        assert (result.exit_code, result.output) == (0, b"from the api\n")
        assert commands_seen(device) == 1
    finally:
        await shard.close()
        await api.close()
        await device.close()
