"""Dynamic batching that closes a batch when the drawer is free to draw it.

Ray Serve's ``serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request even
while the replica is still drawing the previous one, then queues it: under load a replica draws
many small batches (2-3 images at ``--max-batch 8`` and 16 concurrent requests on the toy bundle)
instead of a few full ones. Here a batch is taken when the drawer is free: everything that queued
while it drew (up to ``max_batch``) goes at once, and only an idle drawer waits up to ``wait_s``
for a first request's company.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Gathers items submitted concurrently into calls of ``draw`` of at most ``max_batch`` items.

    Args:
        draw: an async callable from a list of items to a list of results, in order.
        max_batch: the most items in one call.
        wait_s: how long an idle drawer waits for a batch to fill before drawing what it has.
    """

    def __init__(self, draw: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch: int, wait_s: float):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.draw = draw
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: deque[tuple[T, asyncio.Future]] = deque()
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        """The result of ``item``, drawn in a batch with whatever else is queued."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())
        future = asyncio.get_running_loop().create_future()
        self.queue.append((item, future))
        self.arrived.set()
        return await future

    async def run(self) -> None:
        idle = True  # nothing queued while drawing: the first arrival may wait for company
        while True:
            while not self.queue:
                idle = True
                self.arrived.clear()
                await self.arrived.wait()
            if idle:
                await self.fill()
            idle = False
            batch = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
            batch = [(item, f) for item, f in batch if not f.cancelled()]  # a caller that gave up
            if not batch:
                continue
            try:
                results = await self.draw([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} items gave {len(results)} results")
            except BaseException as exc:  # every caller of the batch gets the error; the loop goes on
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc if isinstance(exc, Exception) else RuntimeError(f"drawing stopped: {type(exc).__name__}"))
                if not isinstance(exc, Exception):  # cancelled (the replica shutting down): stop, no caller left hanging
                    raise
            else:
                for (_, f), result in zip(batch, results):
                    if not f.done():
                        f.set_result(result)

    async def fill(self) -> None:
        """Wait up to ``wait_s`` for the queue to reach ``max_batch``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(self.queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return
