"""The event loop a run goes on: uvloop when it is installed, else asyncio's own.

uvloop (``pip install 'batchib[fast]'``) is a drop-in loop written in C; `make bench`
measures what it buys per request. BATCHIB_EVENT_LOOP=asyncio turns it off.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
