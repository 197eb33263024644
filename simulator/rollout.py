"""An operator's update rollout during a scenario: created through the embedded stack's
operator API once the fleet is up, then watched until it finishes.

Through ``OperatorClient``, the CLI's blocking client: in a Locust process gevent makes it
cooperative.
The watch keeps what the checks judge: when the rollout was created and finished, the most
devices it had in flight at once (its own counts, polled several times a second) and its
final status with every failed device and the reason it gave.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.client.operator import OperatorClient
from simulator.behaviour import INSTALL_FAILURES

IN_FLIGHT = ("offered", "downloading", "installing")
POLL_INTERVAL = 0.25
FAILED_KEPT = 50  # failed devices listed in the summary; all of them are checked


@dataclass(frozen=True)
class RolloutPlan:
    """What the operator asks for: every device on ``from_firmware`` gets ``version``."""

    version: str = "2.0.0"
    from_firmware: str = "1.0.0"
    size: int = 1_000_000
    percent: float = 100.0
    max_concurrent: int = 50
    rate: float = 20.0

    def request(self) -> dict[str, Any]:
        artifact = f"fw-{self.version}.bin"
        return {
            "version": self.version,
            "artifact_url": f"https://updates.example/{artifact}",
            "checksum": hashlib.sha256(artifact.encode()).hexdigest(),
            "size": self.size,
            "selector": {"firmware": self.from_firmware},
            "percent": self.percent,
            "max_concurrent": self.max_concurrent,
            "rate": self.rate,
        }


@dataclass
class RolloutWatch:
    """One rollout through the operator API; times are seconds on the caller's clock."""

    operator: OperatorClient
    plan: RolloutPlan
    rollout_id: str = ""
    created_at: float | None = None
    finished_at: float | None = None
    peak_in_flight: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    progress: list[tuple[float, int, int, int]] = field(default_factory=list)
    """(t, in flight, success, failure) at every poll: the report plots it."""

    def create(self, now: float) -> None:
        self.status = self.operator.create_rollout(self.plan.request())
        self.rollout_id, self.created_at = self.status["id"], now
        self._record(now)

    def poll(self, now: float) -> bool:
        """Read the rollout's status; True once it is finished (or aborted by someone)."""
        self.status = self.operator.rollout(self.rollout_id)
        self._record(now)
        done = self.status["state"] in ("finished", "aborted")
        if done and self.finished_at is None:
            self.finished_at = now
        return done

    def watch(self, clock: Callable[[], float]) -> None:
        """Poll until the rollout ends: a greenlet's body (``clock()`` gives the time)."""
        while not self.poll(clock()):
            time.sleep(POLL_INTERVAL)

    def _record(self, now: float) -> None:
        counts = self.status["counts"]
        in_flight = sum(counts[state] for state in IN_FLIGHT)
        self.peak_in_flight = max(self.peak_in_flight, in_flight)
        self.progress.append((round(now, 2), in_flight, counts["success"], counts["failure"]))

    def figures(self) -> dict[str, Any]:
        """The rollout's part of the run summary."""
        failed = self.status.get("failed", [])
        completion = None
        if self.finished_at is not None and self.created_at is not None:
            completion = round(self.finished_at - self.created_at, 2)
        return {
            "id": self.rollout_id,
            "state": self.status.get("state"),
            "total": self.status.get("total"),
            "counts": self.status.get("counts", {}),
            "max_concurrent": self.plan.max_concurrent,
            "rate": self.plan.rate,
            "created_s": self.created_at,
            "completion_s": completion,
            "peak_in_flight": self.peak_in_flight,
            "failures_without_reason": sum(not entry["reason"] for entry in failed),
            # What the gateways' installs reported; the rest the backend decided (a device
            # offline when offered, an offer never answered).
            "failures_by_devices": sum(entry["reason"] in INSTALL_FAILURES for entry in failed),
            "failed": failed[:FAILED_KEPT],
            "progress": self.progress,
        }
