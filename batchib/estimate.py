"""`batchib estimate` (and `run --dry-run`): price a job before paying for it.

Nothing is sent and no key is needed. Every line is validated exactly as `run` does
(same errors, same line numbers); prompts are counted offline (see :mod:`batchib.tokens`);
completions are bounded by each line's `max_tokens`/`max_completion_tokens` (or
`--assume-max-tokens`), and expected from `--expected-completion-tokens`. Costs come
from a price table keyed by the requested model (the served one is not known yet).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchib.inputs import InvalidLine, Request
from batchib.pricing import Price, PriceTable
from batchib.results import SUCCEEDED, read_records
from batchib.tokens import estimate_prompt_tokens, max_completion_tokens


@dataclass(frozen=True)
class EstimateSettings:
    expected_completion_tokens: int | None = None  # per choice
    assume_max_tokens: int | None = None  # per choice, for lines without a cap
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    concurrency: int = 16
    latency_s: float = 2.0  # assumed time per request
    # Completion tokens per choice by requested model, learnt from a previous run's
    # results (--calibrate-from); wins over expected_completion_tokens for its models.
    calibration: Calibration | None = None

    def expected_per_choice(self, model: str) -> float | None:
        if self.calibration is not None and model in self.calibration.per_choice:
            return self.calibration.per_choice[model]
        return self.expected_completion_tokens


@dataclass
class ModelEstimate:
    requests: int = 0
    prompt_tokens: int = 0
    completion_min: int = 0
    completion_expected: float = 0.0
    expected_known: bool = True  # every request had an expected length
    completion_max: int = 0
    unbounded: int = 0  # requests with no completion cap at all
    # What the requests count against tokens per minute: the prompt plus the line's own
    # cap (what the run reserves and the gateway charges), else the expected reply.
    paced_tokens: float = 0.0

    def add(
        self,
        prompt: int,
        choices: int,
        cap: int | None,
        settings: EstimateSettings,
        expected: float | None,
    ) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.completion_min += choices  # at least one token per choice
        self.paced_tokens += prompt + (cap if cap is not None else (expected or 0.0) * choices)
        if cap is None and settings.assume_max_tokens is not None:
            cap = settings.assume_max_tokens * choices
        if cap is None:
            self.unbounded += 1
        else:
            self.completion_max += cap
        if expected is None:
            self.expected_known = False
        else:
            self.completion_expected += min(expected * choices, cap) if cap else expected * choices

    def as_dict(
        self, settings: EstimateSettings, prices: PriceTable | None, model: str
    ) -> dict[str, Any]:
        completion_max: int | None = None if self.unbounded else self.completion_max
        expected = round(self.completion_expected) if self.expected_known else None
        result: dict[str, Any] = {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": {
                "min": self.completion_min,
                "expected": expected,
                "max": completion_max,
                "unbounded_requests": self.unbounded,
            },
        }
        price = prices.price_for(model) if prices is not None else None
        if prices is not None:
            result["cost_usd"] = (
                None
                if price is None
                else {
                    "min": _cost(price, self.prompt_tokens, self.completion_min, self.requests),
                    "expected": None
                    if expected is None
                    else _cost(price, self.prompt_tokens, expected, self.requests),
                    "max": None
                    if completion_max is None
                    else _cost(price, self.prompt_tokens, completion_max, self.requests),
                }
            )
        return result


def _cost(price: Price, prompt: int, completion: int, requests: int) -> float:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    # The per-request fee applies per response; cost_usd adds it once.
    return round(price.cost_usd(usage) + price.per_request * (requests - 1), 9)


@dataclass
class Estimate:
    settings: EstimateSettings
    prices: PriceTable | None
    by_model: dict[str, ModelEstimate] = field(default_factory=dict)
    invalid: list[InvalidLine] = field(default_factory=list)
    invalid_count: int = 0

    def add(self, item: Request | InvalidLine) -> None:
        if isinstance(item, InvalidLine):
            self.invalid_count += 1
            if len(self.invalid) < 100:
                self.invalid.append(item)
            return
        cap = max_completion_tokens(item.body)
        n = item.body.get("n", 1)
        choices = n if isinstance(n, int) and n > 0 else 1
        self.by_model.setdefault(item.model, ModelEstimate()).add(
            estimate_prompt_tokens(item.body),
            choices,
            cap,
            self.settings,
            self.settings.expected_per_choice(item.model),
        )

    def as_dict(self) -> dict[str, Any]:
        models = {
            name: figures.as_dict(self.settings, self.prices, name)
            for name, figures in sorted(self.by_model.items())
        }
        total = ModelEstimate()
        for figures in self.by_model.values():
            total.requests += figures.requests
            total.prompt_tokens += figures.prompt_tokens
            total.completion_min += figures.completion_min
            total.completion_expected += figures.completion_expected
            total.expected_known = total.expected_known and figures.expected_known
            total.completion_max += figures.completion_max
            total.unbounded += figures.unbounded
            total.paced_tokens += figures.paced_tokens
        summary = total.as_dict(self.settings, None, "")
        costs = [m.get("cost_usd") for m in models.values()] if self.prices else []
        if self.prices is not None:
            summary["cost_usd"] = {
                key: _sum_or_none([c[key] if c else None for c in costs])
                for key in ("min", "expected", "max")
            }
            summary["unpriced_models"] = [m for m, v in models.items() if v["cost_usd"] is None]
        summary["wall_time_s"] = self._wall_time_s(total)
        return {
            "total": summary,
            "by_model": models,
            "invalid_lines": self.invalid_count,
            "invalid_examples": [
                {"file": i.file, "line": i.line, "code": i.code, "message": i.message}
                for i in self.invalid[:20]
            ],
            "assumptions": {
                "expected_completion_tokens": self.settings.expected_completion_tokens,
                "calibrated_models": sorted(
                    self.settings.calibration.per_choice if self.settings.calibration else {}
                ),
                "calibration": _calibration_dict(self.settings.calibration),
                "assume_max_tokens": self.settings.assume_max_tokens,
                "requests_per_minute": self.settings.requests_per_minute,
                "tokens_per_minute": self.settings.tokens_per_minute,
                "concurrency": self.settings.concurrency,
                "latency_s": self.settings.latency_s,
                "price_table": None if self.prices is None else self.prices.source,
            },
        }

    def _wall_time_s(self, total: ModelEstimate) -> float | None:
        """The slowest of the limits. Concurrency: the requests go in waves of -c, each
        taking the latency. A rate (rpm, or tpm at the tokens a request counts against
        it: prompt plus its own cap, else its expected reply): the last request starts
        (N - 1) / rate after the first and takes the latency too."""
        requests = total.requests
        if not requests:
            return 0.0
        settings = self.settings
        latency = settings.latency_s
        waves = math.ceil(requests / settings.concurrency) * latency
        rates = []
        if settings.requests_per_minute:
            rates.append(settings.requests_per_minute / 60)
        if settings.tokens_per_minute:
            per_request = total.paced_tokens / requests
            if per_request > 0:
                rates.append(settings.tokens_per_minute / 60 / per_request)
        paced = (requests - 1) / min(rates) + latency if rates else 0.0
        return round(max(waves, paced), 1)


@dataclass(frozen=True)
class Calibration:
    """What a previous run's successes say about reply lengths, by requested model."""

    per_choice: dict[str, float]  # completion tokens per choice: the expected length
    per_prompt_token: dict[str, float]  # completion tokens per prompt token, for reference


def calibrate(paths: Iterable[Path]) -> Calibration:
    """Reply lengths over the successes in results files of a previous run."""
    tokens: dict[str, int] = {}
    prompts: dict[str, int] = {}
    choices: dict[str, int] = {}
    for path in paths:
        for record in read_records(path):
            own = record.get("batchib") if record else None
            if not isinstance(own, dict) or own.get("status") != SUCCEEDED or record is None:
                continue
            response = record.get("response")
            body = response.get("body") if isinstance(response, dict) else None
            usage = body.get("usage") if isinstance(body, dict) else None
            model = own.get("requested_model")
            if not isinstance(usage, dict) or not isinstance(model, str) or body is None:
                continue
            completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
            if isinstance(completion, int):
                tokens[model] = tokens.get(model, 0) + completion
                prompts[model] = prompts.get(model, 0) + (prompt if isinstance(prompt, int) else 0)
                choices[model] = choices.get(model, 0) + max(1, len(body.get("choices") or ()))
    return Calibration(
        {model: tokens[model] / choices[model] for model in tokens if choices[model]},
        {model: round(tokens[model] / prompts[model], 4) for model in tokens if prompts[model]},
    )


def _calibration_dict(calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {
        "completion_tokens_per_choice": {
            model: round(value, 2) for model, value in calibration.per_choice.items()
        },
        "completion_tokens_per_prompt_token": calibration.per_prompt_token,
    }


def _sum_or_none(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return round(math.fsum(v for v in values if v is not None), 9)


def estimate(
    items: Iterable[Request | InvalidLine],
    settings: EstimateSettings,
    prices: PriceTable | None,
) -> dict[str, Any]:
    result = Estimate(settings, prices)
    for item in items:
        result.add(item)
    return result.as_dict()
