"""Admission: the smooth leaky bucket, the probe, headers, 429s and token reconciliation.

Bucket levels are read with the event loop's clock frozen (as aiolimiter's own tests do),
so nothing leaks between two lines of a test; only the waiting tests use real loop timers,
and those waits are a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from aiolimiter import AsyncLimiter

import batchib.limits
from batchib.bucket import SmoothBucket
from batchib.limits import Limits, Ticket
from batchib.ratelimit_headers import Bucket, RateLimitHeaders
from batchib.reply import Reply, Verdict
from batchib.tokens import max_completion_tokens

# Generous: a waiter that should wake within milliseconds.
WAKE_TIMEOUT_S = 1.0
# Fast enough that no test below waits on the buckets unless it means to.
FAST_RPM = 60_000.0  # 1000/s, a bucket of 100
FAST_TPM = 600_000.0  # 10 000/s, a bucket of 1000
NO_LIMIT = Bucket(None, None, None)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def frozen_loop_time() -> Iterator[None]:
    """Stop the running loop's clock, so buckets neither leak nor wake meanwhile."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    loop.time = lambda: now  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.time


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def reply(
    verdict: Verdict = Verdict.SUCCESS,
    status: int | None = 200,
    *,
    body: dict[str, Any] | None = None,
    rate: RateLimitHeaders | None = None,
    error_type: str | None = None,
    code: str | None = None,
) -> Reply:
    return Reply(
        verdict=verdict,
        status=status,
        body=body,
        request_id=None,
        code=code,
        message=None,
        retry_after_s=None,
        latency_ms=5.0,
        rate=rate,
        error_type=error_type,
    )


def success(usage: dict[str, int] | None = None, rate: RateLimitHeaders | None = None) -> Reply:
    body: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    if usage is not None:
        body["usage"] = usage
    return reply(body=body, rate=rate)


def too_many_requests(error_type: str | None) -> Reply:
    return reply(
        Verdict.RETRY,
        429,
        body={"error": {"message": "slow down", "type": error_type}},
        error_type=error_type,
        code="rate_limit_exceeded",
    )


# --- SmoothBucket -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_second", "capacity"),
    [
        pytest.param(50.0, 5.0, id="a-tenth-of-a-second"),
        pytest.param(10_000.0, 1000.0, id="large-rate"),
        pytest.param(5.0, 1.0, id="at-least-one"),
        pytest.param(0.5, 1.0, id="slow-rate-still-one"),
    ],
)
def test_bucket_holds_a_tenth_of_a_second_of_its_rate(per_second: float, capacity: float) -> None:
    bucket = SmoothBucket(per_second)

    assert bucket.max_rate == capacity
    assert bucket.per_second == per_second


def test_set_rate_changes_rate_and_capacity() -> None:
    async def scenario() -> None:
        bucket = SmoothBucket(50.0)

        bucket.set_rate(200.0)

        assert bucket.per_second == 200.0
        assert bucket.max_rate == 20.0

    asyncio.run(scenario())


def test_set_rate_wakes_a_waiter_that_now_fits() -> None:
    async def scenario() -> None:
        bucket = SmoothBucket(1.0)  # a bucket of 1, leaking 1 a second
        await bucket.acquire(1)
        waiter = asyncio.create_task(bucket.acquire(1))
        await settle()
        assert not waiter.done()

        bucket.set_rate(1000.0)  # a bucket of 100: the waiter fits at once

        await asyncio.wait_for(waiter, WAKE_TIMEOUT_S)

    asyncio.run(scenario())


def test_positive_correction_delays_the_next_acquire() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bucket = SmoothBucket(100.0)  # a bucket of 10, leaking 1 every 10 ms
        bucket.correct(10)
        started = loop.time()

        waiter = asyncio.create_task(bucket.acquire(1))
        await settle()
        assert not waiter.done()
        await asyncio.wait_for(waiter, WAKE_TIMEOUT_S)

        assert loop.time() - started >= 0.005

    asyncio.run(scenario())


def test_acquire_without_correction_does_not_wait() -> None:
    async def scenario() -> None:
        bucket = SmoothBucket(100.0)
        await bucket.acquire(9)

        waiter = asyncio.create_task(bucket.acquire(1))
        await asyncio.sleep(0)

        assert waiter.done()

    asyncio.run(scenario())


def test_negative_correction_refunds_but_never_below_zero() -> None:
    async def scenario() -> None:
        with frozen_loop_time():
            bucket = SmoothBucket(10.0)  # a bucket of 1
            await bucket.acquire(1)
            assert not bucket.has_capacity(1)

            bucket.correct(-1)
            assert bucket.has_capacity(1)

            bucket.correct(-5)  # the level stays 0, it does not go to -5
            bucket.correct(1)
            assert bucket._level == 1.0
            assert not bucket.has_capacity(1)

    asyncio.run(scenario())


def test_take_more_than_capacity_goes_in_pieces() -> None:
    async def scenario() -> None:
        bucket = SmoothBucket(100.0)  # a bucket of 10
        with pytest.raises(ValueError):
            await AsyncLimiter(10, 0.1).acquire(10.5)  # what take avoids
        pieces: list[float] = []
        acquire = bucket.acquire

        async def spy(amount: float = 1) -> None:
            pieces.append(amount)
            await acquire(amount)

        bucket.acquire = spy  # type: ignore[method-assign]

        await asyncio.wait_for(bucket.take(10.5), WAKE_TIMEOUT_S)

        assert pieces == [10.0, 0.5]

    asyncio.run(scenario())


def test_takes_larger_than_the_bucket_go_one_after_another_not_interleaved() -> None:
    # Interleaved, three requests of 2.5 buckets each would all finish near the end and
    # leave together; in turn, each leaves as soon as its own share has leaked.
    async def scenario() -> list[tuple[str, float]]:
        bucket = SmoothBucket(10_000.0)  # a bucket of 1000
        granted: list[tuple[str, float]] = []
        acquire = bucket.acquire
        current: contextvars.ContextVar[str] = contextvars.ContextVar("taker")

        async def spy(amount: float = 1) -> None:
            await acquire(amount)
            granted.append((current.get(), amount))

        bucket.acquire = spy  # type: ignore[method-assign]

        async def taker(name: str) -> None:
            current.set(name)
            await bucket.take(2500)

        await asyncio.wait_for(asyncio.gather(taker("a"), taker("b"), taker("c")), WAKE_TIMEOUT_S)
        return granted

    granted = asyncio.run(scenario())

    assert [name for name, _ in granted] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert [amount for _, amount in granted] == [1000.0, 1000.0, 500.0] * 3


def test_take_completes_when_the_rate_drops_while_it_waits() -> None:
    async def scenario() -> None:
        bucket = SmoothBucket(1000.0)  # a bucket of 100
        await bucket.acquire(45)
        taking = asyncio.create_task(bucket.take(60))  # waits for the level to reach 40
        await settle()
        assert not taking.done()

        bucket.set_rate(500.0)  # a bucket of 50: a piece of 60 never fits

        await asyncio.wait_for(taking, 0.5)  # ~90 ms at the new rate

    asyncio.run(scenario())


# --- Limits: the probe ------------------------------------------------------------------


def test_configured_limits_admit_without_a_probe() -> None:
    async def scenario() -> list[Ticket]:
        limits = Limits(FAST_RPM, FAST_TPM)
        first = asyncio.create_task(limits.acquire(10))
        second = asyncio.create_task(limits.acquire(20))
        await asyncio.sleep(0)
        assert first.done()
        assert second.done()
        third = await limits.acquire(30)
        return [first.result(), second.result(), third]

    tickets = asyncio.run(scenario())

    assert tickets == [Ticket(0, 10), Ticket(1, 20), Ticket(2, 30)]


@pytest.mark.parametrize(
    ("requests_per_minute", "tokens_per_minute"),
    [
        pytest.param(None, None, id="both-unknown"),
        pytest.param(FAST_RPM, None, id="tokens-unknown"),
        pytest.param(None, FAST_TPM, id="requests-unknown"),
    ],
)
def test_unknown_limit_sends_one_probe_and_waits_for_its_answer(
    requests_per_minute: float | None, tokens_per_minute: float | None
) -> None:
    async def scenario() -> None:
        limits = Limits(requests_per_minute, tokens_per_minute)
        probe = await asyncio.wait_for(limits.acquire(10), WAKE_TIMEOUT_S)
        second = asyncio.create_task(limits.acquire(10))
        third = asyncio.create_task(limits.acquire(10))
        await settle()
        assert not second.done()
        assert not third.done()

        limits.observe(probe, success(), None)

        released = await asyncio.wait_for(asyncio.gather(second, third), WAKE_TIMEOUT_S)
        assert [ticket.seq for ticket in released] == [1, 2]

    asyncio.run(scenario())


def test_probe_without_an_answer_releases_the_rest_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batchib.limits, "PROBE_TIMEOUT_S", 0.01)

    async def scenario() -> None:
        limits = Limits(None, None)
        await limits.acquire(10)
        second = asyncio.create_task(limits.acquire(10))
        await settle()
        assert not second.done()

        ticket = await asyncio.wait_for(second, WAKE_TIMEOUT_S)

        assert ticket.seq == 1

    asyncio.run(scenario())


# --- Limits: headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "headers", "expected"),
    [
        pytest.param(
            (None, FAST_TPM),
            RateLimitHeaders(Bucket(600, None, None), NO_LIMIT),
            {"requests_per_minute": 600.0, "tokens_per_minute": FAST_TPM},
            id="requests-discovered",
        ),
        pytest.param(
            (300.0, FAST_TPM),
            RateLimitHeaders(Bucket(600, None, None), NO_LIMIT),
            {"requests_per_minute": 300.0, "tokens_per_minute": FAST_TPM},
            id="configured-requests-win",
        ),
        pytest.param(
            (FAST_RPM, None),
            RateLimitHeaders(NO_LIMIT, Bucket(90_000, None, None)),
            {"requests_per_minute": FAST_RPM, "tokens_per_minute": 90_000.0},
            id="tokens-discovered",
        ),
        pytest.param(
            (None, None),
            RateLimitHeaders(Bucket(None, 5, 1.0), Bucket(0, None, None)),
            {"requests_per_minute": None, "tokens_per_minute": None},
            id="no-usable-limit-stays-unlimited",
        ),
    ],
)
def test_limit_headers_set_the_ceiling_unless_configured(
    configured: tuple[float | None, float | None],
    headers: RateLimitHeaders,
    expected: dict[str, float | None],
) -> None:
    async def scenario() -> Limits:
        limits = Limits(*configured)
        ticket = await limits.acquire(10)
        limits.observe(ticket, success(rate=headers), None)
        return limits

    limits = asyncio.run(scenario())

    assert limits.current() == expected | {"rate_decreases": 0}


def test_discovered_request_limit_paces_with_a_bucket() -> None:
    async def scenario() -> Limits:
        limits = Limits(None, None)
        ticket = await limits.acquire(10)
        limits.observe(
            ticket, success(rate=RateLimitHeaders(Bucket(600, None, None), NO_LIMIT)), None
        )
        return limits

    limits = asyncio.run(scenario())

    assert limits.requests.bucket is not None
    assert limits.requests.bucket.per_second == 10.0
    assert limits.tokens.bucket is None


@pytest.mark.parametrize(
    ("headers", "expected_delay_s"),
    [
        # Requests: the margin is max(1 request, a tenth of a second's worth) = 1.
        pytest.param(
            RateLimitHeaders(Bucket(600, 0, 60.0), NO_LIMIT),
            0.1,  # refills 600 over 60 s: 10/s, 1 request in 0.1 s
            id="requests-empty",
        ),
        pytest.param(
            RateLimitHeaders(Bucket(600, 0.5, 0.0), NO_LIMIT),
            0.05,  # no reset given: refills at the limit, 10/s, half a request
            id="requests-reset-zero-refills-at-the-limit-rate",
        ),
        # Tokens: the margin is max(this request's 500, 100) = 500.
        pytest.param(
            RateLimitHeaders(NO_LIMIT, Bucket(60_000, 0, 30.0)),
            0.25,  # refills 60 000 over 30 s: 2000/s, 500 in 0.25 s
            id="tokens-below-the-request-cost",
        ),
        pytest.param(
            RateLimitHeaders(Bucket(600, 0, 60.0), Bucket(60_000, 0, 30.0)),
            0.25,
            id="both-longest-wins",
        ),
    ],
)
def test_nearly_empty_gateway_bucket_holds_the_next_acquire(
    monkeypatch: pytest.MonkeyPatch, headers: RateLimitHeaders, expected_delay_s: float
) -> None:
    clock = FakeClock(100.0)
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(batchib.limits.asyncio, "sleep", fake_sleep)

    async def scenario() -> None:
        limits = Limits(FAST_RPM, FAST_TPM, clock=clock)
        ticket = await limits.acquire(500)
        limits.observe(ticket, success(rate=headers), None)

        await limits.acquire(10)
        assert delays == [pytest.approx(expected_delay_s)]

        clock.now += expected_delay_s * 0.4  # part of the hold passed: sleep the rest
        await limits.acquire(10)
        assert delays[1:] == [pytest.approx(expected_delay_s * 0.6)]

        clock.now += expected_delay_s  # the hold is over
        await limits.acquire(10)
        assert len(delays) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(RateLimitHeaders(Bucket(600, 1, 60.0), NO_LIMIT), id="requests-at-margin"),
        pytest.param(RateLimitHeaders(NO_LIMIT, Bucket(60_000, 500, 30.0)), id="tokens-at-margin"),
        pytest.param(RateLimitHeaders(Bucket(600, None, 60.0), NO_LIMIT), id="no-remaining"),
        pytest.param(RateLimitHeaders(Bucket(600, 0, None), NO_LIMIT), id="no-reset"),
        pytest.param(RateLimitHeaders(Bucket(None, 0, 60.0), NO_LIMIT), id="no-limit"),
    ],
)
def test_gateway_bucket_with_room_or_incomplete_headers_holds_nothing(
    monkeypatch: pytest.MonkeyPatch, headers: RateLimitHeaders
) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(batchib.limits.asyncio, "sleep", fake_sleep)

    async def scenario() -> None:
        limits = Limits(FAST_RPM, FAST_TPM, clock=FakeClock())
        ticket = await limits.acquire(500)
        limits.observe(ticket, success(rate=headers), None)
        await limits.acquire(500)

    asyncio.run(scenario())

    assert delays == []


# --- Limits: 429s -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        pytest.param(
            "requests",
            {"requests_per_minute": 30_000.0, "tokens_per_minute": FAST_TPM},
            id="requests",
        ),
        pytest.param(
            "tokens",
            {"requests_per_minute": FAST_RPM, "tokens_per_minute": 300_000.0},
            id="tokens",
        ),
        pytest.param(
            None,
            {"requests_per_minute": 30_000.0, "tokens_per_minute": FAST_TPM},
            id="untyped-counts-as-requests",
        ),
    ],
)
def test_429_lowers_the_limit_it_names(error_type: str | None, expected: dict[str, float]) -> None:
    async def scenario() -> Limits:
        limits = Limits(FAST_RPM, FAST_TPM, clock=FakeClock())
        ticket = await limits.acquire(10)
        limits.observe(ticket, too_many_requests(error_type), None)
        return limits

    limits = asyncio.run(scenario())

    assert limits.current() == expected | {"rate_decreases": 1}
    assert limits.requests.bucket is not None
    assert limits.tokens.bucket is not None
    assert limits.requests.bucket.per_second * 60 == expected["requests_per_minute"]
    assert limits.tokens.bucket.per_second * 60 == expected["tokens_per_minute"]


def test_429s_for_attempts_admitted_before_a_decrease_are_ignored() -> None:
    async def scenario() -> Limits:
        limits = Limits(FAST_RPM, FAST_TPM, clock=FakeClock())
        first, second = await limits.acquire(10), await limits.acquire(10)
        limits.observe(first, too_many_requests("requests"), None)  # 60 000 -> 30 000
        limits.observe(second, too_many_requests("requests"), None)  # admitted before: ignored
        third = await limits.acquire(10)
        limits.observe(third, too_many_requests("requests"), None)  # 30 000 -> 15 000
        return limits

    limits = asyncio.run(scenario())

    assert limits.current()["requests_per_minute"] == 15_000.0
    assert limits.current()["rate_decreases"] == 2


def test_out_of_credit_429_does_not_lower_the_rate() -> None:
    async def scenario() -> Limits:
        limits = Limits(FAST_RPM, FAST_TPM, clock=FakeClock())
        ticket = await limits.acquire(10)
        limits.observe(ticket, reply(Verdict.STOP_RUN, 429, code="insufficient_quota"), None)
        return limits

    limits = asyncio.run(scenario())

    assert limits.current() == {
        "requests_per_minute": FAST_RPM,
        "tokens_per_minute": FAST_TPM,
        "rate_decreases": 0,
    }


def test_429_refunds_the_reserved_tokens() -> None:
    async def scenario() -> None:
        with frozen_loop_time():
            limits = Limits(FAST_RPM, FAST_TPM)
            ticket = await limits.acquire(400)
            assert limits.tokens.bucket is not None
            assert limits.tokens.bucket._level == 400.0

            limits.observe(ticket, too_many_requests("tokens"), None)

            assert limits.tokens.bucket._level == 0.0

    asyncio.run(scenario())


# --- Limits: token reconciliation -------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "usage", "expected_level"),
    [
        pytest.param(
            {"max_tokens": 300},
            {"prompt_tokens": 90, "completion_tokens": 20},
            390.0,  # prompt + cap: the gateway charged the cap, not the 20 used
            id="cap-set-charges-prompt-plus-cap",
        ),
        pytest.param(
            {"max_completion_tokens": 250},
            {"prompt_tokens": 90, "completion_tokens": 20},
            340.0,
            id="max-completion-tokens-is-a-cap-too",
        ),
        pytest.param(
            {"max_tokens": 300, "n": 2},
            {"prompt_tokens": 90, "completion_tokens": 20},
            690.0,  # the cap applies to each of the n choices
            id="cap-times-n",
        ),
        pytest.param(
            {},
            {"prompt_tokens": 90, "completion_tokens": 20},
            110.0,  # refund 290 of the 400 reserved
            id="no-cap-charges-prompt-plus-completion",
        ),
        pytest.param(
            {},
            {"prompt_tokens": 500, "completion_tokens": 300},
            800.0,  # the estimate was short: charge the 400 more
            id="underestimate-charges-the-rest",
        ),
        pytest.param(
            {"max_tokens": 300},
            None,
            400.0,  # nothing to reconcile with: the estimate stands
            id="no-usage-keeps-the-estimate",
        ),
    ],
)
def test_success_reconciles_reserved_tokens_with_what_the_gateway_charged(
    request_body: dict[str, Any], usage: dict[str, int] | None, expected_level: float
) -> None:
    async def scenario() -> None:
        with frozen_loop_time():
            limits = Limits(FAST_RPM, FAST_TPM)
            ticket = await limits.acquire(400)

            cap = max_completion_tokens({"messages": [], **request_body})
            limits.observe(ticket, success(usage), cap)

            assert limits.tokens.bucket is not None
            assert limits.tokens.bucket._level == expected_level

    asyncio.run(scenario())


def test_refund_lets_a_waiting_acquire_through() -> None:
    async def scenario() -> None:
        with frozen_loop_time():  # nothing leaks: only the refund can free room
            limits = Limits(FAST_RPM, FAST_TPM)
            ticket = await limits.acquire(1000)  # the whole token bucket
            waiter = asyncio.create_task(limits.acquire(600))
            await settle()
            assert not waiter.done()

            usage = {"prompt_tokens": 300, "completion_tokens": 50}
            limits.observe(ticket, success(usage), None)  # refund 650
            await settle()

            assert waiter.done()
            assert waiter.result() == Ticket(1, 600)

    asyncio.run(scenario())


@pytest.mark.parametrize(("sent_before", "lowered"), [(0, False), (2, False), (3, True)])
def test_with_no_rate_a_429_on_too_few_requests_to_judge_lowers_nothing(
    sent_before: int, lowered: bool
) -> None:
    # The probe alone (or a handful) refused: the quota is spent for now, which its
    # Retry-After answers; no rate can be read off one request. From four on, one can.
    async def scenario() -> Limits:
        limits = Limits(None, None, clock=FakeClock())
        first = await limits.acquire(10)
        for _ in range(sent_before):
            limits._ticket(10)
        limits.observe(first, too_many_requests("requests"), None)
        return limits

    limits = asyncio.run(scenario())

    assert (limits.current()["rate_decreases"] == 1) is lowered
    assert (limits.current()["requests_per_minute"] is not None) is lowered
