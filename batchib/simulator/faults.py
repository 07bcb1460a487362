"""Injected faults: which one hits an attempt, and which keys are revoked. No HTTP.

Faults are decided per attempt, so a retry of a failed request can succeed. One seeded
generator makes every draw, one per attempt that gets past the rate limits, so a run with
the same seed and the same sequence of requests meets the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from batchib.simulator.auth import INCORRECT_KEY
from batchib.simulator.errors import ApiError
from batchib.simulator.settings import FaultRates

FAULT_HEADER = "x-batchib-fault"


class Fault(StrEnum):
    """A fault, named as in the ``x-batchib-fault`` header and the request log."""

    ERROR_500 = "500"
    ERROR_502 = "502"
    ERROR_503 = "503"
    DROP = "drop"
    HANG = "hang"
    TRUNCATE = "truncate"
    QUOTA = "quota"
    KEY_REVOKED = "401"


# The FaultRates field that sets the probability of each fault drawn at random.
_RATE_FIELDS: Mapping[str, Fault] = MappingProxyType(
    {
        "error_500": Fault.ERROR_500,
        "error_502": Fault.ERROR_502,
        "error_503": Fault.ERROR_503,
        "drop": Fault.DROP,
        "hang": Fault.HANG,
        "truncate": Fault.TRUNCATE,
        "quota": Fault.QUOTA,
    }
)

# The faults that are an error answer, and that answer.
FAULT_ERRORS: Mapping[Fault, ApiError] = MappingProxyType(
    {
        Fault.ERROR_500: ApiError(
            500,
            "The server had an error while processing your request.",
            "server_error",
            error_type="server_error",
        ),
        Fault.ERROR_502: ApiError(502, "Bad gateway.", "bad_gateway", error_type="server_error"),
        Fault.ERROR_503: ApiError(
            503,
            "The server is overloaded or not ready yet.",
            "server_is_overloaded",
            error_type="server_error",
        ),
        Fault.QUOTA: ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            error_type="insufficient_quota",
        ),
        Fault.KEY_REVOKED: INCORRECT_KEY,
    }
)


def forced_fault(header: str | None) -> Fault | ApiError | None:
    """The fault an ``x-batchib-fault`` header forces, None without the header, or a 400
    for an unknown name (a typo in a test must not pass silently as "no fault")."""
    if header is None:
        return None
    try:
        return Fault(header.strip().lower())
    except ValueError:
        names = ", ".join(fault.value for fault in Fault)
        return ApiError(
            400,
            f"Unknown fault {header[:40]!r} in header {FAULT_HEADER}; expected one of: {names}.",
            "invalid_value",
        )


class FaultInjector:
    """Draws the fault of each attempt and counts accepted requests to revoke keys."""

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self._revoke_after = rates.revoke_after
        # Cumulative upper bounds: one uniform draw picks the first bound above it.
        bounds: list[tuple[float, Fault]] = []
        total = 0.0
        for name, rate in rates.rates().items():
            if rate > 0:
                total += rate
                bounds.append((total, _RATE_FIELDS[name]))
        self._bounds = tuple(bounds)
        # Its own stream (a str seed is hashed, not shared with the latency draws), so
        # turning latency on does not change which requests fail.
        self._rng = random.Random(f"faults\0{seed}")
        self._accepted: dict[str, int] = {}

    def is_revoked(self, key: str) -> bool:
        """Whether ``key`` is the revoked one and has used up the requests it had.

        Only the first key the gateway sees is revoked: a key revoked mid-run, and a
        replacement key that a rerun uses to finish the job."""
        if self._revoke_after is None:
            return False
        first = next(iter(self._accepted), key)
        return key == first and self._accepted.get(key, 0) >= self._revoke_after

    def accept(self, key: str) -> None:
        """Count one request with ``key`` that got past authentication and rate limits."""
        if self._revoke_after is not None:
            self._accepted[key] = self._accepted.get(key, 0) + 1

    def draw(self, forced: Fault | None = None) -> Fault | None:
        """The fault of one attempt: ``forced`` if given, else a random one or None.

        The draw is made even when forced, so forcing a fault in one request does not
        shift the faults that the seed gives the requests after it.
        """
        drawn: Fault | None = None
        if self._bounds:
            x = self._rng.random()
            for bound, fault in self._bounds:
                if x < bound:
                    drawn = fault
                    break
        return forced if forced is not None else drawn
