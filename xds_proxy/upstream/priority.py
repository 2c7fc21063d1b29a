"""Which hosts of a cluster a request may go to: priorities, their load, panic and localities,
as Envoy 1.40 computes them (its `LoadBalancerBase` and `HostSetImpl`). Pure: the hosts are
read, never changed, and randomness comes from the caller.

- A host is healthy (no failed active check, no outlier ejection, EDS health UNKNOWN or
  HEALTHY), degraded (EDS `DEGRADED`), or neither (EDS UNHEALTHY, DRAINING, TIMEOUT, or a failed
  check).
- Each priority's health is `min(100, overprovisioning_factor * healthy / hosts)` (percent;
  the factor is 140 by default, so 72% healthy hosts already count as 100%), its degraded
  availability the same with degraded hosts. The load (100%) is given to priorities in order, as
  much as each one's health covers, scaled up when their sum (capped at 100) is below 100;
  what is left goes to degraded hosts the same way, and rounding leftovers to the first
  priority with healthy hosts.
- A priority is in panic when the total is below 100 and its healthy plus degraded share
  (not overprovisioned) is below `healthy_panic_threshold`: it then balances over all its
  hosts. When every priority is in panic, the load follows the number of hosts per priority.
  With nothing available and a threshold of 0, all load goes to priority 0, which has no
  healthy host to give: the request fails (`no healthy upstream`).
- With `locality_weighted_lb_config` a priority first picks a locality, earliest deadline
  first on `locality weight * min(1, factor * healthy / hosts of that locality)`, then a host
  of that locality; a locality without a weight is never picked; none to pick: all the
  priority's healthy hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xds_proxy.config.endpoints import Locality
from xds_proxy.upstream.host import Host
from xds_proxy.upstream.lb import EdfScheduler


def is_healthy(host: Host) -> bool:
    failed = host.failed_active_hc or host.failed_outlier_check or host.failed_eds_health
    return not (failed or host.degraded_eds_health)


def is_degraded(host: Host) -> bool:
    return host.degraded_eds_health and not (host.failed_active_hc or host.failed_outlier_check)


@dataclass
class HostSet:
    """The hosts of one priority, with their healthy and degraded subsets per locality (in
    the order each locality first appears)."""

    priority: int
    overprovisioning_factor: int
    hosts: list[Host] = field(default_factory=list)
    healthy: list[Host] = field(default_factory=list)
    degraded: list[Host] = field(default_factory=list)
    localities: list[Locality] = field(default_factory=list)
    locality_weights: list[int] = field(default_factory=list)
    hosts_per_locality: list[list[Host]] = field(default_factory=list)
    healthy_per_locality: list[list[Host]] = field(default_factory=list)
    degraded_per_locality: list[list[Host]] = field(default_factory=list)
    # Built on demand by `choose_locality`: per degraded?, a scheduler over locality indexes.
    _schedulers: dict[bool, EdfScheduler[int]] = field(default_factory=dict)

    def add(self, host: Host, locality_weight: int) -> None:
        self.hosts.append(host)
        try:
            index = self.localities.index(host.locality)
        except ValueError:
            index = len(self.localities)
            self.localities.append(host.locality)
            self.locality_weights.append(locality_weight)
            self.hosts_per_locality.append([])
            self.healthy_per_locality.append([])
            self.degraded_per_locality.append([])
        self.hosts_per_locality[index].append(host)
        if is_healthy(host):
            self.healthy.append(host)
            self.healthy_per_locality[index].append(host)
        elif is_degraded(host):
            self.degraded.append(host)
            self.degraded_per_locality[index].append(host)

    def choose_locality(self, degraded: bool) -> int | None:
        """The next locality (its index) by effective weight; None: no locality can take it."""
        scheduler = self._schedulers.get(degraded)
        if scheduler is None:
            scheduler = self._schedulers[degraded] = EdfScheduler()
            for index in range(len(self.localities)):
                weight = self._effective_weight(index, degraded)
                if weight > 0:
                    scheduler.add(weight, index)
        return scheduler.pick_and_add(lambda index: self._effective_weight(index, degraded))

    def _effective_weight(self, index: int, degraded: bool) -> float:
        eligible = (self.degraded_per_locality if degraded else self.healthy_per_locality)[index]
        hosts = self.hosts_per_locality[index]
        share = len(eligible) / len(hosts) if hosts else 0.0
        factor = self.overprovisioning_factor / 100
        return self.locality_weights[index] * min(1.0, factor * share)


def host_sets(
    hosts: Sequence[Host],
    locality_weights: dict[tuple[int, Locality], int],
    overprovisioning_factor: int,
) -> list[HostSet]:
    """The hosts by priority (0 to the highest present; a priority without hosts is an empty
    set), each in the hosts' order."""
    top = max((host.priority for host in hosts), default=0)
    sets = [HostSet(priority, overprovisioning_factor) for priority in range(top + 1)]
    for host in hosts:
        sets[host.priority].add(host, locality_weights.get((host.priority, host.locality), 0))
    return sets


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """Per priority: the percent of requests for its healthy hosts, for its degraded hosts,
    and whether it is in panic (all its hosts, whatever their health)."""

    healthy: tuple[int, ...]
    degraded: tuple[int, ...]
    panic: tuple[bool, ...]

    @property
    def single(self) -> bool:
        """All the load on priority 0's healthy hosts (no draw needed)."""
        return self.healthy[0] == 100


def priority_load(
    sets: Sequence[HostSet], overprovisioning_factor: int, panic_threshold: float
) -> PriorityLoad:
    count = len(sets)
    health = [0] * count
    degraded = [0] * count
    for index, host_set in enumerate(sets):
        total = len(host_set.hosts)
        if total:
            health[index] = min(100, overprovisioning_factor * len(host_set.healthy) // total)
            degraded[index] = min(100, overprovisioning_factor * len(host_set.degraded) // total)
    available = min(100, sum(health) + sum(degraded))
    healthy_load = [0] * count
    degraded_load = [0] * count
    if available == 0:
        healthy_load[0] = 100
        if panic_threshold <= 0:
            return PriorityLoad(tuple(healthy_load), tuple(degraded_load), (False,) * count)
        return _total_panic(sets)
    first_healthy, left = _distribute(healthy_load, health, 100, available)
    first_degraded, left = _distribute(degraded_load, degraded, left, available)
    if left:
        if first_healthy >= 0:
            healthy_load[first_healthy] += left
        else:
            degraded_load[first_degraded] += left
    panic = tuple(available != 100 and _in_panic(host_set, panic_threshold) for host_set in sets)
    if all(panic):
        return _total_panic(sets)
    return PriorityLoad(tuple(healthy_load), tuple(degraded_load), panic)


def _distribute(
    load: list[int], availability: list[int], total: int, available: int
) -> tuple[int, int]:
    first = -1
    for index, share in enumerate(availability):
        if first < 0 and share > 0:
            first = index
        load[index] = min(total, share * 100 // available)
        total -= load[index]
    return first, total


def _in_panic(host_set: HostSet, threshold: float) -> bool:
    total = len(host_set.hosts)
    if threshold <= 0:
        return False
    if not total:
        return True
    return 100.0 * (len(host_set.healthy) + len(host_set.degraded)) / total < threshold


def _total_panic(sets: Sequence[HostSet]) -> PriorityLoad:
    """Every priority in panic: the load follows the number of hosts."""
    count = len(sets)
    total = sum(len(host_set.hosts) for host_set in sets)
    load = [0] * count
    if total == 0:
        load[0] = 100
    else:
        for index, host_set in enumerate(sets):
            load[index] = 100 * len(host_set.hosts) // total
        first = next(index for index, host_set in enumerate(sets) if host_set.hosts)
        load[first] += 100 - sum(load)
    return PriorityLoad(tuple(load), (0,) * count, (True,) * count)


def choose_priority(load: PriorityLoad, draw: int) -> tuple[int, bool]:
    """(priority, degraded?) for a random `draw` (any non-negative int), as Envoy's
    `choosePriority`: draw % 100 + 1 against the cumulative loads, healthy first."""
    point = draw % 100 + 1
    cumulative = 0
    for priority, share in enumerate(load.healthy):
        cumulative += share
        if point <= cumulative:
            return priority, False
    for priority, share in enumerate(load.degraded):
        cumulative += share
        if point <= cumulative:
            return priority, True
    return 0, False
