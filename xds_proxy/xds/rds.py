"""The proxy's RDS client: named RouteConfiguration subscriptions (SotW and Delta).

Unlike LDS and CDS, RDS is not a wildcard type: a request names the route configurations
wanted, newest subscription first, as Envoy orders them. Over ADS one `RdsClient` rides the
`XdsStream` that carries CDS and LDS (added after them, so the order is CDS, LDS, RDS); with
a plain `api_config_source` Envoy opens one RouteDiscoveryService stream per name, and so do
we. When the names change, the new list goes out at once: SotW in an ACK-shaped request (the
last accepted version and the last nonce), Delta as subscribe/unsubscribe lists.

What a response means for each name (validation, the per-name `http.<prefix>.rds.<name>.*`
stats, the route tables) belongs to the route registry (xds_proxy/routes/), reached through
the `RouteSink` port. The type-wide update stats of a `SubscriptionLifecycle` are kept off the
stats store (Envoy has none for RDS); the stream's `control_plane.*` are the shared ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.route.v3 import rds_pb2_grpc
from google.protobuf import any_pb2

from xds_proxy.stats import Stats
from xds_proxy.xds.decode import (
    DecodedResource,
    ResponseDecodeError,
    decode_delta_resources,
    decode_sotw_resources,
    unpack,
)
from xds_proxy.xds.delta import DeltaSubscription
from xds_proxy.xds.sotw import SotwSubscription, SubscriptionStats
from xds_proxy.xds.source import XdsServer
from xds_proxy.xds.transport import SubscriptionClient, client_node

log = logging.getLogger("xds_proxy.xds")

ROUTE_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


class RouteSink(Protocol):
    """What the route registry does with what an `RdsClient` receives."""

    def apply_routes(
        self,
        client: RdsClient,
        version_info: str,
        configs: list[tuple[route_pb2.RouteConfiguration, str]],
        removed: list[str],
    ) -> str | None:
        """(config, its version) in response order, and Delta's removed names: None to ACK,
        or the NACK text."""
        ...

    def stream_lost(self, client: RdsClient) -> None: ...


def _decode_route(payload: any_pb2.Any) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration()
    unpack(payload, config)
    return config


def _bodies(decoded: list[DecodedResource]) -> list:
    for resource in decoded:
        if resource.body is None:
            raise ResponseDecodeError(f"{resource.name}: a RouteConfiguration without a body")
    return decoded


def _rds_stats(stats: Stats, server: XdsServer) -> SubscriptionStats:
    """Type-wide update stats off the store (Envoy has none for RDS); the stream's
    control_plane.* on it (over ADS the shared ones)."""
    handles = SubscriptionStats.create(Stats(), "rds.", "control_plane.")
    if server.rest is not None:  # REST has no stream, and Envoy no control_plane.* for it
        return handles
    control_plane = "control_plane." if server.aggregated else "rds.control_plane."
    handles.connected_state = stats.gauge(control_plane + "connected_state")
    handles.control_plane_identifier = stats.text_readout(control_plane + "identifier")
    handles.pending_requests = stats.gauge(control_plane + "pending_requests")
    handles.rate_limit_enforced = stats.counter(control_plane + "rate_limit_enforced")
    return handles


class RdsClient(SubscriptionClient):
    """A named RouteConfiguration subscription (ADS: all the names of that stream; plain RDS:
    one name)."""

    name = "rds"
    plain_stub = rds_pb2_grpc.RouteDiscoveryServiceStub
    sotw_method = "StreamRoutes"
    delta_method = "DeltaRoutes"

    def __init__(
        self,
        server: XdsServer,
        node: base_pb2.Node,
        stats: Stats,
        sink: RouteSink,
        applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        handles = _rds_stats(stats, server)
        sent_node = client_node(node)
        first_only = server.node_on_first_request_only
        subscription: SotwSubscription | DeltaSubscription
        if server.delta:
            subscription = DeltaSubscription(
                ROUTE_TYPE_URL,
                sent_node,
                handles,
                self._decode_delta,
                first_only,
            )
        else:
            subscription = SotwSubscription(
                ROUTE_TYPE_URL,
                sent_node,
                handles,
                lambda response: _bodies(decode_sotw_resources(response, _decode_route)),
                first_only,
            )
        subscription.resource_names = []
        super().__init__(server, handles, subscription, lambda: None, None)
        self._sink = sink
        self._applied = applied
        self._decoded: list[DecodedResource] = []

    @property
    def names(self) -> list[str]:
        return list(self._subscription.resource_names or [])

    def change_names(self, names: list[str]) -> None:
        """Ask for exactly `names` (newest subscription first) from now on."""
        if names == self.names:
            return
        request = self._subscription.change_names(names)
        if request is not None and self.stream is not None:
            self.stream.send(request)

    def stream_lost(self) -> None:
        super().stream_lost()
        self._sink.stream_lost(self)

    async def _handle(self, response):
        outcome = self._outcome(response)
        if outcome.request is None:
            return None
        if self._applied is not None:
            await self._applied()
        return outcome.request

    def _apply_sotw(self, version_info: str, decoded: list[DecodedResource]) -> str | None:
        configs = [(resource.body, version_info) for resource in decoded]
        return self._sink.apply_routes(self, version_info, configs, [])

    def _apply_delta(self, version_info: str, bodies: list, removed: list[str]) -> str | None:
        # Delta: each route configuration shows its own version (config_dump).
        versions = {resource.name: resource.version for resource in self._last_delta()}
        configs = [(body, versions.get(body.name, version_info)) for body in bodies]
        return self._sink.apply_routes(self, version_info, configs, removed)

    def _last_delta(self) -> list[DecodedResource]:
        return self._decoded

    def _decode_delta(self, response: discovery_pb2.DeltaDiscoveryResponse) -> list:
        self._decoded = decode_delta_resources(response, _decode_route)
        return self._decoded
