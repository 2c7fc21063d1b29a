"""Which cluster a request (route action) or a connection (tcp_proxy) goes to: one cluster, or
clusters chosen at random in proportion to their weights."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WeightedClusters:
    entries: tuple[tuple[str, int], ...]  # (name, weight > 0); one entry for a single cluster
    total: int

    @classmethod
    def single(cls, name: str) -> WeightedClusters:
        return cls(((name, 1),), 1)

    @classmethod
    def of(cls, entries: Iterable[tuple[str, int]]) -> WeightedClusters:
        """Entries of weight 0 are never picked (as Envoy): they are left out."""
        kept = tuple((name, weight) for name, weight in entries if weight > 0)
        return cls(kept, sum(weight for _, weight in kept))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def pick(self, rng: random.Random) -> str:
        entries = self.entries
        if len(entries) == 1:
            return entries[0][0]
        point = rng.randrange(self.total)
        for name, weight in entries:
            if point < weight:
                return name
            point -= weight
        return entries[-1][0]
