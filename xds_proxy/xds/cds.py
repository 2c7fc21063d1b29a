"""The proxy's CDS client: dynamic clusters from the control plane (state of the world).

`dynamic_resources.cds_config` names the source: its own `api_config_source`
(`ClusterDiscoveryService.StreamClusters`) or `ads {}` (`StreamAggregatedResources` with the
Cluster type URL), state of the world or Delta (`DELTA_GRPC`: `DeltaClusters` /
`DeltaAggregatedResources`, removals by name). Over ADS it shares one stream with LDS
(`transport.XdsStream`), clusters first, as Envoy's mux does.

Apply (Envoy's `CdsApiImpl` + `CdsApiHelper`): every dynamic cluster not in the response is
removed; each cluster of the response is added or updated in order (an identical one is a
no-op; a static cluster of the same name is skipped silently, as `blockUpdate` does); a
cluster named twice or one that does not build is reported and the others still apply; any
report NACKs the response with `Error adding/updating cluster(s) <name>: <why>, ...`.

Initialisation: `on_initialized` runs once, after the first response (accepted or not) once
the clusters it added have warmed (EDS clusters: their first assignment or the end of its
initial fetch; the EDS subscriptions go out right after the response is applied, on the same
ADS stream), or when `initial_fetch_timeout` expires; the server starts LDS only then, as
Envoy initialises CDS, then EDS, before LDS so that listeners naming pushed clusters are
accepted and start with their hosts.
Stats: `cluster_manager.cds.*` and `cluster_manager.cds.control_plane.*` (plain gRPC) or
`control_plane.*` (ADS), as Envoy names them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.xds.decode import (
    DecodedResource,
    ResponseDecodeError,
    decode_delta_resources,
    decode_sotw_resources,
    unpack,
)
from xds_proxy.xds.source import cds_configured, cds_server
from xds_proxy.xds.transport import SubscriptionClient, new_subscription

log = logging.getLogger("xds_proxy.xds")

CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CDS_STATS_PREFIX = "cluster_manager.cds."


# -- decoding -------------------------------------------------------------------------------


def decode_sotw_clusters(response: discovery_pb2.DiscoveryResponse) -> list[cluster_pb2.Cluster]:
    """Every cluster of a SotW response, in order; one bad resource rejects them all."""
    clusters: list[cluster_pb2.Cluster] = []
    for resource in decode_sotw_resources(response, _decode_cluster):
        if resource.body is None:
            raise ResponseDecodeError(f"{resource.name}: a Cluster resource without a body")
        clusters.append(resource.body)
    return clusters


def decode_delta_clusters(
    response: discovery_pb2.DeltaDiscoveryResponse,
) -> list[DecodedResource[cluster_pb2.Cluster]]:
    """The added/updated clusters of a Delta response, in order (heartbeats included)."""
    return decode_delta_resources(response, _decode_cluster)


def _decode_cluster(payload: any_pb2.Any) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster()
    unpack(payload, cluster)
    return cluster


# -- applying -------------------------------------------------------------------------------


def apply_sotw_clusters(
    manager: ClusterManager, clusters: list[cluster_pb2.Cluster], version_info: str = ""
) -> tuple[bool, str | None]:
    """One SotW update: returns (anything changed, None or the NACK message)."""
    wanted = {cluster.name for cluster in clusters}
    dynamic = [name for name in manager.clusters if name not in manager.static_names]
    to_remove = [name for name in dynamic if name not in wanted]
    return apply_cluster_changes(manager, clusters, to_remove, version_info)


def apply_cluster_changes(
    manager: ClusterManager,
    added: list[cluster_pb2.Cluster],
    removed: list[str],
    version_info: str = "",
) -> tuple[bool, str | None]:
    """Adds/updates in order, then removals (Envoy's `CdsApiHelper::onConfigUpdate`)."""
    failures: list[str] = []
    seen: set[str] = set()
    any_applied = False
    for index, cluster in enumerate(added):
        name = cluster.name
        if name in seen:
            failures.append(f"{name}: duplicate cluster {name} found")
            continue
        seen.add(name)
        if name in manager.static_names:
            continue  # Envoy: a static cluster blocks the update, silently
        try:
            changed = manager.add_or_update(
                cluster, f"resources[{index}]", version_info=version_info
            )
        except ConfigError as error:
            failures.append(f"{name}: {error}")
            continue
        any_applied = any_applied or changed
    for name in removed:
        if manager.remove(name):
            any_applied = True
    if failures:
        return any_applied, "Error adding/updating cluster(s) " + ", ".join(failures)
    return any_applied, None


# -- transport ------------------------------------------------------------------------------


class CdsClient(SubscriptionClient):
    """Subscribes to clusters (state of the world or Delta)."""

    name = "cds"
    plain_stub = cds_pb2_grpc.ClusterDiscoveryServiceStub
    sotw_method = "StreamClusters"
    delta_method = "DeltaClusters"

    def __init__(
        self,
        bootstrap: bootstrap_pb2.Bootstrap,
        stats: Stats,
        manager: ClusterManager,
        on_initialized: Callable[[], None],
        rng: random.Random | None = None,
        applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Raises ConfigError (`FIELD_PATH: reason`) if the CDS source is not usable.
        `applied()` is awaited after each response, before its ACK or NACK."""
        server = cds_server(bootstrap)
        stats_handles, subscription = new_subscription(
            server,
            bootstrap.node,
            stats,
            CDS_STATS_PREFIX,
            CLUSTER_TYPE_URL,
            decode_sotw=decode_sotw_clusters,
            decode_delta=decode_delta_clusters,
        )
        super().__init__(server, stats_handles, subscription, on_initialized, rng)
        self._manager = manager
        self._applied = applied
        self.system_version_info = ""  # moves when a response changed something (config dump)
        self._init_task: asyncio.Task | None = None

    @staticmethod
    def configured(bootstrap: bootstrap_pb2.Bootstrap) -> bool:
        """True when the bootstrap sets `dynamic_resources.cds_config`."""
        return cds_configured(bootstrap)

    async def _handle(self, response):
        outcome = self._outcome(response)
        if outcome.request is None:
            return None
        self._manager.flush_watches()  # EDS asks for the new clusters' assignments now
        if self._applied is not None:
            await self._applied()
        if not self.initialized and self._init_task is None:
            self._init_task = asyncio.get_running_loop().create_task(
                self._initialize_when_warm(), name="cds-init"
            )
        return outcome.request

    async def _initialize_when_warm(self) -> None:
        await self._manager.wait_warm()
        self._mark_initialized()

    def _stopped(self) -> None:
        if self._init_task is not None and not self._init_task.done():
            self._init_task.cancel()

    def _apply_sotw(self, version_info: str, clusters: list[cluster_pb2.Cluster]) -> str | None:
        changed, error = apply_sotw_clusters(self._manager, clusters, version_info)
        if changed:
            self.system_version_info = version_info
        return error

    def _apply_delta(
        self, version_info: str, clusters: list[cluster_pb2.Cluster], removed: list[str]
    ) -> str | None:
        dynamic_removed = [name for name in removed if name not in self._manager.static_names]
        changed, error = apply_cluster_changes(
            self._manager, clusters, dynamic_removed, version_info
        )
        if changed:
            self.system_version_info = version_info
        return error
