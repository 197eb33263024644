"""The operator API end to end: real nats-server, in-process shards and fleet state, test
devices, and an HTTP client on a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backend.devstack.natsserver import NatsServer
from backend.devstack.testdevice import TestDevice
from backend.operator import api as api_module
from backend.operator.api import MAX_JSON_DEPTH, OperatorApi
from backend.operator.config import FleetConfig
from backend.protocol import messages
from backend.protocol import session as ps
from backend.shard import Shard
from tests.operator.support import AUTH, ApiFactory, base, call, connected
from tests.support import JWT_SECRET, ShardFactory, device_token, until, until_true

ROOT = Path(__file__).resolve().parents[2]


async def command(
    http: aiohttp.ClientSession, api: OperatorApi, device_id: str, **body: Any
) -> tuple[int, Any]:
    url = f"{base(api)}/devices/{device_id}/commands"
    return await call(http, "POST", url, json=body)


async def listed(http: aiohttp.ClientSession, api: OperatorApi, query: str) -> list[str]:
    status, page = await call(http, "GET", f"{base(api)}/devices?{query}")
    assert status == 200, page
    return [device["id"] for device in page["devices"]]


async def shown(http: aiohttp.ClientSession, api: OperatorApi, device_id: str, check: Any) -> Any:
    """The device's page once ``check`` holds for it (the fleet state is eventually updated)."""

    async def probe() -> Any:
        status, body = await call(http, "GET", f"{base(api)}/devices/{device_id}")
        return body if status == 200 and check(body) else None

    return await until(probe)


def rejected(api: OperatorApi, reason: str, field: str = "") -> float:
    labels = {"reason": reason, "field": field}
    return api.metrics.registry.get_sample_value("fleet_api_rejected_total", labels) or 0.0


# --- authentication and public endpoints ------------------------------------------------------


async def test_devices_need_an_operator_token(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api() as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with http.get(f"{base(api)}/devices", headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert (await resp.json())["error"] == "unauthorized"
        assert rejected(api, "unauthorized") == 3


async def test_health_metrics_and_openapi_are_public(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api() as api:
        async with http.get(f"{base(api)}/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        async with http.get(f"{base(api)}/openapi.json") as resp:
            document = await resp.json()
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) >= {"/devices", "/devices/{id}", "/devices/{id}/commands"}
        async with http.get(f"{base(api)}/metrics") as resp:
            page = await resp.text()
        assert 'fleet_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in page
        assert "fleet_state_events_total" in page or "fleet_state_devices" in page


async def test_the_api_serves_inside_async_with_and_is_stopped_after(
    fleet_config: FleetConfig, http: aiohttp.ClientSession
) -> None:
    async with OperatorApi(fleet_config) as api, http.get(f"{base(api)}/healthz") as resp:
        assert resp.status == 200
    assert api.nc is not None
    assert api.nc.is_closed


async def test_nats_not_answering_is_a_503_to_retry_not_a_500(
    nats_server: NatsServer, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api(run_state_service=False) as api:
        async with http.get(f"{base(api)}/devices", headers=AUTH) as resp:
            assert resp.status == 200
        assert nats_server.pid is not None
        os.kill(nats_server.pid, signal.SIGSTOP)  # up, but answering nothing
        try:
            await asyncio.sleep(1.1)  # past the shards bucket's last look (LIVENESS_REFRESH)
            async with http.get(f"{base(api)}/devices", headers=AUTH) as resp:
                answer = (resp.status, await resp.json())
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)
        assert answer[0] == 503
        assert answer[1]["error"] == "nats_unavailable"
        assert answer[1]["message"].endswith("; retry")
        assert rejected(api, "nats_unavailable") == 1


# --- devices ---------------------------------------------------------------------------------


async def fleet_of_three(shard: Shard) -> list[TestDevice]:
    """gw-1 red (an open alert), gw-2 and gw-3 green; all online."""
    devices = [await connected(f"gw-{n}", shard) for n in (1, 2, 3)]
    alert = messages.Alert("a-1", "disk_full", "critical", "raised", "disk 97%", "rotate logs")
    await devices[0].send_alert(alert)
    async with asyncio.timeout(10):
        await devices[0].wait_acked("a-1")
    return devices


async def test_devices_are_listed_by_state_and_paged_by_cursor(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api() as api:
        devices = await fleet_of_three(shard)
        await shown(http, api, "gw-1", lambda d: d["health"] == "red")
        for device_id in ("gw-2", "gw-3"):
            await shown(http, api, device_id, lambda d: d["online"])
        assert await listed(http, api, "state=red") == ["gw-1"]
        assert await listed(http, api, "state=green&online=true") == ["gw-2", "gw-3"]
        assert await listed(http, api, "online=false") == []

        pages, cursor = [], ""
        while cursor is not None:
            _status, page = await call(http, "GET", f"{base(api)}/devices?limit=2&cursor={cursor}")
            pages.append([d["id"] for d in page["devices"]])
            cursor = page["next_cursor"]
        assert pages == [["gw-1", "gw-2"], ["gw-3"]]
        for device in devices:
            await device.close()


async def test_a_device_page_shows_its_open_alerts(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api() as api:
        devices = await fleet_of_three(shard)
        await devices[0].send_status(messages.Status("1.4.2", {"cpu": 0.5}))
        page = await shown(http, api, "gw-1", lambda d: d["health"] == "red" and d["firmware"])
        assert page["alerts"] == [
            {"id": "a-1", "code": "disk_full", "severity": "critical",
             "description": "disk 97%", "fix": "rotate logs", "ts": 0.0}
        ]  # fmt: skip
        assert (page["firmware"], page["status"]["values"]) == ("1.4.2", {"cpu": 0.5})
        assert await call(http, "GET", f"{base(api)}/devices/gw-9") == (
            404, {"error": "not_found", "message": "no device gw-9 is known to the fleet"}
        )  # fmt: skip
        for device in devices:
            await device.close()


@pytest.mark.parametrize(
    ("query", "field"),
    [("state=amber", "state"), ("online=yes", "online"), ("limit=0", "limit"),
     ("limit=many", "limit"), ("cursor=a.b", "cursor")],
)  # fmt: skip
async def test_a_bad_listing_query_names_its_field(
    start_api: ApiFactory, http: aiohttp.ClientSession, query: str, field: str
) -> None:
    async with start_api(run_state_service=False) as api:
        status, body = await call(http, "GET", f"{base(api)}/devices?{query}")
        assert (status, body["error"], body["field"]) == (400, "bad_request", field)
        assert rejected(api, "bad_request", field) == 1


# --- commands --------------------------------------------------------------------------------


async def test_a_command_runs_on_the_device_as_the_operator(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        status, result = await command(http, api, "gw-1", command="echo hello", timeout=5)
        assert status == 200
        assert (result["exit_code"], result["output"], result["truncated"]) == (0, "hello\n", False)
        requested = await _next_command(device)
        assert (requested.request.command, requested.user_id) == ("echo hello", "op-alice")
        status, result = await command(http, api, "gw-1", command="false")
        assert (status, result["exit_code"]) == (200, 1)
        await device.close()


async def test_long_output_is_truncated_with_a_marker(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with (
        start_shard() as shard,
        start_api(run_state_service=False, max_output_bytes=16) as api,
    ):
        device = await connected("gw-1", shard, on_command=lambda _cmd: (0, b"x" * 100))
        status, result = await command(http, api, "gw-1", command="dump")
        assert status == 200, result
        assert result["truncated"] is True
        assert result["output_bytes"] == 100
        assert result["output"] == "x" * 16 + "\n[output truncated: 84 of 100 bytes not shown]\n"
        await device.close()


async def test_a_silent_device_times_out_with_504(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, on_command=lambda _cmd: None)
        status, body = await command(http, api, "gw-1", command="sleep 100", timeout=0.2)
        assert (status, body["error"]) == (504, "timeout")
        await device.close()


async def test_a_device_error_ends_a_command_at_once_with_its_text(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    """A pre-handshake device (its accept unknown) without a handler for 0x0101: mender-connect
    answers with a control error at once, and the command ends then, not at its timeout."""
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=(1, 2, 3, 4), handshake=False)
        started = time.monotonic()
        status, body = await command(http, api, "gw-1", command="uptime", timeout=30)
        assert time.monotonic() - started < 30  # the device's answer, not the deadline
        assert (status, body) == (
            502,
            {
                "error": "device_error",
                "message": "device gw-1 answered: no handler registered for protocol: 0x0101",
            },
        )
        assert rejected(api, "device_error") == 1
        labels = {"outcome": "device_error"}
        assert api.metrics.registry.get_sample_value("fleet_api_commands_total", labels) == 1
        await device.close()


async def test_a_command_for_a_device_that_does_not_accept_commands_is_refused_with_409(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=(4, 1, 2, 3))  # the real client's
        status, body = await command(http, api, "gw-1", command="uptime", timeout=30)
        assert (status, body) == (
            409,
            {
                "error": "unsupported",
                "message": "device gw-1 does not serve commands (0x0101); it serves "
                "shell (0x0001), file transfer (0x0002), port forward (0x0003), "
                "mender client (0x0004)",
            },
        )
        events = [device.events.get_nowait() for _ in range(device.events.qsize())]
        assert not [event for event in events if isinstance(event, ps.CommandRequested)]
        labels = {"proto": "command"}
        counted = shard.metrics.registry.get_sample_value(
            "fleet_shard_unsupported_requests_total", labels
        )
        assert counted == 1
        await device.close()


async def test_offline_and_unknown_devices_are_told_apart(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        await device.close()

        async def offline() -> Any:
            status, body = await command(http, api, "gw-1", command="uptime")
            return body if status == 409 else None

        body = await until(offline)
        assert body == {
            "error": "offline",
            "message": "device gw-1 is not connected; commands need it online",
        }
        status, body = await command(http, api, "gw-never", command="uptime")
        assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{", "body"), (b"[1]", "body"), (b'{"timeout": 5}', "command"),
     (b'{"command": 7}', "command"), (b'{"command": "  "}', "command"),
     (b'{"command": "ls", "timeout": "soon"}', "timeout"),
     (b'{"command": "ls", "timeout": true}', "timeout"),
     (b'{"command": "ls", "timeout": -1}', "timeout"),
     (b'{"command": "ls", "timeout": 100000}', "timeout")],
)  # fmt: skip
async def test_a_bad_command_request_names_its_field(
    start_api: ApiFactory, http: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    async with start_api(run_state_service=False) as api:
        url = f"{base(api)}/devices/gw-1/commands"
        status, answer = await call(http, "POST", url, data=body, headers=AUTH)
        assert (status, answer["field"]) == (400, field), answer
        assert field in answer["message"] or field == "body"
        assert rejected(api, "bad_request", field) == 1


NESTED = b'{"command": "ls", "x": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"


@pytest.mark.parametrize("path", ["/devices/gw-1/commands", "/rollouts"])
@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"[" * 60_000, "deeper than 16 levels"),  # past json's recursion limit
     (NESTED, "deeper than 16 levels"),  # within it, past ours
     (b'{"command": "\xff"}', "not UTF-8 (byte 13)")],
)  # fmt: skip
async def test_a_body_too_deep_or_not_utf8_is_a_400_naming_it(
    start_api: ApiFactory, http: aiohttp.ClientSession, path: str, body: bytes, problem: str
) -> None:
    async with start_api(run_state_service=False) as api:
        headers = {**AUTH, "Content-Type": "application/json; charset=latin-1"}
        status, answer = await call(http, "POST", base(api) + path, data=body, headers=headers)
        assert (status, answer["error"], answer["field"]) == (400, "bad_request", "body")
        assert problem in answer["message"], answer
        assert rejected(api, "bad_request", "body") == 1


async def trickle(port: int, first: bytes, then: bytes) -> tuple[bytes, float]:
    """Send ``first``, then ``then`` a byte at a time, until the server answers or closes:
    (the first bytes of its answer, seconds they took)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    answer = asyncio.ensure_future(reader.read(65536))
    for byte in then:
        done, _pending = await asyncio.wait([answer], timeout=0.1)
        if done:
            break
        writer.write(bytes([byte]))
    async with asyncio.timeout(5):
        received = await answer
    writer.close()
    return received, time.monotonic() - started


async def test_a_trickled_request_is_cut_off(
    start_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "HEAD_TIMEOUT", 1.0)  # 10 s in service
    monkeypatch.setattr(api_module, "BODY_TIMEOUT", 1.0)
    async with start_api(run_state_service=False) as api:
        auth = AUTH["Authorization"].encode()
        head = b"POST /rollouts HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
        body_head = head + b"\r\nContent-Length: 1000\r\n\r\n"
        (slow_head, head_took), (slow_body, body_took) = await asyncio.gather(
            trickle(api.port, b"GET /devices HTTP/1.1\r\n", b"X-Slow: 1\r\n" * 100),
            trickle(api.port, body_head, b"{" * 1000),
        )
        assert slow_head == b""  # closed: aiohttp answers nothing before a request exists
        assert 0.9 <= head_took < 3.0  # the loop's timers may fire a little early
        assert slow_body.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"Connection: close\r\n" in slow_body
        assert b'"error": "request_timeout", "message": "the request body did not' in slow_body
        assert 0.9 <= body_took < 3.0
        assert rejected(api, "request_timeout", "body") == 1


async def test_a_bad_device_id_is_refused(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api(run_state_service=False) as api:
        status, body = await call(http, "GET", f"{base(api)}/devices/not%20an%20id")
        assert (status, body["field"]) == (400, "id")


async def _next_command(device: TestDevice) -> ps.CommandRequested:
    async with asyncio.timeout(5):
        while True:
            event = await device.events.get()
            if isinstance(event, ps.CommandRequested):
                return event


# --- a shard that dies without a word ---------------------------------------------------------


async def test_a_sigkilled_shards_devices_are_shown_offline_within_10s(
    nats_server: NatsServer, start_api: ApiFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    shard = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backend.cli", "shard", "--nats-url", nats_server.url,
        "--port", "0", "--jwt-secret", JWT_SECRET, "--shard-id", "shard-k",
        "--ready-file", str(ready), cwd=ROOT,
    )  # fmt: skip
    devices: list[TestDevice] = []
    try:
        async with start_api() as api:
            await until_true(ready.exists, 30)
            url = f"ws://127.0.0.1:{json.loads(ready.read_text())['port']}"
            devices = [TestDevice(f"gw-{n}", device_token(f"gw-{n}"), url) for n in range(3)]
            for device in devices:
                await device.connect()
            await until(lambda: _shown_online(http, api, 3))
            os.kill(shard.pid, signal.SIGKILL)
            await until(lambda: _shown_online(http, api, 0), 10)  # the requirement's bound
            status, page = await call(http, "GET", f"{base(api)}/devices/gw-0")
            assert (status, page["online"], page["shard"]) == (200, False, "shard-k")
            status, body = await command(http, api, "gw-0", command="uptime")
            assert (status, body["error"]) == (409, "offline")
    finally:
        if shard.returncode is None:
            shard.kill()
        await shard.wait()
        for device in devices:
            await device.close()


async def _shown_online(http: aiohttp.ClientSession, api: OperatorApi, count: int) -> bool | None:
    """True once exactly ``count`` devices are online in the device list and in the fleet
    state's summary."""
    assert api.state is not None
    summary = api.state.metrics.registry.get_sample_value(
        "fleet_state_devices", {"state": "online"}
    )
    return (summary == count and len(await listed(http, api, "online=true")) == count) or None
