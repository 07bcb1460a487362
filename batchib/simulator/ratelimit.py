"""Per-key rate limits as providers enforce them: continuous-refill token buckets.

Pure arithmetic on an injected clock, no HTTP, so the behaviour is tested without
sleeping. A limit of N per minute is a bucket holding ``N * burst_s / 60`` units, full at
first, refilled at ``N / 60`` units a second. A request must find its whole cost in every
bucket or it is refused, and a refused request takes nothing.

Tokens are charged the way gateways do in practice: before answering, the prompt plus the
completion cap (times ``n``) when the request sets one; without a cap, the prompt only,
and the real completion once it is generated, which may drive the bucket below zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["requests", "tokens"]


def upfront_tokens(prompt_tokens: int, completion_cap: int | None, n: int) -> int:
    """Tokens charged before a request is answered: the prompt plus the cap of every choice."""
    if completion_cap is None:
        return prompt_tokens
    return prompt_tokens + completion_cap * n


class TokenBucket:
    """A bucket refilled continuously up to its capacity; its level may go negative."""

    __slots__ = ("_at", "_level", "capacity", "refill_per_s")

    def __init__(self, capacity: float, refill_per_s: float, now: float) -> None:
        if not (capacity > 0 and refill_per_s > 0):
            raise ValueError("a bucket needs a capacity and a refill rate above 0")
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self._level = capacity
        self._at = now

    def level(self, now: float) -> float:
        """The units in the bucket at ``now``."""
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.refill_per_s)
            self._at = now
        return self._level

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until the bucket holds ``cost``: 0 if it does now, inf if it never can."""
        if cost > self.capacity:
            return math.inf
        missing = cost - self.level(now)
        return missing / self.refill_per_s if missing > 0 else 0.0

    def take(self, cost: float, now: float) -> None:
        """Remove ``cost`` units, going below zero if need be."""
        self._level = self.level(now) - cost

    def full_in_s(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level(now)) / self.refill_per_s


@dataclass(frozen=True)
class Limit:
    """One per-minute limit of every key."""

    kind: Kind
    per_minute: int
    burst_s: float

    def new_bucket(self, now: float) -> TokenBucket:
        """A full bucket for a key seen for the first time."""
        return TokenBucket(self.per_minute * self.burst_s / 60, self.per_minute / 60, now)


@dataclass(frozen=True)
class BucketState:
    """What the ``x-ratelimit-*`` headers report about one bucket."""

    kind: Kind
    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the bucket that must refill longest, and for how long.

    ``wait_s`` is inf when the request costs more than the bucket can ever hold.
    """

    kind: Kind
    limit: int
    remaining: int
    requested: int
    wait_s: float


def _remaining(level: float) -> int:
    return max(0, math.floor(level))


class RateLimiter:
    """The requests and tokens buckets of every key; a key's buckets start full.

    Keys are opaque strings (the simulator passes a hash of the API key). Without any
    limit configured every request is admitted and nothing is tracked.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        burst_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits: list[Limit] = []
        if rpm is not None:
            limits.append(Limit("requests", rpm, burst_s))
        if tpm is not None:
            limits.append(Limit("tokens", tpm, burst_s))
        self._limits = tuple(limits)
        self._clock = clock
        self._buckets: dict[str, tuple[TokenBucket, ...]] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured."""
        return bool(self._limits)

    def _buckets_of(self, key: str, now: float) -> tuple[TokenBucket, ...]:
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = tuple(limit.new_bucket(now) for limit in self._limits)
            self._buckets[key] = buckets
        return buckets

    def admit(self, key: str, tokens: int) -> Refusal | None:
        """Charge one request and ``tokens`` to ``key``, or refuse and charge nothing."""
        if not self._limits:
            return None
        now = self._clock()
        charges = [
            (limit, bucket, 1 if limit.kind == "requests" else tokens)
            for limit, bucket in zip(self._limits, self._buckets_of(key, now), strict=True)
        ]
        refusal: Refusal | None = None
        for limit, bucket, cost in charges:
            wait_s = bucket.wait_s(cost, now)
            # Retry-After must cover every bucket, so report the one that refills last.
            if wait_s > 0 and (refusal is None or wait_s > refusal.wait_s):
                remaining = _remaining(bucket.level(now))
                refusal = Refusal(limit.kind, limit.per_minute, remaining, cost, wait_s)
        if refusal is not None:
            return refusal
        for _, bucket, cost in charges:
            bucket.take(cost, now)
        return None

    def charge_tokens(self, key: str, tokens: int) -> None:
        """Charge ``tokens`` more to an admitted request (its completion, once generated)."""
        if not self._limits:
            return
        now = self._clock()
        for limit, bucket in zip(self._limits, self._buckets_of(key, now), strict=True):
            if limit.kind == "tokens":
                bucket.take(tokens, now)

    def state(self, key: str) -> list[BucketState]:
        """The state of each of ``key``'s buckets now, requests first."""
        if not self._limits:
            return []
        now = self._clock()
        return [
            BucketState(
                limit.kind, limit.per_minute, _remaining(bucket.level(now)), bucket.full_in_s(now)
            )
            for limit, bucket in zip(self._limits, self._buckets_of(key, now), strict=True)
        ]
