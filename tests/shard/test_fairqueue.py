"""The shard's per-device publish queue: bounded shares, served round robin."""

from __future__ import annotations

import asyncio

from backend.shard.fairqueue import FairQueue, Job


def job(log: list[str], name: str) -> Job:
    async def run() -> None:
        log.append(name)

    return run


async def drain(queue: FairQueue[str], count: int) -> list[str]:
    served: list[str] = []
    for _ in range(count):
        _key, work = await queue.get()
        await work()
        queue.task_done()
    return served


async def test_keys_are_served_round_robin_whatever_one_of_them_sends() -> None:
    queue: FairQueue[str] = FairQueue(per_key=100, total=1000)
    log: list[str] = []
    for index in range(50):
        assert queue.put("flood", job(log, f"flood-{index}"))
    assert queue.put("quiet", job(log, "quiet-0"))
    assert queue.put("quiet", job(log, "quiet-1"))
    keys = [(await queue.get())[0] for _ in range(5)]
    assert keys == ["flood", "quiet", "flood", "quiet", "flood"]


async def test_a_full_share_refuses_only_that_key() -> None:
    queue: FairQueue[str] = FairQueue(per_key=3, total=10)
    log: list[str] = []
    assert [queue.put("a", job(log, "a")) for _ in range(4)] == [True, True, True, False]
    assert queue.put("b", job(log, "b"))
    assert (queue.pending("a"), queue.pending("b"), queue.pending("c")) == (3, 1, 0)


async def test_the_total_bounds_every_key_together() -> None:
    queue: FairQueue[str] = FairQueue(per_key=3, total=4)
    log: list[str] = []
    accepted = [queue.put(key, job(log, key)) for key in "aabbc"]
    assert accepted == [True, True, True, True, False]


async def test_jobs_of_one_key_keep_their_order() -> None:
    queue: FairQueue[str] = FairQueue(per_key=10, total=10)
    log: list[str] = []
    for index in range(3):
        queue.put("a", job(log, f"a-{index}"))
    await drain(queue, 3)
    assert log == ["a-0", "a-1", "a-2"]
    assert queue.pending("a") == 0


async def test_get_waits_for_work_and_join_for_its_end() -> None:
    queue: FairQueue[str] = FairQueue(per_key=10, total=10)
    log: list[str] = []
    waiting = asyncio.create_task(drain(queue, 1))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    joined = asyncio.create_task(queue.join())
    queue.put("a", job(log, "late"))
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(joined, 1)
    assert log == ["late"]
