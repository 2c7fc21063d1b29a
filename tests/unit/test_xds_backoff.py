"""Reconnect back-off: Envoy's JitteredExponentialBackOffStrategy with 500 ms / 30 s."""

from __future__ import annotations

import random

import pytest

from xds_proxy.xds.backoff import JitteredBackoff


class FixedDraw(random.Random):
    """randrange(n) always returns n - 1 (the largest delay possible), or 0 when asked."""

    def __init__(self, largest: bool = True) -> None:
        super().__init__(0)
        self.largest = largest
        self.bounds: list[int] = []

    def randrange(self, stop: int) -> int:  # type: ignore[override]
        self.bounds.append(stop)
        return stop - 1 if self.largest else 0


def test_intervals_double_from_500_ms_and_cap_at_30_s() -> None:
    rng = FixedDraw()
    backoff = JitteredBackoff(rng)
    delays = [backoff.next_delay() for _ in range(9)]
    assert rng.bounds == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert delays == [b / 1000 - 0.001 for b in rng.bounds]


def test_smallest_draw_is_zero() -> None:
    backoff = JitteredBackoff(FixedDraw(largest=False))
    assert backoff.next_delay() == 0.0


def test_reset_returns_to_base_interval() -> None:
    rng = FixedDraw()
    backoff = JitteredBackoff(rng)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.interval_ms == 500
    backoff.next_delay()
    assert rng.bounds[-1] == 500


def test_delays_are_jittered_within_bounds_and_reproducible() -> None:
    first = JitteredBackoff(random.Random(7))
    second = JitteredBackoff(random.Random(7))
    a = [first.next_delay() for _ in range(50)]
    b = [second.next_delay() for _ in range(50)]
    assert a == b
    assert len(set(a)) > 10  # really random, not a fixed ladder
    bounds = [0.5, 1, 2, 4, 8, 16] + [30] * 44
    assert all(0 <= delay < bound for delay, bound in zip(a, bounds, strict=True))


def test_custom_intervals_and_validation() -> None:
    rng = FixedDraw()
    backoff = JitteredBackoff(rng, base_interval_ms=100, max_interval_ms=300)
    for _ in range(4):
        backoff.next_delay()
    assert rng.bounds == [100, 200, 300, 300]
    with pytest.raises(ValueError):
        JitteredBackoff(rng, base_interval_ms=0)
    with pytest.raises(ValueError):
        JitteredBackoff(rng, base_interval_ms=500, max_interval_ms=100)
