"""Helpers shared by the simulator's test modules: fleets on a local stack, fleet snapshots,
and Locust run in a child process (it patches with gevent on import)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backend.devstack.stack import LocalStack
from simulator.behaviour import Behaviour
from simulator.fleet import Fleet, parse_targets
from simulator.network import NetworkMix, NetworkProfile
from simulator.stats import FleetStats

BEHAVIOUR = Behaviour(
    status_interval=1.0,
    alerts_per_hour=360.0,
    clear_after=2.0,
    ping_interval=1.0,
    keepalive_timeout=3.0,
    reconnect_base=0.1,
    reconnect_cap=0.5,
)

NO_FAULTS = {"drops_per_hour": 0, "blackholes_per_hour": 0, "offline_per_hour": 0}

Event = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]


def new_fleet(stack: LocalStack, mix: NetworkMix, **behaviour: Any) -> tuple[Fleet, list[Event]]:
    """A fleet on every shard of ``stack``, and the request events it reports (with a time)."""
    fleet = Fleet(
        parse_targets(" ".join(stack.shard_urls)),
        stack.token,
        behaviour=dataclasses.replace(BEHAVIOUR, **behaviour),
        mix=mix,
    )
    events: list[Event] = []
    fleet.stats.request_hook = lambda **event: events.append({**event, "at": time.monotonic()})
    return fleet, events


def only(profile: NetworkProfile) -> NetworkMix:
    return NetworkMix(((profile, 1.0),))


def fleet(connected: int, connects: int, acked: int = 0) -> dict[str, Any]:
    snapshot = FleetStats().snapshot()
    snapshot.update(connected=connected, connects=connects, alerts={"acked": acked})
    return snapshot


def locust(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "locust", *args, "--run-dir", str(run_dir)]


def run_locust(
    run_dir: Path, *args: str, timeout: float = 60, as_on_a_terminal: bool = False
) -> subprocess.CompletedProcess[str]:
    """``locust`` with ``args``; ``as_on_a_terminal``: stderr (Locust's logs and tables) into
    stdout, in the order a person sees them."""
    return subprocess.run(
        locust(run_dir, *args),
        cwd=REPO,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if as_on_a_terminal else subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env() -> dict[str, str]:
    """Ours, without LOCUST_* settings that would change the run."""
    return {key: value for key, value in os.environ.items() if not key.startswith("LOCUST_")}


def summary_of(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary
