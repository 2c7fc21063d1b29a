"""Reconnect back-off for xDS streams: Envoy's jittered exponential strategy.

Envoy waits `random() % interval` milliseconds (full jitter) before re-opening a lost xDS
stream; the interval starts at 500 ms, doubles after each attempt and is capped at 30 s, and
goes back to 500 ms once a stream has delivered a response. Randomness is injected so tests
can assert exact delays.
"""

from __future__ import annotations

import random

BASE_INTERVAL_MS = 500
MAX_INTERVAL_MS = 30_000


class JitteredBackoff:
    """Delays for successive reconnect attempts, in seconds."""

    def __init__(
        self,
        rng: random.Random,
        base_interval_ms: int = BASE_INTERVAL_MS,
        max_interval_ms: int = MAX_INTERVAL_MS,
    ) -> None:
        if not 0 < base_interval_ms <= max_interval_ms:
            raise ValueError("need 0 < base_interval_ms <= max_interval_ms")
        self._rng = rng
        self._base_ms = base_interval_ms
        self._max_ms = max_interval_ms
        self._interval_ms = base_interval_ms

    @property
    def interval_ms(self) -> int:
        """The upper bound (exclusive) of the next delay."""
        return self._interval_ms

    def next_delay(self) -> float:
        """A delay drawn uniformly from [0, interval); the interval then doubles up to the cap."""
        interval = self._interval_ms
        doubled = interval * 2
        self._interval_ms = doubled if doubled <= self._max_ms else self._max_ms
        return self._rng.randrange(interval) / 1000.0

    def reset(self) -> None:
        """Start again from the base interval (after a stream that delivered a response)."""
        self._interval_ms = self._base_ms
