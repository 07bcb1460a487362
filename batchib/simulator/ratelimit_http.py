"""How rate limits show over HTTP: the ``x-ratelimit-*`` headers and the 429 answer."""

from __future__ import annotations

import math
from collections.abc import Iterable

from batchib.simulator.errors import ApiError
from batchib.simulator.ratelimit import BucketState, Refusal

_LIMIT_NAMES = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}

# Float noise (0.012 * 1000 == 12.000000000000002) must not round a wait up a whole ms.
_MS_NOISE = 1e-6


def ceil_ms(seconds: float) -> int:
    """``seconds`` in whole milliseconds, rounded up so a wait is never reported short."""
    return max(0, math.ceil(seconds * 1000 - _MS_NOISE))


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()`` would print it, to the millisecond.

    Rounded up to a whole millisecond; under a second in ``ms`` (``12ms``), otherwise in
    hours, minutes and seconds with up to three decimals (``1.5s``, ``6m0s``, ``1h0m0s``).
    """
    ms = ceil_ms(seconds)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole_s, ms = divmod(ms, 1000)
    secs = f"{whole_s}.{ms:03d}".rstrip("0") if ms else str(whole_s)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(states: Iterable[BucketState]) -> dict[str, str]:
    """``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*``."""
    headers: dict[str, str] = {}
    for state in states:
        headers[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{state.kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{state.kind}"] = go_duration(state.reset_s)
    return headers


def retry_after_headers(wait_s: float) -> dict[str, str]:
    """``retry-after-ms`` (exact) and ``Retry-After`` (whole seconds, rounded up, >= 1)."""
    wait_ms = max(1, ceil_ms(wait_s))
    return {"retry-after-ms": str(wait_ms), "Retry-After": str(-(-wait_ms // 1000))}


def rate_limit_error(refusal: Refusal) -> ApiError:
    """The 429 ``rate_limit_exceeded`` answer to a refused request, with its retry headers.

    A request bigger than the bucket can ever hold gets no Retry-After but
    ``x-should-retry: false``: waiting would not help, only a smaller request would.
    """
    name = _LIMIT_NAMES[refusal.kind]
    if math.isinf(refusal.wait_s):
        return ApiError(
            429,
            f"Request too large for {name}: Limit {refusal.limit}, Requested "
            f"{refusal.requested}. The input or output tokens must be reduced in order to "
            "run successfully.",
            "rate_limit_exceeded",
            error_type=refusal.kind,
            headers={"x-should-retry": "false"},
        )
    return ApiError(
        429,
        f"Rate limit reached for {name}: Limit {refusal.limit}, Remaining {refusal.remaining}, "
        f"Requested {refusal.requested}. Please try again in {go_duration(refusal.wait_s)}.",
        "rate_limit_exceeded",
        error_type=refusal.kind,
        headers=retry_after_headers(refusal.wait_s),
    )
