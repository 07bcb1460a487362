"""Eager body writes (Python 3.11): when they happen, and the task-by-hand machinery."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, cast

import pytest
from aiohttp.client_reqrep import ClientRequest

from batchib.eagerwrite import (
    BUSY_ABOVE,
    IDLE_BELOW,
    WINDOW_S,
    SpareTime,
    eager_writes,
    start_eagerly,
    task_factory,
    thread_usage,
)

# A little over a window, so that float rounding cannot leave a window unfinished.
WINDOW = WINDOW_S * 1.01


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0
        self.waiting = 1.0  # for a CPU

    def spend(self, wall_s: float, busy: float, starved: float = 0.0) -> None:
        """`wall_s` seconds: a `starved` share waiting for a CPU, a `busy` share of the
        rest on one."""
        self.wall += wall_s
        self.waiting += wall_s * starved
        self.cpu += wall_s * (1 - starved) * busy


def spare_time(clocks: Clocks) -> SpareTime:
    return SpareTime(clock=lambda: clocks.wall, usage=lambda: (clocks.cpu, clocks.waiting))


def test_writes_start_deferred_then_go_eager_once_the_loop_has_time_to_spare() -> None:
    clocks = Clocks()
    spare = spare_time(clocks)
    assert not spare.eager
    clocks.spend(WINDOW, IDLE_BELOW - 0.05)
    spare.update()
    assert spare.eager


def test_a_busy_loop_stops_eager_writes_and_only_a_clearly_idle_one_restarts_them() -> None:
    clocks = Clocks()
    spare = spare_time(clocks)
    seen = []
    for busy in (0.2, BUSY_ABOVE - 0.05, BUSY_ABOVE + 0.05, IDLE_BELOW + 0.05, 0.3):
        clocks.spend(WINDOW, busy)
        spare.update()
        seen.append(spare.eager)
    # Between the two thresholds the mode stays what it was, either way.
    assert seen == [True, True, False, False, True]


def test_utilisation_is_judged_over_a_whole_window_not_each_call() -> None:
    clocks = Clocks()
    spare = spare_time(clocks)
    clocks.spend(WINDOW / 2, 0.0)  # idle, but the window is not over
    spare.update()
    assert not spare.eager
    clocks.spend(WINDOW / 2, 1.0)  # the whole window: 50% busy
    spare.update()
    assert spare.eager


def test_a_loop_starved_of_cpu_is_busy_not_idle() -> None:
    # On a crowded machine a saturated loop spends much of its time waiting for a CPU:
    # that is not time to spare, and eager writes would only cost it more.
    clocks = Clocks()
    spare = spare_time(clocks)
    clocks.spend(WINDOW, 1.0, starved=0.5)
    spare.update()
    assert not spare.eager
    clocks.spend(WINDOW, 0.5, starved=0.5)  # idle half the time it could run
    spare.update()
    assert spare.eager


def test_the_thread_usage_of_this_thread_grows_as_it_works() -> None:
    before = thread_usage()
    sum(range(2_000_000))
    after = thread_usage()
    assert after[0] > before[0]
    assert after[1] >= before[1] >= 0


async def two_waits(first: asyncio.Future[int], second: asyncio.Future[int]) -> int:
    return await first + await second


def test_a_coroutine_that_finishes_in_its_first_step_gives_a_done_future() -> None:
    async def instant() -> str:
        return "written"

    async def go() -> asyncio.Future[Any]:
        return start_eagerly(asyncio.get_running_loop(), instant())

    future = asyncio.run(go())
    assert future.done() and future.result() == "written"


def test_a_coroutine_that_fails_in_its_first_step_gives_a_failed_future() -> None:
    async def failing() -> None:
        raise OSError("broken pipe")

    async def go() -> asyncio.Future[Any]:
        return start_eagerly(asyncio.get_running_loop(), failing())

    future = asyncio.run(go())
    assert isinstance(future.exception(), OSError)


def test_a_coroutine_that_waits_goes_on_as_a_task_from_where_it_stopped() -> None:
    async def go() -> int:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        task = start_eagerly(loop, two_waits(first, second))
        assert isinstance(task, asyncio.Task) and not task.done()
        first.set_result(2)
        await asyncio.sleep(0)
        assert not task.done()
        second.set_result(40)
        return await task

    assert asyncio.run(go()) == 42


def test_cancelling_the_task_reaches_the_coroutine_wherever_it_is() -> None:
    seen: list[str] = []

    async def writer(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except BaseException as exc:
            seen.append(type(exc).__name__)  # then aiohttp closes the connection
            raise

    async def go(wait_first: bool) -> None:
        loop = asyncio.get_running_loop()
        task = start_eagerly(loop, writer(loop.create_future()))
        if wait_first:  # cancelled while waiting, or before its first step as a task
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for wait_first in (True, False):
        seen.clear()
        asyncio.run(go(wait_first))
        assert seen == ["CancelledError"]


def test_a_coroutine_cancelled_in_its_first_step_gives_a_cancelled_future() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def go() -> asyncio.Future[Any]:
        return start_eagerly(asyncio.get_running_loop(), cancelled())

    assert asyncio.run(go()).cancelled()


def test_the_first_step_runs_in_a_copy_of_the_context() -> None:
    # As a task's would: what the coroutine sets does not leak into its creator.
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="")

    async def setter() -> None:
        variable.set("set by the writer")
        await asyncio.sleep(0)
        assert variable.get() == "set by the writer"

    async def go() -> str:
        variable.set("the creator's")
        task = start_eagerly(asyncio.get_running_loop(), setter())
        seen_at_once = variable.get()
        await task
        return seen_at_once

    assert asyncio.run(go()) == "the creator's"


def unstarted_body_writer() -> Coroutine[Any, Any, None]:
    """aiohttp's body-writing coroutine, created and never run (its arguments unused)."""
    return ClientRequest.write_bytes(cast(ClientRequest, None), cast(Any, None), cast(Any, None))


def test_the_factory_creates_every_other_coroutine_as_an_ordinary_task() -> None:
    async def go() -> tuple[list[str], str]:
        calls: list[str] = []

        async def other() -> str:
            calls.append("ran")
            return "other"

        def record() -> bool:
            calls.append("recorded")
            return True

        loop = asyncio.get_running_loop()
        loop.set_task_factory(task_factory(lambda: True, record))
        task = asyncio.create_task(other())
        at_creation = list(calls)  # an ordinary task first runs in the next iteration
        assert isinstance(task, asyncio.Task)
        return at_creation, await task

    assert asyncio.run(go()) == ([], "other")


@pytest.mark.parametrize("eager, recorded", [(False, True), (True, False)])
def test_a_body_writer_goes_as_an_ordinary_task_unless_eager_and_recorded(
    eager: bool, recorded: bool
) -> None:
    # Not eager, or the run could not record what it holds (its output failed): the
    # body leaves from its own task in the next iteration, as aiohttp does on 3.11.
    async def go() -> list[str]:
        calls: list[str] = []

        def record() -> bool:
            calls.append("recorded")
            return recorded

        loop = asyncio.get_running_loop()
        loop.set_task_factory(task_factory(lambda: eager, record))
        task = asyncio.create_task(unstarted_body_writer())
        assert isinstance(task, asyncio.Task) and not task.done()
        task.cancel()  # never started: nothing of aiohttp's runs
        with pytest.raises(asyncio.CancelledError):
            await task
        return calls

    assert asyncio.run(go()) == ([] if not eager else ["recorded"])


def test_the_factory_is_on_the_loop_only_while_writes_are_eager() -> None:
    clocks = Clocks()
    spare = spare_time(clocks)

    async def go() -> list[bool]:
        loop = asyncio.get_running_loop()
        installed = []
        with eager_writes(spare, lambda: True):
            installed.append(loop.get_task_factory() is not None)
            for busy in (0.1, 1.0, 0.1):
                clocks.spend(WINDOW, busy)
                spare.update()
                installed.append(loop.get_task_factory() is not None)
        installed.append(loop.get_task_factory() is not None)
        return installed

    # Deferred at first (no factory), eager, busy again, eager, and gone at the end.
    assert asyncio.run(go()) == [False, True, False, True, False]
    assert spare.on_change is None


def test_a_loop_with_a_task_factory_of_its_own_is_left_alone() -> None:
    clocks = Clocks()
    spare = spare_time(clocks)

    def own_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def go() -> bool:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(own_factory)
        with eager_writes(spare, lambda: True):
            clocks.spend(WINDOW, 0.1)
            spare.update()
            return loop.get_task_factory() is own_factory

    assert asyncio.run(go())
