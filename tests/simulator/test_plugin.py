"""The Locust plugin end to end: real ``locust`` runs against the embedded stack (NATS and
shard processes) or an unreachable backend. ``simulator.plugin`` patches with gevent on
import, so it only ever runs in a child process here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from backend.devstack.process import free_ports, spawn, stop, tail
from backend.devstack.stack import metric_sum
from tests.simulator.support import REPO, clean_env, locust, run_locust, summary_of
from tests.support import wait_until

pytestmark = pytest.mark.integration  # every test here runs real servers

MIXED_FLEET = "scenarios/mixed_fleet.py"


def test_a_run_on_the_embedded_stack_loses_no_alert(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", MIXED_FLEET, "--headless", "-u", "20", "-r", "20", "-t", "6s"),
        *("--alerts-per-hour", "3600"),
        as_on_a_terminal=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "peak connected 20," in result.stdout
    # The verdict and where the run record is are last, after Locust's own tables.
    assert result.stdout.rindex("fleet summary") > result.stdout.rindex("Aggregated")
    assert result.stdout.count("# reqs") == 2  # Locust's two final tables, none every 2 s
    last = result.stdout.rstrip().splitlines()[-2:]
    assert last == [
        "  verdict       OK",
        f"  run record    {tmp_path}/ (report.html, summary.json, locust.html)",
    ]
    summary = summary_of(tmp_path)
    assert summary["verdict"] == {"failures": [], "ok": True}
    # No scenario verdict of its own: the checks every scenario has.
    checks = {check["name"]: check for check in summary["verdicts"]}
    assert set(checks) == {"alerts_unstored_pct", "connect_failed_pct"}
    assert [check["measured"] for check in checks.values()] == [0, 0]
    assert summary["gateways"]["peak_connected"] == 20
    assert summary["host"].startswith("ws://127.0.0.1:")
    alerts = summary["alerts"]
    assert alerts["acked"] > 0
    assert alerts["stored"] >= alerts["acked"]
    assert (alerts["lost"], alerts["duplicated"], alerts["pending"]) == (0, 0, 0)
    assert summary["latency_ms"]["alert"]["count"] > 0
    assert summary["requests"]["failures"] == 0


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (
            ("--network-mix", "lte:70,foo:30"),
            "--network-mix 'lte:70,foo:30': unknown network profile 'foo'",
        ),
        (("--network-profiles", "no-such.toml"), "No such file or directory: 'no-such.toml'"),
        (("--threshold", "lost_alerts"), "--threshold 'lost_alerts': expected NAME=NUMBER"),
        (
            ("--threshold", "no_such_check=1"),
            "--threshold no_such_check: no check of that name in this run (its checks: "
            "alerts_unstored_pct, connect_failed_pct)",
        ),
        (("--host", "http://127.0.0.1:8080"), "not a WebSocket URL: 'http://127.0.0.1:8080'"),
        (
            ("--host", "wss://127.0.0.1:8443", "--ca-file", "no-such-ca.pem"),
            "--ca-file 'no-such-ca.pem': no such file",
        ),
    ],
)
def test_a_bad_option_fails_before_anything_starts(
    tmp_path: Path, option: tuple[str, ...], said: str
) -> None:
    result = run_locust(tmp_path, "-f", MIXED_FLEET, "--headless", "-u", "1", "-t", "30s", *option)
    assert result.returncode == 1
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing started: no stack, no run record


def test_an_unreachable_backend_fails_the_run(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", MIXED_FLEET, "--headless", "-u", "3", "-r", "3", "-t", "2s"),
        *("--host", f"ws://127.0.0.1:{free_ports(1)[0]}", "--jwt-secret", "x"),
    )
    assert result.returncode != 0
    assert "no gateway ever connected" in result.stdout
    assert "connect_failed_pct: measured 100 %, threshold <= 5 %" in result.stdout
    assert "ConnectionRefusedError" in result.stdout + result.stderr
    summary = summary_of(tmp_path)
    assert not summary["verdict"]["ok"]
    assert summary["gateways"]["peak_connected"] == 0
    assert summary["connect_failures"]["tcp"] > 0
    assert summary["requests"]["failures"] == summary["requests"]["count"] > 0
    assert "stored" not in summary["alerts"]  # no embedded stack: no stream to audit


def test_abort_on_fail_ends_a_hopeless_run_early_and_says_why(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path,
        *("-f", MIXED_FLEET, "--headless", "-u", "120", "-r", "120", "-t", "90s"),
        *("--host", f"ws://127.0.0.1:{free_ports(1)[0]}", "--jwt-secret", "x", "--abort-on-fail"),
        timeout=80,
        as_on_a_terminal=True,
    )
    assert result.returncode == 1
    # The progress line said what failed, and what to check, before the end.
    assert "failed tries: tcp " in result.stdout
    assert "(nothing accepts connections at --host: is the backend up" in result.stdout
    summary = summary_of(tmp_path)
    aborted = [f for f in summary["verdict"]["failures"] if "--abort-on-fail" in f]
    assert len(aborted) == 1
    assert "connect_failed_pct measured 100 %, threshold <= 5 %, and cannot pass" in aborted[0]
    assert summary["duration_s"] < 90  # ended by the abort, not by -t
    assert f"    - {aborted[0]}" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("  run record")


def test_the_scenario_directory_runs_every_scenario(tmp_path: Path) -> None:
    result = run_locust(
        tmp_path, *("-f", "scenarios", "--headless", "-u", "10", "-r", "10", "-t", "4s")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spawned = [line for line in result.stderr.splitlines() if "All users spawned" in line]
    assert len(spawned) == 1
    assert '"MixedFleet": 9' in spawned[0]
    assert '"FlakyLinks": 1' in spawned[0]
    assert summary_of(tmp_path)["verdict"]["ok"]


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, ConnectionError):
        return None  # not serving yet


def post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10):
        pass


def gateway_rows(stats_body: bytes) -> dict[str, Any]:
    tables = json.loads(stats_body).get("extended_stats", [])
    return {
        row["metric"]: row["value"]
        for table in tables
        if table["key"] == "gateways"
        for row in table["data"]
    }


def gauge(metrics_body: bytes, name: str) -> float | None:
    return metric_sum(metrics_body.decode(), name)


def template_args(index_body: bytes) -> dict[str, Any]:
    html = index_body.decode()
    start = html.index("templateArgs = ") + len("templateArgs = ")
    args: dict[str, Any] = json.JSONDecoder().raw_decode(html, start)[0]
    return args


def test_a_sigterm_still_leaves_locusts_report_and_fails_the_verdict(tmp_path: Path) -> None:
    metrics = free_ports(1)[0]
    command = locust(
        tmp_path,
        *("-f", MIXED_FLEET, "--headless", "-u", "5", "-r", "5", "-t", "60s"),
        *("--metrics-port", str(metrics)),
    )

    def connected() -> bool:
        body = get(f"http://127.0.0.1:{metrics}/metrics")
        return body is not None and gauge(body, "fleet_sim_gateways_connected") == 5

    with (tmp_path.parent / f"{tmp_path.name}.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            wait_until(connected, timeout=30, what="5 gateways connected")
        finally:
            returncode = stop(process, timeout=30)  # SIGTERM
    assert returncode == 1
    assert (tmp_path / "locust.html").read_text().startswith("<!DOCTYPE html>")
    failures = summary_of(tmp_path)["verdict"]["failures"]
    assert any(failure.startswith("interrupted after") for failure in failures)


def extended_rows(stats_body: bytes, key: str) -> list[dict[str, Any]]:
    tables = json.loads(stats_body).get("extended_stats", [])
    return [row for table in tables if table["key"] == key for row in table["data"]]


def test_web_ui_tabs_live_report_stop_and_prometheus_metrics(tmp_path: Path) -> None:
    web, metrics = free_ports(2)
    command = locust(
        tmp_path,
        *("-f", MIXED_FLEET, "--autostart", "-u", "5", "-r", "5"),
        *("--web-host", "127.0.0.1", "--web-port", str(web), "--metrics-port", str(metrics)),
    )
    base = f"http://127.0.0.1:{web}"
    rows: dict[str, Any] = {}
    with (tmp_path.parent / f"{tmp_path.name}.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:

            def five_connected() -> bool:
                rows.update(gateway_rows(get(f"{base}/stats/requests") or b"{}"))
                return rows.get("connected now") == 5

            wait_until(five_connected, timeout=30, what="5 gateways in the Gateways tab")
            time.sleep(2)  # a few timeline samples for the live charts
            index, stats = get(f"{base}/"), get(f"{base}/stats/requests")
            live, content = get(f"{base}/fleet"), get(f"{base}/fleet/content")
            prometheus = get(f"http://127.0.0.1:{metrics}/metrics")
            assert not (tmp_path / "summary.json").exists()
            post(f"{base}/stop")  # the UI's Stop button
            wait_until(lambda: (tmp_path / "summary.json").exists(), 30, "the record after Stop")
            assert process.poll() is None  # the UI stays up, with the stopped test's record
        finally:
            stop(process, timeout=30)  # Locust stops the embedded stack on SIGTERM
    assert rows["peak connected"] >= rows["connected now"]
    assert {"connects", "reconnects", "unexpected drops"} <= rows.keys()
    assert index is not None
    assert stats is not None
    assert prometheus is not None
    assert gauge(prometheus, "fleet_sim_gateways_connected") == 5
    args = template_args(index)
    assert [tab["key"] for tab in args["extendedTabs"]] == ["gateways", "checks"]
    assert [table["key"] for table in args["extendedTables"]] == ["gateways", "checks"]
    checks = {row["check"]: row for row in extended_rows(stats, "checks")}
    assert checks["connect_failed_pct"] == {
        "check": "connect_failed_pct", "measured": "0 %", "threshold": "<= 5 %",
        "status": "passing",
    }  # fmt: skip
    assert live is not None
    assert content is not None
    assert b"fetch('fleet/content')" in live  # redrawn while the run goes on
    assert b"MixedFleet: running" in content
    assert content.count(b"<svg") >= 3  # connected, connects/s, per shard
    assert b"Connected gateways" in content
    for name in ("summary.json", "verdicts.json", "report.html", "locust.html", "timeline.json"):
        assert (tmp_path / name).is_file(), name
    assert summary_of(tmp_path)["verdict"]["ok"]


def test_the_plugin_fixes_locust_for_busy_workers() -> None:
    """In a child process (the plugin patches with gevent): the heartbeat allowance and the
    parser defaults built once, which spawn messages ask for once per option."""
    probe = (
        "import simulator.plugin\n"
        "from locust import argument_parser, runners\n"
        "assert runners.HEARTBEAT_LIVENESS >= 30, runners.HEARTBEAT_LIVENESS\n"
        "first = argument_parser.default_args_dict()\n"
        "assert argument_parser.default_args_dict() is first\n"
        "assert 'num_users' in first and 'network_mix' not in first\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_option_is_also_an_environment_variable() -> None:
    """In a child process (the plugin patches with gevent), as Locust parses its own."""
    probe = (
        "from locust import argument_parser\n"
        "from simulator import plugin\n"
        "parser = argument_parser.get_empty_argument_parser()\n"
        "argument_parser.setup_parser_arguments(parser)\n"
        "plugin.add_options(parser)\n"
        "options = parser.parse_args([])\n"
        "assert options.jwt_secret == 's3cret', options.jwt_secret\n"
        "assert options.alert_window == 3, options.alert_window\n"
        "assert options.shard_option == ['ping_interval=5'], options.shard_option\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env |= {"LOCUST_JWT_SECRET": "s3cret", "LOCUST_ALERT_WINDOW": "3",
            "LOCUST_SHARD_OPTION": "[ping_interval=5]"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_master_and_two_workers_add_up(tmp_path: Path) -> None:
    """As on several machines: the master runs the embedded stack and the summary, two worker
    processes split the gateways, and the fleet's figures are the sums of the workers'."""
    run_dir, port = tmp_path / "run", free_ports(1)[0]
    scenario = ("-f", str(REPO / MIXED_FLEET), "--network-mix", "wired:100")  # no injected drops
    master = spawn(
        locust(run_dir, *scenario, "--master", "--headless", "--expect-workers", "2",
               *("--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)),
               *("-u", "200", "-r", "100", "-t", "15s", "--alerts-per-hour", "360")),
        tmp_path / "master.log",
    )  # fmt: skip
    worker = [sys.executable, "-m", "locust", *scenario, "--worker",
              *("--master-host", "127.0.0.1", "--master-port", str(port))]  # fmt: skip
    workers = [spawn(worker, tmp_path / f"worker-{n}.log") for n in range(2)]
    try:
        returncode = master.wait(timeout=90)
    finally:
        for process in (master, *workers):
            stop(process, timeout=30)
    assert returncode == 0, tail(tmp_path / "master.log", 40)
    summary = summary_of(run_dir)
    assert summary["verdict"] == {"failures": [], "ok": True}
    figures = summary["workers"]
    peaks = {name: fig["peak_connected"] for name, fig in figures.items()}
    assert peaks == {"w0": 100, "w1": 100}  # split evenly
    assert summary["gateways"]["peak_connected"] == 200  # the peak of the sum
    assert summary["gateways"]["connects"] == sum(fig["connects"] for fig in figures.values())
    alerts = summary["alerts"]
    for key in ("sent", "acked", "resent"):
        assert alerts[key] == sum(fig["alerts"].get(key, 0) for fig in figures.values()), key
    assert all(fig["alerts"]["acked"] > 0 for fig in figures.values())
    assert alerts["pending"] == sum(fig["pending"] for fig in figures.values()) == 0  # final
    assert alerts["stored"] == alerts["acked"]
    assert (alerts["lost"], alerts["duplicated"]) == (0, 0)
    # Device ids are unique across workers: a repeated one would replace the other's
    # connection (4001), and the shards would never hold all 200 at once.
    samples = json.loads((run_dir / "timeline.json").read_text())["samples"]
    held = max(sum(fig["connections"] for fig in s["shards"].values() if fig) for s in samples)
    assert held == 200
    # The workers' own counts, added up per tenth of a second, reach 200 too.
    connected = json.loads((run_dir / "timeline.json").read_text())["connected"]
    assert max(count for _t, count in connected) == 200
    assert "worker w1" in (tmp_path / "master.log").read_text()


def test_python_m_simulator_lists_the_options_locusts_help_cannot() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--help"], cwd=REPO, env=clean_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "--abort-on-fail" in text
    assert "[env: LOCUST_NETWORK_MIX]" in text
