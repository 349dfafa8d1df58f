"""Clock offset from round trips: NTP's arithmetic, and the fastest round trip chosen."""

import pytest

from dysta_ros.clock_sync import ClockOffsetEstimator, RoundTrip


def trip(sent: float, offset: float, out: float, back: float, turnaround: float = 0.001) -> RoundTrip:
    """A round trip sent at `sent` (ours), their clock `offset` ahead, legs of `out` and `back` s."""
    t1 = sent + out + offset
    return RoundTrip(sent, t1, t1 + turnaround, sent + out + turnaround + back)


def test_equal_legs_give_the_offset_exactly_and_delay_is_the_network_time():
    estimate = trip(100.0, offset=2.5, out=0.02, back=0.02)
    assert estimate.offset == pytest.approx(2.5, abs=1e-9)
    assert estimate.delay == pytest.approx(0.04, abs=1e-9)


def test_the_fastest_round_trip_wins_and_half_its_delay_bounds_the_error():
    estimator = ClockOffsetEstimator(window=8)
    assert estimator.offset_s is None
    # queueing on the way out only: a slow trip overestimates the offset by half the extra delay
    estimator.add(trip(0.0, offset=-1.0, out=0.2, back=0.02))
    assert estimator.offset_s == pytest.approx(-1.0 + 0.09, abs=1e-9)
    estimator.add(trip(1.0, offset=-1.0, out=0.021, back=0.019))
    estimator.add(trip(2.0, offset=-1.0, out=0.02, back=0.15))
    assert estimator.offset_s == pytest.approx(-1.0 + 0.001, abs=1e-9)
    assert estimator.uncertainty_s == pytest.approx(0.02, abs=1e-9)
    assert abs(estimator.offset_s - -1.0) <= estimator.uncertainty_s


def test_a_window_forgets_old_trips_and_impossible_answers_are_refused():
    estimator = ClockOffsetEstimator(window=2)
    estimator.add(trip(0.0, offset=5.0, out=0.001, back=0.001))  # fast, then the clock moves
    estimator.add(trip(1.0, offset=7.0, out=0.01, back=0.01))
    estimator.add(trip(2.0, offset=7.0, out=0.01, back=0.01))
    assert estimator.offset_s == pytest.approx(7.0)
    assert not estimator.add(RoundTrip(10.0, 3.0, 2.0, 10.1))  # answered before it was asked
    assert estimator.refused == 1 and len(estimator.trips) == 2


@pytest.mark.parametrize("t1, t2", [(float("nan"), float("nan")), (float("inf"), float("inf")),
                                    (1.0, float("nan"))])
def test_an_answer_with_times_that_are_not_numbers_is_refused(t1, t2):
    estimator = ClockOffsetEstimator()
    assert not estimator.add(RoundTrip(0.0, t1, t2, 0.01))
    assert estimator.refused == 1 and estimator.offset_s is None


@pytest.mark.parametrize("step_s", [3600.0, -3600.0, 0.05])
def test_a_step_of_their_clock_is_followed_at_the_next_round_trip(step_s):
    estimator = ClockOffsetEstimator()
    for sent in range(8):  # fast trips: the robot's clock 2 h behind
        estimator.add(trip(float(sent), offset=-7200.0, out=0.001, back=0.001))
    # NTP steps the robot's clock; later trips are slower, so the old ones had the least delay
    estimator.add(trip(8.0, offset=-7200.0 + step_s, out=0.01, back=0.01))
    assert estimator.offset_s == pytest.approx(-7200.0 + step_s, abs=estimator.uncertainty_s)
    assert estimator.uncertainty_s == pytest.approx(0.01, abs=1e-6) and estimator.steps == 1


def test_slow_trips_of_an_unchanged_clock_keep_the_fastest_one():
    estimator = ClockOffsetEstimator()
    estimator.add(trip(0.0, offset=1.0, out=0.001, back=0.001))
    # one-sided queueing moves a slow trip's offset, but within its own bounds: no step
    estimator.add(trip(1.0, offset=1.0, out=0.3, back=0.001))
    assert estimator.steps == 0 and estimator.offset_s == pytest.approx(1.0, abs=1e-9)
