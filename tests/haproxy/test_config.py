"""The generated HAProxy configuration: checked by HAProxy itself, then run for real in front of
a shard process, plain and with TLS."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import socketserver
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from backend.devstack import process
from backend.devstack.stack import LocalStack, StackConfig, fetch_metrics, servers_up
from backend.protocol import envelope, messages
from backend.protocol.http import DEVICE_PATH
from haproxy.config import (
    HaproxyConfig,
    StatsAuth,
    check,
    ephemeral_ports,
    find_haproxy,
    render,
    write,
)
from haproxy.tls import make_local_pki
from tests.support import make_config, running_haproxy, tls_client_context, wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers


def sources(count: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


# --- the file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shards", "source_count", "tls"),
    [(1, 0, False), (1, 1, False), (5, 4, False), (1, 4, True), (5, 1, True)],
)
def test_haproxy_accepts_the_generated_config(
    tmp_path: Path, shards: int, source_count: int, tls: bool
) -> None:
    pem = make_local_pki(tmp_path / "pki").server_pem if tls else None
    config = make_config(tmp_path, shards, source_addresses=sources(source_count), tls_pem=pem)
    write(config, tmp_path / "haproxy.cfg")
    check(tmp_path / "haproxy.cfg")  # warnings count as errors too
    assert (tmp_path / "haproxy.cfg").read_text() == render(config)


def test_the_config_holds_the_directives_the_tier_relies_on(tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    config = make_config(tmp_path, tls_pem=pem, maxconn=1000, server_maxconn=500)
    text = render(config)
    for directive in [
        "maxconn 1000",
        "nbthread 1",
        f"bind 127.0.0.1:{config.port} ssl crt {pem} alpn http/1.1",
        f"bind 127.0.0.1:{config.stats_port}\n",
        f"stats socket {config.admin_socket} mode 600 level admin expose-fd listeners",
        f"pidfile {config.pidfile}",
        "timeout tunnel 1h",
        "timeout client-fin 30s",
        "timeout http-request 10s",
        "balance leastconn",
        "http-check send meth GET uri /healthz ver HTTP/1.1",
        "http-check expect status 200 error-status L7OKC",
        "default-server check inter 2s fastinter 500ms fall 3 rise 2 maxconn 500\n",
        "default-server observe layer4 error-limit 3 on-error mark-down\n",
        "default-server on-marked-down shutdown-sessions\n",
        "http-request use-service prometheus-exporter if { path /metrics }",
        "stats uri /stats",
        "tune.bufsize 8192",
    ]:
        assert directive in text
    assert "compression" not in text
    assert "noreuseport" not in text


def test_without_tls_the_public_port_is_plain(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert f"bind 127.0.0.1:{config.port}\n" in render(config)
    assert "ssl crt" not in render(config)


def test_one_server_line_per_shard_and_source_address(tmp_path: Path) -> None:
    config = make_config(tmp_path, 2, source_addresses=["127.0.0.1", "127.0.0.2"])
    servers = re.findall(r"^ +server (.*)$", render(config), re.MULTILINE)
    assert servers == [
        "shard-a_1 127.0.0.1:9001 source 127.0.0.1",
        "shard-a_2 127.0.0.1:9001 source 127.0.0.2",
        "shard-b_1 127.0.0.1:9002 source 127.0.0.1",
        "shard-b_2 127.0.0.1:9002 source 127.0.0.2",
    ]
    servers = re.findall(r"^ +server (.*)$", render(make_config(tmp_path, 2)), re.MULTILINE)
    assert servers == ["shard-a 127.0.0.1:9001", "shard-b 127.0.0.1:9002"]


def test_defaults_follow_the_fd_limit_and_the_port_range(tmp_path: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = make_config(tmp_path)
    assert 0 < config.maxconn < hard // 2
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    assert config.server_maxconn == ephemeral_ports() == int(high) - int(low) + 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 0}, "port must be 1 to 65535"),
        ({"stats_port": 70000}, "stats_port must be 1 to 65535"),
        ({"port": 8443, "stats_port": 8443}, "give stats its own port"),
        ({"shards": []}, "give at least one"),
        ({"shards": [("a", "h", 1), ("a", "h", 2)]}, "shard names must be unique"),
        ({"shards": [("shard~a", "h", 1)]}, "may hold only letters"),
        ({"shards": [("a", "h", 0)]}, "the port of a must be 1 to 65535"),
        ({"source_addresses": ["localhost"]}, "is not an IP address"),
        ({"source_addresses": ["127.0.0.2", "127.0.0.2"]}, "must be unique"),
        ({"maxconn": 0}, "maxconn must be 1 to"),
        ({"maxconn": 10**9}, r"lower maxconn or raise the limit \(ulimit -Hn"),
        ({"server_maxconn": 0}, "server_maxconn must be positive"),
        ({"nbthread": 0}, "nbthread must be positive"),
        # Off loopback, the stats port is reachable by others: it must ask who they are.
        ({"stats_host": "0.0.0.0"}, "stats on 0.0.0.0 needs stats_auth"),
    ],
)
def test_config_refuses_what_haproxy_cannot_run(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


@pytest.mark.parametrize(
    ("user", "variable", "message"),
    [("stats~x", "PASSWORD", "stats user"), ("stats", "STATS-PASSWORD", "not an environment")],
)
def test_stats_auth_refuses_what_haproxy_cannot_read(
    user: str, variable: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StatsAuth(user, variable)


def test_a_loopback_stats_port_asks_for_no_credentials(tmp_path: Path) -> None:
    text = render(make_config(tmp_path))
    assert "userlist" not in text
    assert "http-request auth" not in text


def test_check_fails_with_haproxy_s_own_words(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(make_config(tmp_path)) + "    frobnicate on\n")
    with pytest.raises(process.ConfigCheckFailed, match="frobnicate") as failed:
        check(path)
    assert str(path) in str(failed.value)


def test_check_without_haproxy_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install haproxy"):
        check(tmp_path / "haproxy.cfg", haproxy_binary=str(tmp_path / "no-haproxy"))


def test_find_haproxy_finds_an_executable() -> None:
    assert os.access(find_haproxy(), os.X_OK)


# --- the real thing --------------------------------------------------------------------------


def metrics(config: HaproxyConfig) -> str:
    return fetch_metrics(f"http://127.0.0.1:{config.stats_port}")


def server_metric(config: HaproxyConfig, name: str, server: str) -> float:
    labels = f'proxy="shards",server="{server}"'
    found = re.search(rf"^haproxy_server_{name}\{{{labels}\}} (\S+)$", metrics(config), re.M)
    assert found is not None, f"no haproxy_server_{name} for {server}"
    return float(found.group(1))


def open_device(url: str, token: str, context: ssl.SSLContext | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"}
    return connect(url + DEVICE_PATH, additional_headers=headers, ssl=context, open_timeout=5)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_devices_reach_a_real_shard_through_haproxy(tmp_path: Path, tls: bool) -> None:
    pki = make_local_pki(tmp_path / "pki")
    context = tls_client_context(pki.ca_cert) if tls else None
    with LocalStack(StackConfig(tmp_path, shards=1)) as stack:
        shard = ("shard-a", "127.0.0.1", stack.shard_ports[0])
        # Default maxconn: HAProxy (strict-limits) would refuse to start if the fd math were off.
        config = make_config(
            tmp_path,
            shards=[shard],
            source_addresses=["127.0.0.1", "127.0.0.2"],
            tls_pem=pki.server_pem if tls else None,
        )
        url = f"{'wss' if tls else 'ws'}://localhost:{config.port}"
        with running_haproxy(config, tmp_path) as proxy:
            log = tmp_path / "haproxy.log"
            stats = f"http://127.0.0.1:{config.stats_port}"
            process.wait_until(lambda: servers_up(stats), proxy, "health checks", log)
            with (
                open_device(url, stack.token("gw-1"), context) as first,
                open_device(url, stack.token("gw-2"), context) as second,
            ):
                assert_opened(first)
                assert_opened(second)
                # leastconn spread the two over both source addresses.
                for server in ("shard-a_1", "shard-a_2"):
                    assert server_metric(config, "current_sessions", server) == 1
            assert_shard_endpoints_are_hidden(url, context)
            assert f"haproxy_process_max_connections {config.maxconn}\n" in metrics(config)
            assert process.answers_ok(f"http://127.0.0.1:{config.stats_port}/stats")
    assert process.children(os.getpid()) == []


class DyingShardHandler(socketserver.StreamRequestHandler):
    """Plays a shard killed while it held upgrades: its health checks pass, but an upgrade
    it reads is never answered, the connection just closes (HAProxy's "empty response")."""

    def handle(self) -> None:
        request_line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # the rest of the head
        if b" /healthz " in request_line:
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


@contextlib.contextmanager
def dying_shard() -> Iterator[int]:
    """A ``DyingShardHandler`` server on a free loopback port (yielded) until the block ends."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), DyingShardHandler) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


def test_an_upgrade_the_shard_died_on_is_sent_to_another(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path, shards=1)) as stack, dying_shard() as dying_port:
        config = make_config(
            tmp_path,
            shards=[("dying", "127.0.0.1", dying_port),
                    ("shard-a", "127.0.0.1", stack.shard_ports[0])],
        )  # fmt: skip
        with running_haproxy(config, tmp_path) as proxy:
            stats = f"http://127.0.0.1:{config.stats_port}"
            log = tmp_path / "haproxy.log"
            process.wait_until(lambda: servers_up(stats), proxy, "health checks", log)
            url = f"ws://127.0.0.1:{config.port}"
            with contextlib.ExitStack() as devices:
                # leastconn offers each new device the empty line first: each is retried.
                for n in range(3):
                    assert_opened(
                        devices.enter_context(open_device(url, stack.token(f"gw-{n}"), None))
                    )
            assert server_metric(config, "retry_warnings_total", "dying") == 3


def assert_opened(ws: ClientConnection) -> None:
    """Upgraded through HAProxy, and the shard's first ProtoMsg (control "open") came back."""
    assert ws.response is not None
    assert ws.response.status_code == 101
    hello = ws.recv(timeout=5)
    assert isinstance(hello, bytes)  # ProtoMsg frames are binary
    opening = envelope.decode(hello)
    assert (opening.proto, opening.typ) == (messages.Open.PROTO, messages.Open.TYP)


def assert_shard_endpoints_are_hidden(url: str, context: ssl.SSLContext | None) -> None:
    http_url = url.replace("ws", "http", 1) + "/healthz"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(http_url, timeout=5, context=context)
    assert refused.value.code == 404
    refused.value.close()


def servers_in_state(stats_url: str, state: str) -> bool:
    """Every server line of the shards backend is in ``state`` (UP, NOLB, DOWN, ...)."""
    lines = re.findall(
        rf'^haproxy_server_status{{proxy="shards",server="[^"]+",state="{state}"}} (\S+)$',
        fetch_metrics(stats_url),
        re.M,
    )
    return bool(lines) and all(float(value) == 1 for value in lines)


def test_a_shard_without_nats_keeps_its_devices_but_gets_no_new_ones(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path, shards=1, haproxies=1)) as stack:
        stats = stack.haproxy_stats_urls[0]
        with open_device(stack.public_url, stack.token("gw-1"), None) as device:
            assert_opened(device)
            stack.nats_nodes[0].stop()  # the shard's /healthz now answers 503
            wait_until(lambda: servers_in_state(stats, "NOLB"), 10, "the shard's lines NOLB")
            time.sleep(5)  # past 2 checks: a 503 is never a failed check, so no mark-down
            assert servers_in_state(stats, "NOLB")
            assert device.ping().wait(5)  # its tunnel was not cut (shutdown-sessions)
            with pytest.raises(InvalidStatus) as refused:
                open_device(stack.public_url, stack.token("gw-2"), None)
            assert refused.value.response.status_code == 503  # HAProxy: no server for it


def first_line_of_answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        return conn.recv(4096).partition(b"\r\n")[0]


def test_an_oversized_head_is_haproxys_400_but_a_shards_431(tmp_path: Path) -> None:
    # The limitation the global section documents: HAProxy 2.6 has no 431 to give.
    oversized = b"GET " + DEVICE_PATH.encode() + b" HTTP/1.1\r\nHost: h\r\nX: "
    oversized += b"a" * 9000 + b"\r\n\r\n"
    with LocalStack(StackConfig(tmp_path, shards=1, haproxies=1)) as stack:
        assert first_line_of_answer(stack.public_port, oversized) == b"HTTP/1.1 400 Bad request"
        direct = first_line_of_answer(stack.shard_ports[0], oversized)
        assert direct == b"HTTP/1.1 431 Request Header Fields Too Large"
