"""A gateway's local services, driven by the backend's ends of the same state machines (what
the API's relays run), message by message through the wire encoding."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backend.client.files import download
from backend.client.operator import OperatorClient
from backend.client.portforward import ForwardSpec, forward, open_forward
from backend.devstack.stack import LocalStack, StackConfig
from backend.protocol import envelope as env
from backend.protocol import filetransfer as ft
from backend.protocol import portforward as pf
from simulator.house import MAX_FILE, House, http_answer, page_bytes
from simulator.network import PROFILES
from tests.simulator.support import NO_FAULTS, new_fleet, only
from tests.support import running, wait_until


def exchange(house: House, msgs: list[env.ProtoMsg]) -> list[env.ProtoMsg]:
    answers = []
    for msg in msgs:
        answers += house.receive(env.decode(env.encode(msg)))
    return answers


def fetch(house: House, target: pf.Target, request: bytes) -> tuple[bytes, list[pf.Event]]:
    """What a forwarded connection to ``target`` gets back for ``request``, and the events."""
    server = pf.PortForward("fw1", pf.Role.SERVER)
    server.open("c1", target)
    received, events = b"", []
    pending = exchange(house, server.outgoing())
    while pending:
        for msg in pending:
            server.receive(msg)
        for event in server.events():
            events.append(event)
            if isinstance(event, pf.Opened):
                server.send("c1", request)
            elif isinstance(event, pf.Data):
                received += event.data
                server.consumed("c1")
        pending = exchange(house, server.outgoing())
    return received, events


def test_the_web_page_answers_through_a_port_forward_and_the_connection_ends() -> None:
    house = House("gw-7", "1.2.3")
    answer, events = fetch(house, pf.Target("127.0.0.1", 80), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"<h1>gw-7</h1>" in answer
    assert b"firmware 1.2.3" in answer
    assert isinstance(events[-1], pf.Ended)
    assert house.forwards == {}  # nothing held once the connection ended


def test_a_large_page_arrives_whole_within_the_window() -> None:
    house = House("gw-7", "1.2.3")
    answer, _ = fetch(house, pf.Target("localhost", 80), b"GET /bytes/300000 HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == page_bytes(300_000)
    assert f"X-Sha256: {hashlib.sha256(body).hexdigest()}".encode() in head


def test_other_targets_are_refused_as_a_dial_would_be() -> None:
    _, events = fetch(House("gw-7", "1"), pf.Target("127.0.0.1", 22), b"")
    assert events == [pf.Ended("c1", True, "dial tcp 127.0.0.1:22: connect: connection refused")]


def test_unknown_paths_and_methods() -> None:
    assert http_answer(b"GET /nope HTTP/1.1\r\n\r\n", "gw", "1").startswith(b"HTTP/1.1 404")
    assert http_answer(b"POST / HTTP/1.1\r\n\r\n", "gw", "1").startswith(b"HTTP/1.1 405")


def transfer(house: House, start: ft.FileTransfer, data: bytes = b"") -> list[ft.Event]:
    """Run a server transfer to its end against ``house``; its events."""
    events: list[ft.Event] = []
    pending = exchange(house, start.outgoing())
    while pending:
        for msg in pending:
            start.receive(msg)
        for event in start.events():
            events.append(event)
            if isinstance(event, ft.Ready):
                start.send(data)
                start.end()
        pending = exchange(house, start.outgoing())
    return events


def test_files_put_stat_and_get_back() -> None:
    house = House("gw-7", "1")
    data = bytes(range(256)) * 1000
    put = ft.FileTransfer("t1", ft.Role.SERVER)
    put.put(ft.PutFile("/tmp/x.bin", len(data), 0o600))
    assert transfer(house, put, data)[-1] == ft.Done(len(data))
    stat = ft.FileTransfer("t2", ft.Role.SERVER)
    stat.stat("/tmp/x.bin")
    [info] = transfer(house, stat)
    assert info == ft.Info(ft.FileInfo("/tmp/x.bin", len(data), mode=0o100600))
    get = ft.FileTransfer("t3", ft.Role.SERVER)
    get.get("/tmp/x.bin")
    events = transfer(house, get)
    assert b"".join(e.data for e in events if isinstance(e, ft.Chunk)) == data
    assert events[-1] == ft.Done(len(data))
    assert house.transfers == {}


def test_file_refusals_carry_the_gateway_s_text() -> None:
    house = House("gw-7", "1")
    get = ft.FileTransfer("t1", ft.Role.SERVER)
    get.get("/nope")
    assert transfer(house, get) == [ft.Failed("open /nope: no such file or directory", True)]
    put = ft.FileTransfer("t2", ft.Role.SERVER)
    put.put(ft.PutFile("/big", MAX_FILE + 1))
    [failed] = transfer(house, put)
    assert failed == ft.Failed(
        f"file too large: {MAX_FILE + 1} bytes, the limit is {MAX_FILE}", True
    )


async def through_the_api(stack: LocalStack, device_id: str) -> tuple[bytes, bytes]:
    """The gateway's page and 200 KB of /bytes, fetched through a port forward of the API."""
    spec = ForwardSpec.parse("0:127.0.0.1:80")
    ws = await open_forward(stack.api_url, stack.operator_token, device_id, spec)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        forward(ws, spec, "tcp", lambda _note: None, lambda _a, p: listening.set_result(p))
    )
    port = await asyncio.wait_for(listening, 10)
    pages = []
    for path in ("/", "/bytes/200000"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        pages.append(await asyncio.wait_for(reader.read(-1), 30))
        writer.close()
    task.cancel()
    await ws.close()
    return pages[0], pages[1]


@pytest.mark.integration
def test_a_simulated_gateway_serves_its_page_and_files_through_the_api(tmp_path: Path) -> None:
    config = StackConfig(tmp_path / "stack", operator_api=True)
    with LocalStack(config) as stack:
        fleet, _ = new_fleet(stack, only(PROFILES["lte"].with_overrides(**NO_FAULTS)))
        with running(fleet, 1) as (gateway,), ThreadPoolExecutor(1) as operator:
            wait_until(lambda: fleet.stats.connected == 1, 10, "the gateway connected")
            pages = operator.submit(asyncio.run, through_the_api(stack, gateway.device_id))
            wait_until(pages.done, 60, "the pages")
            page, big = pages.result()
            client = OperatorClient(stack.api_url, stack.operator_token)
            local = tmp_path / "hostname"
            got = operator.submit(download, client, gateway.device_id, "/etc/hostname", local,
                                  lambda _n: None)  # fmt: skip
            wait_until(got.done, 30, "the download")
            assert got.result()["size"] == len(gateway.device_id) + 1
    assert b"<h1>" + gateway.device_id.encode() in page
    assert big.partition(b"\r\n\r\n")[2] == page_bytes(200_000)
    assert local.read_text() == f"{gateway.device_id}\n"
