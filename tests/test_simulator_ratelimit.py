"""The simulator's rate limits: bucket arithmetic on a fake clock, headers over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

from batchib.simulator import SimulatorSettings, create_app
from batchib.simulator.ratelimit import (
    BucketState,
    Limit,
    RateLimiter,
    Refusal,
    TokenBucket,
    upfront_tokens,
)
from batchib.simulator.ratelimit_http import (
    ceil_ms,
    go_duration,
    rate_limit_error,
    rate_limit_headers,
    retry_after_headers,
)
from batchib.simulator.text import prompt_tokens

SCHEMAS = json.loads((Path(__file__).parent / "data" / "chat_schemas.json").read_text())
ERROR_SCHEMA = Draft202012Validator(SCHEMAS["ErrorResponse"])

KEY = "sk-test-ratelimit-key"
HELLO = [{"role": "user", "content": "Say hello to the batch runner."}]
HELLO_TOKENS = prompt_tokens(HELLO)
T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- buckets ----------------------------------------------------------------------------


def test_bucket_holds_burst_s_worth_of_the_limit_and_starts_full() -> None:
    bucket = Limit("requests", 120, burst_s=30).new_bucket(now=0)
    assert bucket.capacity == 60
    assert bucket.refill_per_s == 2
    assert bucket.level(0) == 60


def test_bucket_refills_continuously_up_to_capacity() -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2, now=0)
    bucket.take(8, now=0)
    assert bucket.level(0) == 2
    assert bucket.level(1.5) == pytest.approx(5)
    assert bucket.full_in_s(1.5) == pytest.approx(2.5)
    assert bucket.level(100) == 10
    assert bucket.full_in_s(100) == 0


def test_bucket_wait_is_exactly_the_time_to_refill_the_missing_part() -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2, now=0)
    bucket.take(10, now=0)
    assert bucket.wait_s(3, now=0) == pytest.approx(1.5)
    assert bucket.wait_s(3, now=1) == pytest.approx(0.5)
    assert bucket.wait_s(3, now=1.5) == 0
    assert bucket.wait_s(11, now=1.5) == math.inf


def test_limiter_admits_a_full_minute_then_refuses_until_one_request_refilled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=None, clock=clock)
    assert all(limiter.admit("k", 0) is None for _ in range(60))
    refusal = limiter.admit("k", 0)
    assert refusal == Refusal("requests", 60, 0, 1, pytest.approx(1.0))
    clock.advance(0.25)
    refusal = limiter.admit("k", 0)
    assert refusal is not None
    assert refusal.wait_s == pytest.approx(0.75)
    clock.advance(0.75)
    assert limiter.admit("k", 0) is None
    assert limiter.admit("k", 0) is not None


def test_short_burst_s_lets_through_only_that_share_of_the_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=None, burst_s=1.0, clock=clock)
    assert all(limiter.admit("k", 0) is None for _ in range(10))
    refusal = limiter.admit("k", 0)
    assert refusal is not None
    assert refusal.wait_s == pytest.approx(0.1)


def test_refused_request_consumes_nothing_from_either_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=100, clock=clock)
    assert limiter.admit("k", 80) is None
    refusal = limiter.admit("k", 30)
    # 10 tokens missing at 100/60 tokens a second.
    assert refusal == Refusal("tokens", 100, 20, 30, pytest.approx(6.0))
    requests, tokens = limiter.state("k")
    assert (requests.remaining, tokens.remaining) == (59, 20)
    assert limiter.admit("k", 20) is None


def test_refusal_names_the_bucket_that_must_refill_longest() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=1, tpm=600, clock=clock)
    assert limiter.admit("k", 590) is None
    refusal = limiter.admit("k", 20)
    # Tokens lack 10 (1 s at 10/s); the request bucket lacks 1 request (60 s).
    assert refusal is not None
    assert (refusal.kind, refusal.wait_s) == ("requests", pytest.approx(60))


def test_request_bigger_than_the_bucket_can_never_pass() -> None:
    limiter = RateLimiter(rpm=None, tpm=100, clock=FakeClock())
    refusal = limiter.admit("k", 101)
    assert refusal is not None
    assert refusal.wait_s == math.inf
    assert limiter.state("k")[0].remaining == 100


@pytest.mark.parametrize(
    ("prompt", "cap", "n", "charged"),
    [(10, None, 1, 10), (10, None, 4, 10), (10, 5, 1, 15), (10, 5, 3, 25)],
)
def test_upfront_tokens_are_prompt_plus_cap_of_every_choice(
    prompt: int, cap: int | None, n: int, charged: int
) -> None:
    assert upfront_tokens(prompt, cap, n) == charged


def test_actual_completion_is_charged_after_and_may_drive_the_bucket_negative() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=60, clock=clock)
    assert limiter.admit("k", 10) is None
    limiter.charge_tokens("k", 30)
    assert limiter.state("k") == [BucketState("tokens", 60, 20, pytest.approx(40))]
    limiter.charge_tokens("k", 40)
    assert limiter.state("k")[0].remaining == 0
    refusal = limiter.admit("k", 10)
    # The level is -20: 30 tokens to refill at one token a second.
    assert refusal is not None
    assert refusal.wait_s == pytest.approx(30)


def test_each_key_has_its_own_buckets() -> None:
    limiter = RateLimiter(rpm=1, tpm=None, clock=FakeClock())
    assert limiter.admit("a", 0) is None
    assert limiter.admit("a", 0) is not None
    assert limiter.admit("b", 0) is None


def test_limiter_without_limits_admits_everything_and_reports_nothing() -> None:
    limiter = RateLimiter(rpm=None, tpm=None, clock=FakeClock())
    assert not limiter.enabled
    assert all(limiter.admit("k", 10**9) is None for _ in range(1000))
    assert limiter.state("k") == []


# --- headers and the 429 body -----------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.012, "12ms"),
        (0.0121, "13ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (179.56, "2m59.56s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration_prints_like_go(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(
    ("wait_s", "ms", "seconds"),
    [
        (0.05, "50", "1"),
        (1.0, "1000", "1"),
        (1.001, "1001", "2"),
        (1e-5, "1", "1"),
        (61.5, "61500", "62"),
    ],
)
def test_retry_after_is_exact_ms_and_whole_seconds_rounded_up(
    wait_s: float, ms: str, seconds: str
) -> None:
    assert retry_after_headers(wait_s) == {"retry-after-ms": ms, "Retry-After": seconds}


def test_ceil_ms_ignores_float_noise() -> None:
    assert ceil_ms(0.012) == 12
    assert ceil_ms(0.0120001) == 13


def test_rate_limit_headers_for_both_buckets() -> None:
    states = [BucketState("requests", 60, 59, 1.0), BucketState("tokens", 1000, 500, 30.0)]
    assert rate_limit_headers(states) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "30s",
    }


def test_rate_limit_error_reads_like_openais() -> None:
    error = rate_limit_error(Refusal("requests", 1200, 0, 1, 0.05))
    assert error.status == 429
    assert error.body() == {
        "error": {
            "message": "Rate limit reached for requests per min (RPM): Limit 1200, Remaining 0, "
            "Requested 1. Please try again in 50ms.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error.headers == {"retry-after-ms": "50", "Retry-After": "1"}


# --- over HTTP --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class Client:
    session: aiohttp.ClientSession
    server: TestServer

    async def post(self, key: str = KEY, **fields: Any) -> Reply:
        body = {"model": "gpt-4.1", "messages": HELLO, **fields}
        async with self.session.post(
            self.server.make_url("/v1/chat/completions"),
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            return Reply(response.status, response.headers.copy(), await response.json())


def scenario(
    settings: SimulatorSettings, clock: FakeClock, run: Callable[[Client], Awaitable[T]]
) -> T:
    async def main() -> T:
        app = create_app(settings, clock=clock)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            return await run(Client(session, server))

    return asyncio.run(main())


def ratelimit_headers(reply: Reply) -> dict[str, str]:
    return {name: value for name, value in reply.headers.items() if name.startswith("x-ratelimit")}


def test_success_carries_remaining_and_reset_after_its_own_charge() -> None:
    settings = SimulatorSettings(rpm=60, tpm=1000, tokenizer="words")

    async def run(client: Client) -> Reply:
        return await client.post(max_completion_tokens=10)

    reply = scenario(settings, FakeClock(), run)
    assert reply.status == 200
    charged = HELLO_TOKENS + 10
    assert ratelimit_headers(reply) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - charged),
        "x-ratelimit-reset-tokens": go_duration(charged * 60 / 1000),
    }


def test_uncapped_request_is_charged_its_actual_completion() -> None:
    settings = SimulatorSettings(tpm=1000)

    async def run(client: Client) -> Reply:
        return await client.post()

    reply = scenario(settings, FakeClock(), run)
    total = reply.body["usage"]["total_tokens"]
    assert total > HELLO_TOKENS
    assert reply.headers["x-ratelimit-remaining-tokens"] == str(1000 - total)
    assert "x-ratelimit-limit-requests" not in reply.headers


def test_requests_over_rpm_get_429_with_retry_after_until_refilled() -> None:
    clock = FakeClock()
    settings = SimulatorSettings(rpm=2)

    async def run(client: Client) -> list[Reply]:
        replies = [await client.post() for _ in range(3)]
        clock.advance(29.9)
        replies.append(await client.post())
        clock.advance(0.1)
        replies.append(await client.post())
        return replies

    first, second, refused, early, late = scenario(settings, clock, run)
    assert [first.status, second.status, early.status, late.status] == [200, 200, 429, 200]
    assert refused.status == 429
    ERROR_SCHEMA.validate(refused.body)
    assert refused.body["error"] == {
        "message": "Rate limit reached for requests per min (RPM): Limit 2, Remaining 0, "
        "Requested 1. Please try again in 30s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    # One request refills in 60 s / 2.
    assert refused.headers["retry-after-ms"] == "30000"
    assert refused.headers["Retry-After"] == "30"
    assert ratelimit_headers(refused) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert early.headers["retry-after-ms"] == "100"
    assert early.headers["Retry-After"] == "1"
    assert "Retry-After" not in late.headers


def test_tokens_over_tpm_get_429_of_type_tokens() -> None:
    settings = SimulatorSettings(tpm=100, tokenizer="words")
    cost = HELLO_TOKENS + 40

    async def run(client: Client) -> list[Reply]:
        return [await client.post(max_completion_tokens=40) for _ in range(2)]

    accepted, refused = scenario(settings, FakeClock(), run)
    assert accepted.status == 200
    assert refused.status == 429
    ERROR_SCHEMA.validate(refused.body)
    assert refused.body["error"]["type"] == "tokens"
    assert refused.body["error"]["code"] == "rate_limit_exceeded"
    assert refused.body["error"]["message"].startswith(
        f"Rate limit reached for tokens per min (TPM): Limit 100, Remaining {100 - cost}, "
        f"Requested {cost}."
    )
    wait_ms = math.ceil((cost - (100 - cost)) * 600)  # 100 tokens a minute: 0.6 s a token
    assert refused.headers["retry-after-ms"] == str(wait_ms)
    assert refused.headers["Retry-After"] == str(math.ceil(wait_ms / 1000))
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(100 - cost)


def test_request_larger_than_the_bucket_is_429_that_says_not_to_retry() -> None:
    settings = SimulatorSettings(tpm=100)

    async def run(client: Client) -> Reply:
        return await client.post(max_completion_tokens=500)

    reply = scenario(settings, FakeClock(), run)
    assert reply.status == 429
    ERROR_SCHEMA.validate(reply.body)
    assert reply.body["error"]["message"].startswith("Request too large for tokens per min (TPM)")
    assert reply.headers["x-should-retry"] == "false"
    assert "Retry-After" not in reply.headers
    assert reply.headers["x-ratelimit-remaining-tokens"] == "100"


def test_keys_are_limited_separately_over_http() -> None:
    settings = SimulatorSettings(rpm=1)

    async def run(client: Client) -> list[int]:
        return [(await client.post(key=key)).status for key in ("sk-a", "sk-a", "sk-b")]

    assert scenario(settings, FakeClock(), run) == [200, 429, 200]


@pytest.mark.parametrize(
    "settings",
    [SimulatorSettings(rpm=1, tpm=1000, rate_headers=False), SimulatorSettings()],
    ids=["rate_headers_off", "no_limits"],
)
def test_no_ratelimit_headers_when_hidden_or_unlimited(settings: SimulatorSettings) -> None:
    async def run(client: Client) -> list[Reply]:
        return [await client.post() for _ in range(2)]

    replies = scenario(settings, FakeClock(), run)
    assert all(not ratelimit_headers(reply) for reply in replies)
    # Hidden headers do not lift the limit itself.
    expected = [200, 429] if settings.rpm else [200, 200]
    assert [reply.status for reply in replies] == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"tpm": -5},
        {"burst_s": 0},
        {"burst_s": float("inf")},
        {"rpm": 10, "burst_s": 1.0},
    ],
)
def test_settings_reject_invalid_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorSettings(**kwargs)
