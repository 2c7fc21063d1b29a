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
from typing import Protocol


class Slots(Protocol):
    """Where a paced drain keeps its taken slots: here (`LocalSlots`), or shared by the
    worker processes of `--concurrency N` (`listener/shared_pacing.py`), so that all of them
    together tell at most R a second. Each call is atomic."""

    def take_first_free(self, slot: int, limit: int) -> int | None:
        """Take the first free slot in [slot, limit); None if there is none."""
        ...

    def take_all(self, slots: tuple[int, ...]) -> bool:
        """Take these slots if every one is free; False (and take none) otherwise."""
        ...


class LocalSlots:
    """The taken slots of one process: a union-find from each taken slot to a later
    candidate."""

    def __init__(self) -> None:
        self._next_free: dict[int, int] = {}

    def _find(self, slot: int) -> int:
        root = slot
        while root in self._next_free:
            root = self._next_free[root]
        while slot != root:  # path compression
            self._next_free[slot], slot = root, self._next_free[slot]
        return root

    def take_first_free(self, slot: int, limit: int) -> int | None:
        found = self._find(slot)
        if found >= limit:
            return None
        self._next_free[found] = found + 1
        return found

    def take_all(self, slots: tuple[int, ...]) -> bool:
        if any(self._find(slot) != slot for slot in slots):
            return False
        for slot in slots:
            self._next_free[slot] = slot + 1
        return True


class Pacer:
    """The slots of one paced drain (R tells per second at most)."""

    def __init__(
        self, rate: float, start: float, deadline: float, slots: Slots | None = None
    ) -> None:
        self.rate = rate
        self.start = start
        self.deadline = deadline
        self.slots: Slots = slots if slots is not None else LocalSlots()
        self.granted = 0  # the tells this process booked

    def share(self, slots: Slots, start: float, rate: float) -> None:
        """Book in slots shared with other processes, on their common grid from `start`,
        at the whole rate they share."""
        self.slots, self.start, self.rate = slots, start, rate

    def _slot_time(self, slot: int) -> float:
        return self.start + slot / self.rate

    def _limit(self) -> int:
        """The first slot at or after the deadline."""
        return math.ceil((self.deadline - self.start) * self.rate - 1e-9)

    def book(self, moment: float) -> float:
        """The time an idle connection whose moment is `moment` is told (<= the deadline)."""
        offset = max(0.0, moment - self.start) * self.rate
        slot = self.slots.take_first_free(math.ceil(offset - 1e-9), self._limit())
        if slot is None:
            return self.deadline
        self.granted += 1
        return self._slot_time(slot)

    def take_now(self, now: float) -> bool:
        """May a response written now be a drain-close? (takes the slots around now)."""
        if now >= self.deadline:
            return True  # the deadline closes everything anyway
        offset = max(0.0, now - self.start) * self.rate
        below, above = math.floor(offset), math.ceil(offset)
        if not self.slots.take_all((below,) if above == below else (below, above)):
            return False
        self.granted += 1
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
