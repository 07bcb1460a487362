"""Parsing the gateway's `x-ratelimit-*` headers: Go durations and the six headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from batchib.ratelimit_headers import (
    Bucket,
    RateLimitHeaders,
    parse_duration_s,
    parse_rate_headers,
)

MICRO_SIGN = "\u00b5"  # what Go's Duration.String() writes for microseconds
EMPTY = Bucket(None, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1s", 1.0, id="seconds"),
        pytest.param("6m0s", 360.0, id="minutes-and-seconds"),
        pytest.param("12ms", 0.012, id="milliseconds"),
        pytest.param("2m59.56s", 179.56, id="fractional-seconds"),
        pytest.param("1h0m0s", 3600.0, id="hours"),
        pytest.param("1h30m", 5400.0, id="hours-and-minutes"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param("500us", 0.0005, id="microseconds-ascii"),
        pytest.param(f"500{MICRO_SIGN}s", 0.0005, id="microseconds-micro-sign"),
        pytest.param("250ns", 2.5e-7, id="nanoseconds"),
        pytest.param("0.5", 0.5, id="bare-fraction-is-seconds"),
        pytest.param("7", 7.0, id="bare-integer-is-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(" 1s ", 1.0, id="surrounding-space"),
        pytest.param(f"{MICRO_SIGN}s", None, id="unit-without-number"),
        pytest.param("s", None, id="bare-unit"),
        pytest.param("garbage", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param("-1", None, id="negative-number"),
        pytest.param("-1s", None, id="negative-duration"),
        pytest.param("1x", None, id="unknown-unit"),
        pytest.param("1s2", None, id="trailing-number"),
        pytest.param("1m 1s", None, id="space-inside"),
        pytest.param("nan", None, id="nan"),
    ],
)
def test_parse_duration_s(text: str, expected: float | None) -> None:
    if expected is None:
        assert parse_duration_s(text) is None
    else:
        assert parse_duration_s(text) == pytest.approx(expected, rel=1e-12)


def headers(**values: str) -> CIMultiDict[str]:
    """`limit_requests="600"` becomes `x-ratelimit-limit-requests: 600`."""
    return CIMultiDict(
        {f"x-ratelimit-{name.replace('_', '-')}": value for name, value in values.items()}
    )


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(CIMultiDict(), id="no-headers"),
        pytest.param(
            headers(remaining_requests="5", reset_requests="1s", remaining_tokens="9"),
            id="remaining-and-reset-without-limit",
        ),
        pytest.param(CIMultiDict({"content-type": "application/json"}), id="unrelated"),
    ],
)
def test_no_limit_header_means_no_rate_information(given: CIMultiDict[str]) -> None:
    assert parse_rate_headers(given) is None


def test_all_six_headers_fill_both_buckets() -> None:
    given = headers(
        limit_requests="600",
        remaining_requests="599",
        reset_requests="100ms",
        limit_tokens="150000",
        remaining_tokens="149000",
        reset_tokens="2m59.56s",
    )

    parsed = parse_rate_headers(given)

    assert parsed == RateLimitHeaders(
        requests=Bucket(600.0, 599.0, pytest.approx(0.1)),
        tokens=Bucket(150000.0, 149000.0, pytest.approx(179.56)),
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            headers(limit_tokens="90000"),
            RateLimitHeaders(EMPTY, Bucket(90000.0, None, None)),
            id="only-token-limit",
        ),
        pytest.param(
            headers(limit_requests="60", remaining_requests="3"),
            RateLimitHeaders(Bucket(60.0, 3.0, None), EMPTY),
            id="request-limit-and-remaining",
        ),
        pytest.param(
            headers(limit_requests="60", reset_tokens="1s"),
            RateLimitHeaders(Bucket(60.0, None, None), Bucket(None, None, 1.0)),
            id="reset-of-the-other-dimension",
        ),
    ],
)
def test_partial_headers_leave_missing_fields_none(
    given: CIMultiDict[str], expected: RateLimitHeaders
) -> None:
    assert parse_rate_headers(given) == expected


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("many", id="word"),
        pytest.param("", id="empty"),
        pytest.param("-5", id="negative"),
        pytest.param("nan", id="nan"),
        pytest.param("1,000", id="thousands-separator"),
        pytest.param("inf", id="infinite"),
        pytest.param("1e400", id="overflows-to-infinite"),
    ],
)
def test_bad_numbers_become_none_fields(bad: str) -> None:
    given = headers(
        limit_requests="600",
        remaining_requests=bad,
        reset_requests="1s",
        limit_tokens=bad,
        remaining_tokens="5",
        reset_tokens=bad,
    )

    assert parse_rate_headers(given) == RateLimitHeaders(
        Bucket(600.0, None, 1.0), Bucket(None, 5.0, None)
    )


def test_header_names_match_case_insensitively() -> None:
    given = CIMultiDict(
        {
            "X-RateLimit-Limit-Requests": "600",
            "X-RATELIMIT-REMAINING-REQUESTS": "12",
            "x-Ratelimit-Reset-Requests": "6m0s",
            "X-Ratelimit-Limit-Tokens": "1000",
        }
    )

    assert parse_rate_headers(given) == RateLimitHeaders(
        Bucket(600.0, 12.0, 360.0), Bucket(1000.0, None, None)
    )
