"""Price tables and the cost of a response.

A table is TOML: `[models."NAME-OR-GLOB"]` with USD per million tokens — `input`,
`cached_input` (defaults to `input`), `output` — and an optional `per_request` fee.
An exact name wins over a glob, a longer glob over a shorter one, so `gpt-5.4*` can
cover every dated model a gateway serves under that alias. Costs are keyed by the
*served* model. A model with no price is reported as unpriced, never as free.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from batchib.errors import ConfigError

PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached_input: float
    per_request: float = 0.0

    def cost_usd(self, usage: Mapping[str, Any]) -> float:
        """Cost of one response's usage: cached prompt tokens at the cached rate, the
        rest of the prompt at the input rate, completion (reasoning included, every
        choice of n > 1 included, as `usage` reports them) at the output rate."""
        prompt = _count(usage.get("prompt_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        cached = min(cached, prompt)
        completion = _count(usage.get("completion_tokens"))
        return (
            (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        ) / PER_MILLION + self.per_request


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, eq=False)  # hashed by identity: lookups are cached per table
class PriceTable:
    prices: Mapping[str, Price]
    source: str = ""

    def price_for(self, model: str) -> Price | None:
        return _lookup(self, model)

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the price table {path}: {exc}") from exc
        models = data.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(f'{path}: no [models."NAME"] tables')
        prices = {}
        for name, entry in models.items():
            prices[name] = _price(path, name, entry)
        meta = data.get("meta", {})
        source = " ".join(str(meta.get(key, "")) for key in ("source", "date")).strip()
        return cls(prices, source)


def _price(path: Path, name: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: models.{name!r} must be a table")
    unknown = set(entry) - {"input", "output", "cached_input", "per_request", "note"}
    if unknown:
        raise ConfigError(f"{path}: models.{name!r}: unknown keys {', '.join(sorted(unknown))}")
    values: dict[str, float] = {}
    for key in ("input", "output", "cached_input", "per_request"):
        value = entry.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (value >= 0 and math.isfinite(value))
        ):
            raise ConfigError(f"{path}: models.{name!r}.{key} must be a number >= 0")
        values[key] = float(value)
    for key in ("input", "output"):
        if key not in values:
            raise ConfigError(f"{path}: models.{name!r} needs `{key}` (USD per 1M tokens)")
    return Price(
        input=values["input"],
        output=values["output"],
        cached_input=values.get("cached_input", values["input"]),
        per_request=values.get("per_request", 0.0),
    )


@cache
def _lookup(table: PriceTable, model: str) -> Price | None:
    if model in table.prices:
        return table.prices[model]
    matches = [pattern for pattern in table.prices if fnmatch.fnmatchcase(model, pattern)]
    if not matches:
        return None
    return table.prices[max(matches, key=len)]


@dataclass
class Spend:
    """Cost so far, by requested and by served model; unpriced models kept apart."""

    table: PriceTable
    usd: float = 0.0
    by_requested_model: dict[str, float] = field(default_factory=dict)
    by_served_model: dict[str, float] = field(default_factory=dict)
    unpriced: dict[str, int] = field(default_factory=dict)  # served model -> responses

    def add(self, requested: str, served: str, usage: Mapping[str, Any]) -> None:
        price = self.table.price_for(served)
        if price is None:
            self.unpriced[served] = self.unpriced.get(served, 0) + 1
            return
        cost = price.cost_usd(usage)
        self.usd += cost
        self.by_requested_model[requested] = self.by_requested_model.get(requested, 0.0) + cost
        self.by_served_model[served] = self.by_served_model.get(served, 0.0) + cost

    def as_dict(self) -> dict[str, Any]:
        def rounded(values: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 9) for k, v in sorted(values.items())}

        return {
            "usd": round(self.usd, 9),
            "complete": not self.unpriced,
            "by_requested_model": rounded(self.by_requested_model),
            "by_served_model": rounded(self.by_served_model),
            "unpriced_models": dict(sorted(self.unpriced.items())),
            "price_table": self.table.source,
        }
