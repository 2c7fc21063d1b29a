"""Connection limits (listener/limits.py): the counting cores against a model, the bootstrap and
listener policy, the `connection_limit` stage in a filter chain, and the global limit's guard
on real loopback sockets (both event loops)."""

from __future__ import annotations

import asyncio
import copy
import socket
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.loops import event_loop_policy  # noqa: F401 - a fixture
from tests.helpers.waiting import wait_until
from xds_proxy.bootstrap import check_bootstrap, message_from_dict
from xds_proxy.config.support import check_listener
from xds_proxy.errors import ConfigError
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.listener.limits import (
    GLOBAL_MONITOR,
    ConnectionLimit,
    ConnectionLimitStage,
    GlobalConnectionLimit,
    LimitedConnection,
    connection_limit_config,
    global_limit_from_bootstrap,
    guard_transport,
)
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.stats import Stats

DC_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
FIXED_HEAP_TYPE = (
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
)
CL_TYPE = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
DIRECT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
FAILED_UPDATES = f"overload.{GLOBAL_MONITOR}.failed_updates"


# -- the global limit's counting core -----------------------------------------------------------


def test_global_limit_allows_exactly_max_then_refuses_and_counts_failed_updates() -> None:
    stats = Stats()
    limit = GlobalConnectionLimit(3, stats)
    assert [limit.try_allocate() for _ in range(5)] == [True, True, True, False, False]
    assert limit.active == 3
    assert stats.value(FAILED_UPDATES) == 2
    assert stats.value(f"overload.{GLOBAL_MONITOR}.pressure") == 0
    limit.release()
    assert limit.try_allocate() is True
    assert limit.try_allocate() is False
    assert stats.value(FAILED_UPDATES) == 3


def test_global_limit_release_below_zero_is_a_failed_update_not_a_credit() -> None:
    stats = Stats()
    limit = GlobalConnectionLimit(1, stats)
    limit.release()
    assert limit.active == 0
    assert stats.value(FAILED_UPDATES) == 1
    assert [limit.try_allocate(), limit.try_allocate()] == [True, False]


@settings(max_examples=100, deadline=None)
@given(
    maximum=st.integers(min_value=1, max_value=6),
    steps=st.lists(st.booleans(), max_size=60),
)
def test_global_limit_matches_a_model(maximum: int, steps: list[bool]) -> None:
    """True = a socket is accepted, False = one of the open ones closes."""
    stats = Stats()
    limit = GlobalConnectionLimit(maximum, stats)
    open_sockets = refused = 0
    for accept in steps:
        if accept:
            allowed = limit.try_allocate()
            assert allowed == (open_sockets < maximum)
            open_sockets += allowed
            refused += not allowed
        elif open_sockets:
            limit.release()
            open_sockets -= 1
        assert limit.active == open_sockets <= maximum
    assert stats.value(FAILED_UPDATES) == refused


# -- the connection_limit filter's counting core -------------------------------------------------


def test_connection_limit_counts_a_rejected_connection_until_it_closes() -> None:
    stats = Stats()
    limit = ConnectionLimit("web", 1, 0.0, stats)
    assert stats.value("connection_limit.web.active_connections") == 0
    assert stats.value("connection_limit.web.limited_connections") == 0
    assert limit.admit() is True
    assert limit.admit() is False  # rejected, but holds a slot while it is open (as Envoy)
    assert stats.value("connection_limit.web.active_connections") == 2
    assert stats.value("connection_limit.web.limited_connections") == 1
    limit.release()  # the admitted one closes; the rejected one is still open
    assert limit.admit() is False
    limit.release()
    limit.release()
    assert limit.admit() is True
    assert stats.value("connection_limit.web.active_connections") == 1
    assert stats.value("connection_limit.web.limited_connections") == 2


@settings(max_examples=100, deadline=None)
@given(
    maximum=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.booleans(), max_size=60),
)
def test_connection_limit_matches_a_model(maximum: int, steps: list[bool]) -> None:
    stats = Stats()
    limit = ConnectionLimit("m", maximum, 0.0, stats)
    open_connections = limited = 0
    for new in steps:
        if new:
            assert limit.admit() == (open_connections < maximum)
            limited += open_connections >= maximum
            open_connections += 1
        elif open_connections:
            limit.release()
            open_connections -= 1
        assert stats.value("connection_limit.m.active_connections") == open_connections
    assert stats.value("connection_limit.m.limited_connections") == limited


def cl_message(**fields: Any) -> connection_limit_pb2.ConnectionLimit:
    return json_format.ParseDict(fields, connection_limit_pb2.ConnectionLimit())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"stat_prefix": "a", "max_connections": 5}, ("a", 5, 0.0, True)),
        ({"stat_prefix": "a", "max_connections": 1, "delay": "1.5s"}, ("a", 1, 1.5, True)),
        # Envoy reads the delay in whole milliseconds: under 1 ms is no delay.
        ({"stat_prefix": "a", "max_connections": 1, "delay": "0.0009s"}, ("a", 1, 0.0, True)),
        (
            {
                "stat_prefix": "a",
                "max_connections": 2,
                "runtime_enabled": {"default_value": False, "runtime_key": "k"},
            },
            ("a", 2, 0.0, False),
        ),
    ],
)
def test_connection_limit_config(fields: dict, expected: tuple) -> None:
    assert connection_limit_config(cl_message(**fields), "p") == expected


def test_connection_limit_config_without_max_connections_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^p\.max_connections: Field 'max_connections'"):
        connection_limit_config(cl_message(stat_prefix="a"), "p")


# -- bootstrap policy ------------------------------------------------------------------------------


def monitor(max_connections: int = 10, name: str = GLOBAL_MONITOR, type_url: str = DC_TYPE):
    config: dict[str, Any] = {"@type": type_url}
    if type_url == DC_TYPE:
        config["max_active_downstream_connections"] = max_connections
    else:
        config["max_heap_size_bytes"] = 1 << 30
    return {"name": name, "typed_config": config}


def bootstrap(overload_manager: dict) -> bootstrap_pb2.Bootstrap:
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "overload_manager": overload_manager,
    }
    return message_from_dict(doc, bootstrap_pb2.Bootstrap)


def bootstrap_error(overload_manager: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        check_bootstrap(bootstrap(overload_manager))
    return str(caught.value)


def test_the_global_monitor_alone_is_active_and_warns_nothing() -> None:
    b = bootstrap({"resource_monitors": [monitor(7)]})
    assert check_bootstrap(b) == []
    limit = global_limit_from_bootstrap(b, Stats())
    assert limit is not None and limit.max_connections == 7


def test_other_monitors_and_actions_stay_inert_with_one_warning() -> None:
    b = bootstrap(
        {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                monitor(name="envoy.resource_monitors.fixed_heap", type_url=FIXED_HEAP_TYPE),
                monitor(3),
                {"name": "some.unknown.monitor"},
            ],
            "actions": [
                {
                    "name": "envoy.overload_actions.stop_accepting_requests",
                    "triggers": [
                        {"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.9}}
                    ],
                }
            ],
        }
    )
    assert check_bootstrap(b) == [
        "overload_manager.refresh_interval, overload_manager.resource_monitors[0], "
        "overload_manager.resource_monitors[2], overload_manager.actions: "
        "accepted and ignored (no effect in xds-proxy)"
    ]
    limit = global_limit_from_bootstrap(b, Stats())
    assert limit is not None and limit.max_connections == 3


def test_without_the_global_monitor_there_is_no_limit() -> None:
    b = bootstrap(
        {
            "resource_monitors": [
                monitor(name="envoy.resource_monitors.fixed_heap", type_url=FIXED_HEAP_TYPE)
            ],
            "actions": [
                {
                    "name": "envoy.overload_actions.shrink_heap",
                    "triggers": [
                        {"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.9}}
                    ],
                }
            ],
        }
    )
    assert check_bootstrap(b) == [
        "overload_manager.resource_monitors[0], overload_manager.actions: accepted and ignored"
        " (no effect in xds-proxy)"
    ]
    assert global_limit_from_bootstrap(b, Stats()) is None


@pytest.mark.parametrize(
    ("monitors", "error"),
    [
        (
            [monitor(0)],
            "overload_manager.resource_monitors[0].typed_config"
            ".max_active_downstream_connections: must be > 0, got 0",
        ),
        (
            [monitor(2), monitor(3)],
            "overload_manager.resource_monitors[1].name: Duplicate resource monitor "
            "envoy.resource_monitors.global_downstream_max_connections",
        ),
        (
            [monitor(2, name="mine")],
            "overload_manager.resource_monitors[0]: Didn't find a registered implementation "
            "for 'mine' with type URL: 'envoy.extensions.resource_monitors."
            "downstream_connections.v3.DownstreamConnectionsConfig'",
        ),
        (
            [{"name": GLOBAL_MONITOR}],
            "overload_manager.resource_monitors[0].typed_config: is required",
        ),
        (
            [monitor(type_url=FIXED_HEAP_TYPE)],
            f"overload_manager.resource_monitors[0].typed_config: @type '{FIXED_HEAP_TYPE}'"
            " not supported",
        ),
    ],
)
def test_what_envoy_refuses_about_the_global_monitor(monitors: list, error: str) -> None:
    assert bootstrap_error({"resource_monitors": monitors}) == error


def test_admin_ignore_global_conn_limit_is_accepted() -> None:
    b = bootstrap({"resource_monitors": [monitor(1)]})
    b.admin.ignore_global_conn_limit = True
    assert check_bootstrap(b) == []


# -- listener policy and the filter chain --------------------------------------------------------


def cl_filter(max_connections: int = 1, **extra: Any) -> dict:
    return {
        "name": "envoy.filters.network.connection_limit",
        "typed_config": {
            "@type": CL_TYPE,
            "stat_prefix": "lim",
            "max_connections": max_connections,
            **extra,
        },
    }


DIRECT = {
    "name": "envoy.filters.network.direct_response",
    "typed_config": {"@type": DIRECT_TYPE, "response": {"inline_string": "hi"}},
}


def listener(filters: list[dict], **fields: Any) -> listener_pb2.Listener:
    doc = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": filters}],
        **fields,
    }
    return json_format.ParseDict(doc, listener_pb2.Listener())


def test_listener_policy_accepts_the_filter_and_the_opt_out() -> None:
    config = listener(
        [
            cl_filter(2, delay="1s", runtime_enabled={"default_value": True, "runtime_key": "k"}),
            DIRECT,
        ],
        ignore_global_conn_limit=True,
    )
    assert check_listener(config) == []


def chain(filters: list[dict], ctx: FilterChainContext):
    messages = [
        json_format.ParseDict(f, listener_components_pb2.Filter()) for f in copy.deepcopy(filters)
    ]
    return build_filter_chain(messages, ctx, "filters")


def test_connection_limit_must_not_be_the_last_filter() -> None:
    with pytest.raises(ConfigError) as caught:
        chain([cl_filter()], FilterChainContext(Stats(), "l"))
    assert str(caught.value) == (
        "filters[0]: Error: non-terminal filter named envoy.filters.network.connection_limit"
        " of type envoy.filters.network.connection_limit is the last filter in a network"
        " filter chain."
    )


def test_a_terminal_filter_before_connection_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^filters\[0\]: Error: terminal filter named"):
        chain([DIRECT, cl_filter()], FilterChainContext(Stats(), "l"))


def test_the_filter_stats_exist_once_the_chain_is_built() -> None:
    stats = Stats()
    chain([cl_filter(), DIRECT], FilterChainContext(stats, "l"))
    assert stats.value("connection_limit.lim.active_connections") == 0
    assert stats.value("connection_limit.lim.limited_connections") == 0


def test_a_runtime_disabled_filter_lets_everything_through_uncounted() -> None:
    stats = Stats()
    factory = chain(
        [cl_filter(1, runtime_enabled={"default_value": False, "runtime_key": "k"}), DIRECT],
        FilterChainContext(stats, "l"),
    )
    protocols = [factory() for _ in range(3)]
    assert not any(isinstance(p, LimitedConnection) for p in protocols)
    assert stats.value("connection_limit.lim.active_connections") == 0


class Conn:
    """A stand-in for a served connection: only its identity matters to the registry."""

    def on_drain(self) -> None: ...

    def close_at_deadline(self) -> None: ...


def stage_with_registry(max_connections: int):
    stats = Stats()
    registered: list = []
    outer = FilterChainContext(stats, "l", register=registered.append, unregister=registered.remove)
    limit = ConnectionLimit("s", max_connections, 0.0, stats)
    stage = ConnectionLimitStage(limit, outer, enabled=True)
    return stage, stage.next_context(), limit, registered, stats


def test_an_admitted_connection_counts_until_its_protocol_unregisters() -> None:
    stage, inner, limit, registered, stats = stage_with_registry(1)
    factory = stage.wrap(lambda: Conn())  # type: ignore[arg-type, return-value]
    first = factory()
    inner.register(first)  # what the terminal protocol does in connection_made
    assert registered == [first]
    assert isinstance(factory(), LimitedConnection)
    assert limit.connections == 2  # the rejected one holds its slot until closed
    limit.release()  # ...which LimitedConnection does at connection_lost
    inner.unregister(first)
    inner.unregister(first)  # twice: counted once
    assert registered == [] and limit.connections == 0
    assert stats.value("connection_limit.s.active_connections") == 0
    assert not isinstance(factory(), LimitedConnection)


def test_a_successor_protocol_takes_over_the_slot() -> None:
    """HTTP/1.1 -> HTTP/2 on one connection: the successor registers before the first
    protocol unregisters; the connection still holds exactly one slot."""
    stage, inner, limit, _registered, stats = stage_with_registry(1)
    factory = stage.wrap(lambda: Conn())  # type: ignore[arg-type, return-value]
    http1 = factory()
    inner.register(http1)
    http2 = Conn()
    inner.register(http2)
    inner.unregister(http1)
    assert limit.connections == 1
    assert stats.value("connection_limit.s.active_connections") == 1
    assert isinstance(factory(), LimitedConnection)
    limit.release()
    inner.unregister(http2)
    assert limit.connections == 0
    assert stats.value("connection_limit.s.active_connections") == 0


# -- on real sockets: the global guard, and a rejected connection's delay -------------------------


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def accepted_transport() -> tuple[asyncio.Transport, socket.socket]:
    """A real transport on one end of a loopback socket pair, and the peer socket."""
    ours, peer = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    return transport, peer  # type: ignore[return-value]


async def test_the_guard_forwards_to_the_protocol_set_later_and_frees_the_slot_at_close(
    event_loop_policy,  # noqa: F811
) -> None:
    stats = Stats()
    limit = GlobalConnectionLimit(1, stats)
    transport, peer = await accepted_transport()
    guarded = guard_transport(transport, limit)
    assert guarded is not None and limit.active == 1
    other, other_peer = await accepted_transport()
    assert guard_transport(other, limit) is None  # full: the caller closes it
    other.close()
    other_peer.close()
    recorder = Recorder()
    guarded.set_protocol(recorder)
    assert guarded.get_protocol() is recorder
    recorder.connection_made(guarded)
    guarded.write(b"ping")
    assert await asyncio.to_thread(peer.recv, 4) == b"ping"
    peer.sendall(b"pong")
    await wait_until(lambda: recorder.data == b"pong")
    assert guarded.get_extra_info("peername") == transport.get_extra_info("peername")
    peer.close()
    await asyncio.wait_for(recorder.lost, 3)
    assert limit.active == 0
    assert stats.value(FAILED_UPDATES) == 1


async def test_a_rejected_connection_is_closed_after_the_delay_and_released(
    event_loop_policy,  # noqa: F811
) -> None:
    stats = Stats()
    registered: list = []
    ctx = FilterChainContext(stats, "l", register=registered.append, unregister=registered.remove)
    limit = ConnectionLimit("d", 0 + 1, 0.2, stats)
    assert limit.admit() is True
    assert limit.admit() is False
    rejected = LimitedConnection(limit, ctx)
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await loop.connect_accepted_socket(lambda: rejected, ours)
    assert registered == [rejected]  # a connection of its listener while it lasts (as Envoy)
    peer.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # read and dropped, never answered
    assert await asyncio.to_thread(peer.recv, 100) == b""
    assert loop.time() - started >= 0.19
    await wait_until(lambda: not registered)
    assert limit.connections == 1
    assert stats.value("connection_limit.d.active_connections") == 1
    peer.close()
