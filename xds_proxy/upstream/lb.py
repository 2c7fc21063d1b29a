"""Load balancers: which host of a cluster gets the next request. Pure; randomness injected.

Envoy's `ROUND_ROBIN` (equal weights: strict rotation), `LEAST_REQUEST` (equal weights:
power of `choice_count` random choices, the host with fewer active requests wins) and `RANDOM`
(a uniformly random host, whatever its weight, as Envoy's). Hosts of unequal weights: the
EDF balancers at the end (`WeightedRoundRobin`, `WeightedLeastRequest`).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar


class LoadedHost(Protocol):
    @property
    def active_requests(self) -> int: ...


H = TypeVar("H", bound=LoadedHost)
T = TypeVar("T")


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self, rng: random.Random | None = None) -> None:
        # Envoy starts each worker's rotation at a random host so that many proxies do not all
        # hit the first host together.
        self._next = (rng or random.Random()).randrange(1 << 30)

    def pick(self, hosts: Sequence[H]) -> H | None:
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

    def pick(self, hosts: Sequence[H]) -> H | None:
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

    def pick(self, hosts: Sequence[H]) -> H | None:
        if not hosts:
            return None
        return hosts[self._rng.randrange(len(hosts))]


LoadBalancer = RoundRobin | LeastRequest | Random


# -- weighted hosts (EDS `load_balancing_weight`) ------------------------------------------------
#
# Envoy balances over hosts of unequal weights with an earliest-deadline-first scheduler: each
# host is due at `now + 1 / weight`; the pick is the host due first (ties: the one added first),
# which is then due again `1 / weight` later. Round robin uses the host's weight; least request
# its weight divided by (active requests + 1) ** active_request_bias (1.0), computed again each
# time the host is put back. Equal weights keep the unweighted balancers above.


class WeightedHost(LoadedHost, Protocol):
    @property
    def weight(self) -> int: ...


W = TypeVar("W", bound=WeightedHost)


class EdfScheduler(Generic[T]):
    """Earliest deadline first over items with weights (pure)."""

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


def weights_differ(hosts: Sequence[WeightedHost]) -> bool:
    return len({host.weight for host in hosts}) > 1


class WeightedRoundRobin(Generic[W]):
    """Envoy's ROUND_ROBIN over hosts of unequal weights: each host gets its weight's share,
    interleaved (not in runs)."""

    __slots__ = ("_scheduler",)

    def __init__(self, hosts: Sequence[W], rng: random.Random) -> None:
        self._scheduler = _seeded(hosts, _static_weight, rng)

    def pick(self, hosts: Sequence[W]) -> W | None:
        return self._scheduler.pick_and_add(_static_weight)


class WeightedLeastRequest(Generic[W]):
    """Envoy's LEAST_REQUEST over hosts of unequal weights: EDF on weight / (active + 1)."""

    __slots__ = ("_scheduler",)

    def __init__(self, hosts: Sequence[W], rng: random.Random) -> None:
        self._scheduler = _seeded(hosts, _loaded_weight, rng)

    def pick(self, hosts: Sequence[W]) -> W | None:
        return self._scheduler.pick_and_add(_loaded_weight)


def _static_weight(host: WeightedHost) -> float:
    return float(host.weight)


def _loaded_weight(host: WeightedHost) -> float:
    return host.weight / (host.active_requests + 1)


def _seeded(
    hosts: Sequence[W], weight_of: Callable[[W], float], rng: random.Random
) -> EdfScheduler[W]:
    """A scheduler over `hosts`, advanced by a random number of picks (as Envoy seeds each
    worker's schedule, so that many proxies do not start on the same host)."""
    scheduler: EdfScheduler[W] = EdfScheduler()
    for host in hosts:
        scheduler.add(weight_of(host), host)
    for _ in range(rng.randrange(len(hosts)) if hosts else 0):
        scheduler.pick_and_add(weight_of)
    return scheduler
