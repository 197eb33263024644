"""The scenario's rollout operator: its request as the API reads it, and what it records."""

from __future__ import annotations

from backend.client.operator import OperatorClient
from backend.operator.config import FleetConfig
from backend.operator.rollouts import rollout_spec
from simulator.rollout import RolloutPlan, RolloutWatch


def test_the_plan_is_a_request_the_api_accepts() -> None:
    plan = RolloutPlan(version="3.1.0", max_concurrent=7, rate=2.5)
    spec = rollout_spec(plan.request(), FleetConfig())
    assert (spec.version, spec.max_concurrent, spec.rate, spec.percent) == ("3.1.0", 7, 2.5, 100)
    assert spec.selector.firmware == "1.0.0"
    assert spec.artifact_url.endswith("fw-3.1.0.bin")


def status(state: str, offered: int, installing: int, success: int, failure: int) -> dict:
    counts = {"pending": 0, "offered": offered, "downloading": 0, "installing": installing,
              "success": success, "failure": failure}  # fmt: skip
    failed = [{"device": f"gw-{n}", "reason": "install script exited with code 1" if n else ""}
              for n in range(failure)]  # fmt: skip
    return {"id": "r-1", "state": state, "total": 10, "counts": counts, "failed": failed}


def test_the_watch_keeps_the_peak_in_flight_and_the_unexplained_failures() -> None:
    operator = OperatorClient("http://127.0.0.1:1", "token")
    watch = RolloutWatch(operator, RolloutPlan(max_concurrent=4))
    watch.created_at = 1.0
    for now, seen in enumerate(
        [status("running", 2, 1, 0, 0), status("running", 1, 3, 2, 0),
         status("finished", 0, 0, 8, 2)], start=2,
    ):  # fmt: skip
        watch.status = seen
        watch._record(float(now))
        watch.finished_at = float(now) if seen["state"] == "finished" else None
    figures = watch.figures()
    assert figures["peak_in_flight"] == 4
    assert figures["completion_s"] == 3.0
    assert figures["failures_without_reason"] == 1
    assert figures["failures_by_devices"] == 1  # the other one gave no reason
    assert figures["progress"] == [(2.0, 3, 0, 0), (3.0, 4, 2, 0), (4.0, 0, 8, 2)]
