from __future__ import annotations

import pytest

from backend.protocol.errors import Overloaded
from backend.shard.admission import Admission


def test_cap_refuses_with_a_retry_hint() -> None:
    admission = Admission(max_connections=2, rate=100, burst=10, retry_after=8)
    admission.admit(0.0, connections=1)
    with pytest.raises(Overloaded, match="capacity") as refused:
        admission.admit(0.0, connections=2)
    assert refused.value.retry_after is not None
    assert 1.0 <= refused.value.retry_after <= 8.0


def test_rate_budget_allows_burst_then_refills_at_rate() -> None:
    admission = Admission(max_connections=1000, rate=10, burst=3, retry_after=5)
    for _ in range(3):
        admission.admit(100.0, 0)
    with pytest.raises(Overloaded, match="accept-rate"):
        admission.admit(100.0, 0)
    admission.admit(100.15, 0)  # 0.15 s at 10/s refills one and a half tokens
    with pytest.raises(Overloaded):
        admission.admit(100.15, 0)


def test_refill_never_exceeds_burst() -> None:
    admission = Admission(max_connections=1000, rate=1000, burst=2, retry_after=5)
    admission.admit(0.0, 0)
    admission.admit(1000.0, 0)
    admission.admit(1000.0, 0)
    with pytest.raises(Overloaded):
        admission.admit(1000.0, 0)


def test_jitter_spreads_refused_clients() -> None:
    admission = Admission(max_connections=1, rate=1, burst=1, retry_after=30)
    hints = {round(admission.jittered_retry_after(), 3) for _ in range(50)}
    assert len(hints) > 40
    assert all(1.0 <= hint <= 30.0 for hint in hints)
