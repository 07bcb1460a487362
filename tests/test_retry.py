"""Retry arithmetic: jittered exponential backoff and the server's Retry-After headers."""

from __future__ import annotations

import math
import random

import pytest
from multidict import CIMultiDict

from batchib.retry import backoff_s, retry_after_s

# The largest value random.random() can return.
ALMOST_ONE = math.nextafter(1.0, 0.0)
# 2015-10-21T07:27:30Z, thirty seconds before the HTTP date used below.
NOW_S = 1_445_412_450.0
IN_30_S = "Wed, 21 Oct 2015 07:28:00 GMT"
AGO_60_S = "Wed, 21 Oct 2015 07:26:30 GMT"


class FixedRandom(random.Random):
    """A Random whose random() always returns the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


BASES = [
    (1, 0.5),
    (2, 1.0),
    (3, 2.0),
    (4, 4.0),
    (5, 8.0),
    (6, 16.0),
    (7, 30.0),
    (8, 30.0),
    (40, 30.0),
]


@pytest.mark.parametrize(("retry_number", "base_s"), BASES)
def test_backoff_with_lowest_jitter_is_three_quarters_of_the_base(
    retry_number: int, base_s: float
) -> None:
    assert backoff_s(retry_number, FixedRandom(0.0)) == 0.75 * base_s


@pytest.mark.parametrize(("retry_number", "base_s"), BASES)
def test_backoff_with_highest_jitter_is_the_base(retry_number: int, base_s: float) -> None:
    delay_s = backoff_s(retry_number, FixedRandom(ALMOST_ONE))

    assert delay_s <= base_s
    assert delay_s == pytest.approx(base_s, rel=1e-12)


@pytest.mark.parametrize(("retry_number", "base_s"), BASES)
def test_backoff_with_real_randomness_stays_within_the_jitter_band(
    retry_number: int, base_s: float
) -> None:
    rng = random.Random(retry_number)
    delays_s = [backoff_s(retry_number, rng) for _ in range(500)]

    assert all(0.75 * base_s <= delay_s <= base_s for delay_s in delays_s)
    # The jitter really spreads the delays over the band.
    assert max(delays_s) - min(delays_s) > 0.2 * base_s


def test_backoff_with_middle_jitter_is_seven_eighths_of_the_base() -> None:
    assert backoff_s(3, FixedRandom(0.5)) == 1.75


@pytest.mark.parametrize(
    ("headers", "expected_s"),
    [
        pytest.param({}, None, id="no-headers"),
        pytest.param({"retry-after-ms": "1500"}, 1.5, id="ms"),
        pytest.param({"retry-after-ms": "250.5"}, 0.2505, id="ms-float"),
        pytest.param({"retry-after-ms": "0"}, 0.0, id="ms-zero"),
        pytest.param({"Retry-After-Ms": "1500"}, 1.5, id="ms-case-insensitive"),
        pytest.param({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, id="ms-wins"),
        pytest.param({"retry-after-ms": "-5", "retry-after": "4"}, 4.0, id="negative-ms-skipped"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "4"}, 4.0, id="garbage-ms-skipped"),
        pytest.param({"retry-after-ms": "nan", "retry-after": "4"}, 4.0, id="nan-ms-skipped"),
        pytest.param({"retry-after-ms": "soon"}, None, id="garbage-ms-alone"),
        pytest.param({"retry-after": "7"}, 7.0, id="seconds-int"),
        pytest.param({"retry-after": "2.5"}, 2.5, id="seconds-float"),
        pytest.param({"retry-after": "0"}, 0.0, id="seconds-zero"),
        pytest.param({"retry-after": " 3 "}, 3.0, id="seconds-padded"),
        pytest.param({"Retry-After": "7"}, 7.0, id="seconds-case-insensitive"),
        pytest.param({"retry-after": IN_30_S}, 30.0, id="http-date"),
        pytest.param({"retry-after": AGO_60_S}, 0.0, id="http-date-in-the-past"),
        pytest.param({"retry-after": "-3"}, None, id="negative-seconds"),
        pytest.param({"retry-after": "nan"}, None, id="nan-seconds"),
        pytest.param({"retry-after": "soon"}, None, id="garbage"),
        pytest.param({"retry-after": ""}, None, id="empty"),
        pytest.param({"retry-after": "Wed, 32 Oct 2015 07:28:00 GMT"}, None, id="bad-date"),
    ],
)
def test_retry_after_reads_what_the_server_asked_for(
    headers: dict[str, str], expected_s: float | None
) -> None:
    assert retry_after_s(CIMultiDict(headers), NOW_S) == expected_s
