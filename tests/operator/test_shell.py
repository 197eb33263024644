"""Operator shell sessions through the API: real nats-server, an in-process shard and test
devices, and an aiohttp WebSocket client as the operator."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from backend.devstack.testdevice import TestDevice
from backend.operator import shell
from backend.operator.api import OperatorApi
from backend.protocol import envelope as env
from backend.protocol import messages
from backend.protocol import session as ps
from backend.protocol.terminal import HEALTH_CHECK_FAILED
from tests.operator.support import AUTH, OPERATOR_TOKENS, ApiFactory, connected
from tests.support import ShardFactory, until, until_true

Socket = aiohttp.ClientWebSocketResponse
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip


def shell_url(api: OperatorApi, device_id: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{api.port}/devices/{device_id}/shell{query}"


async def output_until(ws: Socket, expected: bytes) -> bytes:
    """Terminal bytes from the device until ``expected`` appeared in them."""
    received = b""
    async with asyncio.timeout(10):
        while expected not in received:
            frame = await ws.receive()
            assert frame.type is aiohttp.WSMsgType.BINARY, frame
            received += frame.data
    return received


async def open_shell(
    http: aiohttp.ClientSession, api: OperatorApi, headers: dict[str, str] = AUTH
) -> Socket:
    """gw-1's shell, once its first prompt arrived."""
    ws = await http.ws_connect(shell_url(api, "gw-1"), headers=headers)
    await output_until(ws, b"$ ")
    return ws


async def refused(http: aiohttp.ClientSession, api: OperatorApi) -> tuple[int, dict[str, str]]:
    """The API's answer to a shell upgrade it refuses."""
    url = shell_url(api, "gw-1").replace("ws:", "http:")
    async with http.get(url, headers={**AUTH, **UPGRADE}) as resp:
        return resp.status, await resp.json()


async def closed(ws: Socket) -> tuple[int | None, str]:
    """The close code and reason the API sent (binary output before it is skipped)."""
    async with asyncio.timeout(10):
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.CLOSE:
                return frame.data, frame.extra
            if frame.type is aiohttp.WSMsgType.CLOSED:
                return ws.close_code, ""


def shell_messages(device: TestDevice) -> list[env.ProtoMsg]:
    """The shell messages the device received so far (its event queue, drained)."""
    found = []
    while not device.events.empty():
        event = device.events.get_nowait()
        if isinstance(event, ps.MessageReceived) and event.msg.proto == env.PROTO_SHELL:
            found.append(event.msg)
    return found


def sessions(api: OperatorApi, outcome: str) -> float:
    labels = {"outcome": outcome}
    return api.metrics.registry.get_sample_value("fleet_api_shell_sessions_total", labels) or 0.0


async def test_a_shell_relays_bytes_both_ways_resizes_and_stops(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await http.ws_connect(shell_url(api, "gw-1", "?cols=100&rows=30"), headers=AUTH)
        assert await output_until(ws, b"$ ") == b"$ "
        await ws.send_bytes(b"echo hello\r")
        assert await output_until(ws, b"hello\r\n$ ") == b"echo hello\r\nhello\r\n$ "
        await ws.send_str(json.dumps({"resize": [120, 40]}))
        await ws.send_bytes(b"stty size\r")
        assert b"40 120\r\n" in await output_until(ws, b"40 120")
        new, *rest = shell_messages(device)
        assert (new.typ, new.props) == ("new", {
            "terminal_width": 100, "terminal_height": 30, "user_id": "op-alice"})  # fmt: skip
        assert all(msg.sid == new.sid and msg.props["user_id"] == "op-alice" for msg in rest)
        assert "resize" in [msg.typ for msg in rest]

        await ws.send_str(json.dumps({"stop": True}))
        assert await closed(ws) == (1000, "stopped by the operator")
        await until_true(lambda: device.shells.open_sessions == 0)  # the device was told
        await until_true(lambda: sessions(api, "operator") == 1)
        assert api.metrics.registry.get_sample_value("fleet_api_shell_sessions_open") == 0
        await device.close()


async def test_a_shell_exit_is_stopped_back_and_the_operator_may_open_another_at_once(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)  # one session per user, as mender-connect
        ws = await open_shell(http, api)
        await ws.send_bytes(b"\x04")  # Ctrl-D on an empty line: the shell exits
        assert await closed(ws) == (1000, shell.SHELL_EXITED)  # not its pty's read error
        assert device.shells.open_sessions == 0  # our "stop" came before the close
        again = await open_shell(http, api)
        await again.send_bytes(b"exit\r")
        assert await closed(again) == (1000, shell.SHELL_EXITED)
        await until_true(lambda: sessions(api, "device") == 2)
        assert sessions(api, "device_gone") == 0
        await device.close()


@pytest.mark.timeout(200)  # slow by nature: the requirement is a shell open for over 2 minutes
async def test_a_shell_outlives_the_device_health_check_for_over_two_minutes(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    """mender-connect kills a session whose pong is interval + 5 s late: every shell died
    about 65 s after it opened while the relay did not answer its pings."""
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, shell_ping_interval=3.0)
        ws = await open_shell(http, api)
        opened = time.monotonic()
        while (left := 121 - (time.monotonic() - opened)) > 0:
            await ws.send_bytes(b"echo alive\r")
            await output_until(ws, b"alive\r\n$ ")
            await asyncio.sleep(min(20, left))
        await ws.send_bytes(b"echo still alive\r")
        await output_until(ws, b"still alive\r\n$ ")
        assert device.shells.open_sessions == 1  # without pongs it died after 8 s
        await ws.send_str(json.dumps({"stop": True}))
        assert await closed(ws) == (1000, "stopped by the operator")
        await device.close()


async def test_the_device_killing_a_session_tells_the_operator_at_once(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        device.shells.tick(device.session, time.monotonic() + 3600)  # its health check fails
        await device.flush()
        code, reason = await closed(ws)
        assert (code, reason) == (
            shell.DEVICE_ENDED,
            f"the device ended the shell: {HEALTH_CHECK_FAILED.decode()}",
        )
        await until_true(lambda: sessions(api, "device") == 1)
        await device.close()


async def test_input_for_a_session_the_device_no_longer_has_ends_it(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        device.shells.close_all()  # lost without a word (the client restarted...)
        await ws.send_bytes(b"ls\r")
        code, reason = await closed(ws)
        assert (code, reason) == (shell.DEVICE_ENDED, "the device ended the shell: "
                                  "no such shell session")  # fmt: skip
        await device.close()


async def test_a_device_error_for_the_session_closes_it_with_the_text(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        [new] = [msg for msg in shell_messages(device) if msg.typ == "new"]
        error = messages.Error("shell handler crashed", msgproto=env.PROTO_SHELL, msgtype="shell")
        device.session.send(error.to_msg(new.sid))  # as mender-connect names the request
        await device.flush()
        code, reason = await closed(ws)
        assert (code, reason) == (shell.DEVICE_ERROR, "device gw-1 answered: shell handler crashed")
        await until_true(lambda: sessions(api, "device_error") == 1)
        await device.close()


async def test_operators_share_a_device_within_its_per_user_limit(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    tokens = {**OPERATOR_TOKENS, "operator-token-of-bob-0123456789abcd": "op-bob"}
    bob = {"Authorization": "Bearer operator-token-of-bob-0123456789abcd"}
    async with start_shard() as shard, start_api(run_state_service=False,
                                                 operator_tokens=tokens) as api:  # fmt: skip
        device = await connected("gw-1", shard)
        alice_ws, bob_ws = await open_shell(http, api), await open_shell(http, api, bob)
        status, body = await refused(http, api)  # alice's second: over mender's limit
        assert (status, body["message"]) == (502, "user has too many open sessions")
        await alice_ws.send_bytes(b"echo from alice\r")
        await bob_ws.send_bytes(b"echo from bob\r")
        await output_until(alice_ws, b"from alice\r\n$ ")
        await output_until(bob_ws, b"from bob\r\n$ ")
        users = {m.props["user_id"] for m in shell_messages(device) if m.typ == "new"}
        assert users == {"op-alice", "op-bob"}
        await device.close()
        device = await connected("gw-1", shard, sessions_per_user=2)
        first, second = await open_shell(http, api), await open_shell(http, api)
        assert device.shells.open_sessions == 2
        await first.close()
        await second.close()
        await device.close()


async def test_a_device_whose_accept_lists_no_shell_is_refused_before_sending(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=(env.PROTO_MONITOR,))
        status, body = await refused(http, api)
        assert (status, body["error"]) == (409, "unsupported")
        assert body["message"] == (
            "device gw-1 does not serve shell (0x0001); it serves monitoring (0x0100)"
        )
        assert shell_messages(device) == []  # nothing reached it
        assert sessions(api, "unsupported") == 1
        await device.close()


async def test_a_device_without_a_shell_handler_answers_with_its_error(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=(env.PROTO_MONITOR,), handshake=False)
        started = time.monotonic()
        status, body = await refused(http, api)
        assert time.monotonic() - started < api.config.shell_start_timeout  # not its timeout
        assert (status, body["error"]) == (502, "device_error")
        assert body["message"] == (
            "device gw-1 answered: no handler registered for protocol: 0x0001"
        )
        assert sessions(api, "device_error") == 1
        await device.close()


async def test_a_device_disconnect_closes_the_operator_socket_at_once(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        await device.drop()
        code, reason = await closed(ws)
        assert code == shell.DEVICE_GONE
        assert reason.startswith("device gw-1 disconnected (")  # eof or reset
        await until_true(lambda: sessions(api, "device_gone") == 1)  # counted once closed


async def test_an_idle_shell_is_closed_and_the_device_told(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with (
        start_shard() as shard,
        start_api(run_state_service=False, shell_idle_timeout=0.5) as api,
    ):
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        assert await closed(ws) == (shell.IDLE, "idle for 0.5s")
        await until_true(lambda: device.shells.open_sessions == 0)
        await device.close()


async def test_a_bad_control_frame_is_answered_and_counted(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        await ws.send_str(json.dumps({"resize": [0, "tall"]}))
        answer = await ws.receive_json(timeout=10)
        assert (answer["error"], answer["field"]) == ("bad_request", "resize")
        labels = {"reason": "bad_request", "field": "resize"}
        assert api.metrics.registry.get_sample_value("fleet_api_rejected_total", labels) == 1
        await ws.send_bytes(b"echo still here\r")
        await output_until(ws, b"still here\r\n")
        await ws.close()
        await device.close()


async def test_offline_unknown_and_bad_requests_are_refused_before_the_upgrade(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        await device.close()

        async def refusal(device_id: str, query: str = "") -> tuple[int, dict[str, str]]:
            url = shell_url(api, device_id, query).replace("ws:", "http:")
            async with http.get(url, headers={**AUTH, **UPGRADE}) as resp:
                return resp.status, await resp.json()

        async def offline() -> tuple[int, dict[str, str]] | None:
            status, body = await refusal("gw-1")
            return (status, body) if status == 409 else None

        _status, body = await until(offline)
        assert body["message"] == "device gw-1 is not connected; a shell needs it online"
        assert (await refusal("gw-never"))[0] == 404
        status, body = await refusal("gw-1", "?cols=0")
        assert (status, body["field"]) == (400, "cols")
        async with http.get(shell_url(api, "gw-1").replace("ws:", "http:"), headers=AUTH) as resp:
            assert (resp.status, (await resp.json())["field"]) == (400, "upgrade")


async def test_a_device_that_refuses_a_shell_gets_502(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        device.shells.max_sessions = 0
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(shell_url(api, "gw-1"), headers=AUTH)
        assert refused.value.status == 502
        assert sessions(api, "shell_refused") == 1
        await device.close()
