"""Writing to stderr when its reader may have gone.

A run's messages go to stderr. When whoever read them goes away (`batchib run … 2>&1 |
head -1`, a log shipper restarted), the next write raises BrokenPipeError. The run is
not at fault and goes on, its summary file holding everything; its exit status stays its
own. From then on stderr is /dev/null, so that nothing later (another message, Python's
last flush) fails on it.
"""

from __future__ import annotations

import os
import sys


def say(text: str) -> None:
    """Write `text` and a newline to stderr, now."""
    try:
        print(text, file=sys.stderr, flush=True)
    except BrokenPipeError:
        drop()


def drop() -> None:
    """Send whatever stderr still holds, and all that follows, to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stderr.fileno())
    finally:
        os.close(devnull)
