"""`ListenerManager.plan`: the real diff on a copy of the manager's state. The plan of a push
equals what the manager then does with it (actions, outcomes, NACK), and planning changes
nothing (state, stats, ids)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.listener_fixtures import FakeSocketPool, chain, listener
from tests.unit.test_listener_manager import Clock, Compiler
from tests.unit.test_listener_warming import rds_listener
from xds_proxy.listener.actions import RoutesReady, RouteState
from xds_proxy.listener.config_diff import changed_fields
from xds_proxy.listener.manager import ListenerManager
from xds_proxy.listener.plan import PlanCounts, plan_report
from xds_proxy.stats import Stats

NAMES = ["a", "b", "c", "d"]


@dataclass
class Routes:
    """The route registry's read port: which names are held."""

    ready: set[str]

    def state(self, name: str) -> RouteState:
        return RouteState.READY if name in self.ready else RouteState.PENDING


@dataclass(frozen=True)
class Spec:
    name: str
    port: int
    buffer: int  # listener level: a full update
    body: str  # chain level: an in-place update
    policy: int  # 0: none; else the listener's drain_time_s (a policy-only change)
    route: str  # "": inline routes; else RDS (it warms while the name is not ready)
    bad: bool  # a filter named "bad": the compile port refuses it (a NACK)

    def message(self):
        if self.route:
            result = rds_listener(self.name, self.port, self.route)
        else:
            result = listener(self.name, self.port, chains=[chain(self.body, "c0")])
        result.per_connection_buffer_limit_bytes.CopyFrom(
            wrappers_pb2.UInt32Value(value=self.buffer)
        )
        if self.policy:
            policy = result.metadata.filter_metadata["xds_proxy.drain"]
            policy.fields["drain_time_s"].number_value = self.policy
        if self.bad:
            result.filter_chains[0].filters.add(name="bad")
        return result


specs = st.builds(
    Spec,
    name=st.sampled_from(NAMES),
    port=st.sampled_from([0, 10001, 10002]),
    buffer=st.sampled_from([1000, 2000]),
    body=st.sampled_from(["x", "y"]),
    policy=st.sampled_from([0, 0, 5, 9]),
    route=st.sampled_from(["", "", "r1", "r2"]),
    bad=st.sampled_from([False, False, False, True]),
)
pushes = st.lists(
    st.tuples(
        st.lists(specs, max_size=4),
        st.booleans(),  # delta?
        st.lists(st.sampled_from(NAMES), max_size=2),  # delta's removed
        st.sets(st.sampled_from(["r1", "r2"])),  # route configs ready after the push
    ),
    min_size=1,
    max_size=6,
)


def snapshot(manager: ListenerManager, stats: Stats) -> tuple:
    versions = [*manager.active.values(), *manager.warming.values(), *manager.draining.values()]
    return (
        repr(stats.render_text(None)),
        sorted(manager.active),
        sorted(manager.warming),
        sorted(manager.draining),
        [(v.id, v.version_info, v.draining, v.stopped, sorted(v.waiting)) for v in versions],
        list(manager.draining_chains),
        dict(manager.errors),
        manager.version_info,
        manager._next_id,
    )


@settings(max_examples=150, deadline=None)
@given(pushes)
def test_the_plan_is_what_the_manager_then_does(sequence) -> None:
    stats, pool, routes = Stats(), FakeSocketPool(), Routes(set())
    compiler = Compiler()
    manager = ListenerManager(stats, pool, compiler, Clock(), routes)
    for number, (pushed, delta, removed, ready) in enumerate(sequence):
        messages = [spec.message() for spec in pushed]
        version = f"v{number}"
        before = snapshot(manager, stats)
        compiled_before = dict(compiler.compiled)
        planned = manager.plan(version, messages, removed if delta else None, Compiler())
        assert snapshot(manager, stats) == before  # planning changed nothing
        assert compiler.compiled == compiled_before  # and compiled nothing for real
        if delta:
            done = manager.apply_delta(version, messages, removed)
        else:
            done = manager.apply_sotw(version, messages)
        assert repr(planned.actions) == repr(done.actions)  # policies and causes included
        assert planned.outcomes == done.outcomes
        assert planned.nack_message == done.nack_message
        pool.execute(done.actions)
        for name in ready - routes.ready:  # route configurations arrive: warming ends
            routes.ready.add(name)
            pool.execute(manager.on_event(RoutesReady(name)))


# -- outcomes, one case each ----------------------------------------------------------------------


class Counts(PlanCounts):
    def __init__(self, listeners: dict[int, int], chains: dict[tuple[int, int], int]) -> None:
        self._listeners, self._chains = listeners, chains

    def listener(self, version_id: int) -> int:
        return self._listeners.get(version_id, 0)

    def chain(self, version_id: int, index: int) -> int:
        return self._chains.get((version_id, index), 0)


def make() -> ListenerManager:
    return ListenerManager(Stats(), FakeSocketPool(), Compiler(), Clock())


def test_report_of_each_outcome_with_counts_of_the_moment() -> None:
    manager = make()
    two = [chain("k", "keep"), chain("g", "gone", source_prefix="10.0.0.0/8")]
    manager.apply_sotw(
        "v1",
        [
            listener("full", 10001),
            listener("chains", 10002, chains=two),
            listener("same", 10003),
            listener("gone", 10004),
        ],
    )
    ids = {name: version.id for name, version in manager.active.items()}
    changed = [chain("k", "keep"), chain("g2", "gone", source_prefix="10.0.0.0/8")]
    bad = listener("bad", 10006)
    bad.filter_chains[0].filters.add(name="bad")
    planned = manager.plan(
        "v2",
        [
            listener(
                "full", 10001, per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=5)
            ),
            listener("chains", 10002, chains=changed),
            listener("same", 10003),
            listener("new", 10005),
            bad,
        ],
        None,
        Compiler(),
    )
    counts = Counts(
        {ids["full"]: 4, ids["gone"]: 2}, {(ids["chains"], 1): 3, (ids["chains"], 0): 9}
    )
    report = plan_report("v2", False, planned.outcomes, planned.nack_message, counts)
    assert report["nack"] == "Error adding/updating listener(s) bad: bad filter\n"
    assert report["would_ack"] is False and report["connections_to_drain"] == 4 + 3 + 2
    assert report["listeners"] == [
        {"name": "gone", "outcome": "removed", "draining_version": "v1", "connections": 2},
        {
            "name": "full",
            "outcome": "full_update",
            "draining_version": "v1",
            "connections": 4,
            "changed": ["per_connection_buffer_limit_bytes"],
        },
        {
            "name": "chains",
            "outcome": "in_place",
            "draining_chains": [{"chain": "gone", "index": 1, "connections": 3}],
            "connections": 3,
            "changed": [
                "filter_chains[1].filters[0].typed_config.route_config.virtual_hosts[0]"
                ".routes[0].direct_response.body.inline_string"
            ],
        },
        {"name": "same", "outcome": "no_op", "reason": "identical: the same bytes"},
        {"name": "new", "outcome": "added"},
        {"name": "bad", "outcome": "rejected", "nack": "bad: bad filter"},
    ]
    assert sorted(manager.active) == ["chains", "full", "gone", "same"]  # nothing applied


def test_unnamed_chains_are_named_by_index_and_default_chain() -> None:
    manager = make()
    old = listener("l", 10001, chains=[chain("a"), chain("b", source_prefix="10.0.0.0/8")])
    old.default_filter_chain.CopyFrom(chain("d"))
    manager.apply_sotw("v1", [old])
    new = listener("l", 10001, chains=[chain("a"), chain("b2", source_prefix="10.0.0.0/8")])
    planned = manager.plan("v2", [new], None, Compiler())
    report = plan_report("v2", False, planned.outcomes, None, Counts({}, {}))
    chains = [c["chain"] for c in report["listeners"][0]["draining_chains"]]
    assert chains == ["filter_chains[1]", "default_filter_chain"]


def test_equal_after_unpacking_any_is_a_no_op_with_its_reason() -> None:
    manager = make()
    first = listener("l", 10001)
    manager.apply_sotw("v1", [first])
    repacked = copy.deepcopy(first)
    packed = repacked.filter_chains[0].filters[0].typed_config
    inner = hcm_pb2.HttpConnectionManager()
    inner.ParseFromString(packed.value)
    prefix_only = hcm_pb2.HttpConnectionManager(stat_prefix=inner.stat_prefix)
    inner.ClearField("stat_prefix")
    packed.value = inner.SerializeToString() + prefix_only.SerializeToString()  # other order
    assert repacked.SerializeToString() != first.SerializeToString()
    planned = manager.plan("v2", [repacked], None, Compiler())
    assert [(o.kind, o.reason) for o in planned.outcomes] == [
        ("no_op", "identical: equal after unpacking every Any")
    ]


def test_the_plan_uses_the_ids_the_real_apply_will_use() -> None:
    manager = make()
    manager.apply_sotw("v1", [listener("a", 10001)])
    planned = manager.plan("v2", [listener("a", 10001, body="z")], None, Compiler())
    done = manager.apply_sotw("v2", [listener("a", 10001, body="z")])
    assert planned.actions == done.actions and planned.actions


def test_after_drain_listeners_every_pushed_listener_is_a_no_op() -> None:
    manager = make()
    manager.apply_sotw("v1", [listener("a", 10001)])
    manager.stop_listeners(inbound_only=False)
    planned = manager.plan("v2", [listener("a", 10001, body="z")], None, Compiler())
    assert [(o.kind, o.reason) for o in planned.outcomes] == [
        ("no_op", "listeners stopped: ignored")
    ]


def test_changed_fields_unpack_any_and_stop_at_ten() -> None:
    old = listener("l", 10001, chains=[chain(str(i), f"c{i}") for i in range(12)])
    new = listener("l", 10002, chains=[chain(f"{i}!", f"c{i}") for i in range(12)])
    paths = changed_fields(old, new)
    assert len(paths) == 10
    assert paths[0] == "address.socket_address.port_value"
    assert paths[1].startswith("filter_chains[0].filters[0].typed_config.route_config")
    assert changed_fields(old, copy.deepcopy(old)) == ()
    with_map = copy.deepcopy(old)
    with_map.metadata.filter_metadata["k"].fields["x"].number_value = 1
    assert changed_fields(old, with_map) == ("metadata",)
    more = copy.deepcopy(with_map)
    more.metadata.filter_metadata["k"].fields["x"].number_value = 2
    assert changed_fields(with_map, more) == (
        'metadata.filter_metadata["k"].fields["x"].number_value',
    )


def test_changed_fields_of_an_any_sent_in_other_bytes_but_equal_unpacked() -> None:
    old = listener("l", 10001, chains=[chain("a", "c0")])
    packed = old.filter_chains[0].filters[0].typed_config
    hcm = hcm_pb2.HttpConnectionManager.FromString(packed.value)
    head = hcm_pb2.HttpConnectionManager(stat_prefix=hcm.stat_prefix).SerializeToString()
    hcm.ClearField("stat_prefix")
    new = copy.deepcopy(old)
    new.filter_chains[0].filters[0].typed_config.value = hcm.SerializeToString() + head
    assert new != old  # the bytes differ: the fields come in another order
    assert changed_fields(old, new) == ()
    changed = copy.deepcopy(new)
    changed.filter_chains[0].name = "c1"
    assert changed_fields(old, changed) == ("filter_chains[0].name",)
