"""Listener messages, fakes for the pure listener-manager tests, and the listener parts wired
as the server wires them."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.listener.actions import fixed_address
from xds_proxy.listener.drain_manager import DrainManager
from xds_proxy.listener.instance import ListenerServices
from xds_proxy.listener.manager import (
    Action,
    BindError,
    ListenerManager,
    ReleaseSockets,
    ReserveSockets,
    SocketAddress,
)
from xds_proxy.listener.runtime import ListenerCompiler, ListenerRuntime
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.stats import Stats


def hcm_filter(body: str, prefix: str = "ingress") -> listener_components_pb2.Filter:
    route = route_components_pb2.Route()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = body
    config = hcm_pb2.HttpConnectionManager(
        stat_prefix=prefix,
        route_config=route_pb2.RouteConfiguration(
            name="local",
            virtual_hosts=[
                route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[route])
            ],
        ),
    )
    config.http_filters.add(
        name="envoy.filters.http.router"
    ).typed_config.type_url = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    result = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    result.typed_config.Pack(config)
    return result


def chain(body: str, name: str = "", source_prefix: str | None = None):
    result = listener_components_pb2.FilterChain(name=name, filters=[hcm_filter(body)])
    if source_prefix is not None:
        ip, length = source_prefix.split("/")
        result.filter_chain_match.source_prefix_ranges.add(
            address_prefix=ip
        ).prefix_len.value = int(length)
    return result


def listener(
    name: str,
    port: int,
    body: str = "hello",
    ip: str = "127.0.0.1",
    chains: list | None = None,
    **fields,
) -> listener_pb2.Listener:
    result = listener_pb2.Listener(name=name, **fields)
    result.address.socket_address.address = ip
    result.address.socket_address.port_value = port
    result.filter_chains.extend(chains if chains is not None else [chain(body)])
    return result


@dataclass
class FakeSocketPool:
    """Sockets as the pool would hold them, with binds that fail on demand."""

    taken_elsewhere: set[SocketAddress] = field(default_factory=set)  # held by another process
    holders: dict[SocketAddress, set[int]] = field(default_factory=dict)
    by_version: dict[int, list[SocketAddress]] = field(default_factory=dict)
    binds: list[SocketAddress] = field(default_factory=list)
    next_port: int = 40000

    def reserve(self, request: ReserveSockets) -> None:
        version_id, addresses, share_from = (
            request.version_id,
            request.addresses,
            request.share_from,
        )
        if share_from is not None and share_from in self.by_version:
            bound = list(self.by_version[share_from])
        else:
            bound = []
            for address in addresses:
                if not fixed_address(address):
                    assert isinstance(address, tuple)
                    address = (address[0], self.next_port)
                    self.next_port += 1
                elif address not in self.holders:
                    if address in self.taken_elsewhere:
                        ip, port = address  # type: ignore[misc]
                        raise BindError(f"cannot bind '{ip}:{port}': Address in use")
                    self.binds.append(address)
                bound.append(address)
        for address in bound:
            self.holders.setdefault(address, set()).add(version_id)
        self.by_version[version_id] = bound

    def release(self, version_id: int) -> None:
        for address in self.by_version.pop(version_id, []):
            self.holders[address].discard(version_id)

    def flush(self) -> None:
        for address in [a for a, h in self.holders.items() if not h]:
            del self.holders[address]

    def execute(self, actions: list[Action]) -> None:
        """What the runtime does with the pool for a batch of actions: releases, then flush."""
        for action in actions:
            if isinstance(action, ReleaseSockets):
                self.release(action.version_id)
        self.flush()


def listener_compiler(stats: Stats, drains: DrainManager | None = None) -> ListenerCompiler:
    """The real compile port, with no upstreams and no global connection limit."""
    if drains is None:
        drains = DrainManager("immediate", 1.0, time.monotonic, random.Random(0), time.time)
    return ListenerCompiler(ListenerServices(stats, drains, build_filter_chain, None, None))


@dataclass
class WiredListeners:
    """Drain manager, compiler, listener manager and runtime, wired as server.py wires them."""

    stats: Stats
    pool: ListenSocketPool
    drains: DrainManager
    compiler: ListenerCompiler
    manager: ListenerManager
    runtime: ListenerRuntime


def wired_listeners(
    strategy: str = "immediate",
    drain_time_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    pool: ListenSocketPool | None = None,
) -> WiredListeners:
    stats = Stats()
    pool = pool if pool is not None else ListenSocketPool()
    drains = DrainManager(strategy, drain_time_s, clock, rng or random.Random(0), time.time)
    compiler = listener_compiler(stats, drains)
    manager = ListenerManager(stats, pool, compiler.compile, clock)
    runtime = ListenerRuntime(stats, pool, compiler, manager, drains)
    return WiredListeners(stats, pool, drains, compiler, manager, runtime)
