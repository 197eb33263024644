"""Reconnect backoff: full jitter from the first retry, capped, never before a server's hint."""

from __future__ import annotations

import random
import statistics

import pytest

from simulator.backoff import Backoff


def first_delays(base: float, trials: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [Backoff(base=base).next_delay(rng) for _ in range(trials)]


def delay_at(attempt: int, rng: random.Random, hint: float | None = None) -> float:
    backoff = Backoff(base=1.0, cap=60.0)
    backoff.attempt = attempt
    return backoff.next_delay(rng, hint)


def test_the_first_retry_is_jittered_below_base() -> None:
    delays = first_delays(base=2.0, trials=2000)
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.1
    assert statistics.fmean(delays) == pytest.approx(1.0, rel=0.05)


def test_the_ceiling_doubles_per_attempt() -> None:
    rng = random.Random(2)
    for attempt in range(5):
        delays = [delay_at(attempt, rng) for _ in range(2000)]
        ceiling = 2.0**attempt
        assert max(delays) <= ceiling
        assert max(delays) > 0.95 * ceiling
        assert statistics.fmean(delays) == pytest.approx(ceiling / 2, rel=0.05)


def test_delays_never_exceed_the_cap() -> None:
    rng = random.Random(3)
    backoff = Backoff(base=1.0, cap=10.0)
    delays = [backoff.next_delay(rng) for _ in range(500)]
    assert max(delays) <= 10.0
    assert max(delays[10:]) > 9.5  # the cap is reached, not some lower ceiling


def test_a_long_outage_stays_capped() -> None:
    rng = random.Random(4)
    backoff = Backoff(base=1.0, cap=60.0)
    delays = [backoff.next_delay(rng) for _ in range(3000)]
    assert backoff.attempt == 3000
    assert max(delays) <= 60.0


def test_the_hint_is_a_lower_bound_with_jitter_on_top() -> None:
    rng = random.Random(5)
    delays = [delay_at(2, rng, hint=7.0) for _ in range(2000)]
    assert all(7.0 <= d <= 7.0 + 4.0 for d in delays)
    assert min(delays) < 7.1
    assert max(delays) > 10.8


def test_a_zero_hint_is_plain_backoff() -> None:
    assert delay_at(3, random.Random(6), hint=0.0) == delay_at(3, random.Random(6))


def test_every_delay_counts_as_an_attempt() -> None:
    backoff = Backoff()
    rng = random.Random(7)
    backoff.next_delay(rng)
    backoff.next_delay(rng, hint=5.0)
    assert backoff.attempt == 2


def test_reset_starts_over_from_base() -> None:
    rng = random.Random(8)
    backoff = Backoff(base=1.0, cap=60.0)
    after_reset = []
    for _ in range(200):
        for _ in range(8):
            backoff.next_delay(rng)
        backoff.reset()
        assert backoff.attempt == 0
        after_reset.append(backoff.next_delay(rng))
    assert max(after_reset) <= 1.0


def test_the_same_seed_gives_the_same_delays() -> None:
    first, second = random.Random(9), random.Random(9)
    a, b = Backoff(), Backoff()
    assert [a.next_delay(first) for _ in range(20)] == [b.next_delay(second) for _ in range(20)]


def test_backoff_has_no_instance_dict() -> None:
    assert not hasattr(Backoff(), "__dict__")


@pytest.mark.parametrize(("base", "cap"), [(0.0, 60.0), (-1.0, 60.0), (10.0, 5.0)])
def test_invalid_settings_are_rejected(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


def test_a_negative_hint_is_rejected() -> None:
    with pytest.raises(ValueError, match="hint"):
        Backoff().next_delay(random.Random(1), hint=-1.0)
