"""Request bodies onto the wire at once while the event loop has time to spare.

On Python 3.11 aiohttp writes a request's body from a task that first runs in the next
loop iteration (3.12+ starts that task eagerly, inside ``session.post()``). Deferred, the
bodies of all the requests started in one iteration leave together after it. When the
loop is saturated (a fast gateway) that is cheaper: the server is woken once for a
burst. When the loop has time to spare (a gateway that takes a while) it only adds
latency, and at a fixed concurrency latency is throughput: against a 20 ms server at
-c 64 the requests travelled in rounds and a run reached 82% of 64 / 20 ms.

So while the loop thread is idle for a good part of the time, the task factory here
takes the first step of aiohttp's body-writing coroutine on the spot, as 3.12 does; what
does not finish in that step (a large body meeting back-pressure) goes on as a task.
Every other task is created as usual. Before each such write the runner records the
answers settled so far (``before_write``), keeping its promise that a record reaches the
kernel before any request started after its answer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
import time
import types
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

from aiohttp.client_reqrep import ClientRequest

# Where aiohttp starts the body-writing task eagerly itself there is nothing to do.
NEEDED = sys.version_info < (3, 12)

# The coroutine taken eagerly: aiohttp's body writer, known by its code object.
WRITE_BYTES_CODE = ClientRequest.write_bytes.__code__

# Utilisation of the loop thread above which eager writes stop, and below which they
# start again: apart, so the mode does not flip each window. Measured per 0.1 s window
# in 20k-request runs: saturated (instant server) 0.95-1.02; the same on a machine
# crowded by two busy processes 0.81-1.05; eager against a 20 ms server 0.36-1.00,
# median 0.62 (a slow window now and then); deferred there, about 0.5.
BUSY_ABOVE = 0.92
IDLE_BELOW = 0.65
WINDOW_S = 0.1


SCHEDSTAT = "/proc/thread-self/schedstat"


def thread_usage() -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of the calling thread so far.

    Linux's schedstat has both; elsewhere the wait is taken as none. Without the wait a
    saturated loop on a crowded machine looked idle (it waited, but for a CPU, not for
    the network): measured with two busy processes on this 2-core machine, 17,831 of
    20,000 writes went eager against an instant server."""
    try:
        with open(SCHEDSTAT, "rb") as stat:
            on_cpu_ns, waiting_ns = stat.read().split()[:2]
        return int(on_cpu_ns) / 1e9, int(waiting_ns) / 1e9
    except (OSError, ValueError):
        return time.thread_time(), 0.0


class SpareTime:
    """Whether the loop thread has had time to spare lately: its CPU time over the time
    it could have run (wall time less the time it waited for a CPU), in windows of at
    least WINDOW_S, judged with hysteresis.

    It starts with no (aiohttp's default, deferred writes): a run starts busy, and
    starting eager measured 3-4% slower against an instant server even though the first
    window switched it off. Against a 20 ms server the first window switches it on.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        usage: Callable[[], tuple[float, float]] = thread_usage,
    ) -> None:
        self._clock = clock
        self._usage = usage
        self._window_start = clock()
        self._usage_start = usage()
        self.eager = False
        # Told of each change of mode (eager_writes installs the task factory only
        # while eager, so that a busy loop creates its tasks at full speed).
        self.on_change: Callable[[bool], None] | None = None

    def update(self) -> None:
        """Called now and then on the loop thread (after each batch of answers)."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        usage = self._usage()
        on_cpu = usage[0] - self._usage_start[0]
        could_run = elapsed - (usage[1] - self._usage_start[1])
        busy = on_cpu / could_run if could_run > 0 else 1.0
        self._window_start, self._usage_start = now, usage
        flip = busy > BUSY_ABOVE if self.eager else busy < IDLE_BELOW
        if flip:
            self.eager = not self.eager
            if self.on_change is not None:
                self.on_change(self.eager)


TaskFactory = Callable[..., "asyncio.Future[Any]"]


def task_factory(eager: Callable[[], bool], before_write: Callable[[], bool]) -> TaskFactory:
    """A loop task factory that starts aiohttp's body writes eagerly while ``eager()``,
    once ``before_write()`` has said yes (it records what it must first); every other
    task as usual."""

    def create(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        if getattr(coro, "cr_code", None) is WRITE_BYTES_CODE and eager() and before_write():
            return start_eagerly(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    return create


class _LoopWrites:
    """The runs going on one loop, and the one task factory they share: a body written
    eagerly leaves once every run on the loop has recorded the answers it holds, and
    only while every run's loop thread has time to spare (they share the thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.runs: list[tuple[SpareTime, Callable[[], bool]]] = []
        self.factory = task_factory(self.eager, self.before_write)

    def eager(self) -> bool:
        return bool(self.runs) and all(spare.eager for spare, _ in self.runs)

    def before_write(self) -> bool:
        # Every run records, even after one has failed: then the write is not eager.
        return all([record() for _, record in list(self.runs)])

    def switch(self, _: bool = False) -> None:
        """The factory on the loop exactly while eager (unless someone else's is)."""
        if self.loop.get_task_factory() in (None, self.factory):
            self.loop.set_task_factory(self.factory if self.eager() else None)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWrites] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def eager_writes(spare: SpareTime, before_write: Callable[[], bool]) -> Iterator[None]:
    """Eager body writes on the running loop for the duration, whenever ``spare.eager``;
    ``before_write()`` records the run's settled answers and says whether the write may
    go eagerly. Only where it is needed (Python 3.11) and the loop has no task factory
    of its own. Off, the loop creates tasks in C: the factory, a Python call for every
    task, measured 0.6% of a run's CPU against an instant server."""
    loop = asyncio.get_running_loop()
    writes = _LOOPS.get(loop)
    if not NEEDED or (writes is None and loop.get_task_factory() is not None):
        yield
        return
    if writes is None:
        writes = _LOOPS[loop] = _LoopWrites(loop)
    run = (spare, before_write)
    writes.runs.append(run)
    spare.on_change = writes.switch
    writes.switch()
    try:
        yield
    finally:
        spare.on_change = None
        writes.runs.remove(run)
        writes.switch()
        if not writes.runs:
            del _LOOPS[loop]


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
) -> asyncio.Future[Any]:
    """Run `coro`'s first step now, in its own copy of the context. Finished: a done
    future with its outcome. Waiting on something: a task that goes on from there
    (Python 3.12's eager_start, by hand; unlike it, the creating task stays the current
    task during that step, which aiohttp's body writer does not look at)."""
    context = kwargs.pop("context", None) or contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[Any] = loop.create_future()
        done.set_result(stop.value)
        return done
    except asyncio.CancelledError:
        cancelled: asyncio.Future[Any] = loop.create_future()
        cancelled.cancel()
        return cancelled
    except Exception as exc:  # handed on in the future, as a task would
        failed: asyncio.Future[Any] = loop.create_future()
        failed.set_exception(exc)
        return failed
    task = asyncio.Task(_resume(coro, waiting_on), loop=loop, context=context, **kwargs)
    task.add_done_callback(functools.partial(_end, coro))
    return task


def _end(coro: Coroutine[Any, Any, Any], task: asyncio.Future[Any]) -> None:
    """A task cancelled before its first step never ran _resume: the coroutine is still
    where its first step left it. It gets the cancellation there, as it would have, so
    its clean-up runs (aiohttp closes the connection)."""
    if getattr(coro, "cr_frame", None) is None:  # finished, the usual case
        return
    try:
        coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        pass
    finally:
        coro.close()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """The rest of `coro`, which has taken its first step and waits on `waiting_on`:
    the task waits on the same, and hands each outcome (or exception) on."""
    while True:
        try:
            outcome = yield waiting_on
        except BaseException as exc:  # cancellation included: the coroutine decides
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting_on = coro.send(outcome)
            except StopIteration as stop:
                return stop.value
