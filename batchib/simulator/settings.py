"""Settings of the gateway simulator, validated once when they are built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_MODELS: Mapping[str, str] = MappingProxyType(
    {
        "gpt-5.4": "gpt-5.4-2026-03-01",
        "gpt-5.4-mini": "gpt-5.4-mini-2026-03-01",
        "gpt-4.1": "gpt-4.1-2025-04-14",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    }
)

# The probability fields of FaultRates, in the order a draw walks through them.
RATE_FIELDS = ("error_500", "error_502", "error_503", "drop", "hang", "truncate", "quota")
# Float sums such as 0.1 + 0.2 + 0.7 land a hair above 1.
_RATE_SUM_SLACK = 1e-9


@dataclass(frozen=True)
class FaultRates:
    """How often each injected fault happens: a probability per attempt.

    Attributes:
        error_500: answer 500 ``server_error``.
        error_502: answer 502 ``bad_gateway``.
        error_503: answer 503 ``server_is_overloaded``.
        drop: close the connection without answering.
        hang: wait ``hang_s`` before answering (past any sane client timeout).
        truncate: answer 200 with the first half of the body (not valid JSON).
        quota: answer 429 ``insufficient_quota``.
        revoke_after: after this many accepted completions requests with the first key
            the gateway sees, every further request with that key gets 401 (a key revoked
            mid-run; other keys stay valid, for the rerun); None never.
        hang_s: how long a hung request waits before it answers.
    """

    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    truncate: float = 0.0
    quota: float = 0.0
    revoke_after: int | None = None
    hang_s: float = 3600.0

    def __post_init__(self) -> None:
        for name, rate in self.rates().items():
            if not (isinstance(rate, int | float) and 0 <= rate <= 1):
                raise ValueError(f"fault rate {name} must be between 0 and 1, got {rate!r}")
        total = sum(self.rates().values())
        if total > 1 + _RATE_SUM_SLACK:
            raise ValueError(f"fault rates must add up to at most 1, got {total:g}")
        if self.revoke_after is not None and self.revoke_after < 0:
            raise ValueError(f"revoke_after must be >= 0 or None, got {self.revoke_after!r}")
        if not (math.isfinite(self.hang_s) and self.hang_s >= 0):
            raise ValueError(f"hang_s must be a finite number >= 0, got {self.hang_s!r}")

    def rates(self) -> dict[str, float]:
        """Each probability by field name, in declaration order (the order of the draw)."""
        return {name: getattr(self, name) for name in RATE_FIELDS}


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
        seed: seeds the latency draws, the fault draws and the generated replies.
        default_completion_tokens: longest natural reply, in tokens, when the request
            sets no token limit.
        rpm: requests per minute allowed per key; None for no limit.
        tpm: tokens per minute allowed per key; None for no limit.
        burst_s: how many seconds of the per-minute limits a full bucket holds; 60 lets a
            whole minute's worth through at once, smaller values model providers that
            enforce their limits over shorter windows.
        rate_headers: send the ``x-ratelimit-*`` headers; False makes clients infer limits.
        faults: the faults to inject.
        log_path: append one JSON line per completions request received to this file.
    """

    latency_ms: float = 0.0
    latency_spread: float = 0.5
    models: Mapping[str, str] = field(default_factory=lambda: DEFAULT_MODELS)
    # repr=False: the key must never reach a log line through a settings dump.
    require_key: str | None = field(default=None, repr=False)
    seed: int = 0
    default_completion_tokens: int = 64
    rpm: int | None = None
    tpm: int | None = None
    burst_s: float = 60.0
    rate_headers: bool = True
    # "real": count prompts with the real tokenizer when installed, as a gateway does;
    # "words": the simulator's own word rule (exact, dependency-free, for its tests).
    tokenizer: str = "real"
    faults: FaultRates = field(default_factory=FaultRates)
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if self.tokenizer not in ("real", "words"):
            raise ValueError(f"tokenizer must be 'real' or 'words', got {self.tokenizer!r}")
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
        self._check_limits()
        # A private read-only copy, so the caller mutating its dict cannot change a
        # running simulator behind the frozen dataclass's back.
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def _check_limits(self) -> None:
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and not (isinstance(limit, int) and limit >= 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {limit!r}")
        if not (math.isfinite(self.burst_s) and self.burst_s > 0):
            raise ValueError(f"burst_s must be a finite number > 0, got {self.burst_s!r}")
        # A requests bucket smaller than one request would refuse everything for ever.
        if self.rpm is not None and self.rpm * self.burst_s / 60 < 1:
            raise ValueError(
                f"burst_s={self.burst_s:g} is too short for rpm={self.rpm}: the bucket "
                "must hold at least one request (rpm * burst_s / 60 >= 1)"
            )

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
