from __future__ import annotations

from backend.shard.wheel import TimerWheel


class Recorder:
    def __init__(self, reschedule: list[float | None]) -> None:
        self.calls: list[float] = []
        self.reschedule = reschedule

    def on_timer(self, now: float) -> float | None:
        self.calls.append(now)
        return self.reschedule.pop(0) if self.reschedule else None


def test_fires_only_due_items() -> None:
    wheel = TimerWheel(resolution=1.0)
    early, late = Recorder([]), Recorder([])
    wheel.schedule(early, 10.2)
    wheel.schedule(late, 30.0)
    assert wheel.advance(10.0) == 0  # 10.2 rounds up to tick 11: never early
    assert wheel.advance(11.0) == 1
    assert early.calls == [11.0]
    assert late.calls == []
    assert wheel.advance(30.0) == 1


def test_rescheduled_item_fires_again_later() -> None:
    wheel = TimerWheel()
    item = Recorder([15.0, None])
    wheel.schedule(item, 5.0)
    wheel.advance(5.0)
    wheel.advance(14.0)
    assert item.calls == [5.0]
    wheel.advance(15.0)
    assert item.calls == [5.0, 15.0]
    wheel.advance(100.0)
    assert item.calls == [5.0, 15.0]


def test_deadline_in_the_past_fires_on_next_advance_not_the_current_one() -> None:
    wheel = TimerWheel()
    item = Recorder([1.0])  # asks for a time already gone while being fired
    wheel.schedule(item, 3.0)
    assert wheel.advance(3.0) == 1
    assert wheel.advance(4.0) == 1
    assert item.calls == [3.0, 4.0]


def test_late_advance_catches_up_every_missed_tick() -> None:
    wheel = TimerWheel()
    items = [Recorder([]) for _ in range(5)]
    for offset, item in enumerate(items):
        wheel.schedule(item, 1.0 + offset)
    assert wheel.advance(50.0) == 5
