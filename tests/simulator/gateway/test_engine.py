"""The engine: deadlines fire in order from one wheel, stale entries are skipped, ready sockets
are reported, and a gateway that raises is stopped without stopping the others."""

from __future__ import annotations

import socket
import time

import gevent

from simulator.gateway.engine import NEVER_TICK, Engine


class Recorder:
    def __init__(self, name: str, log: list[str], *, fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail
        self.wake_tick = NEVER_TICK
        self.stopped = False

    def on_timer(self, now: float) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("boom")

    def on_ready(self, mask: int, now: float) -> None:
        self.log.append(f"{self.name} ready")

    def stop(self) -> None:
        self.stopped = True


def test_deadlines_fire_soonest_first_and_once() -> None:
    engine, log = Engine(), list[str]()
    late, early = Recorder("late", log), Recorder("early", log)
    now = time.monotonic()
    engine.wake_at(late, now + 0.08)
    engine.wake_at(early, now + 0.02)
    engine.wake_at(late, now + 0.2)  # later than it is filed: the earlier one stands
    gevent.sleep(0.3)
    engine.close()
    assert log == ["early", "late"]


def test_an_earlier_deadline_makes_the_old_entry_stale() -> None:
    engine, log = Engine(), list[str]()
    item = Recorder("item", log)
    now = time.monotonic()
    engine.wake_at(item, now + 0.2)
    engine.wake_at(item, now + 0.02)
    gevent.sleep(0.35)
    engine.close()
    assert log == ["item"]  # once, at the earlier time; the later entry was skipped


def test_a_readable_socket_is_reported() -> None:
    engine, log = Engine(), list[str]()
    item = Recorder("sock", log)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        engine.watch(ours.fileno(), item)
        theirs.send(b"hi")
        gevent.sleep(0.05)
        engine.forget(ours.fileno())
        engine.close()
    assert log[:1] == ["sock ready"]
    assert engine.sockets == 0


def test_a_gateway_that_raises_is_stopped_and_the_others_go_on() -> None:
    engine, log = Engine(), list[str]()
    bad, good = Recorder("bad", log, fail=True), Recorder("good", log)
    now = time.monotonic()
    engine.wake_at(bad, now + 0.01)
    engine.wake_at(good, now + 0.05)
    gevent.sleep(0.2)
    engine.close()
    assert log == ["bad", "good"]
    assert (bad.stopped, good.stopped) == (True, False)
    assert engine.failures == 1
