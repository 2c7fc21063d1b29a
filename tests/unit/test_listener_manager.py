"""The listener manager as a pure state machine: updates in, actions and state out."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import wrappers_pb2

from tests.unit.listener_fixtures import FakeSocketPool, chain, listener
from xds_proxy.errors import ConfigError
from xds_proxy.listener.manager import (
    DEFAULT_CHAIN,
    ChainsDrained,
    CloseSockets,
    DrainListener,
    DrainTrigger,
    ForgetVersion,
    HandOverSockets,
    ListenerDrained,
    ListenerManager,
    ReleaseSockets,
    StartFailed,
    StartListener,
    StopAccepting,
    UpdateFilterChains,
)
from xds_proxy.stats import Stats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Compiler:
    """The compile port: refuses a filter named "bad", remembers what it compiled."""

    def __init__(self) -> None:
        self.compiled: dict[int, str] = {}

    def __call__(self, version_id: int, config: listener_pb2.Listener) -> None:
        if any(f.name == "bad" for c in config.filter_chains for f in c.filters):
            raise ConfigError("bad filter")
        self.compiled[version_id] = config.name


@pytest.fixture
def setup():
    stats, pool = Stats(), FakeSocketPool()
    manager = ListenerManager(stats, pool, Compiler(), Clock())
    return manager, stats, pool


def counter(stats: Stats, name: str) -> int:
    return stats.value(f"listener_manager.{name}")


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_add_starts_listener_and_counts(setup):
    manager, stats, pool = setup
    result = manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10002)])
    assert result.nack_message is None
    assert kinds(result.actions) == ["StartListener", "StartListener"]
    a, b = manager.active["a"], manager.active["b"]
    assert result.actions == [StartListener(a.id, "v1"), StartListener(b.id, "v1")]
    assert counter(stats, "listener_added") == 2
    assert counter(stats, "listener_create_success") == 2
    assert stats.value("listener_manager.total_listeners_active") == 2
    assert manager.version_info == "v1"
    assert pool.binds == [("127.0.0.1", 10001), ("127.0.0.1", 10002)]


def test_identical_repush_is_a_noop(setup):
    manager, stats, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    before = dict((n, c.value) for n, c in stats.counters.items())
    result = manager.apply_sotw("v2", [listener("a", 10001)])
    assert result.actions == [] and result.nack_message is None
    assert {n: c.value for n, c in stats.counters.items()} == before
    assert manager.version_info == "v1"  # nothing changed: the dump's version stays
    assert manager.active["a"].version_info == "v1"


def test_reordered_map_entries_are_equal(setup):
    """Equality unpacks Any: the same HCM serialized differently is no change."""
    manager, _, _ = setup
    first = listener("a", 10001)
    manager.apply_sotw("v1", [first])
    second = listener_pb2.Listener()
    second.CopyFrom(first)
    any_value = second.filter_chains[0].filters[0].typed_config
    # Re-encode the inner message with an unknown-order-insensitive equal payload: append a
    # duplicate of a scalar field (protobuf keeps the last), which changes the bytes only.
    any_value.value = any_value.value + b"\x12\x07ingress"  # field 2 stat_prefix again
    assert second.SerializeToString() != first.SerializeToString()
    assert manager.apply_sotw("v2", [second]).actions == []


def test_full_update_shares_socket_then_drains_old(setup):
    manager, stats, pool = setup
    manager.apply_sotw("v1", [listener("a", 10001, body="one")])
    old = manager.active["a"]
    updated = listener(
        "a", 10001, body="two", per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=9)
    )
    result = manager.apply_sotw("v2", [updated])
    new = manager.active["a"]
    assert result.actions == [
        StartListener(new.id, "v2"),
        StopAccepting(old.id),
        ReleaseSockets(old.id),
        DrainListener(old.id, DrainTrigger.LDS_UPDATE),
    ]
    assert pool.by_version[new.id] == [("127.0.0.1", 10001)]
    assert pool.binds == [("127.0.0.1", 10001)]  # no re-bind
    assert counter(stats, "listener_modified") == 1
    assert counter(stats, "listener_in_place_updated") == 0
    assert stats.value("listener_manager.total_listeners_draining") == 1
    assert manager.on_event(ListenerDrained(old.id)) == []
    assert stats.value("listener_manager.total_listeners_draining") == 0


def test_in_place_update_drains_only_changed_chains(setup):
    manager, stats, _ = setup
    chains_v1 = [chain("a", "c1", "10.0.0.0/8"), chain("b", "c2", "127.0.0.0/8")]
    manager.apply_sotw("v1", [listener("l", 10001, chains=chains_v1)])
    old = manager.active["l"]
    chains_v2 = [chain("b", "c2", "127.0.0.0/8"), chain("new", "c1", "10.0.0.0/8")]
    result = manager.apply_sotw("v2", [listener("l", 10001, chains=chains_v2)])
    new = manager.active["l"]
    action: UpdateFilterChains = result.actions[0]
    assert result.actions == [
        UpdateFilterChains(old.id, new.id, "v1", action.group_id, (0,)),
        ReleaseSockets(old.id),
    ]
    assert counter(stats, "listener_in_place_updated") == 1
    assert counter(stats, "listener_modified") == 1
    assert stats.value("listener_manager.total_filter_chains_draining") == 1
    assert stats.value("listener_manager.total_listeners_draining") == 0
    assert manager.active["l"].version_info == "v1"  # the listener keeps its version
    manager.on_event(ChainsDrained(action.group_id))
    assert stats.value("listener_manager.total_filter_chains_draining") == 0


def test_reordering_or_adding_chains_drains_nothing(setup):
    manager, _, _ = setup
    c1, c2 = chain("a", "c1", "10.0.0.0/8"), chain("b", "c2", "127.0.0.0/8")
    manager.apply_sotw("v1", [listener("l", 10001, chains=[c1, c2])])
    result = manager.apply_sotw(
        "v2", [listener("l", 10001, chains=[c2, c1, chain("c", "c3", "192.168.0.0/16")])]
    )
    assert result.actions[0].draining_chains == ()


def test_removed_default_chain_drains(setup):
    manager, _, _ = setup
    with_default = listener("l", 10001, chains=[chain("a", "c1")])
    with_default.default_filter_chain.CopyFrom(chain("d", "default"))
    manager.apply_sotw("v1", [with_default])
    result = manager.apply_sotw("v2", [listener("l", 10001, chains=[chain("a", "c1")])])
    assert result.actions[0].draining_chains == (DEFAULT_CHAIN,)


def test_only_default_chain_means_full_update(setup):
    manager, _, _ = setup
    first = listener("l", 10001, chains=[])
    first.default_filter_chain.CopyFrom(chain("one"))
    manager.apply_sotw("v1", [first])
    second = listener("l", 10001, chains=[])
    second.default_filter_chain.CopyFrom(chain("two"))
    assert kinds(manager.apply_sotw("v2", [second]).actions) == [
        "StartListener",
        "StopAccepting",
        "ReleaseSockets",
        "DrainListener",
    ]


def test_remove_stops_accepting_and_drains(setup):
    manager, stats, pool = setup
    manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10002)])
    a = manager.active["a"]
    result = manager.apply_sotw("v2", [listener("b", 10002)])
    assert result.actions == [
        StopAccepting(a.id),
        ReleaseSockets(a.id),
        DrainListener(a.id, DrainTrigger.LDS_REMOVE),
    ]
    assert counter(stats, "listener_removed") == 1
    pool.execute(result.actions)
    assert ("127.0.0.1", 10001) not in pool.holders


def test_remove_and_add_on_one_address_hands_socket_over(setup):
    manager, _, pool = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    result = manager.apply_sotw("v2", [listener("b", 10001)])
    assert result.nack_message is None
    assert kinds(result.actions) == [
        "StopAccepting",
        "ReleaseSockets",
        "DrainListener",
        "StartListener",
    ]
    assert pool.binds == [("127.0.0.1", 10001)]  # taken over, not re-bound


def test_duplicate_name_first_wins_and_nacks(setup):
    manager, stats, _ = setup
    result = manager.apply_sotw("v1", [listener("a", 10001), listener("a", 10002)])
    assert (
        result.nack_message == "Error adding/updating listener(s) a: duplicate listener a found\n"
    )
    assert manager.active["a"].addresses == [("127.0.0.1", 10001)]
    assert manager.version_info == "v1"  # something was applied
    assert counter(stats, "listener_added") == 1
    assert [e.details for e in manager.overall_errors] == ["duplicate listener a found"]


def test_duplicate_address_is_partial_apply(setup):
    manager, _, _ = setup
    result = manager.apply_sotw(
        "v1", [listener("a", 10001), listener("b", 10001), listener("c", 10003)]
    )
    assert result.nack_message == (
        "Error adding/updating listener(s) b: error adding listener: 'b' has duplicate address "
        "'127.0.0.1:10001' as existing listener, to check if the listener has duplicated "
        "addresses with other listeners or 'enable_reuse_port' is set to 'false' for the "
        "listener\n"
    )
    assert sorted(manager.active) == ["a", "c"]
    assert "b" in manager.errors


def test_swap_of_two_addresses_nacks_both(setup):
    manager, _, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10002)])
    result = manager.apply_sotw("v2", [listener("a", 10002), listener("b", 10001)])
    assert result.nack_message.count("has duplicate address") == 2
    assert manager.active["a"].addresses == [("127.0.0.1", 10001)]
    assert manager.active["b"].addresses == [("127.0.0.1", 10002)]
    assert kinds(result.actions) == ["ForgetVersion", "ForgetVersion"]  # nothing starts


def test_bind_failure_nacks_and_counts(setup):
    manager, stats, pool = setup
    pool.taken_elsewhere.add(("127.0.0.1", 10009))
    result = manager.apply_sotw("v1", [listener("a", 10009), listener("b", 10002)])
    assert result.nack_message == (
        "Error adding/updating listener(s) a: cannot bind '127.0.0.1:10009': Address in use\n"
    )
    assert list(manager.active) == ["b"]
    assert counter(stats, "listener_create_failure") == 1


def test_compile_error_nacks_that_listener_only(setup):
    manager, _, _ = setup
    bad = listener("bad", 10001)
    bad.filter_chains[0].filters[0].name = "bad"
    result = manager.apply_sotw("v1", [bad, listener("good", 10002)])
    assert result.nack_message == "Error adding/updating listener(s) bad: bad filter\n"
    assert list(manager.active) == ["good"]


def test_malformed_ip_and_missing_address(setup):
    manager, _, _ = setup
    no_address = listener_pb2.Listener(name="x")
    no_address.filter_chains.add().CopyFrom(chain("a"))
    result = manager.apply_sotw("v1", [listener("m", 1, ip="not-an-ip"), no_address])
    assert result.nack_message == (
        "Error adding/updating listener(s) m: malformed IP address: not-an-ip\n"
        "x: error adding listener named 'x': address is necessary\n"
    )


def test_static_listeners_are_immutable(setup):
    manager, _, _ = setup
    manager.add_static(listener("static", 10001))
    result = manager.apply_sotw("v1", [listener("static", 10001, body="changed")])
    assert result.actions == [] and result.nack_message is None
    result = manager.apply_sotw("v2", [])
    assert result.actions == []
    assert manager.active["static"].static


def test_address_change_binds_new_and_drains_old(setup):
    manager, _, pool = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    old = manager.active["a"]
    result = manager.apply_sotw("v2", [listener("a", 10005)])
    assert kinds(result.actions) == [
        "StartListener",
        "StopAccepting",
        "ReleaseSockets",
        "DrainListener",
    ]
    assert pool.by_version[manager.active["a"].id] == [("127.0.0.1", 10005)]
    pool.execute(result.actions)
    assert ("127.0.0.1", 10001) not in pool.holders
    assert old.draining


def test_reuse_port_change_is_rejected(setup):
    manager, _, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    changed = listener("a", 10001, enable_reuse_port=wrappers_pb2.BoolValue(value=False))
    result = manager.apply_sotw("v2", [changed])
    assert result.nack_message == (
        "Error adding/updating listener(s) a: Listener a: reuse port cannot be changed during an "
        "update\n"
    )


def test_port_zero_listeners_never_conflict(setup):
    manager, _, pool = setup
    result = manager.apply_sotw("v1", [listener("a", 0), listener("b", 0)])
    assert result.nack_message is None
    assert pool.by_version[manager.active["a"].id] != pool.by_version[manager.active["b"].id]
    # an update of a port-0 listener keeps its port
    before = pool.by_version[manager.active["a"].id]
    manager.apply_sotw("v2", [listener("a", 0, body="x"), listener("b", 0)])
    assert pool.by_version[manager.active["a"].id] == before


def test_errors_are_cleared_by_the_next_update(setup):
    manager, _, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001), listener("a", 10002)])
    assert manager.errors
    manager.apply_sotw("v2", [listener("a", 10001)])
    assert not manager.errors and not manager.overall_errors


def test_stopped_manager_acks_and_ignores(setup):
    manager, _, _ = setup
    manager.stopped = True
    result = manager.apply_sotw("v1", [listener("a", 10001)])
    assert result.actions == [] and result.nack_message is None
    assert not manager.active


def test_delta_removes_named_then_adds(setup):
    manager, stats, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10002)])
    a = manager.active["a"]
    result = manager.apply_delta("d1", [listener("c", 10003)], removed=["a", "unknown"])
    assert result.nack_message is None
    assert kinds(result.actions) == [
        "StopAccepting",
        "ReleaseSockets",
        "DrainListener",
        "StartListener",
    ]
    assert result.actions[0] == StopAccepting(a.id)
    assert sorted(manager.active) == ["b", "c"]  # b is not named: it stays
    assert counter(stats, "listener_removed") == 1


def test_bind_failure_forgets_the_compiled_version(setup):
    """The version compiled before its sockets failed will never start: the runtime is told
    to drop what it compiled."""
    manager, _, pool = setup
    pool.taken_elsewhere.add(("127.0.0.1", 10009))
    result = manager.apply_sotw("v1", [listener("a", 10009)])
    assert kinds(result.actions) == ["ForgetVersion"]
    assert result.actions[0] == ForgetVersion(result.actions[0].version_id)
    assert result.actions[0].version_id not in pool.by_version


def test_duplicate_address_after_compiling_forgets_the_version(setup):
    manager, _, _ = setup
    result = manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10001)])
    assert kinds(result.actions) == ["StartListener", "ForgetVersion"]


def test_static_listener_counts_as_active(setup):
    """Envoy 1.40 counts a bootstrap listener in `total_listeners_active` from the start."""
    manager, stats, _ = setup
    assert stats.value("listener_manager.total_listeners_active") == 0
    actions = manager.add_static(listener("static", 10001))
    assert actions == [StartListener(manager.active["static"].id, "")]
    assert stats.value("listener_manager.total_listeners_active") == 1
    assert stats.value("listener_manager.total_listeners_draining") == 0
    assert stats.value("listener_manager.total_listeners_warming") == 0
    assert counter(stats, "listener_added") == 1
    assert counter(stats, "listener_create_success") == 1


def test_start_failure_releases_the_sockets_and_counts(setup):
    manager, stats, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    a = manager.active["a"]
    assert manager.on_event(StartFailed(a.id)) == [ReleaseSockets(a.id)]
    assert "a" not in manager.active
    assert counter(stats, "listener_create_failure") == 1
    assert stats.value("listener_manager.total_listeners_active") == 0


def test_drain_listeners_stops_and_closes_sockets(setup):
    """`/drain_listeners`: each active listener stops accepting and its sockets close through
    the action pipeline; it stays listed."""
    manager, stats, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001), listener("b", 10002)])
    a, b = manager.active["a"], manager.active["b"]
    assert manager.stop_listeners(inbound_only=False) == [
        StopAccepting(a.id),
        CloseSockets(a.id),
        StopAccepting(b.id),
        CloseSockets(b.id),
    ]
    assert counter(stats, "listener_stopped") == 2
    assert sorted(manager.active) == ["a", "b"]
    assert manager.stop_listeners(inbound_only=False) == []  # already stopped


def test_hot_restart_parent_stops_and_hands_the_sockets_over(setup):
    manager, _, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    a = manager.active["a"]
    assert manager.stop_listeners(inbound_only=False, hand_over=True) == [
        StopAccepting(a.id),
        HandOverSockets(),
    ]


def test_actions_and_events_are_plain_data(setup):
    """Actions name versions by id, so that they could cross a process boundary."""
    manager, _, _ = setup
    manager.apply_sotw("v1", [listener("a", 10001)])
    result = manager.apply_sotw("v2", [listener("a", 10001, body="changed")])
    assert result.actions
    for action in result.actions:
        assert dataclasses.is_dataclass(action)
        assert pickle.loads(pickle.dumps(action)) == action
        for value in dataclasses.asdict(action).values():
            assert isinstance(value, int | str | tuple)
