"""The circuit breaker: a long run of identical server-side failures stops the run."""

from __future__ import annotations

import pytest

from batchib.breaker import CircuitBreaker, Trip
from batchib.reply import Reply, Verdict

NO_ANSWER = "no answer (timeouts, connection errors)"

# kind -> (verdict, status, code), as the client classifies them
KINDS: dict[str, tuple[Verdict, int | None, str | None]] = {
    "ok": (Verdict.SUCCESS, 200, None),
    "503": (Verdict.RETRY, 503, "service_unavailable"),
    "502": (Verdict.RETRY, 502, "bad_gateway"),
    "404": (Verdict.GIVE_UP, 404, "model_not_found"),
    "400": (Verdict.GIVE_UP, 400, "invalid_request_error"),
    "422": (Verdict.GIVE_UP, 422, "unprocessable_entity"),
    "429": (Verdict.RETRY, 429, "rate_limit_exceeded"),
    "timeout": (Verdict.RETRY, None, "timeout"),
    "connection_error": (Verdict.RETRY, None, "connection_error"),
}
HTTP_503 = "HTTP 503 service_unavailable"
HTTP_502 = "HTTP 502 bad_gateway"
HTTP_404 = "HTTP 404 model_not_found"

Events = list[tuple[float, str]]


def reply(kind: str) -> Reply:
    verdict, status, code = KINDS[kind]
    return Reply(
        verdict=verdict,
        status=status,
        body=None,
        request_id=None,
        code=code,
        message=None,
        retry_after_s=None,
        latency_ms=5.0,
    )


def series(kind: str, count: int, start_s: float, step_s: float = 1.0) -> Events:
    """`count` attempts of one kind, `step_s` apart from `start_s`."""
    return [(start_s + i * step_s, kind) for i in range(count)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record_all(breaker: CircuitBreaker, clock: FakeClock, events: Events) -> list[Trip | None]:
    trips = []
    for at_s, kind in events:
        clock.now = at_s
        trips.append(breaker.record(reply(kind)))
    return trips


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(series("503", 50, 0.0), None, id="50-503s-over-49-s-do-not-trip"),
        pytest.param(
            [*series("503", 49, 0.0), (60.0, "503")],
            Trip(HTTP_503, 50, 60.0),
            id="50-503s-over-60-s-trip",
        ),
        pytest.param(
            [*series("503", 60, 0.0), (60.0, "503")],
            Trip(HTTP_503, 61, 60.0),
            id="longer-run-trips-once-60-s-pass",
        ),
        pytest.param(series("404", 49, 0.0, step_s=0.0), None, id="49-404s-do-not-trip"),
        pytest.param(
            series("404", 50, 0.0, step_s=0.0),
            Trip(HTTP_404, 50, 0.0),
            id="50-404s-trip-at-once",
        ),
        pytest.param(
            [*series("503", 49, 0.0), (49.0, "ok"), *series("503", 49, 100.0)],
            None,
            id="success-resets-the-count",
        ),
        pytest.param(
            [*series("503", 49, 0.0), (49.0, "ok"), *series("503", 49, 100.0), (160.0, "503")],
            Trip(HTTP_503, 50, 60.0),
            id="after-a-success-the-run-starts-again",
        ),
        pytest.param(
            [*series("404", 49, 0.0, step_s=0.0), (0.0, "ok"), *series("404", 49, 0.0, 0.0)],
            None,
            id="success-resets-a-404-run",
        ),
        pytest.param(
            series("503", 49, 0.0) + series("502", 50, 49.0),
            None,
            id="different-signature-restarts-count-and-clock",
        ),
        pytest.param(
            series("503", 49, 0.0) + series("502", 49, 49.0) + [(109.0, "502")],
            Trip(HTTP_502, 50, 60.0),
            id="new-signature-trips-on-its-own-run",
        ),
        pytest.param(
            [*series("404", 49, 0.0, 0.0), (0.0, "503"), *series("404", 49, 0.0, 0.0)],
            None,
            id="a-5xx-breaks-a-404-run",
        ),
        pytest.param(
            [*series("503", 49, 0.0), (70.0, "400"), (71.0, "422"), (72.0, "429")],
            None,
            id="client-errors-do-not-extend-a-run",
        ),
        pytest.param(
            [
                *series("503", 25, 0.0),
                (25.0, "400"),
                (26.0, "422"),
                (27.0, "429"),
                *series("503", 24, 28.0),
                (60.0, "503"),
            ],
            Trip(HTTP_503, 50, 60.0),
            id="client-errors-do-not-reset-a-run",
        ),
        pytest.param(series("timeout", 50, 0.0), None, id="timeouts-over-49-s-do-not-trip"),
        pytest.param(
            [*series("timeout", 49, 0.0), (60.0, "timeout")],
            Trip(NO_ANSWER, 50, 60.0),
            id="timeouts-count-as-server-side",
        ),
        pytest.param(
            [*series("connection_error", 49, 0.0), (60.0, "connection_error")],
            Trip(NO_ANSWER, 50, 60.0),
            id="connection-errors-count-as-server-side",
        ),
        pytest.param(
            [*series("timeout", 25, 0.0), *series("connection_error", 24, 1.0), (60.0, "timeout")],
            Trip(NO_ANSWER, 50, 60.0),
            id="timeouts-and-connection-errors-are-one-symptom",
        ),
    ],
)
def test_breaker_trips_on_a_long_run_of_one_server_side_failure(
    events: Events, expected: Trip | None
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)

    trips = record_all(breaker, clock, events)

    assert trips[:-1] == [None] * (len(events) - 1)
    assert trips[-1] == expected


@pytest.mark.parametrize(
    ("window", "min_duration_s", "events", "expected"),
    [
        pytest.param(
            3, 10.0, [(0.0, "503"), (5.0, "503"), (10.0, "503")], Trip(HTTP_503, 3, 10.0), id="3"
        ),
        pytest.param(3, 10.0, [(0.0, "503"), (5.0, "503"), (9.0, "503")], None, id="3-too-soon"),
        pytest.param(3, 10.0, series("404", 3, 0.0, 0.0), Trip(HTTP_404, 3, 0.0), id="3-404s"),
        pytest.param(100, 60.0, series("503", 99, 0.0), None, id="99-over-98-s-not-enough"),
        pytest.param(
            100, 60.0, series("503", 100, 0.0), Trip(HTTP_503, 100, 99.0), id="100-reached"
        ),
    ],
)
def test_window_and_duration_are_configurable(
    window: int, min_duration_s: float, events: Events, expected: Trip | None
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(window=window, min_duration_s=min_duration_s, clock=clock)

    trips = record_all(breaker, clock, events)

    assert trips[:-1] == [None] * (len(events) - 1)
    assert trips[-1] == expected


def test_tripped_breaker_keeps_reporting_while_the_run_lasts() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)

    trips = record_all(breaker, clock, series("404", 52, 0.0, 0.0))

    assert trips[-3:] == [Trip(HTTP_404, 50, 0.0), Trip(HTTP_404, 51, 0.0), Trip(HTTP_404, 52, 0.0)]


def test_trip_message_names_the_signature_count_and_duration() -> None:
    assert Trip(HTTP_503, 50, 60.4).message == (
        "circuit breaker: the last 50 attempts all failed with HTTP 503 service_unavailable "
        "over 60 s; stopped sending, the rest is left for a rerun"
    )
