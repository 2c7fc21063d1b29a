"""One running drain: when it started, its deadline, the per-decision ramp and its pacing.

Pure: time and randomness are arguments. `gradual` says "close" at elapsed time t with
probability min(1, floor(t) / (DT / 2)), an independent draw per decision; `immediate` (and
DT 0) always says "close". An idle connection is told of a gradual drain at a moment drawn
uniformly in [start, start + DT/2), of an immediate one at once. The drain manager
(`drain_manager.py`) holds the running drains and asks them.

Pacing (`max_closes_per_second` R > 0, `Pacer`): every connection told to leave takes a slot
on a grid of 1/R seconds from the start of the drain. An idle connection is told at the first
free slot at or after its moment; a response may be a drain-close only if the slots on both
sides of now are free (it takes both), so that any two tells are at least 1/R apart and no
window of one second holds more than R of them. A moment with no free slot before the
deadline is the deadline (where the drain closes what is left, as without pacing).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


class Pacer:
    """The slots of one paced drain (R tells per second at most)."""

    def __init__(self, rate: float, start: float, deadline: float) -> None:
        self.rate = rate
        self.start = start
        self.deadline = deadline
        self._next_free: dict[int, int] = {}  # a taken slot -> a later candidate (union-find)
        self.granted = 0

    def _slot_time(self, slot: int) -> float:
        return self.start + slot / self.rate

    def _find(self, slot: int) -> int:
        root = slot
        while root in self._next_free:
            root = self._next_free[root]
        while slot != root:  # path compression
            self._next_free[slot], slot = root, self._next_free[slot]
        return root

    def _take(self, slot: int) -> None:
        self._next_free[slot] = slot + 1
        self.granted += 1

    def book(self, moment: float) -> float:
        """The time an idle connection whose moment is `moment` is told (<= the deadline)."""
        offset = max(0.0, moment - self.start) * self.rate
        slot = self._find(math.ceil(offset - 1e-9))
        at = self._slot_time(slot)
        if at >= self.deadline:
            return self.deadline
        self._take(slot)
        return at

    def take_now(self, now: float) -> bool:
        """May a response written now be a drain-close? (takes the slots around now)."""
        if now >= self.deadline:
            return True  # the deadline closes everything anyway
        offset = max(0.0, now - self.start) * self.rate
        below, above = math.floor(offset), math.ceil(offset)
        if self._find(below) != below or self._find(above) != above:
            return False
        self._take(below)
        if above != below:
            self._next_free[above] = above + 1
        return True


@dataclass(frozen=True)
class Drain:
    trigger: str
    strategy: str  # "gradual" | "immediate"
    drain_time_s: float
    started_at: float  # monotonic seconds
    pacer: Pacer | None = field(default=None, compare=False)  # None: unlimited

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
        0 once DT/2 has passed; with pacing, the first free slot from then (<= DT)."""
        moment = now + self._unpaced_delay(now, rng)
        if self.pacer is not None:
            moment = self.pacer.book(moment)
        return max(0.0, moment - now)

    def _unpaced_delay(self, now: float, rng: random.Random) -> float:
        if self.strategy == "immediate" or self.drain_time_s <= 0:
            return 0.0
        latest = self.started_at + self.drain_time_s / 2
        earliest = max(now, self.started_at)
        if earliest >= latest:
            return 0.0
        return rng.uniform(earliest, latest) - now

    def drain_close(self, now: float, rng: random.Random) -> bool:
        probability = self.close_probability(now)
        close = probability >= 1.0 or (probability > 0.0 and rng.random() < probability)
        if close and self.pacer is not None:
            return self.pacer.take_now(now)
        return close
