"""The drain manager as a pure core: drains in, actions and decisions out, with an injected
clock, random source and wall clock. No event loop, no connections: where the runtime would
count connections, these tests pass the numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import random

import pytest

from xds_proxy.listener.drain import Drain
from xds_proxy.listener.drain_manager import (
    HEALTH_SCOPE,
    ChainDrainEnded,
    ChainScope,
    DeadlineReached,
    DrainEmptied,
    DrainManager,
    DrainScope,
    ListenerDrainEnded,
    ListenerScope,
    ServerDrainEnded,
    ServerScope,
    TellConnections,
    WatchDrain,
)

WALL_OFFSET = 1_800_000_000.0  # the wall clock runs this far ahead of the monotonic one


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Draws(random.Random):
    """`random()` returns the next of the given draws (and the last one forever)."""

    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.taken = 0

    def random(self) -> float:
        self.taken += 1
        return self.draws.pop(0) if len(self.draws) > 1 else self.draws[0]


def make(
    strategy: str = "gradual", drain_time_s: float = 10.0, *draws: float
) -> tuple[DrainManager, Clock, Draws]:
    clock, rng = Clock(), Draws(*(draws or (0.5,)))
    drains = DrainManager(strategy, drain_time_s, clock, rng, lambda: clock.now + WALL_OFFSET)
    return drains, clock, rng


def no_connections(scope: DrainScope) -> int:
    return 0


# -- starting drains: the actions ---------------------------------------------------------------


def test_listener_drain_watches_then_tells() -> None:
    drains, clock, _ = make("gradual", 10.0)
    actions = drains.drain_listener(7, "web", "v3", "lds_update")
    drain = Drain("lds_update", "gradual", 10.0, clock.now)
    [record_id] = drains.records
    assert actions == [
        WatchDrain(record_id, ListenerScope(7), 10.0, until_empty=True, close_at_deadline=True),
        TellConnections(ListenerScope(7), drain),
    ]


def test_chain_drain_covers_only_its_chains() -> None:
    drains, _, _ = make("immediate")
    actions = drains.drain_chains(7, 42, "web", "v1", (0, -1), ["a", "default"])
    [record_id] = drains.records
    assert actions[0] == WatchDrain(record_id, ChainScope(7, (0, -1)), 10.0, True, True)
    assert drains.drain_close(7, 0, inbound=False, drains_on_health_failure=True)
    assert drains.drain_close(7, -1, inbound=False, drains_on_health_failure=True)
    assert not drains.drain_close(7, 1, inbound=False, drains_on_health_failure=True)
    assert not drains.drain_close(8, 0, inbound=False, drains_on_health_failure=True)
    [report] = drains.report(no_connections)
    assert report["kind"] == "filter_chain" and report["filter_chain"] == "a,default"
    assert report["trigger"] == "in_place_update"


def test_admin_drain_tells_then_watches_the_deadline_only() -> None:
    drains, clock, _ = make("immediate", 30.0)
    actions = drains.start_admin_drain(inbound_only=True, stop_listeners=True)
    [record_id] = drains.records
    assert actions == [
        TellConnections(ServerScope(True), Drain("drain_listeners", "immediate", 30.0, clock.now)),
        WatchDrain(record_id, ServerScope(True), 30.0, until_empty=False, close_at_deadline=False),
    ]


def test_admin_drain_is_a_no_op_unless_it_widens() -> None:
    drains, clock, _ = make()
    assert drains.start_admin_drain(True, stop_listeners=False)
    clock.now += 3
    assert drains.start_admin_drain(True, stop_listeners=False) == []
    assert drains.start_admin_drain(False, stop_listeners=False)  # widens to every listener
    assert drains.start_admin_drain(False, stop_listeners=False) == []
    assert drains.start_admin_drain(True, stop_listeners=False) == []
    first, second = drains.admin_drains
    assert (first.inbound_only, second.inbound_only) == (True, False)
    assert second.drain.started_at - first.drain.started_at == 3


def test_hot_restart_drain_has_its_own_trigger() -> None:
    drains, _, _ = make()
    drains.start_admin_drain(False, stop_listeners=False, trigger="hot_restart")
    [report] = drains.report(no_connections)
    assert report["trigger"] == "hot_restart" and report["direction"] == "all"


# -- ending drains --------------------------------------------------------------------------------


def test_listener_drain_ends_once_on_last_close(caplog) -> None:
    drains, clock, _ = make("gradual", 10.0)
    drains.drain_listener(7, "web", "v3", "lds_remove")
    [record_id] = drains.records
    clock.now += 2.5
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        assert drains.on_event(DrainEmptied(record_id)) == [ListenerDrainEnded(record_id, 7)]
    assert drains.on_event(DrainEmptied(record_id)) == []  # a second report is ignored
    assert drains.on_event(DeadlineReached(record_id, 3)) == []
    assert drains.records == {}
    assert not drains.drain_close(7, 0, inbound=False, drains_on_health_failure=False)
    [line] = [r for r in caplog.records if r.getMessage().startswith("drain complete: ")]
    assert line.name == "xds_proxy.listener"  # the `[listener]` component of the log line
    done = json.loads(line.getMessage().removeprefix("drain complete: "))
    assert done["outcome"] == "last connection closed" and done["connections"] == 0
    assert done["elapsed_s"] == 2.5 and done["listener"] == "web"


def test_chain_drain_ends_at_the_deadline_with_what_was_left(caplog) -> None:
    drains, _, _ = make()
    drains.drain_chains(7, 42, "web", "v1", (1,), ["b"])
    [record_id] = drains.records
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        assert drains.on_event(DeadlineReached(record_id, 3)) == [ChainDrainEnded(record_id, 7, 42)]
    done = json.loads(caplog.records[-1].getMessage().removeprefix("drain complete: "))
    assert done["outcome"] == "deadline" and done["connections"] == 3
    assert drains.covering(7, 1, inbound=False) == []


def test_admin_drain_ends_at_the_deadline_and_keeps_deciding() -> None:
    """At DT the record ends (and graceful `/drain_listeners` stops the listeners); the drain
    still covers the listeners afterwards, as today: later connections are told at once."""
    drains, clock, _ = make("gradual", 10.0)
    drains.start_admin_drain(inbound_only=False, stop_listeners=True)
    [record_id] = drains.records
    clock.now += 10
    assert drains.on_event(DeadlineReached(record_id, 0)) == [
        ServerDrainEnded(record_id, inbound_only=False, stop_listeners=True)
    ]
    assert drains.records == {}
    assert drains.drain_close(1, 0, inbound=False, drains_on_health_failure=False)


def test_an_unknown_drain_event_is_ignored() -> None:
    drains, _, _ = make()
    assert drains.on_event(DrainEmptied(99)) == []
    assert drains.on_event(DeadlineReached(99, 0)) == []


# -- the decision: composed drains and the ramp ---------------------------------------------------


def test_nothing_draining_never_draws() -> None:
    drains, _, rng = make()
    assert not drains.drain_close(1, 0, inbound=True, drains_on_health_failure=True)
    assert drains.covering(1, 0, inbound=True) == []
    assert rng.taken == 0


@pytest.mark.parametrize(
    ("elapsed", "draw", "closes"),
    [(0.0, 0.0, False), (0.9, 0.0, False), (1.0, 0.19, True), (1.0, 0.2, False), (5.0, 0.99, True)],
)
def test_gradual_ramp_is_floor_of_elapsed_over_half_dt(elapsed, draw, closes) -> None:
    drains, clock, _ = make("gradual", 10.0, draw)  # p = floor(t) / 5
    drains.drain_listener(1, "web", "", "lds_update")
    clock.now += elapsed
    assert drains.drain_close(1, 0, inbound=False, drains_on_health_failure=False) is closes


def test_immediate_always_closes_without_drawing() -> None:
    drains, _, rng = make("immediate", 10.0, 0.99)
    drains.drain_listener(1, "web", "", "lds_update")
    assert drains.drain_close(1, 0, inbound=False, drains_on_health_failure=False)
    assert rng.taken == 0


def test_covering_drains_are_asked_chain_then_listener_then_server() -> None:
    """One independent draw per covering drain, in order, until one says close."""
    drains, clock, rng = make("gradual", 10.0, 0.9, 0.9, 0.1)
    drains.drain_chains(1, 5, "web", "", (0,), ["a"])
    clock.now += 1  # the chain drain is at p = 1/5
    drains.drain_listener(1, "web", "", "lds_update")  # p = 0 for this one
    drains.start_admin_drain(False, stop_listeners=False)
    clock.now += 1  # chain p = 2/5, listener p = 1/5, admin p = 1/5
    covering = drains.covering(1, 0, inbound=False)
    assert [d.trigger for d in covering] == ["in_place_update", "lds_update", "drain_listeners"]
    assert drains.drain_close(1, 0, inbound=False, drains_on_health_failure=False)
    assert rng.taken == 3  # 0.9 (chain: no), 0.9 (listener: no), 0.1 (admin: yes)


def test_inbound_only_admin_drain_covers_inbound_listeners_only() -> None:
    drains, _, _ = make("immediate")
    drains.start_admin_drain(inbound_only=True, stop_listeners=False)
    assert drains.drain_close(1, 0, inbound=True, drains_on_health_failure=False)
    assert not drains.drain_close(2, 0, inbound=False, drains_on_health_failure=False)


def test_health_failure_closes_default_listeners_only_then_recovers(caplog) -> None:
    drains, _, rng = make("gradual")
    drains.set_health(True, connections=0)
    drains.set_health(True, connections=0)  # a second fail changes nothing
    assert drains.drain_close(1, 0, inbound=False, drains_on_health_failure=True)
    assert not drains.drain_close(1, 0, inbound=False, drains_on_health_failure=False)
    assert rng.taken == 0
    [report] = drains.report(lambda scope: 4 if scope == HEALTH_SCOPE else 0)
    assert report["trigger"] == "healthcheck_fail" and report["strategy"] == "immediate"
    assert report["connections"] == 4 and report["kind"] == "server"
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        drains.set_health(False, connections=4)
    assert drains.report(no_connections) == []
    assert not drains.drain_close(1, 0, inbound=False, drains_on_health_failure=True)
    done = json.loads(caplog.records[-1].getMessage().removeprefix("drain complete: "))
    assert done["outcome"] == "healthcheck ok" and done["connections"] == 4


def test_tell_delay_follows_the_idle_schedule() -> None:
    drains, clock, _ = make("gradual", 10.0, 0.5)
    drains.drain_listener(1, "web", "", "lds_update")
    [drain] = drains.covering(1, 0, inbound=False)
    assert drains.tell_delay(drain) == 2.5  # uniform over [start, start + DT/2): the middle
    clock.now += 6
    assert drains.tell_delay(drain) == 0.0  # DT/2 has passed: at once


# -- /drain_status ----------------------------------------------------------------------------


def test_report_in_start_order_with_rfc3339_times_and_counted_scopes() -> None:
    drains, clock, _ = make("gradual", 3.0)
    drains.drain_listener(1, "web", "v1", "lds_update")
    clock.now += 0.5
    drains.drain_chains(2, 9, "api", "v2", (0,), ["c0"])
    drains.start_admin_drain(True, stop_listeners=False)
    clock.now += 1.25
    counts = {ListenerScope(1): 3, ChainScope(2, (0,)): 1, ServerScope(True): 7}
    reports = drains.report(counts.__getitem__)
    assert [r["kind"] for r in reports] == ["listener", "filter_chain", "server"]
    assert [r["connections"] for r in reports] == [3, 1, 7]
    assert [r["elapsed_s"] for r in reports] == [1.75, 1.25, 1.25]
    assert reports[2]["direction"] == "inbound_only" and reports[0]["direction"] == "all"
    first = reports[0]
    assert first == {
        "kind": "listener",
        "listener": "web",
        "version_info": "v1",
        "filter_chain": None,
        "trigger": "lds_update",
        "direction": "all",
        "strategy": "gradual",
        "started_at": "2027-01-15T08:01:40.000Z",
        "deadline": "2027-01-15T08:01:43.000Z",
        "elapsed_s": 1.75,
        "connections": 3,
        "policy": {  # the global values: the listener sets none
            "source": "global",
            "drain_time_s": 3.0,
            "drain_strategy": "gradual",
            "max_closes_per_second": 0.0,
        },
    }


# -- plain data ---------------------------------------------------------------------------------


def test_actions_and_events_are_plain_data() -> None:
    drains, _, _ = make()
    actions = [
        *drains.drain_listener(1, "web", "v1", "lds_update"),
        *drains.drain_chains(2, 9, "api", "v2", (0,), ["c0"]),
        *drains.start_admin_drain(False, stop_listeners=True),
    ]
    events = [DrainEmptied(1), DeadlineReached(2, 5)]
    ended = [
        a for record_id in list(drains.records) for a in drains.on_event(DrainEmptied(record_id))
    ]
    for item in [*actions, *events, *ended]:
        assert dataclasses.is_dataclass(item)
        assert pickle.loads(pickle.dumps(item)) == item
