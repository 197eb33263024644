"""Structured logs: the throttle that keeps a misbehaving device from flooding them."""

from __future__ import annotations

import logging
import time

import pytest

from backend.logs import Throttled


def test_one_line_per_key_per_interval_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("fleet.test"), interval=3600)
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            throttled.warning("device-a", "bad input from %s", "device-a")
        throttled.warning("device-b", "bad input from %s", "device-b")
    assert [r.getMessage() for r in caplog.records] == [
        "bad input from device-a",
        "bad input from device-b",
    ]


def test_the_next_line_says_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(logging.getLogger("fleet.test"), interval=0.05)
    with caplog.at_level(logging.WARNING):
        for _ in range(42):
            throttled.warning("k", "NATS publish failed")
        time.sleep(0.06)
        throttled.warning("k", "NATS publish failed")
    first, second = (record.getMessage() for record in caplog.records)
    assert first == "NATS publish failed"
    assert second.startswith("NATS publish failed (41 more like it in the last")


def test_keys_are_bounded() -> None:
    throttled = Throttled(logging.getLogger("fleet.test"), interval=3600, max_keys=10)
    for index in range(100):
        throttled.warning(f"device-{index}", "bad input")
    assert len(throttled._last) == 10
    assert "device-99" in throttled._last
