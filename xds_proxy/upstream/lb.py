"""Load balancers: which host of a cluster gets the next request. Pure; randomness injected.

Envoy's `ROUND_ROBIN` (equal weights: strict rotation), `LEAST_REQUEST` (equal weights:
power of `choice_count` random choices, the host with fewer active requests wins) and `RANDOM`
(a uniformly random host). They ignore a request's hash key; the hashing balancers
(`RING_HASH`, `MAGLEV`) are in hashing.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from xds_proxy.upstream.hashing import Maglev, RingHash


class LoadedHost(Protocol):
    @property
    def active_requests(self) -> int: ...


H = TypeVar("H", bound=LoadedHost)


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self, rng: random.Random | None = None) -> None:
        # Envoy starts each worker's rotation at a random host so that many proxies do not all
        # hit the first host together.
        self._next = (rng or random.Random()).randrange(1 << 30)

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        index = self._next % len(hosts)
        self._next = index + 1
        return hosts[index]


class LeastRequest:
    __slots__ = ("_choices", "_rng")

    def __init__(self, choices: int = 2, rng: random.Random | None = None) -> None:
        self._choices = choices
        self._rng = rng or random.Random()

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        best: H | None = None
        for _ in range(self._choices):
            candidate = hosts[self._rng.randrange(len(hosts))]
            if best is None or candidate.active_requests < best.active_requests:
                best = candidate
        return best


class Random:
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        return hosts[self._rng.randrange(len(hosts))]


LoadBalancer = RoundRobin | LeastRequest | Random | RingHash | Maglev
