"""The order records reach the results file: as they finish (the default), or in input
order (`--order input`) through a bounded reorder window.

In input order, a record waits in memory until every earlier line's record is written.
The window bounds that memory: the reader does not admit line N + window until line N
is written, so one slow request (retrying for minutes) stalls admission instead of
letting the buffer grow. How often the window was full is reported in the summary.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Protocol


class RecordSink(Protocol):
    """Where records go. A sink may also have ``flush()``, called at the end of each
    batch of records, to hand them on at once (the results file: to the kernel)."""

    def write(self, record: dict[str, Any]) -> None: ...


def _flush(sink: RecordSink) -> None:
    flush = getattr(sink, "flush", None)
    if flush is not None:
        flush()


class CompletionOrder:
    """Records are written the moment they are known."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self._seq = itertools.count()
        self.window_full = 0

    def admit_now(self) -> int | None:
        """The next line's number (never None: nothing bounds completion order)."""
        return next(self._seq)

    async def admit(self) -> int:
        return next(self._seq)

    def done(self, seq: int, record: dict[str, Any] | None) -> None:
        if record is not None:
            self._sink.write(record)

    def flush(self) -> None:
        _flush(self._sink)

    def finish(self) -> None:
        pass


class InputOrder:
    """Records are written in the order their lines were read."""

    def __init__(self, sink: RecordSink, window: int) -> None:
        self._sink = sink
        self._window = window
        self._issued = 0  # the next line's number
        self._next = 0  # the first line whose record is not written yet
        self._pending: dict[int, dict[str, Any] | None] = {}
        self._advanced = asyncio.Event()
        self.window_full = 0

    def admit_now(self) -> int | None:
        """The next line's number, or None while the window is full (:meth:`admit`
        waits for room)."""
        seq = self._issued
        if seq >= self._next + self._window:
            return None
        self._issued += 1
        return seq

    async def admit(self) -> int:
        seq = self.admit_now()
        if seq is None:
            self.window_full += 1
            while (seq := self.admit_now()) is None:
                self._advanced.clear()
                await self._advanced.wait()
        return seq

    def done(self, seq: int, record: dict[str, Any] | None) -> None:
        """Line `seq` is settled (`record` None: nothing to write for it)."""
        self._pending[seq] = record
        if seq != self._next:
            return
        while self._next in self._pending:
            ready = self._pending.pop(self._next)
            if ready is not None:
                self._sink.write(ready)
            self._next += 1
        self._advanced.set()

    def flush(self) -> None:
        _flush(self._sink)

    def finish(self) -> None:
        """After a stop, lines cancelled in flight leave gaps: write what finished anyway
        (it was paid for), still in input order."""
        for seq in sorted(self._pending):
            record = self._pending.pop(seq)
            if record is not None:
                self._sink.write(record)
