"""The outcome of one attempt, as the rest of batchib sees it: a verdict and what the
gateway said. Kept apart from :mod:`batchib.client`, which talks HTTP, so that what only
reads or writes results (`batchib estimate`, the results file) does not import aiohttp.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from batchib.ratelimit_headers import RateLimitHeaders


def is_billed(status: int) -> bool:
    """Whether an answer with this HTTP status is billed: a 2xx. (An error is not.)"""
    return 200 <= status < 300


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"  # this attempt failed; another may succeed
    GIVE_UP = "give_up"  # this request will not succeed; others may
    STOP_RUN = "stop_run"  # no request will succeed: stop dispatching


# Not frozen: a frozen dataclass's __init__ costs twice as much (object.__setattr__
# per field), and one is made for every attempt. Treat it as immutable.
@dataclass(slots=True)
class Reply:
    """The outcome of one attempt."""

    verdict: Verdict
    status: int | None  # None when no HTTP answer arrived
    body: dict[str, Any] | None  # the JSON body, success or error, when there was one
    request_id: str | None
    code: str | None  # failure code: the gateway's error code or batchib's own
    message: str | None
    retry_after_s: float | None
    latency_ms: float
    # What the gateway said about our quota, when it said anything.
    rate: RateLimitHeaders | None = None
    # The error's `type`: for a 429, "requests" or "tokens" tells which limit was hit.
    error_type: str | None = None
    # The wait came from `retry-after-ms`: precise enough to infer the refill rate
    # from (whole-second Retry-After values are rounded up and are not).
    retry_after_precise: bool = False

    @property
    def rate_limited(self) -> bool:
        """A 429 that is a rate limit (not an exhausted account)."""
        return self.status == 429 and self.verdict is not Verdict.STOP_RUN

    def billed_usage(self) -> dict[str, Any] | None:
        """The usage of a 2xx answer, when it says what it used (whole token counts);
        None for an error, no answer, or a 2xx that does not say."""
        if self.status is None or not is_billed(self.status) or self.body is None:
            return None
        usage = self.body.get("usage")
        if not isinstance(usage, dict):
            return None
        for name in ("prompt_tokens", "completion_tokens"):
            count = usage.get(name)
            if type(count) is not int or count < 0:
                return None
        return usage

    def charge_unknown(self) -> bool:
        """Whether this attempt may have been billed for an amount nobody knows: no
        answer came, or a 2xx that is not an error yet does not say what it used."""
        if self.status is None:
            return True
        if not is_billed(self.status):
            return False
        body = self.body
        # A gateway's error sent with a 200 ({"error": ...}, no choices) is not billed.
        if body is not None and "error" in body and "choices" not in body:
            return False
        return self.billed_usage() is None
