"""The consistent-hashing balancers (ring hash, Maglev; pure, random source injected) and
their config. Exactness against Envoy is tests/interop/test_hash_balancing_interop.py."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import pytest

from tests.helpers.upstreams import cluster_message
from xds_proxy.config.cluster import HashingSettings, LbPolicy, build_cluster_config
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Gauge
from xds_proxy.upstream.hashing import Maglev, RingHash, host_key, murmur_hash2
from xds_proxy.xxhash64 import xxhash64


@dataclass(eq=False)
class FakeHost:
    address: tuple[str, int]
    weight: int = 1


def hosts(count: int, weights: list[int] | None = None) -> list[FakeHost]:
    weights = weights or [1] * count
    return [FakeHost(("10.0.0.1", 8000 + index), weights[index]) for index in range(count)]


KEYS = [xxhash64(f"key-{index}") for index in range(10_000)]


def new(balancer: str, rng: random.Random) -> RingHash | Maglev:
    return RingHash(rng=rng) if balancer == "ring" else Maglev(rng=rng)


def test_host_key_is_the_address_as_envoy_prints_it() -> None:
    assert host_key(FakeHost(("127.0.0.1", 80))) == "127.0.0.1:80"
    assert host_key(FakeHost(("::1", 443))) == "[::1]:443"


def test_murmur_hash2_is_libstdcxx_std_hash() -> None:
    # libstdc++'s std::hash<std::string>{}("") on 64-bit platforms.
    assert murmur_hash2(b"") == 6142509188972423790
    assert len({murmur_hash2(bytes(range(n))) for n in range(20)}) == 20  # every tail length


def test_ring_has_the_minimum_size_split_by_weight() -> None:
    four = hosts(4)
    ring = RingHash(rng=random.Random(1)).ring(four)
    assert len(ring) == 1024
    assert Counter(owner.address[1] for _, owner in ring) == {8000 + i: 256 for i in range(4)}
    assert [entry[0] for entry in ring] == sorted(entry[0] for entry in ring)
    # The entries are the hashes of "ADDRESS_i".
    assert {h for h, owner in ring if owner is four[0]} == {
        xxhash64(f"10.0.0.1:8000_{i}") for i in range(256)
    }
    weighted = RingHash(rng=random.Random(1)).ring(hosts(3, [1, 1, 2]))
    assert sorted(Counter(owner.weight for _, owner in weighted).items()) == [(1, 512), (2, 512)]


def test_ring_size_bounds() -> None:
    # The least-weighted host gets a whole number of points: 3 hosts need 342 each.
    assert len(RingHash(rng=random.Random(1)).ring(hosts(3))) == 1026
    # The maximum wins over the minimum's rounding.
    assert len(RingHash(1024, 8, rng=random.Random(1)).ring(hosts(4))) == 8
    assert len(RingHash(5, 100, rng=random.Random(1)).ring(hosts(2))) == 6


def test_ring_pick_takes_the_first_point_at_or_above_the_hash_and_wraps() -> None:
    four = hosts(4)
    lb = RingHash(16, 16, rng=random.Random(1))
    ring = lb.ring(four)
    for index, (point, owner) in enumerate(ring):
        assert lb.pick(four, point) is owner
        if index and point - 1 > ring[index - 1][0]:
            assert lb.pick(four, point - 1) is owner
    assert lb.pick(four, ring[-1][0] + 1) is ring[0][1]
    assert lb.pick(four, 0) is ring[0][1]
    assert lb.pick([], 5) is None


def test_murmur_ring_differs_from_xxhash_ring() -> None:
    four = hosts(4)
    xx = {point for point, _ in RingHash(rng=random.Random(1)).ring(four)}
    murmur = {point for point, _ in RingHash(murmur=True, rng=random.Random(1)).ring(four)}
    assert murmur.isdisjoint(xx)
    assert murmur_hash2(b"10.0.0.1:8000_0") in murmur


@pytest.mark.parametrize("balancer", ["ring", "maglev"])
def test_keys_spread_by_weight(balancer: str) -> None:
    weighted = hosts(3, [1, 1, 2])
    lb = new(balancer, random.Random(1))
    counts = Counter(lb.pick(weighted, key).weight for key in KEYS)  # type: ignore[union-attr]
    # Weight 2 takes half of the keys, the two of weight 1 a quarter each (+/- 5 points).
    assert 4500 <= counts[2] <= 5500, counts


@pytest.mark.parametrize("balancer", ["ring", "maglev"])
def test_removing_a_host_moves_its_keys_and_few_others(balancer: str) -> None:
    four = hosts(4)
    lb = new(balancer, random.Random(1))
    before = [lb.pick(four, key) for key in KEYS]
    three = four[:3]  # a new list: the table is rebuilt
    after = [lb.pick(three, key) for key in KEYS]
    moved = [index for index in range(len(KEYS)) if before[index] is not after[index]]
    removed = [index for index in range(len(KEYS)) if before[index] is four[3]]
    assert set(removed) <= set(moved)
    assert 0.2 <= len(removed) / len(KEYS) <= 0.3
    others = (len(moved) - len(removed)) / len(KEYS)
    # The ring re-scales (256 points per host become 342) and moves some more; Maglev a few.
    assert others <= (0.2 if balancer == "ring" else 0.03), others
    # Adding the host back restores every key's host.
    again = list(four)
    assert [lb.pick(again, key) for key in KEYS] == before


def test_maglev_table_fills_every_slot_by_weight() -> None:
    three = hosts(3, [1, 1, 2])
    table = Maglev(1031, random.Random(1)).table(three)
    assert len(table) == 1031
    counts = Counter(host.weight for host in table)
    assert counts[2] in range(513, 518) and counts[1] in range(514, 519)
    small = Maglev(7, random.Random(1)).table(hosts(3))
    assert sorted(Counter(id(host) for host in small).values()) == [2, 2, 3]


def test_maglev_pick_is_the_table_slot() -> None:
    three = hosts(3)
    lb = Maglev(13, random.Random(1))
    table = lb.table(three)
    for key in range(40):
        assert lb.pick(three, key) is table[key % 13]
    assert lb.pick([], 1) is None


@pytest.mark.parametrize("balancer", ["ring", "maglev"])
def test_no_hash_key_is_a_random_host(balancer: str) -> None:
    four = hosts(4)
    lb = new(balancer, random.Random(5))
    counts = Counter(lb.pick(four).address[1] for _ in range(4000))  # type: ignore[union-attr]
    assert sorted(counts) == [8000, 8001, 8002, 8003]
    assert all(800 <= count <= 1200 for count in counts.values()), counts
    # The random hashes come from the injected source.
    first, second = (new(balancer, random.Random(5)) for _ in range(2))
    assert [first.pick(four) for _ in range(50)] == [second.pick(four) for _ in range(50)]


def test_the_table_is_rebuilt_only_when_the_hosts_change() -> None:
    four = hosts(4)
    lb = Maglev(7, random.Random(1))
    lb.pick(four, 1)
    built = lb._table
    lb.pick(four, 2)
    lb.pick(list(four), 2)  # a new list of the same hosts
    assert lb._table is built
    lb.pick(four[::-1], 2)  # another order
    assert lb._table is not built
    built = lb._table
    again = four[::-1]
    again[0].weight = 3  # a weight changed
    lb.pick(again, 2)
    assert lb._table is not built


# -- config -----------------------------------------------------------------------------------


def _cluster(**fields: object):  # type: ignore[no-untyped-def]
    return build_cluster_config(cluster_message("c", [80], **fields), "c")


def _extension(name: str, message: str, **fields: object) -> dict:
    url = f"type.googleapis.com/envoy.extensions.load_balancing_policies.{name}.v3.{message}"
    return {
        "policies": [
            {
                "typed_extension_config": {
                    "name": f"envoy.load_balancing_policies.{name}",
                    "typed_config": {"@type": url, **fields},
                }
            }
        ]
    }


def test_hashing_policies_from_enums_and_extensions() -> None:
    empty = _cluster(lb_policy="RING_HASH", ring_hash_lb_config={})
    assert (empty.lb_policy, empty.hashing) == (LbPolicy.RING_HASH, HashingSettings())
    ring = _cluster(
        lb_policy="RING_HASH",
        ring_hash_lb_config={
            "minimum_ring_size": 10,
            "maximum_ring_size": 20,
            "hash_function": "MURMUR_HASH_2",
        },
    )
    assert ring.hashing == HashingSettings(10, 20, True)
    maglev = _cluster(lb_policy="MAGLEV", maglev_lb_config={"table_size": 1031})
    assert (maglev.lb_policy, maglev.hashing.maglev_table_size) == (LbPolicy.MAGLEV, 1031)
    extension = _cluster(
        load_balancing_policy=_extension(
            "ring_hash", "RingHash", minimum_ring_size=7, hash_function="MURMUR_HASH_2"
        )
    )
    assert (extension.lb_policy, extension.hashing) == (
        LbPolicy.RING_HASH,
        HashingSettings(minimum_ring_size=7, murmur_hash_2=True),
    )
    maglev_extension = _cluster(
        load_balancing_policy=_extension("maglev", "Maglev", consistent_hashing_lb_config={})
    )
    assert maglev_extension.lb_policy is LbPolicy.MAGLEV
    assert _cluster(lb_policy="MAGLEV", common_lb_config={"consistent_hashing_lb_config": {}})
    # The enum that says "see load_balancing_policy" (go-control-plane sets it), as Envoy.
    with_enum = _cluster(
        lb_policy="LOAD_BALANCING_POLICY_CONFIG",
        load_balancing_policy=_extension("maglev", "Maglev"),
    )
    assert with_enum.lb_policy is LbPolicy.MAGLEV
    with pytest.raises(ConfigError, match=r"^c: field load_balancing_policy need to be set$"):
        _cluster(lb_policy="LOAD_BALANCING_POLICY_CONFIG")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {
                "lb_policy": "RING_HASH",
                "ring_hash_lb_config": {"minimum_ring_size": 9000, "maximum_ring_size": 100},
            },
            "c.ring_hash_lb_config: ring hash: minimum_ring_size (9000) > maximum_ring_size (100)",
        ),
        (
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 1000}},
            "c.maglev_lb_config.table_size: The table size of maglev must be prime number",
        ),
        (
            {"load_balancing_policy": _extension("maglev", "Maglev", table_size=4)},
            "c.load_balancing_policy.policies[0].typed_extension_config.typed_config.table_size:"
            " The table size of maglev must be prime number",
        ),
        (
            {
                "load_balancing_policy": _extension(
                    "ring_hash",
                    "RingHash",
                    consistent_hashing_lb_config={"hash_balance_factor": 150},
                )
            },
            "hash_balance_factor: not supported yet",
        ),
        (
            {
                "lb_policy": "RING_HASH",
                "common_lb_config": {
                    "consistent_hashing_lb_config": {"use_hostname_for_hashing": True}
                },
            },
            "use_hostname_for_hashing: not supported yet",
        ),
    ],
)
def test_hashing_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cluster(**fields)


def test_builds_set_envoys_gauges() -> None:
    size, fewest, most = Gauge("size"), Gauge("min"), Gauge("max")
    RingHash(rng=random.Random(1), gauges=(size, fewest, most)).ring(hosts(3, [1, 1, 2]))
    assert (size.value, fewest.value, most.value) == (1024, 256, 512)
    low, high = Gauge("min"), Gauge("max")
    Maglev(7, random.Random(1), (low, high)).table(hosts(3))
    assert (low.value, high.value) == (2, 3)


def test_an_endpoint_hash_key_is_refused_for_hashing_balancers() -> None:
    message = cluster_message("c", [80], lb_policy="MAGLEV")
    endpoint = message.load_assignment.endpoints[0].lb_endpoints[0]
    endpoint.metadata.filter_metadata["envoy.lb"].update({"hash_key": "a"})
    with pytest.raises(ConfigError, match=r"\['envoy.lb'\]\.hash_key: not supported yet$"):
        build_cluster_config(message, "c")
    message.lb_policy = message.ROUND_ROBIN  # only the hashing balancers read it
    assert build_cluster_config(message, "c").lb_policy is LbPolicy.ROUND_ROBIN
