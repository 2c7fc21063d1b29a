"""Load balancers: which host of a cluster gets the next request. Pure; randomness injected.

Envoy's `ROUND_ROBIN` (equal weights: strict rotation), `LEAST_REQUEST` (equal weights:
power of `choice_count` random choices, the host with fewer active requests wins) and `RANDOM`
(a uniformly random host, whatever the weights, as Envoy's). When the hosts' weights differ,
round robin and least request pick by earliest deadline first, as Envoy's EDF scheduler: each
host's next deadline is one over its weight later (for least request, the weight divided by
its active requests + 1 when it goes back in, Envoy's default `active_request_bias` of 1).
They ignore a request's hash key; the hashing balancers (`RING_HASH`, `MAGLEV`) are in
hashing.py.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from xds_proxy.upstream.hashing import Maglev, RingHash


class LoadedHost(Protocol):
    @property
    def active_requests(self) -> int: ...

    @property
    def weight(self) -> int: ...


H = TypeVar("H", bound=LoadedHost)
T = TypeVar("T")


class EdfScheduler(Generic[T]):
    """Earliest deadline first over items with weights (Envoy's EdfScheduler; pure): `add`
    queues an item `1 / weight` after the current time; `pick_and_add` takes the item due first
    (ties: the one queued first) and queues it again with its weight read then."""

    __slots__ = ("_heap", "_now", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._now = 0.0
        self._order = 0

    def add(self, weight: float, item: T) -> None:
        self._order += 1
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._order, item))

    def pick_and_add(self, weight_of: Callable[[T], float]) -> T | None:
        if not self._heap:
            return None
        deadline, _, item = heapq.heappop(self._heap)
        self._now = deadline
        self.add(weight_of(item), item)
        return item


def _edf(hosts: Sequence[H], weight: Callable[[H], float], rng: random.Random) -> EdfScheduler:
    """A schedule over `hosts`, advanced by a random number of picks, so that proxies do not
    all begin with the same host (as Envoy seeds each worker's)."""
    scheduler: EdfScheduler[H] = EdfScheduler()
    for host in hosts:
        scheduler.add(weight(host), host)
    for _ in range(rng.randrange(len(hosts))):
        scheduler.pick_and_add(weight)
    return scheduler


class _Weighted:
    """The EDF schedule of the current host list, or None while all weights are equal (the
    cluster replaces its list of routable hosts on every change: its identity is the version)."""

    __slots__ = ("_for", "_rng", "_schedule", "_weight")

    def __init__(self, weight: Callable[[H], float], rng: random.Random) -> None:
        self._weight = weight
        self._rng = rng
        self._for: Sequence[LoadedHost] | None = None
        self._schedule: EdfScheduler | None = None

    def pick(self, hosts: Sequence[H]) -> H | None:
        """The schedule's next host, or None while all weights are equal."""
        if hosts is not self._for:
            self._for = hosts
            first = hosts[0].weight
            unequal = any(host.weight != first for host in hosts)
            self._schedule = _edf(hosts, self._weight, self._rng) if unequal else None
        if self._schedule is None:
            return None
        return self._schedule.pick_and_add(self._weight)


class RoundRobin:
    __slots__ = ("_next", "_weighted")

    def __init__(self, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        # Envoy starts each worker's rotation at a random host so that many proxies do not all
        # hit the first host together.
        self._next = rng.randrange(1 << 30)
        self._weighted = _Weighted(lambda host: host.weight, rng)

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        weighted = self._weighted.pick(hosts)
        if weighted is not None:
            return weighted
        index = self._next % len(hosts)
        self._next = index + 1
        return hosts[index]


class LeastRequest:
    __slots__ = ("_choices", "_rng", "_weighted")

    def __init__(self, choices: int = 2, rng: random.Random | None = None) -> None:
        self._choices = choices
        self._rng = rng or random.Random()
        self._weighted = _Weighted(lambda host: host.weight / (host.active_requests + 1), self._rng)

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        weighted = self._weighted.pick(hosts)
        if weighted is not None:
            return weighted
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
