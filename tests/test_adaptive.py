"""The adaptive rate: a 2 s meter, multiplicative decrease on 429, additive increase."""

from __future__ import annotations

import pytest

from batchib.adaptive import AdaptiveRate, RateMeter

MIN_RATE_PER_S = 1 / 60  # AdaptiveRate's default floor


class FakeClock:
    """A clock that moves only when told. Times sit mid-bin (x.x5) to keep floor() exact."""

    def __init__(self, now: float = 0.05) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- RateMeter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_at", "expected"),
    [
        pytest.param(0.05, 5.0, id="same-bin"),
        pytest.param(1.05, 5.0, id="one-second-later"),
        pytest.param(1.95, 5.0, id="last-bin-of-the-window"),
        pytest.param(2.05, 0.0, id="two-seconds-later-aged-out"),
        pytest.param(30.05, 0.0, id="long-after"),
    ],
)
def test_meter_averages_over_two_seconds_and_forgets_older_amounts(
    read_at: float, expected: float
) -> None:
    clock = FakeClock(0.05)
    meter = RateMeter(clock)
    meter.add(10)

    clock.now = read_at

    assert meter.per_second() == expected


def test_meter_sums_amounts_in_one_bin_and_across_bins() -> None:
    clock = FakeClock(0.01)
    meter = RateMeter(clock)

    meter.add(1)
    clock.now = 0.05
    meter.add(1)
    clock.now = 1.05
    meter.add(4)

    assert meter.per_second() == 3.0
    clock.now = 2.05
    assert meter.per_second() == 2.0  # the first two aged out, the 4 has not
    clock.now = 3.05
    assert meter.per_second() == 0.0


@pytest.mark.parametrize(
    "gap_s",
    [
        pytest.param(2.0, id="exactly-the-window"),
        pytest.param(2.3, id="window-and-a-bit"),
        pytest.param(100.0, id="long-gap"),
    ],
)
def test_meter_after_a_gap_counts_only_new_amounts(gap_s: float) -> None:
    clock = FakeClock(0.05)
    meter = RateMeter(clock)
    meter.add(10)

    clock.now = 0.05 + gap_s
    meter.add(6)

    assert meter.per_second() == 3.0


def test_meter_bins_keep_advancing_correctly_after_a_long_gap() -> None:
    clock = FakeClock(0.05)
    meter = RateMeter(clock)
    meter.add(8)
    clock.now = 50.05
    meter.add(4)
    clock.now = 51.05
    meter.add(2)

    assert meter.per_second() == 3.0
    clock.now = 52.05
    assert meter.per_second() == 1.0  # the 4 from 50.05 aged out, the 2 has not
    clock.now = 53.05
    assert meter.per_second() == 0.0


# --- AdaptiveRate: start and ceilings ---------------------------------------------------


@pytest.mark.parametrize("ceiling", [10.0, None])
def test_rate_starts_at_the_ceiling_or_unlimited(ceiling: float | None) -> None:
    rate = AdaptiveRate(ceiling, FakeClock())

    assert rate.rate_per_s == ceiling
    assert rate.ceiling_per_s == ceiling
    assert rate.decreases == 0


@pytest.mark.parametrize(
    ("start", "new_ceiling", "expected_rate"),
    [
        pytest.param(None, 10.0, 10.0, id="unlimited-adopts-the-ceiling"),
        pytest.param(10.0, 20.0, 20.0, id="follows-a-higher-ceiling-before-any-decrease"),
        pytest.param(10.0, 4.0, 4.0, id="follows-a-lower-ceiling"),
    ],
)
def test_discovered_ceiling_sets_the_rate(
    start: float | None, new_ceiling: float, expected_rate: float
) -> None:
    rate = AdaptiveRate(start, FakeClock())

    assert rate.discover_ceiling(new_ceiling) is True

    assert rate.ceiling_per_s == new_ceiling
    assert rate.rate_per_s == expected_rate


def test_discovering_the_same_ceiling_changes_nothing() -> None:
    rate = AdaptiveRate(10.0, FakeClock())

    assert rate.discover_ceiling(10.0) is False
    assert rate.rate_per_s == 10.0


@pytest.mark.parametrize(
    ("new_ceiling", "expected_rate"),
    [
        pytest.param(4.0, 4.0, id="lower-ceiling-clamps"),
        pytest.param(20.0, 5.0, id="higher-ceiling-keeps-the-learnt-rate"),
    ],
)
def test_discovered_ceiling_after_a_decrease_only_clamps(
    new_ceiling: float, expected_rate: float
) -> None:
    rate = AdaptiveRate(10.0, FakeClock())
    rate.on_rate_limited(seq=0, last_seq=0)  # 10 -> 5

    rate.discover_ceiling(new_ceiling)

    assert rate.ceiling_per_s == new_ceiling
    assert rate.rate_per_s == expected_rate


# --- AdaptiveRate: decrease -------------------------------------------------------------


@pytest.mark.parametrize(
    ("succeeded_in_window", "expected_rate"),
    [
        # 10/s; the meter divides by 2 s, and the target is 0.95 x the success rate.
        pytest.param(0, 5.0, id="nothing-succeeded-halves"),
        pytest.param(10, 5.0, id="success-rate-below-half-still-halves"),  # 4.75 < 5
        pytest.param(16, 7.6, id="settles-below-the-success-rate"),  # 8 x 0.95
        pytest.param(20, 9.5, id="success-rate-equal-to-current"),  # 10 x 0.95
        pytest.param(40, 9.5, id="never-less-than-a-5-percent-cut"),  # min(9.5, 19)
    ],
)
def test_429_lowers_the_rate_towards_what_succeeded(
    succeeded_in_window: float, expected_rate: float
) -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock)
    if succeeded_in_window:
        rate.on_success(succeeded_in_window)

    assert rate.on_rate_limited(seq=0, last_seq=0) is True

    assert rate.rate_per_s == pytest.approx(expected_rate)
    assert rate.decreases == 1


@pytest.mark.parametrize(
    ("succeeded_in_window", "expected_rate"),
    [
        pytest.param(0, 7.5, id="half-the-sent-rate"),  # sent 15/s
        pytest.param(20, 9.5, id="below-the-success-rate"),  # 10/s x 0.95
    ],
)
def test_429_when_unlimited_starts_from_the_sent_rate(
    succeeded_in_window: float, expected_rate: float
) -> None:
    rate = AdaptiveRate(None, FakeClock())
    rate.sent.add(30)
    if succeeded_in_window:
        rate.on_success(succeeded_in_window)

    rate.on_rate_limited(seq=0, last_seq=0)

    assert rate.rate_per_s == pytest.approx(expected_rate)


@pytest.mark.parametrize(
    ("seq", "lowered"),
    [
        pytest.param(3, False, id="sent-before-the-decrease"),
        pytest.param(10, False, id="newest-seq-at-the-decrease"),
        pytest.param(11, True, id="sent-after-the-decrease"),
    ],
)
def test_429_lowers_the_rate_once_per_round_trip(seq: int, lowered: bool) -> None:
    rate = AdaptiveRate(10.0, FakeClock())
    rate.on_rate_limited(seq=2, last_seq=10)  # 10 -> 5

    assert rate.on_rate_limited(seq=seq, last_seq=12) is lowered

    assert rate.rate_per_s == (2.5 if lowered else 5.0)
    assert rate.decreases == (2 if lowered else 1)


def test_ignored_429s_do_not_move_the_ignore_mark() -> None:
    rate = AdaptiveRate(10.0, FakeClock())
    rate.on_rate_limited(seq=0, last_seq=5)

    assert rate.on_rate_limited(seq=4, last_seq=50) is False
    assert rate.on_rate_limited(seq=6, last_seq=60) is True  # 6 > 5, not > 50


@pytest.mark.parametrize(
    "ceiling",
    [
        pytest.param(MIN_RATE_PER_S * 1.5, id="just-above-the-floor"),
        pytest.param(None, id="unlimited-with-nothing-sent"),
    ],
)
def test_429_never_lowers_below_the_floor(ceiling: float | None) -> None:
    rate = AdaptiveRate(ceiling, FakeClock())

    rate.on_rate_limited(seq=0, last_seq=0)
    assert rate.rate_per_s == MIN_RATE_PER_S
    rate.on_rate_limited(seq=1, last_seq=1)
    assert rate.rate_per_s == MIN_RATE_PER_S


# --- AdaptiveRate: increase -------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed_s", "expected_rate", "changed"),
    [
        # Ceiling 10, lowered to 5 at t=0: +max(2 % of 5, 1 % of 10) = 0.1/s per second.
        pytest.param(0.05, 5.0, False, id="under-a-bin-no-change"),
        pytest.param(1.0, 5.1, True, id="one-second"),
        pytest.param(10.0, 6.0, True, id="ten-seconds"),
        pytest.param(100.0, 10.0, True, id="reaches-the-ceiling"),
        pytest.param(1000.0, 10.0, True, id="never-beyond-the-ceiling"),
    ],
)
def test_success_raises_the_rate_additively_up_to_the_ceiling(
    elapsed_s: float, expected_rate: float, changed: bool
) -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(10.0, clock)
    rate.on_rate_limited(seq=0, last_seq=0)
    clock.now = elapsed_s

    assert rate.on_success(1) is changed

    assert rate.rate_per_s == pytest.approx(expected_rate)


def test_increase_step_is_a_share_of_the_rate_at_the_last_decrease() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(10.0, clock)
    rate.on_rate_limited(seq=0, last_seq=0)  # 5/s, step max(0.1, 0.1) = 0.1/s per second

    clock.now = 10.0
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(6.0)
    clock.now = 20.0
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(7.0)  # not more: the step did not grow

    # A new decrease sets a new step: 7.0 -> 3.5, step max(2 % of 3.5, 1 % of 10) = 0.1.
    rate.on_rate_limited(seq=1, last_seq=1)
    assert rate.rate_per_s == pytest.approx(3.5)
    clock.now = 30.0
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(4.5)


def test_success_at_the_ceiling_changes_nothing() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(10.0, clock)
    rate.on_rate_limited(seq=0, last_seq=0)
    clock.now = 200.0
    rate.on_success(1)

    clock.now = 300.0
    assert rate.on_success(1) is False
    assert rate.rate_per_s == 10.0


def test_success_without_a_ceiling_keeps_raising_after_a_decrease() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(None, clock)
    rate.sent.add(30)
    rate.on_rate_limited(seq=0, last_seq=0)  # 15/s sent -> 7.5, step 2 % = 0.15/s per second

    clock.now = 100.0
    assert rate.on_success(1) is True
    assert rate.rate_per_s == pytest.approx(22.5)


@pytest.mark.parametrize("ceiling", [10.0, None])
def test_success_before_any_decrease_leaves_the_rate_alone(ceiling: float | None) -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(ceiling, clock)

    clock.now = 100.0
    assert rate.on_success(5) is False

    assert rate.rate_per_s == ceiling
    assert rate.succeeded.per_second() == 2.5  # still recorded


def test_429s_soon_after_a_decrease_halve_the_rate_until_they_stop() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(None, clock)
    rate.sent.add(2000)  # 1000/s over the 2 s window
    rate.succeeded.add(1800)  # 900/s

    assert rate.on_rate_limited(seq=0, last_seq=10)
    assert rate.rate_per_s == pytest.approx(855.0)  # gentle: 0.95 x what succeeded

    clock.now = 0.5  # still inside the window: the meter remembers the burst
    assert rate.on_rate_limited(seq=11, last_seq=20)
    assert rate.rate_per_s == pytest.approx(427.5)

    clock.now = 3.0  # a calm 2.5 s later: judged by what succeeded again (nothing: halve)
    assert rate.on_rate_limited(seq=21, last_seq=30)
    assert rate.rate_per_s == pytest.approx(213.75)


def test_after_an_episode_of_429s_the_rate_grows_back_fast_then_additively() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(None, clock)
    rate.sent.add(2000)  # 1000/s over the 2 s window
    rate.succeeded.add(1800)  # 900/s
    rate.on_rate_limited(seq=0, last_seq=10)  # gentle: 855/s, the point to recover to
    for seq in range(11, 71, 10):  # 429s keep coming for a second: halved six times
        clock.now += 0.15
        rate.on_rate_limited(seq=seq, last_seq=seq + 9)
    assert rate.rate_per_s == pytest.approx(855 / 64)

    clock.now += 10.0  # 429s stopped: a fifth more a second
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(855 / 64 * 1.2**10)

    clock.now += 20.0  # capped where the episode began, not beyond
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(855)

    clock.now += 10.0  # then additively: 2 % of 855 a second
    rate.on_success(1)
    assert rate.rate_per_s == pytest.approx(855 + 10 * 0.02 * 855)


def test_growth_after_a_very_long_quiet_spell_reaches_the_recovery_point() -> None:
    clock = FakeClock(0.0)
    rate = AdaptiveRate(None, clock)
    rate.sent.add(2000)
    rate.on_rate_limited(seq=0, last_seq=10)  # 500/s
    clock.now = 0.5
    rate.on_rate_limited(seq=11, last_seq=20)  # halved: 250/s

    clock.now = 10_000.0  # 1.2 ** 10000 would overflow
    assert rate.on_success(1) is True

    assert rate.rate_per_s == pytest.approx(500.0)
