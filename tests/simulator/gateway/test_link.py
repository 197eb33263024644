"""The simulated link: arrival times in order, faults that come and heal; no sockets."""

from __future__ import annotations

import random

import pytest

from simulator.gateway.link import NEVER, LinkQueue, SimulatedLink
from simulator.network import NetworkProfile

SLOW = NetworkProfile("slow", latency=0.1, bandwidth=1000.0)


def test_reads_arrive_after_both_legs_and_their_serialisation_in_order() -> None:
    link, rng = SimulatedLink(SLOW), random.Random(1)
    link.received(0.0, b"x" * 100, rng)  # 2 x 0.1 s + 100 B at 1000 B/s
    link.received(0.0, b"y" * 10, rng)  # behind the first: never overtakes
    assert link.inbound.next_arrival() == pytest.approx(0.3)
    assert link.inbound.take(0.25) == b""
    assert link.inbound.take(0.305) == b"x" * 100
    assert link.inbound.busy_until() == pytest.approx(0.31)
    assert link.inbound.take(1.0) == b"y" * 10
    assert link.inbound.next_arrival() == NEVER


def test_a_write_leaves_at_once_unless_its_serialisation_shows() -> None:
    fast = SimulatedLink(NetworkProfile("fast", latency=0.1, bandwidth=12_500_000))
    assert fast.sent(0.0, b"x" * 100)  # 8 us on the wire
    slow = SimulatedLink(SLOW)
    assert not slow.sent(0.0, b"x" * 100)  # 0.1 s on the wire
    assert not slow.sent(0.0, b"y")  # behind it
    assert slow.outbound.take(0.1) == b"x" * 100
    assert slow.outbound.take(0.101) == b"y"


def test_writes_held_while_the_link_is_down_keep_their_order() -> None:
    link = SimulatedLink(NetworkProfile("down"))
    link.held(5.0, b"a")
    link.held(6.0, b"b")
    assert not link.sent(7.0, b"c")  # behind what waits
    assert link.outbound.take(7.0) == b"abc"


def test_take_all_hands_over_what_is_in_flight_and_empties() -> None:
    queue = LinkQueue()
    queue.put(1.0, b"a")
    queue.put(2.0, b"b")
    assert queue.take_all() == b"ab"
    assert queue.take_all() == b""


def test_a_perfect_link_is_instant_and_never_fails() -> None:
    link = SimulatedLink(NetworkProfile("perfect"))
    assert link.instant
    link.schedule_fault(0.0, random.Random(1))
    assert link.fault_at == NEVER
    assert not SimulatedLink(SLOW).instant


def test_a_blackhole_keeps_the_link_down_until_it_heals() -> None:
    profile = NetworkProfile("holes", blackholes_per_hour=3600, blackhole_mean=5.0)
    link, rng = SimulatedLink(profile), random.Random(3)
    link.schedule_fault(10.0, rng)
    assert 10.0 < link.fault_at < NEVER
    kind, duration = link.fail(rng)
    assert (kind, link.down, link.fault_at) == ("blackhole", True, NEVER)
    assert duration > 0
    assert link.heal(20.0, rng) == "blackhole"
    assert not link.down
    assert link.fault_at > 20.0  # the next one counts from the end of this one


def test_a_drop_is_instant_and_leaves_the_link_up() -> None:
    link, rng = SimulatedLink(NetworkProfile("drops", drops_per_hour=3600)), random.Random(2)
    link.schedule_fault(0.0, rng)
    assert link.fail(rng) == ("drop", 0.0)
    assert not link.down
