"""The batch scheduler: at most `max_batch` requests run; the rest wait in FIFO order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class BatchQueue:
    """Counts running and waiting requests and the KV tokens held by running ones."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.running = 0
        self.kv_tokens = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def _acquire(self) -> None:
        if self.running < self.max_batch and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self._release()
            elif waiter in self._waiters:
                # (_release may already have dropped it while skipping cancelled waiters)
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; `running` unchanged
                return
        self.running -= 1

    @asynccontextmanager
    async def slot(self, kv_tokens: int) -> AsyncIterator[None]:
        await self._acquire()
        self.kv_tokens += kv_tokens
        try:
            yield
        finally:
            self.kv_tokens -= kv_tokens
            self._release()
