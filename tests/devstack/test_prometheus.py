"""A real Prometheus: its configuration, the query helper, and the dashboards' every query
evaluated against a real stack (NATS, two shards, HAProxy) under simulated load, scraped
together with the NATS exporter and the simulator's own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml
from nats.js.api import AckPolicy, ConsumerConfig
from websockets.sync.client import connect

from backend.bus import subjects
from backend.bus.natsauth import STATE
from backend.devstack.process import free_ports
from backend.devstack.prometheus import (
    ALERT_RULES,
    PrometheusServer,
    QueryError,
    duration,
    query,
    render_config,
    target_file,
)
from backend.devstack.stack import LocalStack, StackConfig
from backend.protocol.http import DEVICE_PATH
from tests.natsauth_support import connect_as
from tests.observe_support import DASHBOARDS, dashboards, panel_queries, promtool, spawned

pytestmark = pytest.mark.integration  # every test here runs real servers

STAGING_EXAMPLE = DASHBOARDS / "prometheus-staging.yml"
SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "mixed_fleet.py"
GATEWAYS = 20
# Every gateway's link drops every 5 s on average: drops, reconnects and resent alerts.
CHOPPY_LINK = '[choppy]\nbase = "wired"\ndrops_per_hour = 720.0\n'
# A small accept-rate budget: the first rush of gateways meets 503s (rejected upgrades on
# the shards, connect failures in the simulator). Pings every second: round-trip samples.
SHARD_OPTIONS = {"accept_rate": "5", "accept_burst": "3", "retry_after": "2", "ping_interval": "1"}


def test_duration_is_whole_units() -> None:
    assert (duration(2), duration(15.0), duration(0.5), duration(1.25)) == (
        *("2s", "15s", "500ms", "1250ms"),
    )
    with pytest.raises(ValueError, match="at least 1ms"):
        duration(0)


def test_the_staging_example_is_a_rendered_valid_config() -> None:
    text = STAGING_EXAMPLE.read_text()
    parsed = yaml.safe_load(text)
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in parsed["scrape_configs"]
    }
    assert set(targets) == {"shards", "haproxy", "nats", "simulator"}
    assert parsed["rule_files"] == ["alerts.yml"]  # beside it, in dashboards/
    assert render_config(targets, 15, rule_files=["alerts.yml"]) == text
    checked = promtool("check", "config", STAGING_EXAMPLE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, {}, binary="no-such-prometheus")
    with pytest.raises(FileNotFoundError, match="apt-get install prometheus"):
        server.start()
    assert not tmp_path.joinpath("prometheus.yml").exists()


def test_a_taken_port_fails_the_start_with_prometheus_log(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = PrometheusServer(tmp_path, {}, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="prometheus exited") as failed:
            server.start()
    assert "address already in use" in str(failed.value)


def test_query_results_and_errors(tmp_path: Path) -> None:
    with PrometheusServer(tmp_path, {"self": []}) as prometheus:
        assert query(prometheus.url, "up") == []
        ((_, value),) = [item["value"] for item in query(prometheus.url, "1 + 1")]
        assert value == "2"
        with pytest.raises(QueryError, match="parse error") as refused:
            query(prometheus.url, "rate(up[")
        assert "rate(up[" in str(refused.value)
    assert "prometheus" in (tmp_path / "prometheus.log").read_text()


def test_discovered_targets_are_scraped_once_their_file_appears(tmp_path: Path) -> None:
    found = tmp_path / "found"
    found.mkdir()
    discovered = {"simulator": str(found / "*.json")}
    with PrometheusServer(tmp_path, {}, discovered=discovered, rule_files=[str(ALERT_RULES)]) as p:
        assert query(p.url, 'up{job="simulator"}') == []
        # Prometheus itself stands in for a load test's metrics port: a real /metrics.
        (found / "locust-1.json").write_text(target_file([p.url.removeprefix("http://")]))
        deadline = time.monotonic() + 30
        while not query(p.url, 'up{job="simulator"} == 1') and time.monotonic() < deadline:
            time.sleep(0.5)
        assert query(p.url, 'up{job="simulator"} == 1')
        assert query(p.url, "ALERTS") == []  # rules loaded, none firing on a healthy target


# --- every dashboard query against a running stack -----------------------------------------


async def add_alert_consumer(stack: LocalStack) -> None:
    """A durable consumer on the alerts stream, as an alert processor would keep (with the
    credentials of the fleet state, which consumes alerts): the dashboards show its backlog."""
    client = await connect_as(stack.nats_url, STATE, stack.nats_credentials[STATE], [])
    try:
        config = ConsumerConfig(durable_name="alert-processor", ack_policy=AckPolicy.EXPLICIT)
        await client.jetstream().add_consumer(subjects.ALERTS_STREAM, config)
    finally:
        await client.close()


def send_a_text_frame(stack: LocalStack) -> None:
    """A protocol error: devices speak binary ProtoMsg only."""
    headers = {"Authorization": f"Bearer {stack.token('gw-text')}"}
    with connect(stack.public_url + DEVICE_PATH, additional_headers=headers) as ws:
        ws.recv(timeout=5)  # the shard's "open"
        ws.send("hello")


def locust_argv(stack: LocalStack, run_dir: Path, metrics_port: int) -> list[str]:
    run_dir.mkdir(parents=True)
    profiles = run_dir / "profiles.toml"
    profiles.write_text(CHOPPY_LINK)
    return [
        sys.executable, "-m", "locust", "-f", str(SCENARIO), "--headless",
        "-u", str(GATEWAYS), "-r", str(GATEWAYS), "-t", "90s",
        "--host", stack.public_url, "--jwt-secret", stack.jwt_secret,
        "--alerts-per-hour", "3600", "--network-profiles", str(profiles),
        "--network-mix", "choppy:100", "--drain-timeout", "1",
        "--metrics-port", str(metrics_port), "--run-dir", str(run_dir), "--only-summary",
    ]  # fmt: skip


def every_query() -> list[tuple[str, str]]:
    """(where, PromQL): every panel target, and each variable's label_values() as a query."""
    found = []
    for name, board in dashboards().items():
        found += [(f"{name} / {title}", promql) for title, promql in panel_queries(board)]
        for var in board["templating"]["list"]:
            metric, label = var["definition"].removeprefix("label_values(")[:-1].split(", ")
            found.append((f"{name} / ${var['name']}", f"count by ({label}) ({metric})"))
    return found


def without_series(url: str, queries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The queries that find no series yet; an invalid one fails the test at once."""
    empty = []
    for where, promql in queries:
        try:
            if not query(url, promql):
                empty.append((where, promql))
        except QueryError as exc:
            pytest.fail(f"{where}: Prometheus refuses the query: {exc}")
    return empty


def test_every_dashboard_query_finds_series_on_a_loaded_stack(tmp_path: Path) -> None:
    (simulator_port,) = free_ports(1)
    config = StackConfig(
        tmp_path / "stack", shards=2, haproxies=1, shard_options=SHARD_OPTIONS, observe=True,
        scrape_targets={"simulator": [f"127.0.0.1:{simulator_port}"]},
    )  # fmt: skip
    with LocalStack(config) as stack, contextlib.ExitStack() as running:
        asyncio.run(add_alert_consumer(stack))
        send_a_text_frame(stack)  # before the simulator's rush takes the accept budget
        simulator = locust_argv(stack, tmp_path / "sim", simulator_port)
        simulator_url = f"http://127.0.0.1:{simulator_port}/metrics"
        running.enter_context(spawned("locust", simulator, simulator_url, tmp_path / "sim.log"))
        queries = every_query()
        deadline = time.monotonic() + 45
        while (
            empty := without_series(stack.prometheus_url, queries)
        ) and time.monotonic() < deadline:
            time.sleep(1)
        down = query(stack.prometheus_url, "up == 0")
    assert not empty, "queries without series:\n" + "\n".join(f"{w}: {q}" for w, q in empty)
    assert not down, f"targets down: {down}"
    assert len(queries) > 40
