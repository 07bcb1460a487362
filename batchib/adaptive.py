"""The rate a run may send at, as a control loop (pure arithmetic, clock injected).

Each dimension (requests/s, tokens/s) has a ceiling — configured by the user, or
discovered from the gateway's `x-ratelimit-limit-*` headers — and a current rate at or
below it. A 429 lowers the current rate (multiplicative decrease, towards what actually
succeeded lately); quiet time raises it again (additive increase) up to the ceiling.
With no ceiling and no 429 yet, the rate is unlimited and only concurrency bounds it.

Like TCP, one 429 lowers the rate once per round trip: answers to requests sent before
the last decrease say nothing about the new rate, and are ignored. And like TCP's slow
start after a loss: 429s that keep coming right after a decrease halve the rate again
and again, but once they stop the rate grows back by a fifth a second up to where the
first, gentle decrease of that episode had put it, and only then additively. (Before,
it grew additively from the bottom: a one-second storm of 429s that took a run from 740
to 11 requests/s left it below 60 for ten minutes.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

BIN_S = 0.1
WINDOW_BINS = 20  # the meters look back 2 s
DECREASE_MIN_FACTOR = 0.5  # one step never cuts more than half
SUCCESS_MARGIN = 0.95  # settle a little below the rate that succeeded
HINT_MIN_FACTOR = 0.05  # a Retry-After hint never cuts more than 20x in one step
# Added each second after a decrease: 2% of the rate it settled at, or 1% of the
# ceiling when one is known, whichever is more (back from half in under a minute).
INCREASE_OF_RATE = 0.02
INCREASE_OF_CEILING = 0.01
# Below the rate an episode's first decrease settled at: this factor a second.
GROWTH_PER_S = 1.2


class RateMeter:
    """Amounts recorded over the last WINDOW_BINS * BIN_S seconds, in fixed bins."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._bins = [0.0] * WINDOW_BINS
        self._bin_index = math.floor(clock() / BIN_S)
        self._bin_ends = (self._bin_index + 1) * BIN_S

    def _advance(self) -> int:
        now = self._clock()
        if now < self._bin_ends:  # the usual case: still in the same bin
            return self._bin_index
        now_index = math.floor(now / BIN_S)
        stale = min(now_index - self._bin_index, WINDOW_BINS)
        for step in range(1, stale + 1):
            self._bins[(self._bin_index + step) % WINDOW_BINS] = 0.0
        self._bin_index = max(self._bin_index, now_index)
        self._bin_ends = (self._bin_index + 1) * BIN_S
        return self._bin_index

    def add(self, amount: float) -> None:
        # Called for every attempt (sent) and success, per dimension: one clock read
        # and a comparison in the usual case.
        self._bins[self._advance() % WINDOW_BINS] += amount

    def per_second(self) -> float:
        return self.total() / (WINDOW_BINS * BIN_S)

    def total(self) -> float:
        """The amounts recorded over the window."""
        self._advance()
        return sum(self._bins)


class AdaptiveRate:
    """The current rate of one dimension, in units per second (None: unlimited)."""

    def __init__(
        self,
        ceiling_per_s: float | None,
        clock: Callable[[], float],
        min_rate_per_s: float = 1 / 60,
    ) -> None:
        self._clock = clock
        self._min_rate_per_s = min_rate_per_s
        self.ceiling_per_s = ceiling_per_s
        self.rate_per_s: float | None = ceiling_per_s
        self.succeeded = RateMeter(clock)
        self.sent = RateMeter(clock)
        self.decreases = 0
        self._ignore_up_to_seq = -1
        self._increase_step = 0.0
        self._increased_at = clock()
        self._decreased_at = -math.inf
        # Where the last episode of 429s first settled: the rate grows back fast to it.
        self._recover_to = 0.0

    def discover_ceiling(self, ceiling_per_s: float) -> bool:
        """Adopt a ceiling the gateway announced; True if it changed (the caller then
        re-applies the rate, which is a no-op when the rate itself stayed)."""
        if self.ceiling_per_s == ceiling_per_s:
            return False
        self.ceiling_per_s = ceiling_per_s
        if self.rate_per_s is None or self.rate_per_s > ceiling_per_s or not self.decreases:
            self.rate_per_s = ceiling_per_s
        return True

    def on_rate_limited(self, seq: int, last_seq: int, hint_per_s: float | None = None) -> bool:
        """A 429 for the request numbered `seq`; `last_seq` is the newest number given
        out; `hint_per_s` the rate its Retry-After implies (its cost over the wait: the
        gateway refills at least that fast). True if the rate was lowered."""
        if seq <= self._ignore_up_to_seq:
            return False
        current = self.rate_per_s
        if current is None:
            # Unlimited so far: what went out lately is the rate that was too much.
            current = max(self.sent.per_second(), self._min_rate_per_s)
        now = self._clock()
        in_episode = self.decreases and now - self._decreased_at < WINDOW_BINS * BIN_S
        if in_episode:
            # 429s again right after a decrease: still far above the limit (e.g. after
            # the free burst of a full bucket), and the success meter still remembers
            # the burst. Halve, like TCP, until the 429s stop.
            lowered = current * DECREASE_MIN_FACTOR
        else:
            succeeded = self.succeeded.per_second() * SUCCESS_MARGIN
            lowered = max(current * DECREASE_MIN_FACTOR, min(current * SUCCESS_MARGIN, succeeded))
        if hint_per_s is not None:
            # The gateway refills no faster than the cost over the precise wait it asked
            # for: go there at once instead of halving step by step (at most 20x down).
            lowered = min(lowered, max(hint_per_s, current * HINT_MIN_FACTOR))
        self._decreased_at = now
        self.rate_per_s = max(lowered, self._min_rate_per_s)
        if not in_episode:
            self._recover_to = self.rate_per_s
            self._increase_step = max(
                self.rate_per_s * INCREASE_OF_RATE,
                (self.ceiling_per_s or 0.0) * INCREASE_OF_CEILING,
            )
        self._increased_at = self._clock()
        self._ignore_up_to_seq = last_seq
        self.decreases += 1
        return True

    def on_success(self, amount: float) -> bool:
        """Record a success; raise the rate for the time since the last change. True if
        the rate changed."""
        self.succeeded.add(amount)
        if self.rate_per_s is None or not self.decreases:
            return False
        ceiling = self.ceiling_per_s if self.ceiling_per_s is not None else math.inf
        if self.rate_per_s >= ceiling:
            return False
        now = self._clock()
        elapsed = now - self._increased_at
        if elapsed < BIN_S:
            return False
        self._increased_at = now
        if self.rate_per_s < self._recover_to:
            # (A long quiet spell reaches the recovery point anyway; the cap keeps the
            # power finite: 1.2 ** 3900 overflows a float.)
            grown = min(self._recover_to, self.rate_per_s * GROWTH_PER_S ** min(elapsed, 600.0))
        else:
            grown = self.rate_per_s + self._increase_step * elapsed
        self.rate_per_s = min(ceiling, grown)
        return True
