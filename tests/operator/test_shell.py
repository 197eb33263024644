"""Operator shell sessions through the API: real nats-server, an in-process shard and test
devices, and an aiohttp WebSocket client as the operator."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from backend.devstack.testdevice import TestDevice
from backend.operator import shell
from backend.operator.api import OperatorApi
from backend.protocol import envelope as env
from backend.protocol import session as ps
from tests.operator.support import AUTH, ApiFactory, connected
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


async def open_shell(http: aiohttp.ClientSession, api: OperatorApi) -> Socket:
    """gw-1's shell, once its first prompt arrived."""
    ws = await http.ws_connect(shell_url(api, "gw-1"), headers=AUTH)
    await output_until(ws, b"$ ")
    return ws


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


async def test_the_shell_ending_on_the_device_closes_the_socket(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        ws = await open_shell(http, api)
        await ws.send_bytes(b"\x04")  # Ctrl-D on an empty line: the shell exits
        assert await closed(ws) == (1000, "the shell ended on the device")
        await until_true(lambda: sessions(api, "device") == 1)  # counted once closed
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
