"""Listener messages and fakes for the pure listener-manager tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.listener.manager import BindError, SocketAddress


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

    def reserve(self, version_id: int, addresses: list[SocketAddress], share_from: int | None):
        if share_from is not None and share_from in self.by_version:
            bound = list(self.by_version[share_from])
        else:
            bound = []
            for address in addresses:
                if address[1] == 0:
                    address = (address[0], self.next_port)
                    self.next_port += 1
                elif address not in self.holders:
                    if address in self.taken_elsewhere:
                        raise BindError(f"cannot bind '{address[0]}:{address[1]}': Address in use")
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
