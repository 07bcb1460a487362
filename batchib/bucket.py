"""The leaky bucket that enforces one limit: aiolimiter's, holding a tenth of a second.

`AsyncLimiter(rpm, 60)` would let a whole minute through at once, and providers meter on
shorter windows than they advertise. Imported only once some rate is known (see
:mod:`batchib.limits`).
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

BURST_S = 0.1


class SmoothBucket(AsyncLimiter):
    """aiolimiter's leaky bucket holding BURST_S of its rate, whose rate can change
    while waiters wait, and whose level can be corrected after the fact.

    It reaches into AsyncLimiter's private state (`_level`, `_rate_per_sec`, `_leak`,
    `_wake_next`); pyproject pins aiolimiter to the versions this was tested with.
    """

    def __init__(self, per_second: float) -> None:
        capacity = max(1.0, per_second * BURST_S)
        super().__init__(capacity, capacity / per_second)
        # The largest piece ever asked for: a waiter already woken (off the heap, not
        # yet resumed) must still fit after a rate cut.
        self._largest_piece = 0.0
        # Held by a take while it acquires piece by piece: the next one waits its turn.
        self._taking = asyncio.Lock()

    @property
    def per_second(self) -> float:
        return self._rate_per_sec

    def set_rate(self, per_second: float) -> None:
        self._leak()
        # Never shrink below a piece someone already waits for: it could never fit.
        capacity = max(1.0, per_second * BURST_S, self._largest_piece)
        self.max_rate = capacity
        self.time_period = capacity / per_second
        self._rate_per_sec = per_second
        self._wake_next()

    def correct(self, amount: float) -> None:
        """Charge `amount` more (or give back, if negative) than was acquired."""
        self._leak()
        self._level = max(0.0, self._level + amount)
        self._wake_next()

    async def take(self, amount: float) -> None:
        """Acquire any amount: more than the bucket holds is taken piece by piece, so
        it waits as long as its size demands without ever bursting.

        One take at a time, in turn: were the pieces of many takes to interleave, each
        would finish only when all had nearly finished, and they would all leave at
        once (16 requests of 13 tenths of a second's worth went out within 3 s, after
        16 s of nothing, then 8 s of nothing again)."""
        if amount <= self.max_rate and not self._taking.locked():
            # One piece, and nobody is mid-way through theirs: the usual case.
            self._largest_piece = max(self._largest_piece, amount)
            await self.acquire(amount)
            return
        async with self._taking:
            remaining = amount
            while remaining > 0:
                piece = min(remaining, self.max_rate)
                self._largest_piece = max(self._largest_piece, piece)
                await self.acquire(piece)
                remaining -= piece
