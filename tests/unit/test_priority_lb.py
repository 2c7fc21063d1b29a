"""Which host takes a request: priority load and panic (upstream/priority.py), locality and host
weights (EDF, upstream/lb.py) and an EDS cluster's host updates (upstream/cluster.py), with an
injected random source. Expected values are Envoy 1.40's (its load_balancer_impl.cc rules)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.config.endpoints import Assignment, EndpointAddress, Locality
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.host import Host
from xds_proxy.upstream.lb import EdfScheduler, LeastRequest, RoundRobin
from xds_proxy.upstream.priority import choose_priority, host_sets, priority_load

UNHEALTHY = health_check_pb2.UNHEALTHY


def hosts_of(*spec: tuple[int, int, int]) -> list[Host]:
    """(priority, healthy count, unhealthy count) per group."""
    hosts = []
    port = 1000
    for priority, healthy, unhealthy in spec:
        for index in range(healthy + unhealthy):
            port += 1
            host = Host(("10.0.0.1", port))
            host.priority = priority
            host.eds_health = UNHEALTHY if index >= healthy else 0
            hosts.append(host)
    return hosts


def load_of(*spec: tuple[int, int, int], threshold: float = 50.0, factor: int = 140) -> Any:
    sets = host_sets(hosts_of(*spec), {}, factor)
    return priority_load(sets, factor, threshold)


@pytest.mark.parametrize(
    ("spec", "healthy", "panic"),
    [
        # All healthy: everything to P0.
        (((0, 4, 0), (1, 4, 0)), (100, 0), (False, False)),
        # 3 of 4 healthy: 140 * 3 // 4 = 105, capped at 100: still everything to P0.
        (((0, 3, 1), (1, 4, 0)), (100, 0), (False, False)),
        # 2 of 4 healthy: P0's health is 70, P1 takes the remaining 30.
        (((0, 2, 2), (1, 4, 0)), (70, 30), (False, False)),
        # P0 all down: everything to P1.
        (((0, 0, 4), (1, 4, 0)), (0, 100), (False, False)),
        # Both half healthy: 70 + 70 > 100: P0 70, P1 30, no panic (the total is 100).
        (((0, 1, 1), (1, 1, 1)), (70, 30), (False, False)),
        # Both a quarter healthy: 35 + 35 = 70 < 100: scaled to 50/50; each below the 50%
        # threshold: every priority in panic, the load follows host counts.
        (((0, 1, 3), (1, 1, 3)), (50, 50), (True, True)),
        # A priority without hosts (a gap) counts as 0 health; the total is 100: no panic.
        (((0, 4, 0), (2, 4, 0)), (100, 0, 0), (False, False, False)),
        (((0, 2, 2), (2, 4, 0)), (70, 0, 30), (False, False, False)),
    ],
)
def test_priority_load_and_panic(
    spec: tuple[tuple[int, int, int], ...], healthy: tuple[int, ...], panic: tuple[bool, ...]
) -> None:
    load = load_of(*spec)
    assert load.healthy == healthy
    assert load.panic == panic


def test_a_single_priority_panics_below_the_threshold_of_raw_health() -> None:
    # 2 of 5 healthy: 140 * 2 // 5 = 56 < 100, and 40% < 50%: panic (Envoy does not scale the
    # share it compares with the threshold).
    assert load_of((0, 2, 3)).panic == (True,)
    assert load_of((0, 3, 2)).panic == (False,)
    assert load_of((0, 2, 3), threshold=0).panic == (False,)


def test_nothing_available_with_threshold_zero_gives_p0_and_no_panic() -> None:
    load = load_of((0, 0, 2), (1, 0, 2), threshold=0)
    assert (load.healthy, load.panic) == ((100, 0), (False, False))


def test_choose_priority_follows_the_cumulative_load() -> None:
    load = load_of((0, 2, 2), (1, 4, 0))  # 70 / 30
    picks = Counter(choose_priority(load, draw)[0] for draw in range(100))
    assert picks == {0: 70, 1: 30}


def test_degraded_hosts_take_what_healthy_ones_cannot() -> None:
    hosts = hosts_of((0, 1, 0))
    degraded = Host(("10.0.0.2", 1))
    degraded.eds_health = health_check_pb2.DEGRADED
    sets = host_sets([*hosts, degraded, Host(("10.0.0.3", 1))], {}, 140)
    # 2 of 3 healthy: 93; 1 of 3 degraded: 46: healthy 93, degraded 7.
    load = priority_load(sets, 140, 50.0)
    assert (load.healthy, load.degraded) == ((93,), (7,))
    assert choose_priority(load, 95) == (0, True)


def test_edf_interleaves_by_weight() -> None:
    scheduler: EdfScheduler[str] = EdfScheduler()
    scheduler.add(3, "a")
    scheduler.add(1, "b")
    picks = [scheduler.pick_and_add(lambda item: 3 if item == "a" else 1) for _ in range(8)]
    # a is due at 1/3, 2/3, 1 ...; b at 1, 2: interleaved, a tie goes to the one added first.
    assert picks == ["a", "a", "b", "a", "a", "a", "a", "b"]


def weighted(*weights: int) -> list[Host]:
    hosts = []
    for index, weight in enumerate(weights):
        hosts.append(Host(("10.0.0.1", 2000 + index), weight=weight))
    return hosts


def test_weighted_round_robin_gives_each_host_its_share() -> None:
    hosts = weighted(1, 2, 5)
    balancer = RoundRobin(random.Random(4))
    picks = Counter(balancer.pick(hosts).weight for _ in range(800))  # type: ignore[union-attr]
    assert picks == {1: 100, 2: 200, 5: 500}


def test_weighted_least_request_shifts_away_from_busy_hosts() -> None:
    hosts = weighted(1, 3)
    balancer = LeastRequest(rng=random.Random(4))
    idle = Counter(balancer.pick(hosts).weight for _ in range(400))  # type: ignore[union-attr]
    assert idle == {1: 100, 3: 300}
    hosts[1].active_requests = 5  # weight 3 / 6 = 0.5 < 1: the light host now wins more
    busy = Counter(balancer.pick(hosts).weight for _ in range(400))  # type: ignore[union-attr]
    assert busy[1] > busy[3]


# -- an EDS cluster ---------------------------------------------------------------------------


def eds_cluster(**fields: Any) -> Cluster:
    message = json_format.ParseDict(
        {"name": "web", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, **fields},
        cluster_pb2.Cluster(),
    )
    return Cluster(build_cluster_config(message, "c"), Stats(), random.Random(11))


def endpoint(port: int, **fields: Any) -> EndpointAddress:
    return EndpointAddress("10.0.0.1", port, **fields)


def spread(cluster: Cluster, picks: int = 1000) -> Counter:
    return Counter(cluster.pick_host().address[1] for _ in range(picks))  # type: ignore[union-attr]


def test_hosts_keep_identity_and_an_identical_assignment_changes_nothing() -> None:
    cluster = eds_cluster()
    assert cluster.set_assignment(Assignment((endpoint(1), endpoint(2))))
    first = list(cluster.hosts)
    assert not cluster.set_assignment(Assignment((endpoint(1), endpoint(2))))
    assert cluster.stats.membership_change.value == 1
    assert cluster.set_assignment(Assignment((endpoint(1, weight=4), endpoint(2))))
    assert cluster.hosts == first and cluster.hosts[0].weight == 4
    assert cluster.stats.membership_change.value == 1  # a weight is no membership change
    assert cluster.set_assignment(Assignment((endpoint(2), endpoint(3))))
    assert cluster.hosts[0] is first[1]
    assert cluster.stats.membership_change.value == 2
    assert cluster.stats.membership_total.value == 2


def test_only_healthy_and_unknown_hosts_take_traffic() -> None:
    cluster = eds_cluster()
    cluster.set_assignment(
        Assignment(
            (
                endpoint(1, health=health_check_pb2.HEALTHY),
                endpoint(2),
                endpoint(3, health=health_check_pb2.DRAINING),
                endpoint(4, health=health_check_pb2.TIMEOUT),
                endpoint(5, health=UNHEALTHY),
            )
        )
    )
    # 2 of 5 healthy: 40% < 50%: panic, all hosts.
    assert set(spread(cluster)) == {1, 2, 3, 4, 5}
    cluster.set_assignment(
        Assignment((endpoint(1), endpoint(2), endpoint(3), endpoint(5, health=UNHEALTHY)))
    )
    assert set(spread(cluster)) == {1, 2, 3}
    assert cluster.stats.membership_healthy.value == 3


def test_weights_spread_requests_and_priorities_spill_over() -> None:
    cluster = eds_cluster()
    cluster.set_assignment(Assignment((endpoint(1, weight=1), endpoint(2, weight=3))))
    assert spread(cluster, 400) == {1: 100, 2: 300}
    cluster.set_assignment(
        Assignment(
            (
                endpoint(1),
                endpoint(2, health=UNHEALTHY),
                endpoint(3, priority=1),
                endpoint(4, priority=1),
            )
        )
    )
    # P0: 1 of 2 healthy = 70; P1 takes 30.
    counts = spread(cluster, 2000)
    assert set(counts) == {1, 3, 4}
    assert 0.65 < counts[1] / 2000 < 0.75


def test_locality_weights_pick_the_locality_first() -> None:
    cluster = eds_cluster(common_lb_config={"locality_weighted_lb_config": {}})
    a, b, c = Locality(zone="a"), Locality(zone="b"), Locality(zone="c")
    cluster.set_assignment(
        Assignment(
            (
                endpoint(1, locality=a, locality_weight=1),
                endpoint(2, locality=b, locality_weight=3),
                endpoint(3, locality=b, locality_weight=3),
                endpoint(4, locality=c),  # no weight: never picked
            )
        )
    )
    counts = spread(cluster, 800)
    assert counts == {1: 200, 2: 300, 3: 300}
    # Half of b unhealthy: 3 * min(1, 1.4 * 0.5) = 2.1 against a's 1.
    cluster.set_assignment(
        Assignment(
            (
                endpoint(1, locality=a, locality_weight=1),
                endpoint(2, locality=b, locality_weight=3),
                endpoint(3, locality=b, locality_weight=3, health=UNHEALTHY),
                endpoint(4, locality=c),
            )
        )
    )
    counts = spread(cluster, 3100)
    assert set(counts) == {1, 2}
    assert abs(counts[2] / counts[1] - 2.1) < 0.05


def test_a_removed_host_retires_its_pools() -> None:
    cluster = eds_cluster()
    cluster.set_assignment(Assignment((endpoint(1), endpoint(2))))

    class Pool:
        retired = False

        def retire(self) -> None:
            self.retired = True

    pool = Pool()
    cluster.hosts[0].pools[1] = pool  # type: ignore[index,assignment]
    cluster.set_assignment(Assignment((endpoint(2),)))
    assert pool.retired
    assert [h.address[1] for h in cluster.hosts] == [2]


def test_initial_fetch_over_makes_it_warm_with_no_hosts() -> None:
    cluster = eds_cluster()
    assert not cluster.assigned and cluster.pick_host() is None
    cluster.initial_fetch_over()
    assert cluster.assigned and cluster.hosts == []
