"""What the gateways of one process share: targets, round-robin spreading, and the drain."""

from __future__ import annotations

import re
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import pytest

from backend.protocol import messages as m
from backend.protocol.http import DEVICE_PATH
from backend.protocol.session import DeviceSession, Role
from haproxy.tls import make_local_pki
from simulator.fleet import Fleet, Target, parse_targets, round_robin, tls_context
from simulator.gateway.driver import Gateway

# --- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("ws://127.0.0.1:8080", Target("127.0.0.1", 8080, tls=False)),
        ("ws://shard-a", Target("shard-a", 80, tls=False)),
        ("wss://fleet.example.com", Target("fleet.example.com", 443, tls=True)),
        ("wss://fleet.example.com:8443/", Target("fleet.example.com", 8443, tls=True)),
        ("  ws://h:1/custom/path ", Target("h", 1, tls=False, path="/custom/path")),
    ],
)
def test_parse(url: str, target: Target) -> None:
    assert Target.parse(url) == target


def test_the_device_path_is_the_default() -> None:
    assert Target.parse("ws://h:1").path == DEVICE_PATH == "/api/devices/v1/deviceconnect/connect"


@pytest.mark.parametrize(
    "url",
    ["http://h:80", "h:8080", "ws://", "ws://:8080", "127.0.0.1:8080", "", "ws://h:0"],
)
def test_what_is_no_websocket_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"not a WebSocket URL: .*expected ws://host:port"):
        Target.parse(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://h:http", "Port could not be cast"),
        ("ws://h:70000", "Port out of range"),
        ("ws://[::1:80", "Invalid IPv6 URL"),
    ],
)
def test_a_bad_port_or_address_names_the_url(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not a WebSocket URL: {url!r} ({reason}")):
        Target.parse(url)


@pytest.mark.parametrize(
    ("url", "netloc"),
    [
        ("ws://h:80", "h"),
        ("ws://h:443", "h:443"),
        ("wss://h:443", "h"),
        ("wss://h:80", "h:80"),
        ("ws://127.0.0.1:9000", "127.0.0.1:9000"),
        ("ws://[::1]:9000", "[::1]:9000"),
        ("wss://[fe80::1]", "[fe80::1]"),
    ],
)
def test_netloc_is_the_host_header(url: str, netloc: str) -> None:
    assert Target.parse(url).netloc == netloc


def test_parse_targets_splits_on_commas_and_spaces() -> None:
    targets = parse_targets("ws://a:1,ws://b:2  wss://c , ws://d:4")
    assert [(t.host, t.port, t.tls) for t in targets] == [
        ("a", 1, False),
        ("b", 2, False),
        ("c", 443, True),
        ("d", 4, False),
    ]


@pytest.mark.parametrize("hosts", ["", "  ", ", ,"])
def test_parse_targets_needs_one(hosts: str) -> None:
    with pytest.raises(ValueError, match="no backend URL given"):
        parse_targets(hosts)


def test_parse_targets_names_the_bad_one() -> None:
    with pytest.raises(ValueError, match="'http://b:2'"):
        parse_targets("ws://a:1,http://b:2")


# --- the fleet -------------------------------------------------------------------------------


def make_fleet(hosts: str = "ws://127.0.0.1:1", **kwargs: Any) -> Fleet:
    return Fleet(parse_targets(hosts), lambda device_id: f"token-{device_id}", **kwargs)


def test_targets_and_sources_go_round_robin() -> None:
    fleet = make_fleet("ws://a:1,ws://b:2,ws://c:3", source_addresses=("127.0.0.2", "127.0.0.3"))
    assert [fleet.target_for(i).host for i in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert [fleet.source_for(i) for i in range(5)] == [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
    ]


def test_workers_start_their_round_robins_evenly_apart() -> None:
    sources = tuple(f"127.0.0.{n}" for n in range(1, 9))
    assert [round_robin(sources, 0, worker) for worker in range(5)] == [
        "127.0.0.1",
        "127.0.0.5",
        "127.0.0.3",
        "127.0.0.7",
        "127.0.0.2",
    ]
    # A fleet of 4 split over 2 workers on 2 shards: 2 gateways per shard, as in one process.
    fleets = [make_fleet("ws://a:1,ws://b:2", worker=worker) for worker in (0, 1)]
    shards = Counter(fleet.target_for(i).host for fleet in fleets for i in range(2))
    assert shards == {"a": 2, "b": 2}
    assert make_fleet(source_addresses=sources, worker=1).source_for(3) == "127.0.0.8"


def test_no_source_addresses_leaves_the_choice_to_the_kernel() -> None:
    assert make_fleet().source_for(3) is None


def test_new_gateways_are_numbered_and_kept() -> None:
    fleet = make_fleet(prefix="gw-test")
    first, second = fleet.new_gateway(Gateway), fleet.new_gateway(Gateway)
    assert (first.device_id, second.device_id) == ("gw-test-000000", "gw-test-000001")
    assert (first.index, second.index) == (0, 1)
    assert fleet.gateways == {first, second}


# --- the drain -------------------------------------------------------------------------------


def queue_alert(gateway: Gateway, alert_id: str) -> None:
    gateway.session.send_alert(m.Alert(alert_id, "smoke", "critical", "raised"))


def deliver_ack(gateway: Gateway, alert_id: str) -> None:
    """What the shard does once the stream stored the alert, through a real server session."""
    server = DeviceSession(Role.SERVER)
    server.ack_alert(alert_id)
    for data in server.messages_to_send():
        gateway.session.receive_message(data)


def test_drain_of_an_empty_fleet_returns_at_once() -> None:
    fleet = make_fleet()
    fleet.new_gateway(Gateway)
    started = time.monotonic()
    assert fleet.drain(timeout=5.0) == 0
    assert time.monotonic() - started < 0.5
    assert fleet.draining


def test_drain_gives_up_and_counts_unacked_alerts() -> None:
    fleet = make_fleet()
    first, second = fleet.new_gateway(Gateway), fleet.new_gateway(Gateway)
    queue_alert(first, "a-1")
    queue_alert(first, "a-2")
    queue_alert(second, "b-1")
    started = time.monotonic()
    assert fleet.drain(timeout=0.3) == 3
    assert 0.3 <= time.monotonic() - started < 2.0
    assert fleet.draining


def test_drain_returns_once_the_last_ack_arrives() -> None:
    fleet = make_fleet()
    gateway = fleet.new_gateway(Gateway)
    queue_alert(gateway, "a-1")
    queue_alert(gateway, "a-2")
    deliver_ack(gateway, "a-1")
    assert fleet.pending_alerts() == 1
    gevent.spawn_later(0.3, deliver_ack, gateway, "a-2")
    started = time.monotonic()
    assert fleet.drain(timeout=10.0) == 0
    assert 0.2 <= time.monotonic() - started < 2.0


# --- TLS -------------------------------------------------------------------------------------


def test_tls_context_verifies_the_server(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path)
    context = tls_context(pki.ca_cert)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
