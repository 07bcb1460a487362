"""Request and token rate limits, enforced before a request leaves.

`AsyncLimiter(rpm, 60)` would let a whole minute's worth through at once. Providers
meter on shorter windows than they advertise, so each bucket here holds a tenth of a
second's worth (at least one request): the long-run rate equals the limit and no one
second sees much more than a sixtieth of the per-minute limit.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

BURST_S = 0.1


def smooth_limiter(per_minute: float, min_burst: float = 1.0) -> AsyncLimiter:
    """A leaky bucket draining at per_minute/60 per second, holding BURST_S of it."""
    per_second = per_minute / 60
    capacity = max(min_burst, per_second * BURST_S)
    return AsyncLimiter(capacity, capacity / per_second)


class RateLimits:
    """Requests-per-minute and tokens-per-minute buckets, both optional."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self._requests = smooth_limiter(requests_per_minute) if requests_per_minute else None
        self._tokens = smooth_limiter(tokens_per_minute) if tokens_per_minute else None

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of `tokens` estimated tokens may be sent."""
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None and tokens > 0:
            # A request larger than the bucket is taken in bucket-sized pieces: it
            # waits as long as its size demands without ever bursting.
            capacity = self._tokens.max_rate
            remaining = float(tokens)
            while remaining > 0:
                piece = min(remaining, capacity)
                await self._tokens.acquire(piece)
                remaining -= piece
