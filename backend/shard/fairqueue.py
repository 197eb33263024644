"""Per-device fair shares of the shard's NATS publishes.

One shared FIFO let one device's flood fill it and shed its neighbours' alerts. Here each
key (a device connection) has its own bounded FIFO and the worker serves keys round robin,
one job each, so a device waits behind at most one job of every other busy device, however
much one of them sends. A total bound caps the memory of all queues together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

Job = Callable[[], Coroutine[Any, Any, None]]
K = TypeVar("K", bound=Hashable)


class FairQueue(Generic[K]):
    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._queues: dict[K, deque[Job]] = {}
        self._ready: deque[K] = deque()  # keys with work, in serving order
        self._size = 0
        self._unfinished = 0
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, key: K, job: Job) -> bool:
        """Queue ``job`` for ``key``; False (nothing queued) when its share or the total is
        full: the caller sheds it."""
        queue = self._queues.get(key)
        if self._size >= self.total or (queue is not None and len(queue) >= self.per_key):
            return False
        if queue is None:
            queue = self._queues[key] = deque()
            self._ready.append(key)
        queue.append(job)
        self._size += 1
        self._unfinished += 1
        self._idle.clear()
        self._work.set()
        return True

    def pending(self, key: K) -> int:
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    async def get(self) -> tuple[K, Job]:
        """The next key's oldest job; that key goes to the back of the line."""
        while not self._ready:
            self._work.clear()
            await self._work.wait()
        key = self._ready.popleft()
        queue = self._queues[key]
        job = queue.popleft()
        self._size -= 1
        if queue:
            self._ready.append(key)
        else:
            del self._queues[key]
        return key, job

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    async def join(self) -> None:
        """Until every queued job has been taken and reported done."""
        await self._idle.wait()
