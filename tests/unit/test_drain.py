"""The pure drain core (docs/draining.md): the gradual ramp, immediate, DT 0 and the
idle schedule, with an injected clock (plain floats) and random source."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xds_proxy.listener.drain import Drain

START = 1000.0


def gradual(drain_time_s: float) -> Drain:
    return Drain("lds_update", "gradual", drain_time_s, START)


def expected_probability(elapsed: float, drain_time_s: float) -> float:
    return min(1.0, math.floor(elapsed) / (drain_time_s / 2))


class FixedDraw(random.Random):
    """A random source whose `random()` always returns one chosen value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- the ramp ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "probability"),
    [
        (0.0, 0.0),
        (0.5, 0.0),
        (0.999, 0.0),
        (1.0, 1 / 1.5),  # DT 3 -> DT/2 is 1.5, a float
        (1.999, 1 / 1.5),
        (2.0, 1.0),  # ceil(3 / 2): everyone
        (2.9, 1.0),
        (3.0, 1.0),
        (100.0, 1.0),
    ],
)
def test_ramp_dt3_exact_values(elapsed: float, probability: float) -> None:
    assert gradual(3).close_probability(START + elapsed) == pytest.approx(probability)


@pytest.mark.parametrize("drain_time_s", [2, 3, 4, 7, 10, 600])
def test_ramp_none_in_first_second_and_everyone_from_half(drain_time_s: int) -> None:
    drain = gradual(drain_time_s)
    for tenth in range(10):
        assert drain.close_probability(START + tenth / 10) == 0.0
    assert drain.close_probability(START + math.ceil(drain_time_s / 2)) == 1.0
    if drain_time_s > 2:
        assert drain.close_probability(START + math.ceil(drain_time_s / 2) - 0.01) < 1.0


@given(
    drain_time_s=st.floats(min_value=0.5, max_value=10_000),
    elapsed=st.floats(min_value=0, max_value=20_000),
)
def test_ramp_formula_everywhere(drain_time_s: float, elapsed: float) -> None:
    assert gradual(drain_time_s).close_probability(START + elapsed) == pytest.approx(
        expected_probability(elapsed, drain_time_s)
    )


def test_ramp_is_monotonic_and_stepped_per_whole_second() -> None:
    drain = gradual(10)
    previous = -1.0
    for step in range(0, 700):
        now = START + step / 100
        probability = drain.close_probability(now)
        assert probability >= previous
        assert probability == drain.close_probability(START + math.floor(step / 100))
        previous = probability


def test_before_start_never_closes() -> None:
    """A clock read a moment before the drain's start (another timer's `now`) is t = 0."""
    assert gradual(3).close_probability(START - 5) == 0.0


@pytest.mark.parametrize("drain_time_s", [3, 10])
def test_decisions_over_thousands_match_the_formula(drain_time_s: int) -> None:
    """Independent draws per decision: the share of "close" at each elapsed second matches
    the formula within a few standard deviations."""
    drain = gradual(drain_time_s)
    rng = random.Random(1234)
    decisions = 4000
    for second in range(drain_time_s + 1):
        for offset in (0.0, 0.5, 0.99):
            elapsed = second + offset
            closes = sum(drain.drain_close(START + elapsed, rng) for _ in range(decisions))
            p = expected_probability(elapsed, drain_time_s)
            tolerance = 4 * math.sqrt(p * (1 - p) / decisions) + 1e-9
            assert abs(closes / decisions - p) <= tolerance, (elapsed, closes)


def test_decision_is_one_draw_against_the_probability() -> None:
    drain = gradual(10)  # at t = 2.5: p = 2 / 5 = 0.4
    now = START + 2.5
    assert drain.drain_close(now, FixedDraw(0.399))
    assert not drain.drain_close(now, FixedDraw(0.4))
    assert not drain.drain_close(now, FixedDraw(0.99))
    # p = 0 never closes, whatever the draw; p = 1 always does
    assert not drain.drain_close(START + 0.5, FixedDraw(0.0))
    assert drain.drain_close(START + 5, FixedDraw(0.999999))


@pytest.mark.parametrize("elapsed", [0.0, 0.3, 1.0, 50.0])
def test_immediate_always_closes(elapsed: float) -> None:
    drain = Drain("lds_remove", "immediate", 600, START)
    assert drain.close_probability(START + elapsed) == 1.0
    assert drain.drain_close(START + elapsed, FixedDraw(0.999999))


@pytest.mark.parametrize("strategy", ["gradual", "immediate"])
def test_drain_time_zero_always_closes(strategy: str) -> None:
    drain = Drain("lds_update", strategy, 0, START)
    assert drain.close_probability(START) == 1.0
    assert drain.drain_close(START, FixedDraw(0.999999))
    assert drain.tell_delay(START, random.Random(1)) == 0.0


def test_deadline_is_start_plus_drain_time() -> None:
    assert gradual(3).deadline == START + 3
    assert Drain("x", "immediate", 0, START).deadline == START


# -- the idle schedule ---------------------------------------------------------------------


def test_idle_schedule_spreads_over_the_first_half() -> None:
    drain = gradual(10)
    rng = random.Random(99)
    delays = [drain.tell_delay(START, rng) for _ in range(5000)]
    assert all(0.0 <= delay < 5.0 for delay in delays)
    # uniform over [0, 5): every half-second bucket gets about a tenth
    buckets = [0] * 10
    for delay in delays:
        buckets[int(delay * 2)] += 1
    assert all(400 <= count <= 600 for count in buckets), buckets
    assert sum(delays) / len(delays) == pytest.approx(2.5, abs=0.1)


def test_idle_schedule_uses_the_random_source() -> None:
    drain = gradual(10)
    first = [drain.tell_delay(START, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]  # same seed, same moment
    assert drain.tell_delay(START, random.Random(8)) != first[0]


def test_connection_registered_later_gets_a_moment_before_half() -> None:
    drain = gradual(10)  # DT/2 at START + 5
    rng = random.Random(5)
    now = START + 3.0
    delays = [drain.tell_delay(now, rng) for _ in range(2000)]
    assert all(0.0 <= delay < 2.0 for delay in delays)  # between now and DT/2
    assert max(delays) > 1.9 and min(delays) < 0.1  # ... spread over all of it


@pytest.mark.parametrize("elapsed", [5.0, 5.01, 9.9, 10.0, 30.0])
def test_after_half_the_window_connections_are_told_at_once(elapsed: float) -> None:
    assert gradual(10).tell_delay(START + elapsed, random.Random(3)) == 0.0


@pytest.mark.parametrize("elapsed", [0.0, 1.0, 100.0])
def test_immediate_tells_at_once(elapsed: float) -> None:
    drain = Drain("drain_listeners", "immediate", 10, START)
    assert drain.tell_delay(START + elapsed, random.Random(3)) == 0.0


@given(
    drain_time_s=st.floats(min_value=0.01, max_value=10_000),
    elapsed=st.floats(min_value=-5, max_value=20_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_connection_is_told_by_half_the_window(
    drain_time_s: float, elapsed: float, seed: int
) -> None:
    drain = gradual(drain_time_s)
    now = START + elapsed
    told_at = now + drain.tell_delay(now, random.Random(seed))
    assert told_at >= now
    assert told_at <= max(now, START + drain_time_s / 2) + 1e-9
