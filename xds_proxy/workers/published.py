"""What the main process publishes to its workers: every resource it has accepted, by type,
as serialized bytes (the relay's snapshot).

Listeners: each dynamic listener's newest version (a warming one, which the workers warm too,
before the one it replaces); clusters: each dynamic cluster (warming or active); route
configurations, endpoint assignments and secrets: the copies held. Static resources are not
published: the workers read them from the bootstrap, as the main process does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xds_proxy.listener.manager import ListenerManager
from xds_proxy.routes.registry import RouteRegistry
from xds_proxy.secrets.store import SecretStore
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.xds.eds import EndpointSubscriptions

LISTENERS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTERS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRETS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# type URL -> (the main process's version_info of it, or "", and the resources by name)
Snapshot = dict[str, tuple[str, dict[str, bytes]]]


class Publisher:
    """Builds the snapshot; a message already serialized (the same object) is not again."""

    def __init__(
        self,
        listeners: ListenerManager,
        clusters: ClusterManager,
        routes: RouteRegistry,
        endpoints: EndpointSubscriptions,
        secrets: SecretStore,
    ) -> None:
        self._listeners = listeners
        self._clusters = clusters
        self._routes = routes
        self._endpoints = endpoints
        self._secrets = secrets
        self._serialized: dict[int, tuple[Any, bytes]] = {}

    @property
    def clusters(self) -> ClusterManager:
        return self._clusters

    def ended_fetches(self) -> list[str]:
        """The EDS clusters whose newest version here ended its initial fetch without an
        assignment (a NACK, `initial_fetch_timeout`, Delta's "does not exist"): the relay has
        none to give the workers, whose versions end their fetch when told."""
        newest = dict(self._clusters.clusters)
        newest.update({name: cluster for name, (cluster, _) in self._clusters.warming.items()})
        return sorted(
            name
            for name, cluster in newest.items()
            if cluster.config.eds is not None
            and cluster.assigned
            and cluster.config.eds.service_name not in self._endpoints.held
        )

    def snapshot(self) -> Snapshot:
        listeners = {
            version.name: version.raw
            for version in self._listeners.active.values()
            if not version.static
        }
        listeners.update(
            {version.name: version.raw for version in self._listeners.warming.values()}
        )
        clusters = {
            name: record.message
            for name, record in self._clusters.records.items()
            if name not in self._clusters.static_names
        }
        clusters.update(
            {name: record.message for name, (_, record) in self._clusters.warming.items()}
        )
        kept: dict[int, tuple[Any, bytes]] = {}
        routes = self._bytes(((n, config) for n, _, config, _ in self._routes.held()), kept)
        endpoints = self._bytes(
            ((name, held.message) for name, held in self._endpoints.held.items()), kept
        )
        secrets = self._bytes(
            (
                (entry.name, entry.secret)
                for entry in self._secrets.entries.values()
                if entry.secret is not None
            ),
            kept,
        )
        self._serialized = kept  # only what is held now stays cached
        return {
            CLUSTERS: ("", clusters),
            ENDPOINTS: ("", endpoints),
            LISTENERS: (self._listeners.version_info, listeners),
            ROUTES: ("", routes),
            SECRETS: ("", secrets),
        }

    def _bytes(
        self, messages: Iterable[tuple[str, Any]], kept: dict[int, tuple[Any, bytes]]
    ) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for name, message in messages:
            cached = self._serialized.get(id(message))
            if cached is None or cached[0] is not message:
                cached = (message, message.SerializeToString(deterministic=True))
            kept[id(message)] = cached
            found[name] = cached[1]
        return found
