"""Messages for logs that nobody watches live (cron): a start line, a progress line every
N seconds, and the end — as text, or one JSON object per event (`--log-format json`).
All on stderr; built from counts and settings only, so no secret can reach them."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO

import orjson

from batchib.stderr import say
from batchib.summary import utc_now
from batchib.usage import RunStats


def json_line(event: str, fields: dict[str, Any]) -> str:
    """One event as `--log-format json` writes it."""
    return orjson.dumps({"event": event, "time": utc_now(), **fields}).decode()


class EventLog:
    def __init__(self, log_format: str, every_s: float, stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._every_s = every_s
        self._stream = stream  # None: stderr, whose reader may go away
        self._stats: RunStats | None = None
        self._started = time.monotonic()

    def _emit(self, event: str, text: str, fields: dict[str, Any]) -> None:
        line = json_line(event, fields) if self._json else f"batchib: {text}"
        if self._stream is None:
            say(line)
        else:
            print(line, file=self._stream, flush=True)

    def start(self, fields: dict[str, Any]) -> None:
        self._started = time.monotonic()
        inputs = ", ".join(fields["inputs"])
        self._emit("start", f"started: {inputs} -> {fields['output']}", fields)

    def update(self, stats: RunStats) -> None:
        self._stats = stats

    def progress(self) -> None:
        stats = self._stats or RunStats()
        elapsed = time.monotonic() - self._started
        fields = {
            "lines": stats.read,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "invalid_lines": stats.invalid,
            "skipped_already_done": stats.skipped,
            "retries": stats.retries,
            "rate_limited_429": stats.rate_limited,
            "total_tokens": stats.total.total_tokens,
            "cost_usd": None if stats.spend is None else round(stats.spend.usd, 6),
            "requests_per_s": round(stats.finished / elapsed, 2) if elapsed > 0 else 0.0,
            "elapsed_s": round(elapsed, 1),
        }
        self._emit(
            "progress",
            f"{stats.succeeded} succeeded, {stats.failed} failed, {stats.invalid} invalid, "
            f"{stats.skipped} already done; {stats.retries} retries "
            f"({stats.rate_limited} rate-limited); {stats.total.total_tokens} tokens; "
            f"{fields['requests_per_s']} req/s",
            fields,
        )

    async def report_periodically(self) -> None:
        """Until cancelled: a progress event every `every_s` seconds."""
        if self._every_s <= 0:
            return
        while True:
            await asyncio.sleep(self._every_s)
            self.progress()

    def end(self, summary: dict[str, Any]) -> None:
        self._emit("end", f"{summary['status']} (exit {summary['exit_status']})", summary)
