"""The local stack with HAProxy in front: real HAProxy, shard and NATS processes; devices
connect through the public port, over TLS, and nothing outlives the stack."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from backend.devstack import process
from backend.devstack.stack import (
    LocalStack,
    StackConfig,
    connections_of,
    fetch_metrics,
    metric_sum,
    servers_up,
)
from backend.protocol import envelope, messages
from backend.protocol.http import DEVICE_PATH
from haproxy import runtime
from simulator.behaviour import Behaviour
from simulator.fleet import Fleet, parse_targets, tls_context
from simulator.network import PROFILES, NetworkMix
from tests.support import (
    close_code,
    frames,
    raw_device,
    running,
    tls_client_context,
    wait_until,
)

pytestmark = pytest.mark.integration  # every test here runs real servers

DEVICES = 60  # enough that the kernel's SO_REUSEPORT hash gives both HAProxies some


def gauge(metrics_text: str, name: str, **labels: str) -> float:
    """The value of ``name`` whose labels include ``labels``."""
    value = metric_sum(metrics_text, name, **labels)
    assert value is not None, f"no {name} {labels} in the metrics"
    return value


def open_device(
    devices: contextlib.ExitStack, stack: LocalStack, device_id: str, context: ssl.SSLContext
) -> None:
    """Connected through HAProxy, once the shard's ProtoMsg "open" arrived (it counts it);
    closed when ``devices`` closes."""
    headers = {"Authorization": f"Bearer {stack.token(device_id)}"}
    url = stack.public_url + DEVICE_PATH
    ws = devices.enter_context(
        connect(url, additional_headers=headers, ssl=context, open_timeout=5)
    )
    hello = ws.recv(timeout=5)
    assert isinstance(hello, bytes)
    opening = envelope.decode(hello)
    assert (opening.proto, opening.typ) == (messages.Open.PROTO, messages.Open.TYP)


def test_devices_spread_over_every_haproxy_and_shard_over_tls(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shards=3, haproxies=2, tls=True)
    with LocalStack(config) as stack, contextlib.ExitStack() as devices:
        assert len(process.children(os.getpid())) == 1 + 3 + 2  # NATS, shards, HAProxies
        assert stack.public_url == f"wss://127.0.0.1:{stack.public_port}"
        assert stack.ca_file is not None
        context = tls_client_context(stack.ca_file)
        for n in range(DEVICES):
            open_device(devices, stack, f"gw-{n}", context)
        per_shard = stack.shard_connections()
        assert sum(per_shard) == DEVICES
        # leastconn over 4 lines per shard in each HAProxy: at most 4 apart per process.
        assert max(per_shard) - min(per_shard) <= 8, per_shard
        per_haproxy = [
            gauge(fetch_metrics(url), "haproxy_frontend_current_sessions", proxy="devices")
            for url in stack.haproxy_stats_urls
        ]
        assert sum(per_haproxy) == DEVICES
        assert all(sessions > 0 for sessions in per_haproxy), per_haproxy
        assert all(path.is_socket() for path in stack.haproxy_admin_sockets)
    assert (tmp_path / "haproxy-1.log").exists()
    assert process.children(os.getpid()) == []


FAST_RECONNECT = Behaviour(alerts_per_hour=0.0, reconnect_base=0.1, reconnect_cap=1.0)
NO_FAULTS = {"drops_per_hour": 0, "blackholes_per_hour": 0, "offline_per_hour": 0}
WIRED = NetworkMix(((PROFILES["wired"].with_overrides(**NO_FAULTS), 1.0),))


def tls_fleet(stack: LocalStack) -> Fleet:
    """Gateways on the stack's public port over TLS, trusting its CA, coming back quickly."""
    assert stack.ca_file is not None
    context = tls_context(stack.ca_file)
    targets = parse_targets(stack.public_url)
    return Fleet(targets, stack.token, behaviour=FAST_RECONNECT, mix=WIRED, ssl_context=context)


def test_a_killed_shards_gateways_come_back_and_a_drained_shard_gets_none(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, shards=3, haproxies=2, tls=True)
    with LocalStack(config) as stack:
        fleet = tls_fleet(stack)
        with running(fleet, 300):
            wait_until(lambda: stack.connections() == 300, 60, "300 gateways on")
            a, b, c = stack.shard_connections()
            assert min(a, b, c) >= 80, (a, b, c)  # leastconn in each HAProxy
            for admin_socket in stack.haproxy_admin_sockets:
                runtime.set_shard_state(admin_socket, "shard-c", "drain")
            with running(fleet, 60):
                wait_until(lambda: fleet.stats.connected == 360, 30, "60 more gateways on")
                assert stack.shard_connections()[2] == c  # none for the drained shard
                os.kill(stack.pids()["shards"][0], signal.SIGKILL)
                wait_until(
                    lambda: stack.shard_connections() == [None, 360 - c, c],
                    60,
                    "the killed shard's gateways back on the others, none on the drained one",
                )
        assert fleet.stats.reconnects >= a


HUNG_SHARD_DEADLINE = 15.0  # the review's bound for a hung shard's devices to be elsewhere


def test_a_hung_shards_gateways_move_to_the_others(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path, shards=3, haproxies=1, tls=True)) as stack:
        fleet = tls_fleet(stack)
        with running(fleet, 150):
            wait_until(lambda: stack.connections() == 150, 60, "150 gateways on")
            on_a = stack.shard_connections()[0]
            assert on_a, "leastconn gave shard-a none"
            pid = stack.pids()["shards"][0]
            os.kill(pid, signal.SIGSTOP)  # hung, not dead: its sockets stay open
            stopped = time.monotonic()
            try:
                others = stack.shard_urls[1:]  # a stopped shard's /metrics would not answer
                wait_until(
                    lambda: sum(connections_of(url) or 0 for url in others) == 150,
                    HUNG_SHARD_DEADLINE,
                    "the hung shard's gateways on the others",
                )
                moved_after = time.monotonic() - stopped
            finally:
                os.kill(pid, signal.SIGCONT)
            print(f"{on_a} gateways of the hung shard moved in {moved_after:.1f}s")
            # HAProxy cut its tunnels; resumed, it sees them closed and checks up again.
            stats = stack.haproxy_stats_urls[0]
            wait_until(lambda: servers_up(stats), 30, "shard-a checked up again")
            wait_until(lambda: stack.shard_connections()[0] == 0, 30, "shard-a holds none")
            assert stack.connections() == 150
        assert fleet.stats.reconnects >= on_a


def test_a_drained_shard_hands_its_gateways_over_without_an_unexpected_drop(
    tmp_path: Path,
) -> None:
    with LocalStack(StackConfig(tmp_path, shards=2, haproxies=1, tls=True)) as stack:
        fleet = tls_fleet(stack)
        with running(fleet, 40):
            wait_until(lambda: stack.connections() == 40, 30, "40 gateways on")
            on_a = stack.shard_connections()[0]
            assert stack.drain_shard("shard-a") == 0  # a clean exit
            wait_until(lambda: stack.shard_connections() == [None, 40], 30, "all on shard-b")
        assert fleet.stats.drops == {"closed 1012": on_a}
        assert fleet.stats.unexpected_drops == 0
        with pytest.raises(ValueError, match="no shard 'shard-z': the stack runs shard-a, shard-b"):
            stack.drain_shard("shard-z")


def test_an_oversize_message_through_haproxy_gets_1009_not_a_reset(tmp_path: Path) -> None:
    """The device is still sending when the shard fails the connection: the shard's lingering
    close keeps its unread input from turning into a reset, which HAProxy passed on instead
    of the close frame in 1 to 2 of 3 tries."""
    with LocalStack(StackConfig(tmp_path, shards=1, haproxies=1)) as stack:
        codes = []
        for attempt in range(10):
            token = stack.token(f"gw-big-{attempt}")
            with raw_device("127.0.0.1", stack.public_port, token) as sock:
                sender = threading.Thread(target=send_ignoring_errors, args=(sock,))
                sender.start()
                codes.append(close_code(sock))
                sender.join()
        assert codes == [1009] * 10


def send_ignoring_errors(sock: socket.socket) -> None:
    """A message four times the shard's limit; the shard closes before it is all sent."""
    with contextlib.suppress(OSError):
        sock.sendall(frames(b"\x00" * (4 << 20)))


def test_plain_public_url_without_tls(tmp_path: Path) -> None:
    with LocalStack(StackConfig(tmp_path, shards=1, haproxies=1)) as stack:
        assert stack.public_url == f"ws://127.0.0.1:{stack.public_port}"
        assert stack.ca_file is None
        headers = {"Authorization": f"Bearer {stack.token('gw-1')}"}
        with connect(stack.public_url + DEVICE_PATH, additional_headers=headers) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101
    assert process.children(os.getpid()) == []


def test_a_missing_haproxy_fails_before_anything_starts(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, haproxies=1, haproxy_binary=str(tmp_path / "no-haproxy"))
    with pytest.raises(FileNotFoundError, match="apt-get install haproxy"):
        LocalStack(config).start()
    assert not (tmp_path / "nats.log").exists()
    assert process.children(os.getpid()) == []


def test_haproxy_failing_to_start_stops_the_shards_and_nats(tmp_path: Path) -> None:
    # A listener without SO_REUSEPORT: HAProxy cannot bind the public port beside it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = StackConfig(tmp_path, shards=1, haproxies=1, public_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="haproxy-0 exited") as failed:
            LocalStack(config).start()
    assert "cannot bind socket" in str(failed.value)  # HAProxy's words, from the log's tail
    assert (tmp_path / "shard-a.log").exists()  # the shards were running
    assert process.children(os.getpid()) == []
