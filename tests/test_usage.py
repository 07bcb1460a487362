"""Run aggregation: token usage, the latency histogram, run counts and the summary figures."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from batchib.pricing import Price, PriceTable, Spend
from batchib.usage import LatencyHistogram, RunStats, TokenUsage, summarise

ZERO = {
    "requests": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
}


def usage(
    prompt: int, completion: int, cached: int | None = None, reasoning: int | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        value["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    if reasoning is not None:
        value["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return value


def totals(**counts: int) -> dict[str, int]:
    return ZERO | counts


# --- token usage ----------------------------------------------------------------------------


def test_token_usage_sums_counts_and_details() -> None:
    total = TokenUsage()

    total.add(usage(100, 20, cached=64, reasoning=8))
    total.add(usage(50, 5, cached=0, reasoning=3))
    total.add(usage(7, 1))

    assert total.as_dict() == {
        "requests": 3,
        "prompt_tokens": 157,
        "completion_tokens": 26,
        "total_tokens": 183,
        "cached_tokens": 64,
        "reasoning_tokens": 11,
    }


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        pytest.param({}, totals(requests=1), id="empty"),
        pytest.param({"prompt_tokens": None}, totals(requests=1), id="null"),
        pytest.param({"prompt_tokens": True}, totals(requests=1), id="bool"),
        pytest.param({"completion_tokens": 3.0}, totals(requests=1), id="float"),
        pytest.param({"total_tokens": "12"}, totals(requests=1), id="string"),
        pytest.param({"prompt_tokens_details": 5}, totals(requests=1), id="details-not-object"),
        pytest.param(
            {"prompt_tokens_details": {"cached_tokens": False}},
            totals(requests=1),
            id="cached-bool",
        ),
        pytest.param(
            {"completion_tokens_details": {"reasoning_tokens": "2"}},
            totals(requests=1),
            id="reasoning-string",
        ),
        pytest.param(
            {"prompt_tokens": 9, "completion_tokens": True, "total_tokens": 9.5},
            totals(requests=1, prompt_tokens=9),
            id="mixed",
        ),
    ],
)
def test_token_usage_ignores_missing_and_non_integer_values(
    reported: dict[str, Any], expected: dict[str, int]
) -> None:
    total = TokenUsage()

    total.add(reported)

    assert total.as_dict() == expected


# --- latency histogram -----------------------------------------------------------------------

ONE_TO_THOUSAND_MS = [float(ms) for ms in range(1, 1001)]


def filled(latencies_ms: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    shuffled = list(latencies_ms)
    random.Random(7).shuffle(shuffled)
    for latency_ms in shuffled:
        histogram.add(latency_ms)
    return histogram


def exact_percentile(latencies_ms: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(latencies_ms)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def assert_within_one_percent_above(estimate: float | None, exact: float) -> None:
    """The histogram answers the upper edge of a 1% bucket: never below, at most 1% above
    (the slack is for floating-point rounding only)."""
    assert estimate is not None
    assert exact * (1 - 1e-12) <= estimate <= exact * 1.01 * (1 + 1e-12), (estimate, exact)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_percentile_is_within_one_percent_of_the_exact_value(fraction: float) -> None:
    histogram = filled(ONE_TO_THOUSAND_MS)

    exact = exact_percentile(ONE_TO_THOUSAND_MS, fraction)

    assert_within_one_percent_above(histogram.percentile(fraction), exact)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_percentile_is_within_one_percent_for_skewed_latencies(fraction: float) -> None:
    rng = random.Random(11)
    latencies_ms = [rng.lognormvariate(5.0, 1.2) for _ in range(5000)]
    histogram = filled(latencies_ms)

    exact = exact_percentile(latencies_ms, fraction)

    assert_within_one_percent_above(histogram.percentile(fraction), exact)


def test_histogram_max_and_count_are_exact() -> None:
    histogram = filled([*ONE_TO_THOUSAND_MS, 1234.5678])

    assert histogram.max_ms == 1234.5678
    assert histogram.count == 1001
    assert histogram.percentile(1.0) == 1234.5678
    assert histogram.as_dict()["max"] == 1234.6


def test_histogram_memory_does_not_grow_with_the_number_of_latencies() -> None:
    histogram = filled(ONE_TO_THOUSAND_MS)
    buckets = len(histogram.buckets)

    for _ in range(9):
        for latency_ms in ONE_TO_THOUSAND_MS:
            histogram.add(latency_ms)

    assert len(histogram.buckets) == buckets
    assert histogram.count == 10_000
    assert buckets <= math.ceil(math.log(1000) / math.log(1.01)) + 1


def test_empty_histogram_has_no_percentiles() -> None:
    histogram = LatencyHistogram()

    assert histogram.percentile(0.5) is None
    assert histogram.as_dict() == {"p50": None, "p90": None, "p99": None, "max": None}


def test_single_latency_is_every_percentile() -> None:
    histogram = LatencyHistogram()
    histogram.add(42.0)

    assert histogram.as_dict() == {"p50": 42.0, "p90": 42.0, "p99": 42.0, "max": 42.0}


# --- run stats and the summary ---------------------------------------------------------------


def completion(served: str | None, reasons: list[str], tokens: dict[str, Any] | None) -> dict:
    body: dict[str, Any] = {
        "choices": [{"index": i, "finish_reason": reason} for i, reason in enumerate(reasons)]
    }
    if served is not None:
        body["model"] = served
    if tokens is not None:
        body["usage"] = tokens
    return body


def test_add_success_keys_usage_by_requested_and_served_model() -> None:
    stats = RunStats()

    stats.add_success("gpt-4.1", completion("gpt-4.1-2025-04-14", ["stop"], usage(10, 2)))
    stats.add_success("gpt-4.1", completion("gpt-4.1-2025-04-14", ["stop"], usage(20, 4)))
    stats.add_success("gpt-mini", completion("gpt-4.1-2025-04-14", ["stop"], usage(1, 1)))
    stats.add_success("gpt-mini", completion(None, ["stop"], usage(5, 5, cached=2)))

    assert stats.succeeded == 4
    assert stats.total.as_dict() == totals(
        requests=4, prompt_tokens=36, completion_tokens=12, total_tokens=48, cached_tokens=2
    )
    assert {k: v.as_dict() for k, v in stats.by_requested_model.items()} == {
        "gpt-4.1": totals(requests=2, prompt_tokens=30, completion_tokens=6, total_tokens=36),
        "gpt-mini": totals(
            requests=2, prompt_tokens=6, completion_tokens=6, total_tokens=12, cached_tokens=2
        ),
    }
    assert {k: v.as_dict() for k, v in stats.by_served_model.items()} == {
        "gpt-4.1-2025-04-14": totals(
            requests=3, prompt_tokens=31, completion_tokens=7, total_tokens=38
        ),
        "(unknown)": totals(
            requests=1, prompt_tokens=5, completion_tokens=5, total_tokens=10, cached_tokens=2
        ),
    }


def test_add_success_counts_finish_reasons_over_all_choices() -> None:
    stats = RunStats()

    stats.add_success("m", completion("m", ["stop", "length", "stop"], usage(1, 1)))
    stats.add_success("m", completion("m", ["tool_calls"], None))
    stats.add_success("m", completion("m", [], usage(1, 0)))

    assert stats.finish_reasons == Counter({"stop": 2, "length": 1, "tool_calls": 1})
    assert stats.succeeded == 3


def test_success_without_usage_counts_but_adds_no_tokens() -> None:
    stats = RunStats()

    stats.add_success("m", completion("m", ["stop"], None))

    assert stats.succeeded == 1
    assert stats.total.as_dict() == ZERO
    assert stats.by_requested_model == {}
    assert stats.by_served_model == {}


def test_summarise_counts_what_was_read_sent_and_not_sent() -> None:
    stats = RunStats(
        read=12, skipped=1, queued=8, input_complete=True, attempts=9, retries=2, rate_limited=1
    )
    stats.add_invalid("invalid_json")
    stats.add_invalid("invalid_json")
    stats.add_invalid("missing_model")
    for _ in range(4):
        stats.add_success("m", completion("m-served", ["stop"], usage(10, 15)))
    stats.add_failure("rate_limit_exceeded")
    stats.add_failure(None)
    stats.latency.add(250.0)

    figures = summarise(stats, wall_time_s=4.0)

    assert figures["counts"] == {
        "lines": 12,
        "invalid_lines": 3,
        "skipped_already_done": 1,
        "sent": 6,
        "succeeded": 4,
        "failed": 2,
        "cancelled_in_flight": 0,
        "not_sent": 2,
        "input_complete": True,
    }
    assert (figures["attempts"], figures["retries"], figures["rate_limited_429"]) == (9, 2, 1)
    assert figures["failures_by_code"] == {
        "invalid_json": 2,
        "missing_model": 1,
        "rate_limit_exceeded": 1,
        "unknown": 1,
    }
    assert figures["usage"]["total"] == totals(
        requests=4, prompt_tokens=40, completion_tokens=60, total_tokens=100
    )
    assert list(figures["usage"]["by_requested_model"]) == ["m"]
    assert list(figures["usage"]["by_served_model"]) == ["m-served"]
    assert figures["finish_reasons"] == {"stop": 4}
    assert figures["latency_ms"] == {"p50": 250.0, "p90": 250.0, "p99": 250.0, "max": 250.0}
    assert figures["throughput"] == {"requests_per_s": 1.5, "tokens_per_s": 25.0}
    assert figures["wall_time_s"] == 4.0


def test_summarise_with_no_wall_time_reports_zero_throughput() -> None:
    figures = summarise(RunStats(queued=3), wall_time_s=0.0)

    assert figures["throughput"] == {"requests_per_s": 0.0, "tokens_per_s": 0.0}
    assert figures["counts"]["not_sent"] == 3
    assert figures["counts"]["sent"] == 0
    assert figures["counts"]["input_complete"] is False


@pytest.mark.parametrize(("without_usage", "complete"), [(0, True), (1, False)])
def test_a_2xx_without_usage_makes_the_cost_incomplete(without_usage: int, complete: bool) -> None:
    table = PriceTable({"m": Price(input=1.0, output=1.0, cached_input=1.0)})
    stats = RunStats(spend=Spend(table), answers_without_usage=without_usage)
    stats.add_success("m", {"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    figures = summarise(stats, wall_time_s=1.0)

    assert figures["answers_without_usage"] == without_usage
    assert figures["cost"]["complete"] is complete
    assert figures["cost"]["usd"] == pytest.approx(2e-6)
