"""One running drain: when it started, its deadline, and the per-decision ramp.

Pure: time and randomness are arguments. `gradual` says "close" at elapsed time t with
probability min(1, floor(t) / (DT / 2)), an independent draw per decision; `immediate` (and
DT 0) always says "close". An idle connection is told of a gradual drain at a moment drawn
uniformly in [start, start + DT/2), of an immediate one at once. The drain manager
(`drain_manager.py`) holds the running drains and asks them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Drain:
    trigger: str
    strategy: str  # "gradual" | "immediate"
    drain_time_s: float
    started_at: float  # monotonic seconds

    @property
    def deadline(self) -> float:
        return self.started_at + self.drain_time_s

    def close_probability(self, now: float) -> float:
        if self.strategy == "immediate" or self.drain_time_s <= 0:
            return 1.0
        elapsed = max(0.0, now - self.started_at)
        return min(1.0, math.floor(elapsed) / (self.drain_time_s / 2))

    def tell_delay(self, now: float, rng: random.Random) -> float:
        """Seconds from now until a connection is told to leave (the idle schedule): 0 with
        `immediate`; with `gradual`, uniform over what is left of [start, start + DT/2), and
        0 once DT/2 has passed."""
        if self.strategy == "immediate" or self.drain_time_s <= 0:
            return 0.0
        latest = self.started_at + self.drain_time_s / 2
        earliest = max(now, self.started_at)
        if earliest >= latest:
            return 0.0
        return rng.uniform(earliest, latest) - now

    def drain_close(self, now: float, rng: random.Random) -> bool:
        probability = self.close_probability(now)
        return probability >= 1.0 or (probability > 0.0 and rng.random() < probability)
