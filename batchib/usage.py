"""Aggregation of a run: counts, token usage by model, finish reasons, latency.

Memory is fixed: latencies go into a log-bucketed histogram (1% resolution), never a
list, so a run of ten million requests costs the same as a run of ten.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from batchib.pricing import Spend

LATENCY_RESOLUTION = 1.01  # each histogram bucket spans 1%
_LOG_RESOLUTION = math.log(LATENCY_RESOLUTION)


@dataclass
class TokenUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        self.add_counts(usage_counts(usage))

    def add_counts(self, counts: tuple[int, int, int, int, int]) -> None:
        """Add one response's :func:`usage_counts` (read once, added to several totals)."""
        prompt, completion, total, cached, reasoning = counts
        self.requests += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += total
        self.cached_tokens += cached
        self.reasoning_tokens += reasoning

    def add_usage(self, other: TokenUsage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """A usage object's prompt, completion, total, cached and reasoning tokens; a field
    that is missing or not an integer counts 0."""
    return (
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(usage.get("total_tokens")),
        _int(_detail(usage, "prompt_tokens_details", "cached_tokens")),
        _int(_detail(usage, "completion_tokens_details", "reasoning_tokens")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _detail(usage: dict[str, Any], group: str, key: str) -> Any:
    details = usage.get(group)
    return details.get(key) if isinstance(details, dict) else None


@dataclass
class LatencyHistogram:
    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    max_ms: float = 0.0

    def add(self, latency_ms: float) -> None:
        self.buckets[math.floor(math.log(max(latency_ms, 0.001)) / _LOG_RESOLUTION)] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, latency_ms)

    def percentile(self, fraction: float) -> float | None:
        """Upper edge of the bucket holding the given fraction (within 1% of the truth)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(LATENCY_RESOLUTION ** (bucket + 1), self.max_ms)
        return self.max_ms

    def as_dict(self) -> dict[str, float | None]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "p50": rounded(self.percentile(0.50)),
            "p90": rounded(self.percentile(0.90)),
            "p99": rounded(self.percentile(0.99)),
            "max": rounded(self.max_ms if self.count else None),
        }


@dataclass
class RunStats:
    """Everything counted while a run goes; the summary is made from it."""

    read: int = 0  # non-blank input lines
    invalid: int = 0
    skipped: int = 0  # already done in a previous run
    queued: int = 0
    input_complete: bool = False  # the reader reached the end of every input
    reorder_window_full: int = 0  # times --order input had to stop reading ahead
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    # Requests whose attempt was under way when the grace period ended and was cut off:
    # it may have reached the gateway (and be billed), but has no result.
    cancelled_in_flight: int = 0
    # 2xx answers (any attempt) that did not say what they used: no usage, or a body cut
    # off. Billed, most likely, for an amount nobody knows: the cost is then incomplete.
    answers_without_usage: int = 0
    rate_limited: int = 0  # 429 answers, any attempt
    # Offline estimate of the prompts that got a usage back: compare to usage totals.
    estimated_prompt_tokens: int = 0
    # How many of those estimates each counter made ("o200k_base", "chars/4", ...).
    estimated_with: Counter[str] = field(default_factory=Counter)
    failures_by_code: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    # Usage per (requested model, served model): one tally per response. The totals and
    # the per-model views are sums made when asked (progress, summary), not per response.
    usage_by_models: dict[tuple[str, str], TokenUsage] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    spend: Spend | None = None  # with a price table: cost so far

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def total(self) -> TokenUsage:
        return _summed(self.usage_by_models.values())

    @property
    def by_requested_model(self) -> dict[str, TokenUsage]:
        return _grouped(self.usage_by_models, 0)

    @property
    def by_served_model(self) -> dict[str, TokenUsage]:
        return _grouped(self.usage_by_models, 1)

    @property
    def not_sent(self) -> int:
        """Requests taken from the input that were never sent (stopped or interrupted)."""
        return self.queued - self.finished - self.cancelled_in_flight

    def add_success(
        self,
        requested_model: str,
        body: dict[str, Any],
        prompt_estimate: int = 0,
        estimator: str = "chars/4",
    ) -> None:
        self.succeeded += 1
        usage = body.get("usage")
        if isinstance(usage, dict):
            self.estimated_prompt_tokens += prompt_estimate
            self.estimated_with[estimator] += 1
            served = body.get("model")
            served_model = served if isinstance(served, str) else "(unknown)"
            key = (requested_model, served_model)
            # Not setdefault(key, TokenUsage()): that builds a TokenUsage every call.
            tally = self.usage_by_models.get(key)
            if tally is None:
                tally = self.usage_by_models[key] = TokenUsage()
            tally.add_counts(usage_counts(usage))
            if self.spend is not None:
                self.spend.add(requested_model, served_model, usage)
        for choice in body.get("choices") or ():
            if isinstance(choice, dict):
                reason = choice.get("finish_reason")
                self.finish_reasons[reason if isinstance(reason, str) else "unknown"] += 1

    def add_failure(self, code: str | None) -> None:
        self.failed += 1
        self.failures_by_code[code or "unknown"] += 1

    def add_invalid(self, code: str) -> None:
        self.invalid += 1
        self.failures_by_code[code] += 1


def _summed(tallies: Iterable[TokenUsage]) -> TokenUsage:
    total = TokenUsage()
    for tally in tallies:
        total.add_usage(tally)
    return total


def _grouped(by_models: dict[tuple[str, str], TokenUsage], which: int) -> dict[str, TokenUsage]:
    """Tallies summed by the requested (0) or served (1) model."""
    groups: dict[str, list[TokenUsage]] = {}
    for key, tally in by_models.items():
        groups.setdefault(key[which], []).append(tally)
    return {model: _summed(tallies) for model, tallies in groups.items()}


def summarise(stats: RunStats, wall_time_s: float) -> dict[str, Any]:
    """The summary's figures (the caller adds who, where, when and the exit status)."""
    per_s = stats.finished / wall_time_s if wall_time_s > 0 else 0.0
    tokens_per_s = stats.total.total_tokens / wall_time_s if wall_time_s > 0 else 0.0
    return {
        "counts": {
            "lines": stats.read,
            "invalid_lines": stats.invalid,
            "skipped_already_done": stats.skipped,
            "sent": stats.finished,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "cancelled_in_flight": stats.cancelled_in_flight,
            "not_sent": stats.not_sent,
            "input_complete": stats.input_complete,
        },
        "reorder_window_full": stats.reorder_window_full,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "rate_limited_429": stats.rate_limited,
        "failures_by_code": dict(stats.failures_by_code.most_common()),
        "usage": {
            "total": stats.total.as_dict(),
            "by_requested_model": {
                k: v.as_dict() for k, v in sorted(stats.by_requested_model.items())
            },
            "by_served_model": {k: v.as_dict() for k, v in sorted(stats.by_served_model.items())},
        },
        "token_estimate": {
            "prompt_tokens_estimated": stats.estimated_prompt_tokens,
            "prompt_tokens_reported": stats.total.prompt_tokens,
            "requests_by_counter": dict(stats.estimated_with.most_common()),
        },
        "answers_without_usage": stats.answers_without_usage,
        "cost": None if stats.spend is None else _cost(stats),
        "finish_reasons": dict(stats.finish_reasons.most_common()),
        "latency_ms": stats.latency.as_dict(),
        "throughput": {
            "requests_per_s": round(per_s, 2),
            "tokens_per_s": round(tokens_per_s, 1),
        },
        "wall_time_s": round(wall_time_s, 3),
    }


def _cost(stats: RunStats) -> dict[str, Any]:
    assert stats.spend is not None
    cost = stats.spend.as_dict()
    # A 2xx that said nothing of its usage was likely billed: the sum cannot be complete.
    cost["complete"] = cost["complete"] and not stats.answers_without_usage
    return cost
