"""Parsing the gateway's `x-ratelimit-*` headers (pure functions).

`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: limits are per minute; reset
values are Go-style durations (`1s`, `6m0s`, `12ms`, `2m59.56s`; a bare number means
seconds) giving the time until the bucket is full again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration_s(text: str) -> float | None:
    """Seconds in a Go duration string (or a bare number of seconds); None if invalid."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if 0 <= value < math.inf else None
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def _number(headers: Mapping[str, str], name: str) -> float | None:
    text = headers.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    # inf (or 1e400) would make a bucket with a NaN leak rate that never admits again.
    return value if 0 <= value < math.inf else None


def _duration(headers: Mapping[str, str], name: str) -> float | None:
    text = headers.get(name)
    return None if text is None else parse_duration_s(text)


# Not frozen: a frozen dataclass's __init__ costs twice as much (object.__setattr__
# per field), and two are made for every answer carrying these headers. Treat it as immutable.
@dataclass(slots=True)
class Bucket:
    """One dimension (requests or tokens) of the gateway's view of our quota."""

    limit_per_minute: float | None
    remaining: float | None
    reset_s: float | None


@dataclass(slots=True)
class RateLimitHeaders:
    requests: Bucket
    tokens: Bucket


def parse_rate_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """The rate-limit headers of an answer; None when it carries none (case-insensitive
    `headers` required, as aiohttp gives)."""
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None
    buckets = [
        Bucket(
            _number(headers, f"x-ratelimit-limit-{kind}"),
            _number(headers, f"x-ratelimit-remaining-{kind}"),
            _duration(headers, f"x-ratelimit-reset-{kind}"),
        )
        for kind in ("requests", "tokens")
    ]
    return RateLimitHeaders(*buckets)
