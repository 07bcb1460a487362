"""The event loop a run goes on: uvloop when it is installed, else asyncio's own.

uvloop (``pip install 'batchib[fast]'``) is a drop-in loop written in C; `make bench`
measures what it buys per request. BATCHIB_EVENT_LOOP=asyncio turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# Objects allocated (net) between young-generation collections during a run; Python's
# default is 700. See :func:`collections_for_a_run`.
YOUNG_COLLECTION_EVERY = 10_000


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when wanted and installed, else None (asyncio's default)."""
    if os.environ.get("BATCHIB_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def running_loop_name() -> str | None:
    """ "uvloop" or "asyncio": the running loop (a library caller picks its own); None
    outside one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


@contextlib.contextmanager
def collections_for_a_run() -> Iterator[None]:
    """Fewer and cheaper garbage collections while a run goes.

    Each request allocates a few dozen containers (the parsed answer, its record, the
    client's objects), so at the default threshold a young collection ran every ~20
    requests, and every tenth of those also walked the ~100k objects that importing
    aiohttp and click leaves behind. Those are frozen (never walked again, as in
    Instagram's gc.freeze) and young collections come ~14x less often: measured at
    about 3 µs of CPU per request. Cyclic garbage still goes, only in larger batches.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop :func:`loop_factory` picks."""
    with collections_for_a_run(), asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
