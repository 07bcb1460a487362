"""Classifying an HTTP answer: success, retry, give up on this request, or stop the run."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from batchib.client import classify
from batchib.reply import Verdict

NOW_S = 1_445_412_450.0
COMPLETION = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop"}]}
NO_COMPLETION = "a 2xx answer without a completion body"


def error(message: str, kind: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


RATE_LIMITED = error("Rate limit reached", "requests", "rate_limit_exceeded")

CASES = [
    # success and broken successes
    pytest.param(200, {}, COMPLETION, "", (Verdict.SUCCESS, None, None, None), id="200"),
    pytest.param(
        201, {}, {"choices": []}, "", (Verdict.SUCCESS, None, None, None), id="201-empty-choices"
    ),
    pytest.param(
        200,
        {},
        {"object": "chat.completion"},
        "",
        (Verdict.RETRY, "invalid_response", NO_COMPLETION, None),
        id="200-without-choices",
    ),
    pytest.param(
        200,
        {},
        {"choices": None},
        "",
        (Verdict.RETRY, "invalid_response", NO_COMPLETION, None),
        id="200-choices-null",
    ),
    pytest.param(
        200,
        {},
        None,
        "<html>ok</html>",
        (Verdict.RETRY, "invalid_response", NO_COMPLETION, None),
        id="200-not-json",
    ),
    # every further request would fail the same way
    pytest.param(
        401,
        {},
        error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
        "",
        (Verdict.STOP_RUN, "invalid_api_key", "Incorrect API key provided", None),
        id="401",
    ),
    pytest.param(
        403,
        {},
        error("Not allowed", "permission_error"),
        "",
        (Verdict.STOP_RUN, "permission_error", "Not allowed", None),
        id="403-type-as-code",
    ),
    pytest.param(
        401,
        {"x-should-retry": "true", "retry-after": "1"},
        None,
        "Unauthorized",
        (Verdict.STOP_RUN, "http_401", "Unauthorized", None),
        id="401-ignores-retry-hints",
    ),
    pytest.param(
        429,
        {"retry-after": "1"},
        error("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
        "",
        (Verdict.STOP_RUN, "insufficient_quota", "You exceeded your current quota", None),
        id="429-insufficient-quota-code",
    ),
    pytest.param(
        429,
        {},
        error("No quota", "insufficient_quota"),
        "",
        (Verdict.STOP_RUN, "insufficient_quota", "No quota", None),
        id="429-insufficient-quota-type",
    ),
    pytest.param(
        429,
        {},
        error("No quota", "insufficient_quota", "quota_exceeded"),
        "",
        (Verdict.STOP_RUN, "quota_exceeded", "No quota", None),
        id="429-insufficient-quota-type-other-code",
    ),
    pytest.param(
        429,
        {},
        error("Out of credit", "billing_error", "credit_balance_exhausted"),
        "",
        (Verdict.STOP_RUN, "credit_balance_exhausted", "Out of credit", None),
        id="429-credit-balance-exhausted",
    ),
    # rate limits
    pytest.param(
        429,
        {"Retry-After": "2"},
        RATE_LIMITED,
        "",
        (Verdict.RETRY, "rate_limit_exceeded", "Rate limit reached", 2.0),
        id="429-retry-after",
    ),
    pytest.param(
        429,
        {"retry-after-ms": "350", "retry-after": "1"},
        RATE_LIMITED,
        "",
        (Verdict.RETRY, "rate_limit_exceeded", "Rate limit reached", 0.35),
        id="429-retry-after-ms",
    ),
    pytest.param(
        429,
        {},
        RATE_LIMITED,
        "",
        (Verdict.RETRY, "rate_limit_exceeded", "Rate limit reached", None),
        id="429-no-retry-after",
    ),
    pytest.param(
        429,
        {"retry-after": "120"},
        RATE_LIMITED,
        "",
        (Verdict.RETRY, "rate_limit_exceeded", "Rate limit reached", 120.0),
        id="429-retry-after-120-is-waited-for",
    ),
    pytest.param(
        429,
        {"retry-after": "121"},
        RATE_LIMITED,
        "",
        (
            Verdict.GIVE_UP,
            "rate_limit_exceeded",
            "Rate limit reached (server asked to retry after 121 s)",
            None,
        ),
        id="429-retry-after-121-gives-up",
    ),
    pytest.param(
        503,
        {"retry-after-ms": "121000", "x-should-retry": "true"},
        None,
        "",
        (Verdict.GIVE_UP, "http_503", "HTTP 503 (server asked to retry after 121 s)", None),
        id="503-retry-after-ms-121000-gives-up",
    ),
    # the server's x-should-retry wins over the status
    pytest.param(
        400,
        {"x-should-retry": "true"},
        error("Try again", "invalid_request_error"),
        "",
        (Verdict.RETRY, "invalid_request_error", "Try again", None),
        id="400-should-retry-true",
    ),
    pytest.param(
        400,
        {"X-Should-Retry": "true", "Retry-After": "3"},
        None,
        "",
        (Verdict.RETRY, "http_400", "HTTP 400", 3.0),
        id="400-should-retry-true-with-retry-after",
    ),
    pytest.param(
        500,
        {"x-should-retry": "false", "retry-after": "3"},
        error("Internal error", "server_error"),
        "",
        (Verdict.GIVE_UP, "server_error", "Internal error", None),
        id="500-should-retry-false",
    ),
    pytest.param(
        429,
        {"X-Should-Retry": "false"},
        RATE_LIMITED,
        "",
        (Verdict.GIVE_UP, "rate_limit_exceeded", "Rate limit reached", None),
        id="429-should-retry-false",
    ),
    # error body details
    pytest.param(
        400,
        {},
        error("max_tokens is too large", "BadRequestError", 400),
        "",
        (Verdict.GIVE_UP, "400", "max_tokens is too large", None),
        id="vllm-integer-code",
    ),
    pytest.param(
        502,
        {},
        None,
        "<html>Bad Gateway</html>",
        (Verdict.RETRY, "http_502", "<html>Bad Gateway</html>", None),
        id="non-json-body",
    ),
    pytest.param(
        504,
        {},
        None,
        "x" * 600,
        (Verdict.RETRY, "http_504", "x" * 500, None),
        id="long-raw-text-truncated",
    ),
    pytest.param(
        400,
        {},
        error("y" * 600, "invalid_request_error"),
        "",
        (Verdict.GIVE_UP, "invalid_request_error", "y" * 500, None),
        id="long-message-truncated",
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "raw_text", "expected"), CASES)
def test_classify_answers(
    status: int,
    headers: dict[str, str],
    body: dict[str, Any] | None,
    raw_text: str,
    expected: tuple[Verdict, str | None, str | None, float | None],
) -> None:
    assert classify(status, CIMultiDict(headers), body, raw_text, NOW_S) == expected


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify(status, CIMultiDict(), None, "", NOW_S) == (
        Verdict.RETRY,
        f"http_{status}",
        f"HTTP {status}",
        None,
    )


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_give_up_on_the_request(status: int) -> None:
    assert classify(status, CIMultiDict(), None, "", NOW_S) == (
        Verdict.GIVE_UP,
        f"http_{status}",
        f"HTTP {status}",
        None,
    )


def test_retry_after_http_date_is_measured_from_now() -> None:
    headers = CIMultiDict({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})

    assert classify(503, headers, None, "", NOW_S) == (Verdict.RETRY, "http_503", "HTTP 503", 30.0)


def test_402_payment_required_stops_the_run() -> None:
    body = {"error": {"message": "add credit", "type": "billing", "code": "payment_required"}}
    assert classify(402, CIMultiDict(), body, "", NOW_S) == (
        Verdict.STOP_RUN,
        "payment_required",
        "add credit",
        None,
    )


def test_error_given_as_a_bare_string_keeps_its_text() -> None:
    assert classify(404, CIMultiDict(), {"error": "Not found"}, "", NOW_S) == (
        Verdict.GIVE_UP,
        "http_404",
        "Not found",
        None,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"error": {"message": "no credit", "type": "x", "code": "insufficient_quota"}},
            (Verdict.STOP_RUN, "insufficient_quota", "no credit", None),
            id="out-of-credit-in-a-200",
        ),
        pytest.param(
            {"error": {"message": "overloaded", "type": "server_error", "code": None}},
            (
                Verdict.RETRY,
                "invalid_response",
                "a 2xx answer without a completion body: overloaded",
                None,
            ),
            id="other-error-in-a-200",
        ),
        pytest.param(
            {"id": "x"},
            (Verdict.RETRY, "invalid_response", "a 2xx answer without a completion body", None),
            id="no-choices",
        ),
    ],
)
def test_a_200_that_is_no_completion(
    body: dict[str, Any], expected: tuple[Verdict, str | None, str | None, float | None]
) -> None:
    assert classify(200, CIMultiDict(), body, "", NOW_S) == expected


def test_vllm_top_level_error_object_is_read() -> None:
    body = {"object": "error", "message": "quota", "type": "insufficient_quota", "code": 429}

    assert classify(429, CIMultiDict(), body, "", NOW_S) == (
        Verdict.STOP_RUN,
        "429",
        "quota",
        None,
    )
