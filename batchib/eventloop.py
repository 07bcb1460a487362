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
# The buffer asyncio's socket transports receive into (selector_events: max_size).
ASYNCIO_RECV_BYTES = 256 * 1024


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


def heap_for_large_reads() -> None:
    """Have malloc serve asyncio's receive buffers from its heap, not with fresh mmaps.

    asyncio's socket transports receive into a new bytes object of ASYNCIO_RECV_BYTES
    for every read, shrunk to what arrived. glibc's malloc maps a block that large
    (over its first threshold, 128 KiB) with mmap, and raises the threshold only when
    such a block is freed whole, which a shrunk buffer never is: every read cost a map,
    a remap and an unmap of fresh pages. Measured on asyncio's loop with the input
    parsed in a second process, 20,000 requests made 20,000 of each and took 0.174 CPU
    ms per request; with this, 0.152 (parsing on the loop, its 256 KiB reads had raised
    the threshold by chance). One large block freed whole raises it for good. uvloop
    reads into a buffer of its own and does not need it; other allocators ignore it."""
    bytearray(2 * ASYNCIO_RECV_BYTES)  # allocated and freed at once


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop :func:`loop_factory` picks."""
    heap_for_large_reads()
    with collections_for_a_run(), asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
