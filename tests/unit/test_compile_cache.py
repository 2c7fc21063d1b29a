"""Compiling a listener does the work of identical chains once (issue 14: 10,000 chains).

Byte-identical `Any`s are validated and policy-checked once, and byte-identical HCMs share one
`HcmConfig` (within a listener and across updates), while everything per chain stays per
chain: the connection context, the drain, the connections. Results must be exactly what an
uncached walk gives, with each chain's own paths in error lines.
"""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from hypothesis import HealthCheck, given, settings

from tests.unit.listener_fixtures import WiredListeners, hcm_filter, listener, wired_listeners
from tests.unit.test_hostile_listeners import FUZZ_PORT, SENTINEL_PORT, listener_messages
from xds_proxy.bounded_cache import BoundedCache
from xds_proxy.config import pgv, support
from xds_proxy.config.pgv import validate_message
from xds_proxy.config.support import check_listener, listener_errors
from xds_proxy.errors import ConfigError
from xds_proxy.http import conn_manager
from xds_proxy.listener.instance import ListenerInstance
from xds_proxy.listener.manager import UpdateFilterChains
from xds_proxy.stats import Stats


def clear_caches() -> None:
    pgv._any_violations.clear()
    pgv._subtree_violations.clear()
    support._packed_findings.clear()
    support._listener_shapes.clear()
    conn_manager.HCM_CONFIGS.clear()


def port_chain(
    port: int, body: str = "same", name: str = ""
) -> listener_components_pb2.FilterChain:
    return listener_components_pb2.FilterChain(
        name=name or f"c{port}",
        filters=[hcm_filter(body)],
        filter_chain_match={"destination_port": {"value": port}},
    )


def many_chains(count: int, **changed_bodies: str) -> listener_pb2.Listener:
    chains = [port_chain(1 + i, changed_bodies.get(f"c{1 + i}", "same")) for i in range(count)]
    return listener("big", 10000, chains=chains)


def make_runtime() -> WiredListeners:
    return wired_listeners("immediate", 5.0)


def compiled(runtime: WiredListeners, config: listener_pb2.Listener, version_id: int = 1):
    runtime.compiler.compile(version_id, config)
    instance = runtime.compiler.take(version_id)
    assert isinstance(instance, ListenerInstance)
    return instance


def hcm_config_of(chain) -> conn_manager.HcmConfig:
    return chain.factory()._config


def bad_hcm_filter(**fields) -> listener_components_pb2.Filter:
    """An HCM that breaks PGV rules (empty stat_prefix, no route specifier) and our policy."""
    config = hcm_pb2.HttpConnectionManager(**fields)
    result = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    result.typed_config.Pack(config)
    return result


# -- BoundedCache ------------------------------------------------------------------------------


def test_bounded_cache_evicts_the_least_recently_used_entry() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=2, max_bytes=100)
    cache.put("a", 1, 1)
    cache.put("b", 2, 1)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3, 1)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)


def test_bounded_cache_is_bounded_by_the_bytes_of_its_keys() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=100, max_bytes=10)
    cache.put("a", 1, 6)
    cache.put("b", 2, 6)  # 12 bytes: "a" goes
    assert (cache.get("a"), cache.get("b")) == (None, 2)
    cache.put("huge", 3, 11)  # larger than the whole budget: not kept, nothing evicted
    assert (cache.get("huge"), cache.get("b")) == (None, 2)
    cache.put("b", 4, 2)  # replacing an entry accounts for its new size
    cache.put("c", 5, 8)
    assert (cache.get("b"), cache.get("c")) == (4, 5)


def test_bounded_cache_counts_hits_and_misses() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=4, max_bytes=100)
    assert cache.get("x") is None
    cache.put("x", 1, 1)
    assert cache.get("x") == 1
    assert (cache.hits, cache.misses) == (1, 1)


# -- validation and support policy: cached results equal uncached ones, at each chain's path --


def test_identical_invalid_chains_report_each_chain_at_its_own_path() -> None:
    clear_caches()
    bad = bad_hcm_filter(stat_prefix="")
    chains = [
        listener_components_pb2.FilterChain(
            name=f"c{i}", filters=[bad], filter_chain_match={"destination_port": {"value": 1 + i}}
        )
        for i in range(3)
    ]
    config = listener("bad", 10000, chains=chains)
    hits = pgv._any_violations.hits
    first = validate_message(config)
    assert pgv._any_violations.hits == hits + 2  # three chains, walked once
    clear_caches()
    uncached = validate_message(config)
    assert first == uncached
    for i in range(3):
        assert f"filter_chains[{i}].filters[0].typed_config.stat_prefix: must not be empty" in first


def test_cached_violations_equal_a_fresh_walk_for_many_shapes() -> None:
    shapes = [
        bad_hcm_filter(),
        bad_hcm_filter(stat_prefix="s"),
        bad_hcm_filter(stat_prefix="s", codec_type=99),
        hcm_filter("fine"),
        hcm_filter("fine", prefix=""),
    ]
    config = listener(
        "shapes",
        10000,
        chains=[
            listener_components_pb2.FilterChain(
                name=f"c{i}",
                filters=[shapes[i % len(shapes)]],
                filter_chain_match={"destination_port": {"value": 1 + i}},
            )
            for i in range(3 * len(shapes))
        ],
    )
    clear_caches()
    fresh_validation, fresh_policy = validate_message(config), check_listener(config)
    warm_validation, warm_policy = validate_message(config), check_listener(config)
    assert fresh_validation and fresh_policy  # the shapes do break rules
    assert warm_validation == fresh_validation
    assert warm_policy == fresh_policy
    # and under another prefix (the bootstrap's static listeners): paths follow the caller's
    assert validate_message(config, "static_resources.listeners[2]") == [
        "static_resources.listeners[2]." + line for line in fresh_validation
    ]
    assert check_listener(config, "static_resources.listeners[2]") == [
        "static_resources.listeners[2]." + line for line in fresh_policy
    ]


def test_undecodable_any_is_reported_at_each_path() -> None:
    clear_caches()
    broken = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    broken.typed_config.type_url = conn_manager.HCM_TYPE_URL
    broken.typed_config.value = b"\x0a\xff"
    config = listener(
        "broken",
        10000,
        chains=[
            listener_components_pb2.FilterChain(
                name=f"c{i}",
                filters=[broken],
                filter_chain_match={"destination_port": {"value": 1 + i}},
            )
            for i in range(2)
        ],
    )
    errors = validate_message(config)
    assert [line.split(":")[0] for line in errors] == [
        "filter_chains[0].filters[0].typed_config",
        "filter_chains[1].filters[0].typed_config",
    ]


# -- one HcmConfig per distinct HCM; per-chain state per chain --------------------------------


def test_identical_chains_share_one_hcm_config_and_keep_their_own_context() -> None:
    clear_caches()
    runtime = make_runtime()
    instance = compiled(runtime, many_chains(4, c3="other"))
    configs = [hcm_config_of(chain) for chain in instance.chains]
    assert configs[0] is configs[1] is configs[3]
    assert configs[2] is not configs[0]
    contexts = [chain.factory()._ctx for chain in instance.chains]
    assert len({id(ctx) for ctx in contexts}) == 4
    assert [ctx.drain_decision for ctx in contexts] == instance.chains


def test_hcm_config_is_reused_across_updates_of_the_same_runtime_only() -> None:
    clear_caches()
    runtime = make_runtime()
    first = compiled(runtime, many_chains(2), 1)
    second = compiled(runtime, many_chains(3), 2)
    assert hcm_config_of(second.chains[2]) is hcm_config_of(first.chains[0])
    other = compiled(make_runtime(), many_chains(1))  # another stats store: its own handles
    assert hcm_config_of(other.chains[0]) is not hcm_config_of(first.chains[0])
    assert hcm_config_of(other.chains[0]).stats.cx_total is not (
        hcm_config_of(first.chains[0]).stats.cx_total
    )


def test_a_failing_hcm_is_never_cached() -> None:
    clear_caches()
    stats = Stats()
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="s")  # no router: only building finds it
    for path in ("a", "b"):
        with pytest.raises(ConfigError) as raised:
            conn_manager.build_http_connection_manager(hcm, path, stats)
        assert str(raised.value) == (
            f"{path}.http_filters: without envoy.filters.http.router nothing answers: not supported"
        )
    assert len(conn_manager.HCM_CONFIGS) == 0


async def test_draining_one_of_identical_chains_drains_only_that_chain() -> None:
    clear_caches()
    runtime = make_runtime()
    instance = compiled(runtime, many_chains(3))
    assert hcm_config_of(instance.chains[0]) is hcm_config_of(instance.chains[1])
    runtime.drains.drain_chains(instance.version_id, 7, "big", "", (1,), ["c2"])
    assert [chain.drain_close() for chain in instance.chains] == [False, True, False]


async def test_in_place_update_of_one_identical_chain_keeps_the_others() -> None:
    """v2 changes chain c2 only: the other chains' runtimes (and connections) carry over and
    only c2 drains, although all of v1's chains shared one HcmConfig."""
    clear_caches()
    runtime = make_runtime()
    old_config, new_config = many_chains(3), many_chains(3, c2="changed")
    old = compiled(runtime, old_config, 1)
    runtime.runtime.instances[1] = old
    runtime.compiler.compile(2, new_config)
    kept = [old.chains[0], old.chains[2]]
    await runtime.runtime.execute([UpdateFilterChains(1, 2, "v2", 7, (1,))])
    new = runtime.runtime.instances[2]
    assert new.chains[0] is kept[0] and new.chains[2] is kept[1]
    assert [chain.index for chain in new.chains] == [0, 1, 2]
    assert new.chains[1] is not old.chains[1]
    assert runtime.drains.covering(1, 1, inbound=False) != []  # v1's c2 drains
    assert [runtime.drains.covering(2, i, inbound=False) for i in range(3)] == [[], [], []]
    assert hcm_config_of(new.chains[1]) is not hcm_config_of(new.chains[0])


# -- a listener's checks, cached by its shape -------------------------------------------------


@pytest.mark.timeout(120)  # 300 pairs of fuzzed listeners: ~9 s, CPU-bound
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listener_messages(FUZZ_PORT, SENTINEL_PORT), listener_messages(FUZZ_PORT, SENTINEL_PORT))
def test_cached_listener_checks_equal_the_uncached_ones(
    first: listener_pb2.Listener, second: listener_pb2.Listener
) -> None:
    """Fuzzed listeners, and the second one's shape under the first one's name and address
    (a cache hit with another address): the same lines, in the same order, as without cache."""
    renamed = listener_pb2.Listener()
    renamed.CopyFrom(second)
    renamed.name = first.name
    if first.HasField("address"):
        renamed.address.CopyFrom(first.address)
    for one in (first, second, renamed, second):
        assert listener_errors(one) == (validate_message(one) or check_listener(one))
