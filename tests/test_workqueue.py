"""The queue between the producer and the workers: FIFO, and one wait per slice."""

from __future__ import annotations

import asyncio

import pytest

from batchib.workqueue import WorkQueue


def test_entries_come_out_in_the_order_they_went_in() -> None:
    async def go() -> list[int]:
        queue: WorkQueue[int] = WorkQueue(4)
        for n in range(10):  # past the bound: put never waits
            queue.put(n)
        return [await queue.get() for _ in range(10)]

    assert asyncio.run(go()) == list(range(10))


def test_below_the_bound_there_is_room_at_once() -> None:
    async def go() -> None:
        queue: WorkQueue[int] = WorkQueue(4)
        for n in range(3):
            queue.put(n)
        await asyncio.wait_for(queue.wait_for_room(), timeout=1)

    asyncio.run(go())


def test_at_the_bound_the_producer_waits_until_the_queue_is_down_to_half() -> None:
    async def go() -> int | None:
        queue: WorkQueue[int] = WorkQueue(8)
        for n in range(10):
            queue.put(n)
        waiter = asyncio.create_task(queue.wait_for_room())
        for _ in range(10):
            await queue.get()
            for _ in range(3):  # turns enough for a woken waiter to finish
                await asyncio.sleep(0)
            if waiter.done():
                return queue.qsize()
        return None

    # Not at 9 (below the bound already), nor 8..5: once, at half the bound.
    assert asyncio.run(go()) == 4


def test_a_worker_waiting_on_an_empty_queue_gets_the_next_entry() -> None:
    async def go() -> str:
        queue: WorkQueue[str] = WorkQueue(2)
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not getter.done()
        queue.put("next")
        return await asyncio.wait_for(getter, timeout=1)

    assert asyncio.run(go()) == "next"


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WorkQueue(0)


def test_a_worker_cancelled_after_its_wake_up_passes_the_entry_on() -> None:
    async def go() -> str:
        queue: WorkQueue[str] = WorkQueue(2)
        first = asyncio.create_task(queue.get())
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0)  # both wait
        queue.put("only")  # wakes the first...
        first.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(first, return_exceptions=True)
        return await asyncio.wait_for(second, timeout=1)

    assert asyncio.run(go()) == "only"


def test_a_cancelled_waiting_worker_leaves_no_trace() -> None:
    async def go() -> tuple[int, list[str]]:
        queue: WorkQueue[str] = WorkQueue(2)
        gone = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        waiting = len(queue._getters)
        queue.put("a")
        queue.put("b")
        return waiting, [await asyncio.wait_for(queue.get(), timeout=1) for _ in range(2)]

    assert asyncio.run(go()) == (0, ["a", "b"])


def test_an_entry_put_while_a_cancelled_worker_is_still_queued_goes_to_the_next() -> None:
    async def go() -> str:
        queue: WorkQueue[str] = WorkQueue(2)
        gone = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0)  # both wait, `gone` first
        gone.cancel()  # its future is cancelled, its task has not run yet
        queue.put("next")  # must skip `gone` and wake `waiting`
        await asyncio.gather(gone, return_exceptions=True)
        return await asyncio.wait_for(waiting, timeout=1)

    assert asyncio.run(go()) == "next"
