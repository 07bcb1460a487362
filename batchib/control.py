"""Stopping a run from outside (signals) or inside (a fatal answer from the gateway).

A stop is a decision, not an exception: the pipeline stops admitting work, lets what is
in flight finish (for an interrupt, up to a grace period), writes what finished, and
reports why it stopped. Whatever was not sent is left for a rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_BUDGET = 4
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run has the output; try again later
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_HUNG_UP = 129  # SIGHUP: the terminal closed


@dataclass(frozen=True)
class Stop:
    """Why a run stopped early."""

    code: str  # e.g. "invalid_api_key", "interrupted"
    message: str
    exit_status: int
    # An interrupt gives requests in flight a grace period and then cancels them; a
    # fatal answer lets them finish (they are already paid for).
    cancels_in_flight: bool


class RunControl:
    """Shared by the pipeline and whoever may stop it. The first stop wins; asking
    again to stop an interrupted run cancels what is in flight at once."""

    def __init__(self) -> None:
        self.stop: Stop | None = None
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.stop is not None

    def request_stop(self, stop: Stop) -> None:
        if self.stop is None:
            self.stop = stop
            self._stopped.set()
        elif stop.cancels_in_flight:
            # A second interrupt, or an interrupt after a fatal stop: stop now, and
            # say so in the exit status.
            if not self.stop.cancels_in_flight:
                self.stop = stop
            self._hurry.set()

    def interrupt(self, exit_status: int = EXIT_INTERRUPTED) -> None:
        """What a SIGINT (130), SIGTERM (143) or SIGHUP (129) handler calls."""
        name = {EXIT_TERMINATED: "SIGTERM", EXIT_HUNG_UP: "SIGHUP"}.get(exit_status, "SIGINT")
        self.request_stop(
            Stop(
                code="interrupted",
                message=f"interrupted by {name}: requests not sent are left for a rerun",
                exit_status=exit_status,
                cancels_in_flight=True,
            )
        )

    async def wait_stopped(self) -> Stop:
        await self._stopped.wait()
        assert self.stop is not None
        return self.stop

    async def unless_stopped(self, work: Awaitable[T]) -> asyncio.Future[T] | None:
        """`work`, done, or None if the run stops first; it is then cancelled (a read in
        a thread is left to end on its own, its outcome dropped). For the waits that
        must not keep a stopped run alive: a silent stdin, a slowed bucket, a
        Retry-After."""
        future = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.wait_stopped())
        try:
            await asyncio.wait([future, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not future.done():
                future.cancel()
        if future.cancelled() or not future.done():
            return None
        return future

    async def wait_hurry(self, timeout_s: float) -> None:
        """Return after timeout_s (inf: never), or sooner if asked to stop again."""
        if timeout_s == float("inf"):
            await self._hurry.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), timeout=timeout_s)
