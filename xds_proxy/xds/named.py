"""Subscriptions to *named* resources of one type: RDS route configurations, EDS cluster load
assignments, SDS secrets (SotW and Delta, over ADS or a source of their own).

Unlike LDS and CDS these are not wildcard types: a request names the resources wanted, newest
subscription first, as Envoy orders them. `NamedClient` is one subscription of one type (over
ADS: every name of that type on the shared stream; with a plain `api_config_source` Envoy
opens one stream per name, and so do we). When the names change the new list goes out at once:
SotW in an ACK-shaped request (the last accepted version and the last nonce), Delta as
subscribe/unsubscribe lists.

What a response means for each name (validation, per-name stats, what the proxy installs)
belongs to the owner of that type (the route registry, the cluster manager's endpoints, the
secret store), reached through the `NamedSink` port. The type-wide update stats of a
`SubscriptionLifecycle` are kept off the stats store (Envoy has none for these types); the
stream's `control_plane.*` are the shared ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_proxy.stats import Stats
from xds_proxy.xds.decode import (
    DecodedResource,
    ResponseDecodeError,
    decode_delta_resources,
    decode_sotw_resources,
    resource_name,
    unpack,
)
from xds_proxy.xds.delta import DeltaSubscription
from xds_proxy.xds.sotw import SotwSubscription, SubscriptionStats
from xds_proxy.xds.source import XdsServer
from xds_proxy.xds.transport import SubscriptionClient, client_node

log = logging.getLogger("xds_proxy.xds")


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One named xDS resource type: its message and where a plain source serves it."""

    short_name: str  # "rds": log lines and the (unstored) type-wide stats prefix
    type_url: str
    message: type[Message]
    plain_stub: Callable[[Any], Any]  # the type's own gRPC service stub class
    sotw_method: str
    delta_method: str

    @property
    def message_name(self) -> str:
        return self.message.DESCRIPTOR.name


class NamedSink(Protocol):
    """What the owner of a resource type does with what a `NamedClient` receives."""

    def apply_named(
        self,
        client: NamedClient,
        version_info: str,
        resources: list[tuple[Any, str]],
        removed: list[str],
    ) -> str | None:
        """(resource, its version) in response order, and Delta's removed names: None to
        ACK, or the NACK text."""
        ...

    def stream_lost(self, client: NamedClient) -> None: ...


def _named_stats(stats: Stats, server: XdsServer, short_name: str) -> SubscriptionStats:
    """Type-wide update stats off the store; the stream's control_plane.* on it (over ADS the
    shared ones)."""
    handles = SubscriptionStats.create(Stats(), short_name + ".", "control_plane.")
    if server.rest is not None:  # REST has no stream, and Envoy no control_plane.* for it
        return handles
    control_plane = "control_plane." if server.aggregated else f"{short_name}.control_plane."
    handles.connected_state = stats.gauge(control_plane + "connected_state")
    handles.control_plane_identifier = stats.text_readout(control_plane + "identifier")
    handles.pending_requests = stats.gauge(control_plane + "pending_requests")
    handles.rate_limit_enforced = stats.counter(control_plane + "rate_limit_enforced")
    return handles


class NamedClient(SubscriptionClient):
    """A named-resource subscription of one type (ADS: all the names of that stream; a plain
    source: one name)."""

    def __init__(
        self,
        kind: ResourceType,
        server: XdsServer,
        node: base_pb2.Node,
        stats: Stats,
        sink: NamedSink,
        applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.name = kind.short_name
        self.plain_stub = kind.plain_stub
        self.sotw_method = kind.sotw_method
        self.delta_method = kind.delta_method
        handles = _named_stats(stats, server, kind.short_name)
        sent_node = client_node(node)
        first_only = server.node_on_first_request_only
        subscription: SotwSubscription | DeltaSubscription
        if server.delta:
            subscription = DeltaSubscription(
                kind.type_url, sent_node, handles, self._decode_delta, first_only
            )
        else:
            subscription = SotwSubscription(
                kind.type_url, sent_node, handles, self._decode_sotw, first_only
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
        resources = [(resource.body, version_info) for resource in decoded]
        return self._sink.apply_named(self, version_info, resources, [])

    def _apply_delta(self, version_info: str, bodies: list, removed: list[str]) -> str | None:
        # Delta: each resource shows its own version (config_dump).
        versions = {resource.name: resource.version for resource in self._decoded}
        resources = [(body, versions.get(resource_name(body), version_info)) for body in bodies]
        return self._sink.apply_named(self, version_info, resources, removed)

    def _decode_resource(self, payload: any_pb2.Any) -> Message:
        message = self.kind.message()
        unpack(payload, message)
        return message

    def _decode_sotw(self, response: discovery_pb2.DiscoveryResponse) -> list[DecodedResource]:
        decoded = decode_sotw_resources(response, self._decode_resource)
        for resource in decoded:
            if resource.body is None:
                raise ResponseDecodeError(
                    f"{resource.name}: a {self.kind.message_name} without a body"
                )
        return decoded

    def _decode_delta(self, response: discovery_pb2.DeltaDiscoveryResponse) -> list:
        self._decoded = decode_delta_resources(response, self._decode_resource)
        return self._decoded
