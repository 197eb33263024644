"""Virtual gateways against a real local stack (NATS and shard processes), driven by gevent.

The simulator runs on gevent without monkey patching (the gateway uses ``gevent.socket``
itself), so these tests are plain functions: the main greenlet spawns gateways and lets them
run with ``gevent.sleep``. Keep-alive is shortened on both sides so that reaping and
reconnecting happen within seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gevent
import pytest
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from backend.bus import presence, subjects
from backend.bus.natsauth import ADMIN, API, AUDIT
from backend.bus.routing import DeviceRouter
from backend.devstack.stack import LocalStack, StackConfig, fetch_metrics, metric_sum
from backend.protocol import closecodes
from backend.protocol import envelope as env
from backend.protocol.messages import CommandResult, Status, UpdateOffer, UpdateProgress
from simulator.audit import audit_stream
from simulator.behaviour import Behaviour
from simulator.gateway.driver import Gateway
from simulator.network import PROFILES, NetworkMix, NetworkProfile
from simulator.places import house_location
from tests.natsauth_support import connect_as
from tests.simulator.support import NO_FAULTS, Event, new_fleet, only
from tests.support import running, until, wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers

SERVER_KEEPALIVE_TIMEOUT = 3.0
SERVER_KEEPALIVE = {"ping_interval": "1", "keepalive_timeout": str(SERVER_KEEPALIVE_TIMEOUT)}
# A blackholed gateway reaped meanwhile reads the server's keep-alive close once it listens again.
REAPED = f"net_blackhole (closed {closecodes.KEEPALIVE_TIMEOUT})"
DISCONNECTS = "fleet_shard_disconnects_total"
FRESH = 1.5
"""Keep-alive timeout of the blackhole test's shard: it reaps gateways silent this long, and
pings (once per tick of its 1 s timer) well within it, so a gateway that heard nothing for this
long is inside a blackhole."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig(tmp_path_factory.mktemp("stack"), shard_options=SERVER_KEEPALIVE)
    with LocalStack(config) as local:
        yield local


def server_metric(stack: LocalStack, name: str, **labels: str) -> float:
    """A sample summed over the shards' /metrics pages (labels must match where given)."""
    return sum(metric_sum(fetch_metrics(url), name, **labels) or 0.0 for url in stack.shard_urls)


def times_of(events: list[Event], name: str) -> list[float]:
    """Response times (ms) of the successful requests called ``name``."""
    return [e["response_time"] for e in events if e["name"] == name and e["exception"] is None]


def errors(events: list[Event]) -> list[Event]:
    return [event for event in events if event["exception"] is not None]


# --- steady fleet --------------------------------------------------------------------------


def test_gateways_on_every_network_stay_connected_through_keepalives(stack: LocalStack) -> None:
    profiles = [profile.with_overrides(**NO_FAULTS) for profile in PROFILES.values()]
    fleet, events = new_fleet(stack, NetworkMix(tuple((p, 1.0) for p in profiles)))
    count = 250
    with running(fleet, count) as gateways:
        wait_until(lambda: fleet.stats.connected == count, 20, "every gateway connected")
        gevent.sleep(2 * SERVER_KEEPALIVE_TIMEOUT)  # six server pings, and as many reap checks
        assert fleet.stats.connected == count
        assert server_metric(stack, "fleet_shard_connections") == count
        assert {gateway.link.profile.name for gateway in gateways} == set(PROFILES)
        assert fleet.drain(10) == 0
    stats = fleet.stats
    assert stats.connects == count  # nobody reconnected
    assert stats.drops == {}
    assert stats.connect_failures == {}
    assert errors(events) == []
    pings = times_of(events, "ping")
    assert len(pings) >= count  # every gateway pinged at least once, on average
    # The link model is applied: a wired round trip takes two 5 ms latencies, a GPRS one 2x400.
    assert min(pings) >= 2 * PROFILES["wired"].latency * 1000
    assert max(pings) >= 2 * PROFILES["gprs"].latency * 1000
    assert stats.alerts["acked"] == stats.alerts["sent"] > 0


# --- faults --------------------------------------------------------------------------------


def test_blackholed_gateways_are_reaped_by_the_server_and_come_back(tmp_path: Path) -> None:
    # A short server keep-alive, so that blackholes of a few seconds outlast it and end soon.
    server = {"ping_interval": "0.5", "keepalive_timeout": str(FRESH)}
    blackholes = NetworkProfile(
        "blackholes", latency=0.005, blackholes_per_hour=900, blackhole_mean=2.5
    )
    count = 10
    with LocalStack(StackConfig(tmp_path, shards=1, shard_options=server)) as local:
        fleet, events = new_fleet(local, only(blackholes))
        stats = fleet.stats
        with running(fleet, count) as gateways:
            wait_until(
                lambda: any(gateway.link_down for gateway in gateways), 30, "a link in a blackhole"
            )
            wait_until(
                lambda: stats.drops[REAPED] >= 1 and blackhole_drops(stats.drops) >= 3,
                30,
                "blackhole drops, one of them with the server's keep-alive close",
            )
            # Each of those drops is a connection the server reaped for its silence.
            reaps = server_metric(local, DISCONNECTS, reason="keepalive_timeout")
            assert reaps >= blackhole_drops(stats.drops)
            healed = time.monotonic()
            healthy = blackholes.with_overrides(blackholes_per_hour=0, blackhole_mean=0)
            for gateway in gateways:  # the links heal: no more blackholes
                gateway.link.profile = healthy
            wait_until(lambda: all_back(local, gateways, healed), 30, "every gateway back")
            assert stats.connected == count
            assert not any(gateway.link_down for gateway in gateways)
    assert [cause for cause in stats.drops if not cause.startswith("net_blackhole")] == []
    assert stats.unexpected_drops == 0
    assert stats.reconnects == blackhole_drops(stats.drops)  # each drop, then back again
    assert errors(events) == []


def blackhole_drops(drops: dict[str, int]) -> int:
    return sum(n for cause, n in drops.items() if cause.startswith("net_blackhole"))


def all_back(stack: LocalStack, gateways: list[Gateway], healed: float) -> bool:
    """The server holds every gateway, and every gateway hears it. A gateway still inside a
    blackhole that began before ``healed`` reads nothing, so once FRESH has passed since, its
    ``last_heard`` is stale."""
    now = time.monotonic()
    return (
        now - healed > FRESH
        and server_metric(stack, "fleet_shard_connections") == len(gateways)
        and all(g.connected_at is not None and now - g.last_heard < FRESH for g in gateways)
    )


def test_alerts_survive_forced_drops_without_loss_or_duplicates(stack: LocalStack) -> None:
    flaky = NetworkProfile(
        "flaky",
        latency=0.02,
        jitter=0.02,
        drops_per_hour=1200,
        offline_per_hour=1200,
        offline_mean=1.0,
    )
    fleet, events = new_fleet(stack, only(flaky), alerts_per_hour=7200, clear_after=0.5)
    with running(fleet, 40):
        gevent.sleep(8)
        # Up to the backoff's cap: faults go on while draining, and a gateway whose retries
        # met offline spells waits up to that long before its next try (20 s fell short in CI).
        assert fleet.drain(Behaviour().reconnect_cap) == 0
    stats = fleet.stats
    assert stats.drops["net_drop"] > 0
    assert stats.drops["net_offline"] > 0
    assert stats.unexpected_drops == 0
    assert stats.alerts["resent"] > 0  # alerts really went again after reconnects
    assert stats.alerts["refused"] == 0
    assert stats.alerts["acked"] == stats.alerts["sent"]
    stored = audit_stream(
        stack.nats_url, fleet.run_id, timeout=30, credentials=stack.nats_credentials[AUDIT]
    )
    assert (stored["unique"], stored["duplicates"]) == (stats.alerts["acked"], 0)
    assert errors(events) == []


# --- operators and shards ------------------------------------------------------------------


async def operator_commands(
    stack: LocalStack, device_id: str, commands: list[str]
) -> list[CommandResult]:
    """What an operator gets back from ``commands``, sent to the device through NATS."""
    nc = await connect_as(stack.nats_url, API, stack.nats_credentials[API], [])
    try:
        kv = await subjects.ensure_streams(nc.jetstream())
        await presence_connected(kv, device_id)
        router = DeviceRouter(nc, kv)
        return [await router.run_command(device_id, c, timeout=5) for c in commands]
    finally:
        await nc.close()


async def presence_connected(kv: KeyValue, device_id: str) -> None:
    """The shard records presence just after the handshake; wait for it."""
    async with asyncio.timeout(5):
        while True:
            state, _revision = await presence.lookup(kv, device_id)
            if state is not None and state.connected:
                return
            await asyncio.sleep(0.05)


def test_a_gateway_answers_operator_commands(stack: LocalStack) -> None:
    fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
    with running(fleet, 1) as (gateway,), ThreadPoolExecutor(1) as operator:
        wait_until(lambda: fleet.stats.connected == 1, 10, "the gateway connected")
        # nats-py wants asyncio: the operator gets its own thread while gevent runs this one.
        commands = ["echo hi", "hostname", "false"]
        answer = operator.submit(asyncio.run, operator_commands(stack, gateway.device_id, commands))
        wait_until(answer.done, 20, "the operator's answers")
        results = answer.result()
    assert [(r.exit_code, r.output) for r in results] == [
        (0, b"hi\n"),
        (0, f"{gateway.device_id}\n".encode()),
        (1, b""),
    ]
    assert fleet.stats.commands == 3


async def operator_shell(stack: LocalStack, device_id: str) -> tuple[bytes, str]:
    """A shell session as the API relays it: the terminal bytes the device sent, and the
    type of its last message, after typing ``hostname`` then ``exit``."""
    nc = await connect_as(stack.nats_url, API, stack.nats_credentials[API], [])
    try:
        kv = await subjects.ensure_streams(nc.jetstream())
        await presence_connected(kv, device_id)
        router = DeviceRouter(nc, kv)
        sub = await nc.subscribe(subjects.relay_subject(device_id, "shell-1"))

        async def send(typ: str, body: bytes = b"") -> None:
            msg = env.ProtoMsg(env.PROTO_SHELL, typ, "shell-1", None, body)
            await router.deliver(device_id, env.encode(msg), user_id="op-1")

        async def read_until(marker: bytes) -> tuple[bytes, str]:
            output, typ = b"", ""
            while marker not in output and typ != env.TYP_SHELL_STOP:
                msg = env.decode((await sub.next_msg(timeout=10)).data)
                output += msg.body if msg.typ == env.TYP_SHELL_DATA else b""
                typ = msg.typ
            return output, typ

        await send(env.TYP_SHELL_NEW)
        started, _typ = await read_until(b"$ ")
        await send(env.TYP_SHELL_DATA, b"hostname\r")
        ran, _typ = await read_until(f"{device_id}\r\n$ ".encode())
        await send(env.TYP_SHELL_DATA, b"exit\r")
        ended, last = await read_until(b"never printed")
        await send(env.TYP_SHELL_STOP)  # as the relay does: the gateway keeps it until then
        return started + ran + ended, last
    finally:
        await nc.close()


def test_a_gateway_serves_a_shell_session(stack: LocalStack) -> None:
    fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
    with running(fleet, 1) as (gateway,), ThreadPoolExecutor(1) as operator:
        wait_until(lambda: fleet.stats.connected == 1, 10, "the gateway connected")
        answer = operator.submit(asyncio.run, operator_shell(stack, gateway.device_id))
        wait_until(answer.done, 30, "the shell session")
        output, last = answer.result()
        # The server's stop ended it: the gateway holds nothing for the session.
        wait_until(lambda: gateway.device.shells is None, 10, "the session forgotten")
    assert output == f"$ hostname\r\n{gateway.device_id}\r\n$ exit\r\n".encode()
    assert last == env.TYP_SHELL_STOP


async def last_status(stack: LocalStack, device_id: str) -> Status:
    """The device's latest status once the stream keeps one (the shard publishes it soon
    after the gateway sent it)."""
    nc = await connect_as(stack.nats_url, ADMIN, stack.nats_credentials[ADMIN], [])
    js = nc.jetstream()

    async def stored() -> Status | None:
        subject = subjects.status_subject(device_id)
        try:
            return Status.from_body((await js.get_last_msg(subjects.STATUS_STREAM, subject)).data)
        except NotFoundError:
            return None

    try:
        return await until(stored)
    finally:
        await nc.close()


def test_a_gateway_reports_its_house_as_inventory_with_its_status(stack: LocalStack) -> None:
    fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
    with running(fleet, 1) as (gateway,), ThreadPoolExecutor(1) as reader:
        wait_until(lambda: fleet.stats.statuses > 0, 10, "a status sent")
        status = reader.submit(asyncio.run, last_status(stack, gateway.device_id))
        wait_until(status.done, 20, "the stored status")
    assert status.result().inventory == house_location(gateway.device_id)


async def offered_update(stack: LocalStack, device_id: str, offer: UpdateOffer) -> list[str]:
    """Offer ``offer`` to the device; the progress states it reports, until the final one
    (read off the updates subject: the API role reads them from the stream only)."""
    nc = await connect_as(stack.nats_url, ADMIN, stack.nats_credentials[ADMIN], [])
    try:
        kv = await subjects.ensure_streams(nc.jetstream())
        await presence_connected(kv, device_id)
        sub = await nc.subscribe(subjects.update_subject(device_id))
        await DeviceRouter(nc, kv).offer_update(device_id, "update-1", offer)
        states: list[str] = []
        while not states or states[-1] not in ("success", "failure"):
            msg = await sub.next_msg(timeout=30)
            states.append(UpdateProgress.from_body(msg.data).state)
        return states
    finally:
        await nc.close()


def test_an_update_survives_a_dropped_connection_and_reports_after_reconnecting(
    stack: LocalStack,
) -> None:
    slow = PROFILES["wired"].with_overrides(bandwidth=100_000, **NO_FAULTS)  # 4 s download
    fleet, _ = new_fleet(stack, only(slow), install_time=0.5, update_failure_share=0.0)
    offer = UpdateOffer("2.0.0", "https://updates.example/fw.bin", "00" * 32, 400_000)
    with running(fleet, 1) as (gateway,), ThreadPoolExecutor(1) as operator:
        wait_until(lambda: fleet.stats.connected == 1, 10, "the gateway connected")
        answer = operator.submit(asyncio.run, offered_update(stack, gateway.device_id, offer))
        wait_until(lambda: gateway.device.updating, 10, "the download started")
        assert gateway.sock is not None
        gateway.sock.shutdown(socket.SHUT_RDWR)  # the connection ends mid-download
        wait_until(answer.done, 40, "the update's final result")
        states = answer.result()
    assert fleet.stats.reconnects >= 2  # the drop, then the reboot into the new firmware
    assert states[0] == "downloading"
    assert states[-2:] == ["rebooting", "success"]
    assert gateway.device.firmware == "2.0.0"


def test_a_draining_shard_closes_with_1012_and_gateways_wait_before_returning(
    tmp_path: Path,
) -> None:
    count = 20
    with LocalStack(StackConfig(tmp_path, shards=1)) as local:
        fleet, events = new_fleet(local, only(PROFILES["wired"].with_overrides(**NO_FAULTS)))
        stats = fleet.stats
        with running(fleet, count):
            wait_until(lambda: stats.connected == count, 10, "every gateway connected")
            os.kill(local.pids()["shards"][0], signal.SIGTERM)
            stopping = time.monotonic()
            wait_until(lambda: stats.drops["closed 1012"] == count, 5, "1012 for every gateway")
            wait_until(lambda: stats.connect_failures["tcp"] > 0, 15, "a reconnect attempt")
    assert stats.drops == {"closed 1012": count}
    assert stats.unexpected_drops == 0
    # The close reason says "retry-after=N" with N >= 1: nobody comes back before that.
    retries = [e["at"] for e in events if e["name"] == "connect: tcp" and e["exception"]]
    assert min(retries) >= stopping + 1.0
    assert {event["name"] for event in errors(events)} == {"connect: tcp"}  # the shard is gone
