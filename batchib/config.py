"""Frozen settings for a run, validated once on construction."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from batchib.errors import ConfigError
from batchib.pricing import PriceTable

DEFAULT_BASE_URL = "https://api.getinfinityblue.com/v1"


class ApiKey:
    """An API key that never shows itself in a repr, a str or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ConfigError("the API key is empty")
        if any(ch.isspace() for ch in value):
            raise ConfigError("the API key contains whitespace")
        # What an HTTP header can carry as it is; the position, never the character.
        for position, ch in enumerate(value, start=1):
            if not "!" <= ch <= "~":
                raise ConfigError(
                    f"the API key has a character an HTTP header cannot carry (a control "
                    f"or non-ASCII character) at position {position}"
                )
        self._value = value

    def reveal(self) -> str:
        """The key itself: call only where it is put into the Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class RequestDefaults:
    """Body fields that fill what an input line leaves out (the line always wins)."""

    model: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise ConfigError("--model must not be empty")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("--max-tokens must be at least 1")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError("--temperature must be between 0 and 2")
        if self.params.get("stream"):
            raise ConfigError("--param stream=true is not supported: batchib does not stream")
        object.__setattr__(self, "params", _frozen(self.params))


@dataclass(frozen=True)
class RunSettings:
    """How a run talks to the gateway: where, how fast, how persistently."""

    api_key: ApiKey
    base_url: str = DEFAULT_BASE_URL
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 5
    timeout_s: float = 600.0
    connect_timeout_s: float = 30.0
    # How long requests in flight may finish after Ctrl-C before they are cancelled.
    grace_s: float = 10.0
    # Circuit breaker: stop after this many attempts in a row failed alike on the
    # server side (0 turns it off), lasting at least this long for transient errors.
    breaker_window: int = 50
    breaker_min_duration_s: float = 60.0
    # Plain http is allowed only to loopback unless the user says otherwise: the key
    # travels in a header.
    allow_insecure: bool = False
    # Write records in input order, through a window of this many lines.
    order_input: bool = False
    reorder_window: int = 1000

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("--base-url must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            # Not echoed: the URL holds a credential. It would also clash with the
            # bearer header (aiohttp refuses both).
            raise ConfigError("--base-url must not contain user:password@")
        if parts.query or parts.fragment:
            # Not echoed either: a query may carry a key. /chat/completions is appended
            # to the path, so a query would end up in the middle of the URL.
            raise ConfigError(
                "--base-url must not have a query or fragment (?...): batchib appends "
                "/chat/completions to it"
            )
        if parts.path.rstrip("/").endswith("/chat/completions"):
            raise ConfigError(
                "--base-url is the API's base (like https://host/v1), not the endpoint: "
                "leave out /chat/completions, which batchib appends"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if parts.scheme == "http" and not _is_loopback(parts.hostname) and not self.allow_insecure:
            raise ConfigError(
                f"refusing to send the API key over plain http to {parts.hostname}: "
                "use https, or pass --allow-insecure if this network is trusted"
            )
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        for name, value in (
            ("--rpm", self.requests_per_minute),
            ("--tpm", self.tokens_per_minute),
        ):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number")
        for name, seconds in (
            ("--timeout", self.timeout_s),
            ("connect timeout", self.connect_timeout_s),
        ):
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.grace_s < 0:
            raise ConfigError("the grace period must not be negative")
        if self.reorder_window < 1:
            raise ConfigError("--reorder-window must be at least 1")
        if self.breaker_window < 0 or self.breaker_min_duration_s < 0:
            raise ConfigError("the circuit breaker settings must not be negative")

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/chat/completions"


@dataclass(frozen=True)
class Job:
    """A whole `batchib run`: what to read, where to write, how to send."""

    inputs: tuple[str, ...]
    output: Path
    settings: RunSettings
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    summary: Path | None = None  # default: OUTPUT + ".summary.json"
    usage_log: Path | None = None
    overwrite: bool = False
    compact: bool = False  # rewrite OUTPUT to one line per custom_id at the end
    shard: tuple[int, int] | None = None  # (index 1..count, count): this part only
    prices: PriceTable | None = None  # cost in the summary when given
    max_cost_usd: float | None = None  # stop before the spend could pass this
    max_total_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no input files")
        if self.inputs.count("-") > 1:
            raise ConfigError("stdin ('-') can be read only once")
        if self.max_cost_usd is not None and self.prices is None:
            raise ConfigError("--max-cost needs --pricing: a cost budget needs prices")
        if self.shard is not None:
            index, count = self.shard
            if not 1 <= index <= count:
                raise ConfigError(f"--shard {index}/{count}: I must be between 1 and N")

    @property
    def summary_path(self) -> Path:
        return self.summary or self.output.with_name(self.output.name + ".summary.json")

    def describe(self) -> dict[str, Any]:
        """The effective settings, for --print-config, the summary and the manifest.
        The key is not in it; the base URL holds no credential (RunSettings refuses one)."""
        settings, defaults = self.settings, self.defaults
        return {
            "inputs": list(self.inputs),
            "output": str(self.output),
            "summary": str(self.summary_path),
            "usage_log": None if self.usage_log is None else str(self.usage_log),
            "overwrite": self.overwrite,
            "compact": self.compact,
            "shard": None if self.shard is None else "{}/{}".format(*self.shard),
            "pricing": None if self.prices is None else self.prices.source or "given",
            "max_cost_usd": self.max_cost_usd,
            "max_total_tokens": self.max_total_tokens,
            "defaults": {
                "model": defaults.model,
                "system": defaults.system,
                "max_tokens": defaults.max_tokens,
                "temperature": defaults.temperature,
                "params": dict(defaults.params),
            },
            "base_url": settings.base_url,
            "concurrency": settings.concurrency,
            "requests_per_minute": settings.requests_per_minute,
            "tokens_per_minute": settings.tokens_per_minute,
            "max_attempts": settings.max_attempts,
            "timeout_s": settings.timeout_s,
            "connect_timeout_s": settings.connect_timeout_s,
            "grace_s": settings.grace_s,
            "breaker_window": settings.breaker_window,
            "breaker_min_duration_s": settings.breaker_min_duration_s,
            "allow_insecure": settings.allow_insecure,
            "order": "input" if settings.order_input else "completion",
            "reorder_window": settings.reorder_window,
        }
