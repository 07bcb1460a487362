"""The progress bar on stderr (tqdm): done/total, rate, failures, retries, tokens.

The total is counted by a thread while the run goes: counting a large input before the
first request delayed the run by a whole read of it, and held up Ctrl-C meanwhile (the
loop handles signals only between callbacks). Until it is known, the bar counts without
one; with --shard it stays unknown, as only the shard's lines are done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from types import TracebackType

from tqdm import tqdm

from batchib.source import count_lines
from batchib.usage import RunStats

POSTFIX_EVERY_S = 0.5


class ProgressBar:
    """Follows a run's stats; cheap enough to call after every result."""

    def __init__(self, total: int | None) -> None:
        self._bar = tqdm(total=total, unit="req", dynamic_ncols=True, smoothing=0.1)
        self._postfix_at = 0.0
        self._closed = False

    @property
    def total(self) -> int | None:
        total: int | None = self._bar.total
        return total

    def count_total(self, paths: Iterable[str]) -> asyncio.Future[int | None]:
        """Count the inputs' lines in a thread and give the bar its total once known
        (None for stdin or an input that cannot be read: the run will say why). Call
        on the running loop; the future is done when the total is set."""
        loop = asyncio.get_running_loop()
        counted: asyncio.Future[int | None] = loop.create_future()
        paths = list(paths)

        def count() -> None:
            try:
                total = count_lines(paths)
            except OSError:
                total = None
            with contextlib.suppress(RuntimeError):  # the run, and its loop, ended first
                loop.call_soon_threadsafe(self._set_total, total, counted)

        threading.Thread(target=count, name="batchib-count", daemon=True).start()
        return counted

    def _set_total(self, total: int | None, counted: asyncio.Future[int | None]) -> None:
        if total is not None and not self._closed:
            self._bar.total = total
            self._bar.refresh()
        if not counted.done():
            counted.set_result(total)

    def update(self, stats: RunStats) -> None:
        done = stats.finished + stats.invalid + stats.skipped
        now = time.monotonic()
        if now - self._postfix_at >= POSTFIX_EVERY_S:
            self._postfix_at = now
            self._bar.set_postfix_str(
                f"failed={stats.failed + stats.invalid} retries={stats.retries} "
                f"tokens={stats.total.total_tokens}"
                + ("" if stats.spend is None else f" spent=${stats.spend.usd:.4f}"),
                refresh=False,
            )
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed = True
        self._bar.close()
