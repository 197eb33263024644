"""The shard end to end: real nats-server, in-process shards, devices on real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from nats.aio.client import Client as NATS
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from backend.bus import presence, subjects
from backend.bus.routing import DeviceRouter
from backend.devstack.natsserver import NatsServer
from backend.devstack.testdevice import TestDevice
from backend.protocol import closecodes, envelope, messages
from backend.protocol import session as ps
from backend.protocol.errors import DeviceOffline, DeviceTimeout
from backend.protocol.http import DEVICE_PATH
from backend.shard import Shard, ShardConfig
from tests.shard.support import alert, connected, metric, still_serves, url
from tests.support import ShardFactory, device_token, until_true


async def registered(shard: Shard, device_id: str) -> None:
    """Wait until the shard has recorded the device's presence in the KV."""
    await until_true(lambda: shard.devices[device_id].registration is not None)


@pytest.fixture
async def router(nc: NATS) -> DeviceRouter:
    return DeviceRouter(nc, await subjects.ensure_streams(nc.jetstream()))


async def stored_alerts(nc: NATS) -> list[tuple[str, bytes]]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.ALERTS_STREAM)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.ALERTS_STREAM, seq)
        found.append((msg.subject, msg.data))
    return found


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def upgrade_request(token: str | None, path: str = DEVICE_PATH) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


# --- before the upgrade --------------------------------------------------------------------


async def test_healthz_and_metrics(start_shard: ShardFactory) -> None:
    async with start_shard() as shard:
        health = await asyncio.to_thread(raw_exchange, shard.port, b"GET /healthz HTTP/1.1\r\n"
                                         b"Host: x\r\n\r\n")  # fmt: skip
        assert health.startswith(b"HTTP/1.1 200")
        page = await asyncio.to_thread(raw_exchange, shard.port, b"GET /metrics HTTP/1.1\r\n"
                                       b"Host: x\r\n\r\n")  # fmt: skip
        assert b"fleet_shard_connections 0.0" in page
        assert b"process_resident_memory_bytes " in page


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        (None, b"401", "unauthorized"),
        ("garbage", b"401", "unauthorized"),
        (device_token("gw-1", ttl=-30), b"401", "unauthorized"),
    ],
)
async def test_bad_tokens_get_401_before_upgrade(
    start_shard: ShardFactory, token: str | None, status: bytes, reason: str
) -> None:
    async with start_shard() as shard:
        answer = await asyncio.to_thread(raw_exchange, shard.port, upgrade_request(token))
        assert answer.startswith(b"HTTP/1.1 " + status)
        assert b"WWW-Authenticate: Bearer" in answer
        assert metric(shard, "fleet_shard_rejected_upgrades_total", reason=reason) == 1


async def test_garbage_before_upgrade_gets_400_and_shard_keeps_serving(
    start_shard: ShardFactory,
) -> None:
    async with start_shard() as shard:
        answer = await asyncio.to_thread(raw_exchange, shard.port, b"\x16\x03\x01garbage\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        wrong_path = await asyncio.to_thread(raw_exchange, shard.port, upgrade_request("x", "/x"))
        assert wrong_path.startswith(b"HTTP/1.1 404")
        device = await connected("gw-1", shard)
        await device.close()


async def test_over_capacity_gets_503_with_retry_after(start_shard: ShardFactory) -> None:
    async with start_shard(max_connections=1, retry_after=5) as shard:
        first = await connected("gw-1", shard)
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                url(shard) + DEVICE_PATH,
                additional_headers={"Authorization": f"Bearer {device_token('gw-2')}"},
            )
        response = refused.value.response
        assert response.status_code == 503
        assert 1 <= int(response.headers["Retry-After"]) <= 5
        assert metric(shard, "fleet_shard_rejected_upgrades_total", reason="overloaded") == 1
        await first.close()


async def test_over_accept_rate_gets_503(start_shard: ShardFactory) -> None:
    async with start_shard(accept_rate=0.001, accept_burst=2) as shard:
        devices = [await connected(f"gw-{i}", shard) for i in range(2)]
        answer = await asyncio.to_thread(raw_exchange, shard.port, upgrade_request(
            device_token("gw-9")))  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"accept-rate" in answer
        for device in devices:
            await device.close()


# --- sessions --------------------------------------------------------------------------------


async def test_server_opens_handshake_and_presence_is_recorded(
    start_shard: ShardFactory, nc: NATS
) -> None:
    async with start_shard(shard_id="shard-a") as shard:
        device = await connected("gw-1", shard)
        kv = await nc.jetstream().key_value(subjects.PRESENCE_BUCKET)

        async def state() -> presence.Presence | None:
            return (await presence.lookup(kv, "gw-1"))[0]

        await registered(shard, "gw-1")
        now = await state()
        assert now is not None
        assert (now.connected, now.shard) == (True, "shard-a")
        await device.close()
        await until_true(lambda: "gw-1" not in shard.devices)
        await asyncio.sleep(0.2)
        after = await state()
        assert after is not None
        assert (after.connected, after.version) == (False, now.version)


async def test_alert_is_acked_only_after_it_is_stored(start_shard: ShardFactory, nc: NATS) -> None:
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        await device.send_alert(alert("a-1"))
        async with asyncio.timeout(5):
            await device.wait_acked("a-1")
        assert await stored_alerts(nc) == [("fleet.alerts.gw-1", alert("a-1").to_body())]
        assert device.session.outbox_size == 0
        received = "fleet_shard_messages_received_total"
        assert metric(shard, received, proto="monitor", typ="alert") == 1
        assert metric(shard, received, proto="control", typ="accept") == 1
        assert metric(shard, "fleet_shard_messages_sent_total", proto="monitor", typ="ack") == 1
        assert metric(shard, "fleet_shard_alerts_total", outcome="acked") == 1
        await device.close()


async def test_alert_resent_after_reconnect_is_stored_once(
    start_shard: ShardFactory, nc: NATS
) -> None:
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        await device.send_alert(alert("a-1"))
        async with asyncio.timeout(5):
            await device.wait_acked("a-1")
        # The ack is lost with the connection: the device still holds a-2 and a-1 again.
        device.session.send_alert(alert("a-2"))
        device.session.messages_to_send()  # written to a socket that dies before sending
        await device.drop()
        device.acked.clear()
        device.session.send_alert(alert("a-1-again-id-reuse-check"))
        await device.connect()  # resends everything unacked
        async with asyncio.timeout(5):
            await device.wait_acked("a-2")
        bodies = [body for _subject, body in await stored_alerts(nc)]
        assert bodies.count(alert("a-1").to_body()) == 1
        assert bodies.count(alert("a-2").to_body()) == 1
        await device.close()


async def test_duplicate_alert_id_is_deduplicated_by_the_stream(
    start_shard: ShardFactory, nc: NATS
) -> None:
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        for _ in range(3):
            # The same alert arriving three times (resends after lost acks).
            shard.session_event(shard.devices["gw-1"], ps.AlertReceived(alert("a-1")))
        await device.send_alert(alert("a-2"))
        async with asyncio.timeout(5):
            await device.wait_acked("a-2")
        assert len(await stored_alerts(nc)) == 2
        await device.close()


async def test_newer_connection_replaces_older_on_the_same_shard(
    start_shard: ShardFactory,
) -> None:
    async with start_shard() as shard:
        old = await connected("gw-1", shard)
        new = await connected("gw-1", shard)
        async with asyncio.timeout(5):
            await old.wait_closed()
        assert old.close_code == closecodes.REPLACED
        assert shard.devices["gw-1"].open
        await new.close()


async def test_newer_connection_replaces_older_on_another_shard(
    start_shard: ShardFactory,
) -> None:
    async with start_shard(shard_id="shard-a") as a, start_shard(shard_id="shard-b") as b:
        old = await connected("gw-1", a)
        await registered(a, "gw-1")
        new = await connected("gw-1", b)
        async with asyncio.timeout(5):
            await old.wait_closed()
        assert old.close_code == closecodes.REPLACED
        assert "gw-1" in b.devices
        await new.close()


async def test_keepalive_reaps_a_silent_connection(start_shard: ShardFactory) -> None:
    async with start_shard(ping_interval=1.0, keepalive_timeout=2.5) as shard:
        healthy = await connected("gw-ok", shard)
        silent = await connected("gw-silent", shard)
        silent._ws.transport.pause_reading()  # type: ignore[union-attr]  # blackholed: no pongs
        await until_true(lambda: "gw-silent" not in shard.devices, timeout=8)
        assert metric(shard, "fleet_shard_disconnects_total", reason="keepalive_timeout") == 1
        assert "gw-ok" in shard.devices  # it answered every ping
        assert metric(shard, "fleet_shard_ping_rtt_seconds_count") >= 1
        await healthy.close()


async def test_command_reaches_a_device_on_another_shard(
    start_shard: ShardFactory, router: DeviceRouter
) -> None:
    async with start_shard(shard_id="shard-a") as a, start_shard(shard_id="shard-b"):
        device = await connected("gw-1", a)
        await registered(a, "gw-1")
        result = await router.run_command("gw-1", "echo hello", timeout=5, user_id="op-1")
        assert (result.exit_code, result.output) == (0, b"hello\n")
        request = next(
            e for e in iter(device.events.get_nowait, None) if isinstance(e, ps.CommandRequested)
        )
        assert request.user_id == "op-1"
        await device.close()


async def test_command_errors_offline_and_timeout(
    start_shard: ShardFactory, router: DeviceRouter
) -> None:
    async with start_shard() as shard:
        with pytest.raises(DeviceOffline):
            await router.run_command("gw-nobody", "echo hi", timeout=1)
        device = TestDevice("gw-1", device_token("gw-1"), url(shard), on_command=lambda _c: None)
        await device.connect()
        await registered(shard, "gw-1")
        with pytest.raises(DeviceTimeout):
            await router.run_command("gw-1", "sleep 10", timeout=0.5)
        assert metric(shard, "fleet_shard_commands_total", outcome="timeout") == 1
        await device.close()


async def test_a_slow_command_does_not_hold_up_others(
    start_shard: ShardFactory, router: DeviceRouter
) -> None:
    async with start_shard() as shard:
        slow = TestDevice(
            "gw-slow", device_token("gw-slow"), url(shard), on_command=lambda _c: None
        )
        await slow.connect()
        fast = await connected("gw-fast", shard)
        await until_true(lambda: all(c.registration for c in shard.devices.values()))
        hanging = asyncio.create_task(router.run_command("gw-slow", "sleep", timeout=3))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        result = await router.run_command("gw-fast", "echo quick", timeout=3)
        assert result.output == b"quick\n"
        assert time.monotonic() - started < 1.5
        with pytest.raises(DeviceTimeout):
            await hanging
        await slow.close()
        await fast.close()


# --- bad input after the upgrade ----------------------------------------------------------------


async def test_malformed_message_gets_protomsg_error_and_connection_stays(
    start_shard: ShardFactory,
) -> None:
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        assert device._ws is not None
        await device._ws.send(b"\xc1not msgpack")
        event = await asyncio.wait_for(device.events.get(), 5)
        while not isinstance(event, ps.ErrorReceived):
            event = await asyncio.wait_for(device.events.get(), 5)
        assert event.error.code == 400
        assert metric(shard, "fleet_shard_protocol_errors_total", reason="malformed") == 1
        await device.send_alert(alert("a-1"))
        async with asyncio.timeout(5):
            await device.wait_acked("a-1")
        await device.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [("text frame", 1003), (b"x" * 70_000, 1009)],
)
async def test_bad_frames_close_with_their_code(
    start_shard: ShardFactory, payload: str | bytes, code: int
) -> None:
    async with start_shard(max_message_size=65536) as shard:
        bystander = await connected("gw-2", shard)
        device = await connected("gw-1", shard)
        assert device._ws is not None
        await device._ws.send(payload)
        async with asyncio.timeout(5):
            await device.wait_closed()
        assert device.close_code == code
        await bystander.send_alert(alert("b-1"))
        async with asyncio.timeout(5):
            await bystander.wait_acked("b-1")
        await bystander.close()


# --- drain ---------------------------------------------------------------------------------


async def test_drain_closes_devices_with_1012_and_a_retry_hint(start_shard: ShardFactory) -> None:
    async with start_shard(retry_after=7) as shard:
        device = await connected("gw-1", shard)
        await shard.drain()
        async with asyncio.timeout(5):
            await device.wait_closed()
        assert device.close_code == closecodes.SERVICE_RESTART
        hint = closecodes.parse_retry_after(device.close_reason)
        assert hint is not None
        assert 1 <= hint <= 7
        assert not shard.ready
        with pytest.raises(ConnectionRefusedError):
            await connect(url(shard) + DEVICE_PATH, open_timeout=2)


# --- one device never hurts another -----------------------------------------------------------


async def error_reply(device: TestDevice) -> ps.ErrorReceived:
    """The next control error the shard sent the device."""
    async with asyncio.timeout(5):
        while not isinstance(event := await device.events.get(), ps.ErrorReceived):
            pass
    return event


async def test_a_long_sid_is_refused_and_the_shard_stays_on_nats(
    start_shard: ShardFactory,
) -> None:
    """5,000 characters of sid once became a subject: NATS closed the shard's connection."""
    async with start_shard() as shard:
        attacker, bystander = await connected("gw-a", shard), await connected("gw-b", shard)
        assert attacker._ws is not None
        long_sid = envelope.ProtoMsg(envelope.PROTO_SHELL, envelope.TYP_SHELL_DATA, "s" * 5000)
        await attacker._ws.send(envelope.encode(long_sid))
        assert (await error_reply(attacker)).error.code == 400
        await still_serves(shard, bystander, "b-1")
        await still_serves(shard, attacker, "a-1")
        await attacker.close()
        await bystander.close()


async def test_an_alert_too_big_for_the_bus_is_refused_and_the_shard_stays_on_nats(
    start_shard: ShardFactory,
) -> None:
    """An alert just under the WebSocket limit, over NATS' max_payload with its headers."""
    async with start_shard(max_message_size=2 << 20) as shard:
        attacker, bystander = await connected("gw-a", shard), await connected("gw-b", shard)
        big = messages.Alert("a-big", "x", "info", "raised", "d" * (shard.max_payload - 50), "", 1)
        await attacker.send_alert(big)
        reply = await error_reply(attacker)
        assert (reply.error.code, reply.error.msgtype) == (413, "alert")
        assert metric(shard, "fleet_shard_protocol_errors_total", reason="too_big_for_bus") == 1
        assert "a-big" not in attacker.acked
        await still_serves(shard, bystander, "b-1")
        await attacker.close()
        await bystander.close()


async def test_a_device_cannot_write_into_another_devices_session(
    start_shard: ShardFactory, nc: NATS, router: DeviceRouter
) -> None:
    async with start_shard() as shard:
        attacker, owner = await connected("gw-a", shard), await connected("gw-b", shard)
        await registered(shard, "gw-b")
        everything = await nc.subscribe("fleet.relay.>")
        new = envelope.ProtoMsg(envelope.PROTO_SHELL, envelope.TYP_SHELL_NEW, "sess-b")
        await router.deliver("gw-b", envelope.encode(new), user_id="op-1")
        assert attacker._ws is not None
        for typ in (envelope.TYP_SHELL_DATA, envelope.TYP_SHELL_STOP):
            forged = envelope.ProtoMsg(envelope.PROTO_SHELL, typ, "sess-b", None, b"INJECTED")
            await attacker._ws.send(envelope.encode(forged))
            reply = await error_reply(attacker)
            assert (reply.error.code, reply.error.msgid) == (404, "sess-b")
        owner.session.send(envelope.ProtoMsg(envelope.PROTO_SHELL, "shell", "sess-b", None, b"ok"))
        await owner.flush()
        relayed = []  # the owner's "new" answer (its shell started), then its "ok"
        while not relayed or relayed[-1][1] != b"ok":
            msg = await everything.next_msg(timeout=5)
            relayed.append((msg.subject, envelope.decode(msg.data).body))
        assert {subject for subject, _body in relayed} == {subjects.relay_subject("gw-b", "sess-b")}
        assert not any(b"INJECTED" in body for _subject, body in relayed)
        assert metric(shard, "fleet_shard_protocol_errors_total", reason="unknown_session") == 2
        await attacker.close()
        await owner.close()


async def test_a_flooding_device_does_not_delay_another_devices_acks(
    start_shard: ShardFactory, router: DeviceRouter
) -> None:
    """One device's publishes (valid ones: shell output of an open session) as fast as it
    can send them; another device's alert acks stay prompt (p99 under 1 s: the flooder's
    share is 256 publishes, where one queue for all would put up to 50,000 ahead)."""
    async with start_shard() as shard:
        flooder, bystander = await connected("gw-f", shard), await connected("gw-b", shard)
        await registered(shard, "gw-f")
        new = envelope.ProtoMsg(envelope.PROTO_SHELL, envelope.TYP_SHELL_NEW, "flood")
        await router.deliver("gw-f", envelope.encode(new))
        output = envelope.encode(
            envelope.ProtoMsg(envelope.PROTO_SHELL, "shell", "flood", None, b"x" * 64)
        )

        async def flood() -> None:
            assert flooder._ws is not None
            while True:
                await flooder._ws.send(output)

        flooding = asyncio.create_task(flood())
        latencies = []
        for index in range(100):
            started = time.monotonic()
            await still_serves(shard, bystander, f"b-{index}")
            latencies.append(time.monotonic() - started)
        flooding.cancel()
        relayed = metric(shard, "fleet_shard_messages_received_total", proto="shell", typ="shell")
        assert relayed > 1000, "the flood was too thin to prove anything"
        assert sorted(latencies)[98] < 1.0  # 0.63 s seen on a slow 2-core host
        await flooder.drop()
        await bystander.close()


async def test_a_shard_whose_nats_client_closes_for_good_reconnects(
    start_shard: ShardFactory,
) -> None:
    """nats-py closes a client for good on some server errors; closing it is the same call
    (the -ERR case, below, may also end in an ordinary reconnect: the server's EOF can come
    first)."""
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        broken = shard.nc
        assert broken is not None
        await broken.close()
        await until_true(lambda: shard.nc is not broken and shard.ready, timeout=10)
        await still_serves(shard, device, "a-1")
        await device.close()


async def test_a_publish_nats_refuses_leaves_the_shard_serving(start_shard: ShardFactory) -> None:
    async with start_shard() as shard:
        device = await connected("gw-1", shard)
        await registered(shard, "gw-1")
        assert shard.nc is not None
        # Headers count against max_payload on the server, not in nats-py's own check: the
        # server answers -ERR and drops the connection.
        payload, headers = b"x" * (shard.max_payload - 10), {"X-Pad": "p" * 100}
        await shard.nc.publish("fleet.test", payload, headers=headers)
        await asyncio.sleep(0.5)
        await until_true(lambda: shard.ready, timeout=10)
        await still_serves(shard, device, "a-1")
        await device.close()


async def test_a_shard_that_cannot_get_nats_back_moves_its_devices(
    start_shard: ShardFactory, nats_server: NatsServer
) -> None:
    async with start_shard(nats_recovery_time=1.0) as shard:
        device = await connected("gw-1", shard)
        assert shard.nc is not None
        nats_server.stop()
        async with asyncio.timeout(10):
            await shard.nc.close()  # closed for good while no server answers
            await device.wait_closed()
        assert device.close_code == closecodes.SERVICE_RESTART
        assert not shard.ready


async def test_any_method_but_get_is_405(start_shard: ShardFactory) -> None:
    async with start_shard() as shard:
        for path in (b"/nope", b"/healthz", DEVICE_PATH.encode()):
            request = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            answer = await asyncio.to_thread(raw_exchange, shard.port, request)
            assert answer.startswith(b"HTTP/1.1 405"), answer
            assert b"Allow: GET" in answer


async def test_bad_tokens_do_not_spend_the_accept_budget(start_shard: ShardFactory) -> None:
    async with start_shard(accept_rate=0.001, accept_burst=1) as shard:
        for _ in range(20):
            answer = await asyncio.to_thread(raw_exchange, shard.port, upgrade_request("bad"))
            assert answer.startswith(b"HTTP/1.1 401")
        device = await connected("gw-1", shard)
        await device.close()


async def test_a_shard_is_an_async_context_manager(nats_server: NatsServer) -> None:
    config = ShardConfig(port=0, nats_urls=(nats_server.url,), jwt_secret="s", drain_timeout=1.0)
    async with Shard(config) as shard:
        assert shard.ready
        assert shard.port != 0
    assert shard.draining
    assert not shard.ready
