"""The serving replica's batcher (``tiue_export.serve.batching``): no Ray, plain asyncio."""

from __future__ import annotations

import asyncio

import pytest

from tiue_export.serve.batching import Batcher


def run(coro, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def test_what_queues_while_drawing_is_the_next_batch():
    """A batch closes when the drawer is free: the items that queued meanwhile go together (up to
    max_batch), in order, each caller getting its own result."""

    async def main():
        batches, gate = [], asyncio.Event()

        async def draw(items):
            batches.append(list(items))
            if len(batches) == 1:
                await gate.wait()  # the drawer is busy while b..e arrive
            return [f"{x}!" for x in items]

        batcher = Batcher(draw, max_batch=3, wait_s=0.0)
        first = asyncio.create_task(batcher.submit("a"))
        while not batches:
            await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.submit(x)) for x in "bcde"]
        await asyncio.sleep(0)
        gate.set()
        return batches, await first, await asyncio.gather(*rest)

    batches, first, rest = run(main())
    assert batches == [["a"], ["b", "c", "d"], ["e"]]
    assert first == "a!" and rest == ["b!", "c!", "d!", "e!"]


def test_an_idle_drawer_waits_for_company_until_the_batch_is_full():
    async def main():
        batches = []

        async def draw(items):
            batches.append(list(items))
            return items

        batcher = Batcher(draw, max_batch=2, wait_s=60.0)  # full at 2: no waiting out the minute
        a = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)
        return await asyncio.gather(a, batcher.submit(2)), batches

    results, batches = run(main())
    assert results == [1, 2] and batches == [[1, 2]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_is_drawn():
    async def main():
        calls = []

        async def draw(items):
            calls.append(list(items))
            if len(calls) == 1:
                raise RuntimeError("non-finite output")
            return items

        batcher = Batcher(draw, max_batch=4, wait_s=0.05)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        return failed, await batcher.submit(3)

    failed, after = run(main())
    assert [str(e) for e in failed] == ["non-finite output"] * 2 and after == 3


def test_a_caller_that_gave_up_is_not_drawn():
    async def main():
        batches, gate = [], asyncio.Event()

        async def draw(items):
            batches.append(list(items))
            if len(batches) == 1:
                await gate.wait()
            return items

        batcher = Batcher(draw, max_batch=4, wait_s=0.0)
        first = asyncio.create_task(batcher.submit("a"))
        while not batches:
            await asyncio.sleep(0)
        gone, kept = asyncio.create_task(batcher.submit("gone")), asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        return await first, await kept, batches

    first, kept, batches = run(main())
    assert (first, kept) == ("a", "kept") and batches == [["a"], ["kept"]]


def test_a_batch_must_hold_one_item():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(lambda items: items, max_batch=0, wait_s=0.0)


def test_callers_of_a_cancelled_draw_get_an_error_not_a_hang():
    async def main():
        started = asyncio.Event()

        async def draw(items):
            started.set()
            await asyncio.Event().wait()  # never returns: cancelled below, as at a replica's shutdown

        batcher = Batcher(draw, max_batch=2, wait_s=0.0)
        caller = asyncio.create_task(batcher.submit("a"))
        await started.wait()
        batcher.task.cancel()
        return await asyncio.gather(caller, return_exceptions=True)

    (error,) = run(main())
    assert isinstance(error, RuntimeError) and "drawing stopped" in str(error)
