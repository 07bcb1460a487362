"""Settings of the gateway simulator, validated once when they are built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_MODELS: Mapping[str, str] = MappingProxyType(
    {
        "gpt-5.4": "gpt-5.4-2026-03-01",
        "gpt-5.4-mini": "gpt-5.4-mini-2026-03-01",
        "gpt-4.1": "gpt-4.1-2025-04-14",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    }
)


@dataclass(frozen=True)
class SimulatorSettings:
    """How the simulated gateway behaves.

    Attributes:
        latency_ms: mean simulated model latency per completion; 0 answers at once.
        latency_spread: latency is drawn uniformly from
            ``latency_ms * (1 - spread) .. latency_ms * (1 + spread)``; between 0 and 1.
        models: alias -> served (dated) model name. A served name is also accepted as a
            model and served as itself.
        require_key: the only bearer key accepted; ``None`` accepts any non-empty key.
        seed: seeds the latency draws and the generated replies.
        default_completion_tokens: longest natural reply, in tokens, when the request
            sets no token limit.
    """

    latency_ms: float = 0.0
    latency_spread: float = 0.5
    models: Mapping[str, str] = field(default_factory=lambda: DEFAULT_MODELS)
    # repr=False: the key must never reach a log line through a settings dump.
    require_key: str | None = field(default=None, repr=False)
    seed: int = 0
    default_completion_tokens: int = 64

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {self.latency_ms!r}")
        if not 0 <= self.latency_spread <= 1:
            raise ValueError(f"latency_spread must be between 0 and 1, got {self.latency_spread!r}")
        if not self.models:
            raise ValueError("models must name at least one model")
        for alias, served in self.models.items():
            if not (isinstance(alias, str) and alias and isinstance(served, str) and served):
                raise ValueError(
                    f"models must map non-empty names to non-empty names, got {alias!r}: {served!r}"
                )
        if self.require_key is not None and not self.require_key.strip():
            raise ValueError("require_key must be a non-empty key, or None to accept any key")
        if self.default_completion_tokens < 1:
            raise ValueError(
                f"default_completion_tokens must be >= 1, got {self.default_completion_tokens!r}"
            )
        # A private read-only copy, so the caller mutating its dict cannot change a
        # running simulator behind the frozen dataclass's back.
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def served_model(self, name: str) -> str | None:
        """The model that answers for ``name`` (an alias or a served name), or None."""
        if name in self.models:
            return self.models[name]
        if name in self.models.values():
            return name
        return None

    def model_ids(self) -> list[str]:
        """Every accepted model name: the aliases, then the served names, without repeats."""
        return list(dict.fromkeys([*self.models, *self.models.values()]))
