"""The progress bar on stderr (tqdm): done/total, rate, failures, retries, tokens."""

from __future__ import annotations

import time
from types import TracebackType

from tqdm import tqdm

from batchib.usage import RunStats

POSTFIX_EVERY_S = 0.5


class ProgressBar:
    """Follows a run's stats; cheap enough to call after every result."""

    def __init__(self, total: int | None) -> None:
        self._bar = tqdm(total=total, unit="req", dynamic_ncols=True, smoothing=0.1)
        self._postfix_at = 0.0

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
        self._bar.close()
