"""Request and token limits, enforced before a request leaves.

Two leaky buckets (:mod:`batchib.bucket`, aiolimiter's) hold a tenth of a second's worth
of their rate, not a minute's: `AsyncLimiter(rpm, 60)` would let a whole minute through
at once, and providers meter on shorter windows than they advertise. The rates come from
:mod:`batchib.adaptive` — configured, discovered from headers, or learnt from 429s —
and change while the run goes. The gateway's `x-ratelimit-remaining-*` headers hold
admission back when its bucket is nearly empty, before it starts refusing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchib.adaptive import AdaptiveRate
from batchib.ratelimit_headers import Bucket
from batchib.reply import Reply, Verdict

if TYPE_CHECKING:
    from batchib.bucket import SmoothBucket

# Admission holds when the gateway's bucket has less than this long's worth left.
HOLD_MARGIN_S = 0.1
# With limits unknown, the first request goes alone so that its answer's headers (if
# any) set the rate before the rest go; this long at most.
PROBE_TIMEOUT_S = 2.0
# With no rate in force, a 429 lowers one only once this many requests have gone out:
# one request (the probe, say) is no rate that was too much -- the quota is spent for
# now, and its Retry-After or backoff is the answer to that.
MIN_SENT_TO_JUDGE = 4


# Not frozen: a frozen dataclass's __init__ costs twice as much (object.__setattr__
# per field), and one is made for every attempt. Treat it as immutable.
@dataclass(slots=True)
class Ticket:
    """What admission granted one attempt: its number and the tokens reserved."""

    seq: int
    tokens: int


def _bucket(per_second: float) -> SmoothBucket:
    """A bucket for a known rate. aiolimiter is imported only then: a run with no limit
    configured, announced or learnt never needs it (6 ms of start-up under -X
    importtime, most of it aiolimiter reading its own version via importlib.metadata)."""
    from batchib.bucket import SmoothBucket

    return SmoothBucket(per_second)


class _Dimension:
    """One limited quantity: its adaptive rate and the bucket that enforces it."""

    def __init__(
        self,
        configured_per_minute: float | None,
        clock: Callable[[], float],
        min_per_minute: float,
    ) -> None:
        self.configured = configured_per_minute is not None
        per_s = configured_per_minute / 60 if configured_per_minute else None
        self.rate = AdaptiveRate(per_s, clock, min_rate_per_s=min_per_minute / 60)
        self.bucket: SmoothBucket | None = _bucket(per_s) if per_s else None

    def apply_rate(self) -> None:
        per_s = self.rate.rate_per_s
        if per_s is None:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = _bucket(per_s)
        elif self.bucket.per_second != per_s:
            self.bucket.set_rate(per_s)

    async def take(self, amount: float) -> None:
        if self.bucket is not None and amount > 0:
            await self.bucket.take(amount)


class Limits:
    """Admission for every attempt: requests per minute, tokens per minute, and the
    gateway's own view of what is left."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.requests = _Dimension(requests_per_minute, clock, min_per_minute=1)
        self.tokens = _Dimension(tokens_per_minute, clock, min_per_minute=1000)
        self._seq = itertools.count()
        self._last_seq = -1
        self._hold_until = 0.0
        self._probe: asyncio.Event | None = None
        if not (self.requests.configured and self.tokens.configured):
            self._probe = asyncio.Event()
        self._probe_sent = False

    @property
    def tokens_limited(self) -> bool:
        """Whether a tokens-per-minute rate is in force (configured, announced by the
        gateway, or learnt from a 429): only then do exact token counts matter."""
        return self.tokens.rate.rate_per_s is not None

    def admit_now(self, tokens: int) -> Ticket | None:
        """A ticket at once when nothing could make the attempt wait (no bucket, no
        hold, no probe in flight): the usual case, without a coroutine. None means
        :meth:`acquire` must decide."""
        if (
            self._probe is not None
            or self.requests.bucket is not None
            or self.tokens.bucket is not None
            or self._hold_until > self._clock()
        ):
            return None
        return self._ticket(tokens)

    async def acquire(self, tokens: int) -> Ticket:
        """Wait until one more attempt of `tokens` estimated tokens may be sent."""
        if self._probe is not None:
            if self._probe_sent:
                await self._probe.wait()
                self._probe = None  # released for good: no more waits per request
            else:
                self._probe_sent = True
                asyncio.get_running_loop().call_later(PROBE_TIMEOUT_S, self._probe.set)
        # The gateway's hold first, then the buckets: requests held together must
        # still leave at the bucket's pace, not all at once when the hold ends.
        delay = self._hold_until - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        # No coroutine at all for a dimension with no bucket (nothing known yet).
        if self.requests.bucket is not None:
            await self.requests.take(1)
        if self.tokens.bucket is not None:
            await self.tokens.take(tokens)
        return self._ticket(tokens)

    def _ticket(self, tokens: int) -> Ticket:
        seq = next(self._seq)
        self._last_seq = seq
        self.requests.rate.sent.add(1)
        self.tokens.rate.sent.add(tokens)
        return Ticket(seq, tokens)

    def observe(self, ticket: Ticket, reply: Reply, completion_cap: int | None) -> None:
        """Learn from the answer to the attempt `ticket` admitted (`completion_cap`: the
        request's, see :func:`batchib.tokens.max_completion_tokens`)."""
        if self._probe is not None and not self._probe.is_set():
            self._probe.set()
        if reply.rate is not None:
            self._follow_headers(reply.rate.requests, self.requests, 1)
            self._follow_headers(reply.rate.tokens, self.tokens, ticket.tokens)
        if reply.verdict is Verdict.SUCCESS:
            charged = _tokens_charged(completion_cap, reply.billed_usage())
            if charged is not None:
                self._correct_tokens(charged - ticket.tokens)
            else:
                charged = ticket.tokens
            for dimension, amount in ((self.requests, 1), (self.tokens, charged)):
                if dimension.rate.on_success(amount):
                    dimension.apply_rate()
        elif reply.rate_limited:
            self._correct_tokens(-ticket.tokens)  # a refused request is not charged
            tokens_hit = reply.error_type == "tokens"
            dimension = self.tokens if tokens_hit else self.requests
            cost = ticket.tokens if tokens_hit else 1
            if dimension.rate.rate_per_s is None and self._last_seq + 1 < MIN_SENT_TO_JUDGE:
                return
            wait_s = reply.retry_after_s
            hint = cost / wait_s if wait_s and reply.retry_after_precise else None
            if dimension.rate.on_rate_limited(ticket.seq, self._last_seq, hint):
                dimension.apply_rate()

    def _correct_tokens(self, amount: float) -> None:
        if self.tokens.bucket is not None and amount:
            self.tokens.bucket.correct(amount)

    def _follow_headers(self, bucket: Bucket, dimension: _Dimension, cost: float) -> None:
        limit = bucket.limit_per_minute
        if not limit:
            return
        if not dimension.configured and dimension.rate.discover_ceiling(limit / 60):
            dimension.apply_rate()
        # Hold admission when the gateway's bucket is nearly empty: one tenth of a
        # second's worth (or one request's cost) left. It refills at the rate implied
        # by its reset time.
        remaining, reset_s = bucket.remaining, bucket.reset_s
        if remaining is None or reset_s is None:
            return
        margin = max(cost, limit / 60 * HOLD_MARGIN_S)
        if remaining >= margin:
            return
        refill_per_s = (limit - remaining) / reset_s if reset_s > 0 else limit / 60
        if refill_per_s > 0:
            self._hold_until = max(
                self._hold_until, self._clock() + (margin - remaining) / refill_per_s
            )

    def current(self) -> dict[str, float | None]:
        """The rates in force now, per minute (None: unlimited), for the summary."""

        def per_minute(dimension: _Dimension) -> float | None:
            rate = dimension.rate.rate_per_s
            return None if rate is None else round(rate * 60, 1)

        return {
            "requests_per_minute": per_minute(self.requests),
            "tokens_per_minute": per_minute(self.tokens),
            "rate_decreases": self.requests.rate.decreases + self.tokens.rate.decreases,
        }


def _tokens_charged(completion_cap: int | None, usage: dict[str, Any] | None) -> int | None:
    """What the gateway counts against tokens per minute for a completed request (its
    `usage`, from :meth:`Reply.billed_usage`): the prompt plus the completion cap when
    one was set, else the actual completion."""
    if usage is None:
        return None
    prompt: int = usage["prompt_tokens"]
    completion: int = usage["completion_tokens"] if completion_cap is None else completion_cap
    return prompt + completion
