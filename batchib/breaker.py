"""A circuit breaker: stop burning attempts when the gateway is failing everything alike.

It watches the stream of attempts. A run of consecutive attempts that all failed with
the same server-side signature trips it:

- a server failure (5xx, timeout, no connection) after `window` attempts in a row that
  have lasted at least `min_duration_s` — a gateway that has answered 503 to everything
  for a minute will not recover for the next ten thousand requests;
- a 404 (model not found, wrong URL) after `window` attempts in a row: deterministic.

Any success resets it; failures that say nothing about the gateway (other 4xx) neither
extend nor reset a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from batchib.reply import Reply, Verdict

DEFAULT_WINDOW = 50
DEFAULT_MIN_DURATION_S = 60.0


@dataclass(frozen=True)
class Trip:
    signature: str
    attempts: int
    duration_s: float

    @property
    def message(self) -> str:
        return (
            f"circuit breaker: the last {self.attempts} attempts all failed with "
            f"{self.signature} over {self.duration_s:.0f} s; stopped sending, "
            "the rest is left for a rerun"
        )


def signature(reply: Reply) -> tuple[str, bool] | None:
    """(signature, deterministic) of a server-side failure, or None for anything else."""
    if reply.verdict is Verdict.SUCCESS:
        return None
    if reply.status is None:
        # Timeouts and refused or dropped connections are one symptom: no answer.
        return "no answer (timeouts, connection errors)", False
    if reply.status >= 500:
        return f"HTTP {reply.status} {reply.code}", False
    if reply.status == 404:
        return f"HTTP 404 {reply.code}", True
    return None


class CircuitBreaker:
    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        min_duration_s: float = DEFAULT_MIN_DURATION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._min_duration_s = min_duration_s
        self._clock = clock
        self._signature: str | None = None
        self._count = 0
        self._since = 0.0

    def record(self, reply: Reply) -> Trip | None:
        """Record one attempt's answer; a Trip when the run should stop."""
        if reply.verdict is Verdict.SUCCESS:
            self._signature, self._count = None, 0
            return None
        found = signature(reply)
        if found is None:
            return None
        name, deterministic = found
        now = self._clock()
        if name != self._signature:
            self._signature, self._count, self._since = name, 0, now
        self._count += 1
        duration = now - self._since
        if self._count >= self._window and (deterministic or duration >= self._min_duration_s):
            return Trip(name, self._count, duration)
        return None
