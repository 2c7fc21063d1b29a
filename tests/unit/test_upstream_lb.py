"""Load balancers (pure) and the cluster manager's add/update/remove."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from tests.helpers.upstreams import cluster_message
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.lb import LeastRequest, Random, RoundRobin
from xds_proxy.upstream.manager import ClusterManager


@dataclass
class FakeHost:
    name: str
    active_requests: int = 0
    weight: int = 1


HOSTS = [FakeHost("a"), FakeHost("b"), FakeHost("c")]


def test_random_spreads_uniformly_and_ignores_load() -> None:
    busy = [FakeHost("a", 50), FakeHost("b"), FakeHost("c")]
    lb = Random(random.Random(3))
    counts = Counter(lb.pick(busy).name for _ in range(3000))  # type: ignore[union-attr]
    assert sorted(counts) == ["a", "b", "c"]
    assert all(900 <= count <= 1100 for count in counts.values()), counts
    assert Random(random.Random(3)).pick([]) is None


def test_round_robin_rotates_strictly() -> None:
    lb = RoundRobin(random.Random(7))
    picks = [lb.pick(HOSTS).name for _ in range(9)]  # type: ignore[union-attr]
    assert Counter(picks) == {"a": 3, "b": 3, "c": 3}
    for first, second in itertools.pairwise(picks):
        assert HOSTS.index(FakeHost(second)) == (HOSTS.index(FakeHost(first)) + 1) % 3


def test_round_robin_survives_a_shrinking_host_list() -> None:
    lb = RoundRobin(random.Random(1))
    for _ in range(5):
        lb.pick(HOSTS)
    assert lb.pick(HOSTS[:1]) is HOSTS[0]
    assert lb.pick([]) is None


def test_round_robin_start_is_random_per_instance() -> None:
    firsts = {RoundRobin(random.Random(seed)).pick(HOSTS).name for seed in range(30)}  # type: ignore[union-attr]
    assert firsts == {"a", "b", "c"}


def test_least_request_prefers_the_less_loaded_of_two_choices() -> None:
    busy, idle = FakeHost("busy", 10), FakeHost("idle", 0)
    lb = LeastRequest(2, random.Random(3))
    picks = Counter(lb.pick([busy, idle]).name for _ in range(1000))  # type: ignore[union-attr]
    # Only when both random choices are `busy` (1 in 4) does it win.
    assert 150 < picks["busy"] < 350
    assert picks["idle"] > 650


def test_least_request_with_more_choices_is_stricter() -> None:
    hosts = [FakeHost(str(i), i) for i in range(10)]
    lb = LeastRequest(10, random.Random(5))
    picks = Counter(lb.pick(hosts).name for _ in range(300))  # type: ignore[union-attr]
    assert picks.most_common(1)[0][0] == "0"


def test_least_request_single_host() -> None:
    only = FakeHost("only")
    assert LeastRequest().pick([only]) is only
    assert LeastRequest().pick([]) is None


def test_manager_add_update_remove_and_identical_update_is_a_no_op() -> None:
    stats = Stats()
    manager = ClusterManager(stats)
    assert manager.add_or_update(cluster_message("web", [1000]))
    first = manager.get("web")
    assert not manager.add_or_update(cluster_message("web", [1000]))
    assert manager.get("web") is first
    assert manager.add_or_update(cluster_message("web", [1001]))
    second = manager.get("web")
    assert second is not first and first.retired  # type: ignore[union-attr]
    assert second.hosts[0].address == ("127.0.0.1", 1001)  # type: ignore[union-attr]
    assert manager.remove("web")
    assert manager.get("web") is None and second.retired  # type: ignore[union-attr]
    assert not manager.remove("web")
    assert stats.value("cluster_manager.cluster_added") == 1
    assert stats.value("cluster_manager.cluster_modified") == 1
    assert stats.value("cluster_manager.cluster_removed") == 1
    assert stats.value("cluster_manager.active_clusters") == 0


def test_manager_static_clusters_are_not_replaced_by_dynamic_updates() -> None:
    manager = ClusterManager(Stats())
    manager.add_or_update(cluster_message("xds", [1]), static=True)
    with pytest.raises(ConfigError, match="static cluster"):
        manager.add_or_update(cluster_message("xds", [2]), "resources[0]")
    assert not manager.remove("xds")


def test_manager_refuses_a_bad_cluster_and_keeps_the_old_one() -> None:
    manager = ClusterManager(Stats())
    manager.add_or_update(cluster_message("web", [1]))
    old = manager.get("web")
    bad = cluster_message("web", [1])
    bad.lb_policy = bad.CLUSTER_PROVIDED
    with pytest.raises(ConfigError, match=r"^c: cluster manager: cluster provided LB specified"):
        manager.add_or_update(bad, "c")
    assert manager.get("web") is old


def test_round_robin_by_weight_is_earliest_deadline_first() -> None:
    weighted = [FakeHost("a", weight=1), FakeHost("b", weight=2), FakeHost("c", weight=5)]
    lb = RoundRobin(random.Random(4))
    picks = [lb.pick(weighted).name for _ in range(80)]  # type: ignore[union-attr]
    # The schedule repeats every 8 picks (the weights' sum): 80 picks are 10 rounds.
    assert Counter(picks) == {"a": 10, "b": 20, "c": 50}
    # The heaviest host is never picked three times more than its share in a row.
    assert "ccccccc" not in "".join(picks)
    # Equal weights: strict rotation again (a new host list).
    equal = [FakeHost("a", weight=3), FakeHost("b", weight=3)]
    rotation = [lb.pick(equal).name for _ in range(6)]  # type: ignore[union-attr]
    assert rotation in (["a", "b"] * 3, ["b", "a"] * 3)


def test_weighted_schedules_start_at_random_points() -> None:
    weighted = [FakeHost("a", weight=1), FakeHost("b", weight=2), FakeHost("c", weight=3)]
    firsts = {
        "".join(RoundRobin(random.Random(seed)).pick(weighted).name for _ in range(3))  # type: ignore[union-attr]
        for seed in range(20)
    }
    assert len(firsts) > 1


def test_least_request_by_weight_divides_by_active_requests() -> None:
    light = FakeHost("light", weight=1)
    heavy = FakeHost("heavy", weight=4, active_requests=0)
    lb = LeastRequest(2, random.Random(2))
    both = [light, heavy]  # (the cluster keeps one list until its hosts change)
    counts = Counter(lb.pick(both).name for _ in range(500))  # type: ignore[union-attr]
    assert counts == {"light": 100, "heavy": 400}
    # Loaded with 7 requests, the heavy host's weight is 4 / 8: the light one takes more.
    heavy.active_requests = 7
    hosts = [light, heavy]  # a new list: a new schedule
    counts = Counter(lb.pick(hosts).name for _ in range(300))  # type: ignore[union-attr]
    assert counts == {"light": 200, "heavy": 100}
