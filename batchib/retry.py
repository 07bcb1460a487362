"""Pure retry arithmetic: how long to wait before the next attempt.

The gateway's own word wins: `retry-after-ms`, then `retry-after` as seconds, then as an
HTTP date. Without it, exponential backoff with jitter, capped. A server asking for more
than :data:`MAX_RETRY_AFTER_S` is not waited for (the official SDK's rule).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_RETRY_AFTER_S = 120.0


def backoff_s(retry_number: int, rng: random.Random) -> float:
    """Delay before retry number `retry_number` (1 for the first retry).

    0.5 s doubling up to 30 s, times a random factor in [0.75, 1] so that many
    workers failing together do not come back together.
    """
    base: float = min(BACKOFF_BASE_S * 2.0 ** (retry_number - 1), BACKOFF_MAX_S)
    return base * (0.75 + 0.25 * rng.random())


def retry_after_s(headers: Mapping[str, str], now_s: float) -> float | None:
    """The wait the server asked for, in seconds, or None when it asked for none.

    `headers` must be case-insensitive (aiohttp's CIMultiDict is); `now_s` is the
    current Unix time, used only for the HTTP-date form.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis)
        except ValueError:
            value = -1.0
        if value >= 0:
            return value / 1000
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(text).timestamp() - now_s)
        except (TypeError, ValueError, IndexError):
            return None
    return value if value >= 0 else None
