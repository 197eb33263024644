"""How ``GatewayUser`` builds its fleet: the source addresses it spreads connections over, and
what it refuses. ``simulator.user`` imports Locust, which patches with gevent, so the user
itself is only run in a ``locust`` child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.fleet import AUTO_SOURCES, parse_targets, source_addresses

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = parse_targets("ws://127.0.0.1:8001,ws://localhost:8002")


def test_auto_spreads_loopback_targets_over_loopback_sources() -> None:
    sources = source_addresses("auto", LOOPBACK)
    assert AUTO_SOURCES == 8
    assert sources == tuple(f"127.0.0.{n}" for n in range(1, 9))


@pytest.mark.parametrize("hosts", ["ws://10.0.0.5:8001", "ws://127.0.0.1:1,wss://fleet.example"])
def test_auto_leaves_other_targets_to_the_kernel(hosts: str) -> None:
    assert source_addresses(" auto ", parse_targets(hosts)) == ()


@pytest.mark.parametrize(
    ("spec", "sources"),
    [
        ("", ()),
        ("10.1.0.1", ("10.1.0.1",)),
        ("10.1.0.1,10.1.0.7", ("10.1.0.1", "10.1.0.7")),
        (" 10.1.0.1 , ,10.1.0.7, ", ("10.1.0.1", "10.1.0.7")),
        ("127.0.0.2-127.0.0.4", ("127.0.0.2", "127.0.0.3", "127.0.0.4")),
        ("10.0.0.254 - 10.0.1.1", ("10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1")),
        ("127.0.0.9-127.0.0.9", ("127.0.0.9",)),
    ],
)
def test_lists_and_ranges(spec: str, sources: tuple[str, ...]) -> None:
    assert source_addresses(spec, LOOPBACK) == sources


def test_a_reversed_range_is_refused() -> None:
    with pytest.raises(ValueError, match="the range ends before it starts"):
        source_addresses("127.0.0.4-127.0.0.2", LOOPBACK)


def test_a_range_of_non_addresses_is_refused() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        source_addresses("first-last", LOOPBACK)


@pytest.mark.integration
def test_a_backend_without_a_jwt_secret_is_refused(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCUST_")}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", "scenarios/mixed_fleet.py", "--headless"),
            *("-u", "1", "-r", "1", "-t", "1s", "--run-dir", str(tmp_path)),
            *("--host", "ws://127.0.0.1:1"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "--host given without --jwt-secret" in result.stderr
