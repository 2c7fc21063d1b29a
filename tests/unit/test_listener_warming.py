"""Warming in the pure listener manager (docs: /work spec rows 1-7): a version whose RDS route
configurations are not all ready warms; route events end it."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.listener_fixtures import FakeSocketPool
from xds_proxy.listener.actions import Dependency, DependencyKind
from xds_proxy.listener.manager import (
    ChainsDrained,
    DrainListener,
    ForgetVersion,
    ListenerDrained,
    ListenerManager,
    ReleaseSockets,
    RoutesFailed,
    RoutesReady,
    RouteState,
    StartListener,
    StopAccepting,
    UnwatchRoutes,
    UpdateFilterChains,
    WatchRoutes,
)
from xds_proxy.stats import Stats


class Routes:
    """The registry's read port: names and their state."""

    def __init__(self) -> None:
        self.states: dict[str, RouteState] = {}

    def state(self, name: str) -> RouteState:
        return self.states.get(name, RouteState.PENDING)


def rds_listener(name: str, port: int, route: str, buffer: int | None = None):
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route
    hcm.rds.config_source.ads.SetInParent()
    hcm.http_filters.add(name="router")
    result = listener_pb2.Listener(name=name)
    result.address.socket_address.address = "127.0.0.1"
    result.address.socket_address.port_value = port
    network_filter = listener_components_pb2.Filter(name="hcm")
    network_filter.typed_config.Pack(hcm)
    result.filter_chains.add().filters.append(network_filter)
    if buffer is not None:
        result.per_connection_buffer_limit_bytes.value = buffer
    return result


def make():
    stats, routes = Stats(), Routes()
    manager = ListenerManager(stats, FakeSocketPool(), lambda i, c: None, lambda: 5.0, routes)
    manager.workers_started()
    return manager, stats, routes


def gauge(stats: Stats, name: str) -> int:
    return stats.value(f"listener_manager.{name}")


def test_new_listener_warms_then_starts_when_its_routes_arrive() -> None:
    manager, stats, routes = make()
    result = manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    assert result.nack_message is None  # ACKed at once
    assert [type(a) for a in result.actions] == [WatchRoutes]
    assert "L" in manager.warming and "L" not in manager.active
    assert (gauge(stats, "total_listeners_warming"), gauge(stats, "total_listeners_active")) == (
        1,
        0,
    )
    assert gauge(stats, "listener_added") == 1 and gauge(stats, "listener_create_success") == 0
    routes.states["R"] = RouteState.READY
    actions = manager.on_event(RoutesReady("R"))
    assert [type(a) for a in actions] == [StartListener]
    assert gauge(stats, "total_listeners_warming") == 0
    assert gauge(stats, "listener_create_success") == 1


def test_new_listener_becomes_active_with_no_routes_on_timeout_or_nack() -> None:
    manager, _, routes = make()
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    routes.states["R"] = RouteState.FAILED
    assert [type(a) for a in manager.on_event(RoutesFailed("R"))] == [StartListener]
    assert "L" in manager.active


def test_changed_listener_keeps_serving_until_warm_then_drains() -> None:
    manager, stats, routes = make()
    routes.states["R"] = RouteState.READY
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    old = manager.active["L"]
    result = manager.apply_sotw("v2", [rds_listener("L", 8001, "R2", buffer=32768)])
    assert [type(a) for a in result.actions] == [WatchRoutes]
    assert manager.active["L"] is old and manager.warming["L"].version_info == "v2"
    assert gauge(stats, "listener_modified") == 1  # at push time
    # better than Envoy: a timeout or NACK does not end a changed listener's warming
    routes.states["R2"] = RouteState.FAILED
    assert manager.on_event(RoutesFailed("R2")) == []
    assert manager.active["L"] is old
    routes.states["R2"] = RouteState.READY
    actions = manager.on_event(RoutesReady("R2"))
    assert StartListener in [type(a) for a in actions]
    assert DrainListener(old.id, "lds_update") in actions
    # R is released only when the old version's drain ends
    assert manager.on_event(ListenerDrained(old.id)) == [UnwatchRoutes(old.id)]


def test_in_place_warming_keeps_the_old_version_string() -> None:
    manager, stats, routes = make()
    routes.states["R"] = RouteState.READY
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    manager.apply_sotw("v2", [rds_listener("L", 8001, "R2")])
    assert manager.warming["L"].version_info == "v1"
    assert gauge(stats, "listener_in_place_updated") == 1
    routes.states["R2"] = RouteState.READY
    actions = manager.on_event(RoutesReady("R2"))
    assert [type(a) for a in actions][:2] == [UpdateFilterChains, ReleaseSockets]


def test_removed_warming_listener_is_dropped_at_once() -> None:
    manager, stats, _ = make()
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    warming = manager.warming["L"]
    result = manager.apply_sotw("v2", [])
    assert result.actions == [
        UnwatchRoutes(warming.id),
        ReleaseSockets(warming.id),
        ForgetVersion(warming.id),
    ]
    assert manager.warming == {} and manager.draining == {}
    assert gauge(stats, "listener_removed") == 1


def test_pushing_back_the_active_config_discards_the_warming_version() -> None:
    manager, stats, routes = make()
    routes.states["R"] = RouteState.READY
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    manager.apply_sotw("v2", [rds_listener("L", 8001, "R2", buffer=32768)])
    result = manager.apply_sotw("v3", [rds_listener("L", 8001, "R")])
    assert manager.warming == {} and manager.active["L"].version_info == "v1"
    assert not any(isinstance(a, DrainListener) for a in result.actions)
    assert gauge(stats, "listener_modified") == 2


def test_a_route_config_already_held_is_used_at_once() -> None:
    manager, _, routes = make()
    routes.states["R"] = RouteState.READY
    result = manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    assert [type(a) for a in result.actions] == [WatchRoutes, StartListener]


def test_before_the_workers_start_a_warming_listener_counts_as_active() -> None:
    stats, routes = Stats(), Routes()
    manager = ListenerManager(stats, FakeSocketPool(), lambda i, c: None, lambda: 5.0, routes)
    manager.apply_sotw("v0", [rds_listener("L", 8001, "R")])
    assert manager.initializing()
    assert (gauge(stats, "total_listeners_warming"), gauge(stats, "total_listeners_active")) == (
        0,
        1,
    )
    assert [v.name for v in manager.listed_warming] == ["L"]


# -- the property: random pushes, route events and drains --------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(["R", "R2", "R3"]), st.booleans()),
        st.tuples(st.just("swap"), st.sampled_from(["R", "R2", "R3"]), st.none()),
        st.tuples(st.just("remove"), st.none(), st.none()),
        st.tuples(st.just("ready"), st.sampled_from(["R", "R2", "R3"]), st.none()),
        st.tuples(st.just("fail"), st.sampled_from(["R", "R2", "R3"]), st.none()),
        st.tuples(st.just("drained"), st.none(), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_property_one_accepting_version_and_no_early_drain(steps) -> None:
    manager, _, routes = make()
    present = False
    users: dict[str, set[int]] = {}  # what the registry would count, from the actions
    accepting: set[int] = set()  # the versions accepting on port 8001, from the actions
    draining_started: set[int] = set()  # DrainListener emitted: the runtime may end them
    for kind, route, flag in steps:
        had_active = "L" in manager.active
        before = manager.active.get("L")
        actions = []
        if kind == "push":
            actions = manager.apply_sotw("v", [rds_listener("L", 8001, route, 1 if flag else None)])
            present = True
        elif kind == "swap":  # L removed and M added on L's address, in one response
            actions = manager.apply_sotw("v", [rds_listener("M", 8001, route)])
            present = False
        elif kind == "remove":
            actions = manager.apply_sotw("v", []).actions
            present = False
        elif kind == "ready":
            routes.states[route] = RouteState.READY
            actions = manager.on_event(RoutesReady(route))
        elif kind == "fail":
            if routes.state(route) is RouteState.PENDING:
                routes.states[route] = RouteState.FAILED
                actions = manager.on_event(RoutesFailed(route))
        elif kind == "drained" and draining_started & set(manager.draining):
            actions = manager.on_event(
                ListenerDrained(min(draining_started & set(manager.draining)))
            )
        elif kind == "drained" and manager.draining_chains:
            actions = manager.on_event(ChainsDrained(manager.draining_chains[0].group_id))
        if not isinstance(actions, list):
            actions = actions.actions
        was_accepting = bool(accepting)
        for action in actions:
            if isinstance(action, StartListener):
                accepting.add(action.version_id)
            elif isinstance(action, UpdateFilterChains):
                accepting.discard(action.old_version_id)
                accepting.add(action.version_id)
            elif isinstance(action, StopAccepting):
                accepting.discard(action.version_id)
            elif isinstance(action, DrainListener):
                draining_started.add(action.version_id)
        # no connection is refused at an address that was serving, unless the address was
        # let go (an LDS response without any listener there)
        if was_accepting and (manager.active or manager.warming):
            assert len(accepting) >= 1, (kind, accepting)
        assert len({v for v in accepting if v in {a.id for a in manager.active.values()}}) <= 1
        for action in actions:
            if isinstance(action, WatchRoutes):
                for name in action.names:
                    users.setdefault(name, set()).add(action.version_id)
            elif isinstance(action, UnwatchRoutes):
                for holders in users.values():
                    holders.discard(action.version_id)
        # every route config a held version serves from stays subscribed
        held = [*manager.active.values(), *manager.warming.values(), *manager.draining.values()]
        for version in held:
            for name in version.route_names:
                assert version.id in users.get(name, set()), (name, version.id)
        # and nothing is subscribed for a version that is gone
        ids = {version.id for version in held}
        ids |= {group.version_id for group in manager.draining_chains}  # in-place old chains
        assert all(holders <= ids for holders in users.values()), (users, ids)
        # an address that was accepting keeps exactly one active version until removed
        if had_active and present:
            assert "L" in manager.active
        # a version never starts draining before its successor is active
        for action in actions:
            if isinstance(action, DrainListener) and present:
                assert manager.active["L"].id != action.version_id
        # a changed listener whose successor failed keeps its old version
        if kind == "fail" and before is not None:
            assert manager.active.get("L") is before
        # a warming new listener is not active
        if "L" in manager.warming and not manager.warming["L"].replaces:
            assert "L" not in manager.active


def test_remove_and_add_on_one_address_keeps_the_old_owner_accepting_until_warm() -> None:
    manager, _, routes = make()
    routes.states["R"] = RouteState.READY
    manager.apply_sotw("v1", [rds_listener("A", 8001, "R")])
    old = manager.active["A"]
    result = manager.apply_sotw("v2", [rds_listener("B", 8001, "R2")])
    assert result.nack_message is None
    assert not any(getattr(a, "version_id", None) == old.id for a in result.actions)
    routes.states["R2"] = RouteState.READY
    actions = manager.on_event(RoutesReady("R2"))
    started = manager.active["B"].id
    kinds = [(type(a).__name__, a.version_id) for a in actions]
    assert kinds[0] == ("StartListener", started)
    assert ("StopAccepting", old.id) in kinds and ("DrainListener", old.id) in kinds


def test_drain_listeners_discards_what_still_warms() -> None:
    manager, stats, routes = make()
    manager.apply_sotw("v1", [rds_listener("L", 8001, "R")])
    warming = manager.warming["L"]
    actions = manager.stop_listeners(inbound_only=False)
    assert UnwatchRoutes(warming.id) in actions and ForgetVersion(warming.id) in actions
    routes.states["R"] = RouteState.READY
    assert manager.on_event(RoutesReady("R")) == []  # nothing starts after /drain_listeners
    assert gauge(stats, "total_listeners_warming") == 0


def test_a_static_listener_warms_and_lds_never_removes_it() -> None:
    stats, routes = Stats(), Routes()
    manager = ListenerManager(stats, FakeSocketPool(), lambda i, c: None, lambda: 5.0, routes)
    actions = manager.add_static(rds_listener("S", 8001, "RS"))
    assert [type(a) for a in actions] == [WatchRoutes]
    assert manager.initializing()
    assert manager.apply_sotw("v1", []).actions == []  # an empty LDS response keeps it
    assert manager.apply_sotw("v2", [rds_listener("S", 8001, "RX")]).actions == []  # static
    routes.states["RS"] = RouteState.READY
    assert [type(a) for a in manager.on_event(RoutesReady("RS"))] == [StartListener]
    assert manager.active["S"].static


def two_routes_listener(name: str, port: int, first: str, second: str):
    result = rds_listener(name, port, first)
    result.filter_chains.extend(rds_listener(name, port, second).filter_chains)
    result.filter_chains[1].filter_chain_match.destination_port.value = 1
    return result


def test_a_replaced_warming_version_lets_go_of_its_routes_after_the_new_one_holds_them() -> None:
    manager, _, routes = make()
    routes.states["R"] = RouteState.READY
    manager.apply_sotw("v1", [two_routes_listener("L", 8001, "R", "R2")])
    first = manager.warming["L"]
    result = manager.apply_sotw("v2", [two_routes_listener("L", 8001, "R", "R3")])
    second = manager.warming["L"]
    assert second.waiting == {Dependency(DependencyKind.ROUTES, "R3")}
    kinds = [type(a) for a in result.actions]
    assert kinds.index(WatchRoutes) < kinds.index(UnwatchRoutes)
    assert UnwatchRoutes(first.id) in result.actions
