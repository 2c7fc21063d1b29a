"""EDS: the ClusterLoadAssignments of `type: EDS` clusters.

The cluster manager asks (the `EndpointWatcher` port of upstream/manager.py): `watch(cluster)`
when a version of an EDS cluster is built, `unwatch(cluster)` when it retires, `flush()` once
a batch of cluster changes is done. The users of a name are cluster versions (a changed
cluster's old and new version share the name while the new one warms); the shared
`NamedSubscriptions` counts them and asks for the names (over ADS on the server's stream,
joined right after CDS; with an `api_config_source` one stream per name, as Envoy).

A response is checked whole before anything changes (config/endpoints.py: PGV, the support
table, addresses that must be IPs); an invalid assignment NACKs the response with Envoy's
text, and every cluster keeps its hosts. A valid one is handed to each cluster version
watching its name (`Cluster.set_assignment`); an identical one changes nothing (Envoy's
`update_no_rebuild`).

The first assignment ends a new cluster's warming. So does the end of its initial fetch
without one, as Envoy's: `initial_fetch_timeout` (default 15 s), a NACK, or Delta's "does not
exist"; the cluster is then active with no hosts. A SotW response without the name changes
nothing, as Envoy 1.40 (not even a counter).

A changed cluster's new version that watches a name already held gets that assignment at
once and is active at once. Envoy 1.40 (SotW over ADS) keeps such a version warming until the
control plane sends the name again (its `assignment_use_cached` stays 0): the old version
serves meanwhile, for as long as the assignment does not change or `initial_fetch_timeout`.
The held assignment is the control plane's current one, so we use it without that wait.

Stats, per cluster, as Envoy 1.40 lists them: `cluster.<name>.update_attempt`,
`update_success`, `update_rejected`, `update_failure`, `update_empty` (Delta's "does not
exist"), `update_no_rebuild`,
`init_fetch_timeout`, `update_time`, `version`, `version_text`. (`/config_dump?include_eds`
shows the clusters' hosts, as Envoy's, admin/clusters.py.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc

from xds_proxy.config.endpoints import Assignment, build_assignment
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.xds.named import NamedClient, ResourceType
from xds_proxy.xds.source import source_server
from xds_proxy.xds.subscriptions import NamedSubscriptions, Subscription, UpdateStats
from xds_proxy.xds.transport import XdsStream

log = logging.getLogger("xds_proxy.eds")

ENDPOINTS = ResourceType(
    "eds",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    endpoint_pb2.ClusterLoadAssignment,
    eds_pb2_grpc.EndpointDiscoveryServiceStub,
    "StreamEndpoints",
    "DeltaEndpoints",
)


class EdsStats(UpdateStats):
    """`cluster.<name>.*` of an EDS subscription (shared by the cluster's versions)."""

    def __init__(self, stats: Stats, cluster_name: str) -> None:
        super().__init__(stats, f"cluster.{cluster_name}.")
        self.update_empty = self.counter("update_empty")
        self.update_no_rebuild = self.counter("update_no_rebuild")

    def applied(self, version_info: str, now_ms: int, rebuilt: bool) -> None:
        self.success(version_info, now_ms)
        if not rebuilt:
            self.update_no_rebuild.inc()


@dataclass(frozen=True, slots=True)
class HeldAssignment:
    """The last accepted assignment of one name."""

    message: endpoint_pb2.ClusterLoadAssignment
    built: Assignment
    version_info: str
    last_updated: float  # wall clock


class EndpointSubscriptions:
    def __init__(
        self,
        stats: Stats,
        bootstrap: bootstrap_pb2.Bootstrap,
        applied: Callable[[], Awaitable[None]] | None = None,
        ads_stream: Callable[[], XdsStream | None] = lambda: None,
        ads_coming: Callable[[], bool] = lambda: False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`ads_stream()`: the server's ADS stream once it exists; while `ads_coming()`, EDS
        over ADS waits to join it (after CDS) instead of opening a stream of its own."""
        self._stats = stats
        self._bootstrap = bootstrap
        self._wall_clock = wall_clock
        self.subscriptions = NamedSubscriptions(
            ENDPOINTS,
            bootstrap,
            stats,
            self,
            on_timeout=self._timed_out,
            on_released=self._released,
            on_not_modified=self._not_modified,
            applied=applied,
            ads_stream=ads_stream,
            ads_coming=ads_coming,
            wall_clock=wall_clock,
        )
        self.held: dict[str, HeldAssignment] = {}  # by name, in subscription order
        self._cluster_stats: dict[str, EdsStats] = {}

    # -- the cluster manager's port -------------------------------------------------------------

    def watch(self, cluster: Cluster) -> None:
        spec = cluster.config.eds
        assert spec is not None
        self.subscriptions.add_user(cluster, spec.service_name, spec.source)
        self._stats_of(cluster).update_attempt.inc()  # Envoy counts the subscription's start
        held = self.held.get(spec.service_name)
        if held is not None:
            cluster.set_assignment(held.built)

    def unwatch(self, cluster: Cluster) -> None:
        self.subscriptions.remove_user(cluster)

    def check_source(self, source: config_source_pb2.ConfigSource, path: str) -> None:
        source_server(self._bootstrap, source, path)  # raises ConfigError if unusable

    def flush(self) -> None:
        self.subscriptions.flush()

    def resume(self) -> None:
        """The server's ADS stream is open (or will not be): send what waited for it."""
        self.subscriptions.resume()

    def close(self) -> None:
        self.subscriptions.close()

    # -- from the EDS clients (the NamedSink port) ----------------------------------------------

    def apply_named(
        self,
        client: NamedClient,
        version_info: str,
        assignments: list[tuple[endpoint_pb2.ClusterLoadAssignment, str]],
        removed: list[str],
    ) -> str | None:
        received = {cla.cluster_name: (cla, version) for cla, version in assignments}
        mine = self.subscriptions.of_client(client)
        try:  # every assignment is checked before any is applied
            built = {
                s.name: build_assignment(received[s.name][0], "")
                for s in mine
                if s.name in received
            }
        except ConfigError as error:
            self._rejected(mine)
            return str(error).lstrip(".")
        now = self._wall_clock()
        now_ms = int(now * 1000)
        for subscription in reversed(mine):  # newest subscription first, as Envoy
            name = subscription.name
            if name in built:
                message, version = received[name]
                held = self.held.get(name)
                if held is None or held.message != message:
                    self.held[name] = HeldAssignment(message, built[name], version, now)
                for cluster in self._clusters(subscription):
                    rebuilt = cluster.set_assignment(built[name])
                    self._stats_of(cluster).applied(version, now_ms, rebuilt)
                self.subscriptions.answered(subscription)
            elif name in removed:
                # Delta's "does not exist": an empty update, a success all the same; a
                # cluster still warming becomes active with no hosts, one with hosts keeps
                # them (Envoy 1.40); a new version of it waits for a copy.
                self.held.pop(name, None)
                for cluster in self._clusters(subscription):
                    cluster.initial_fetch_over()
                    stats = self._stats_of(cluster)
                    stats.success(version_info, now_ms)
                    stats.update_empty.inc()
                self.subscriptions.answered(subscription)
            # A SotW response without the name: nothing changes, nothing is counted (Envoy
            # 1.40 keeps the hosts and its counters as they are).
        return None

    def stream_lost(self, client: NamedClient) -> None:
        for subscription in self.subscriptions.of_client(client):
            for cluster in self._clusters(subscription):
                stats = self._stats_of(cluster)
                stats.failed()

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _clusters(subscription: Subscription) -> list[Cluster]:
        return [user for user in subscription.users if isinstance(user, Cluster)]

    def _stats_of(self, cluster: Cluster) -> EdsStats:
        stats = self._cluster_stats.get(cluster.name)
        if stats is None:
            stats = self._cluster_stats[cluster.name] = EdsStats(self._stats, cluster.name)
        return stats

    def _rejected(self, subscriptions: list[Subscription]) -> None:
        """A NACK: every subscription of the stream counts it; a cluster still warming ends its
        initial fetch with no hosts (Envoy lets start-up go on with a bad config)."""
        for subscription in subscriptions:
            for cluster in self._clusters(subscription):
                stats = self._stats_of(cluster)
                stats.rejected()
                cluster.initial_fetch_over()
            self.subscriptions.answered(subscription)

    def _timed_out(self, subscription: Subscription) -> None:
        for cluster in self._clusters(subscription):
            if cluster.assigned:
                continue
            stats = self._stats_of(cluster)
            stats.timed_out()
            cluster.initial_fetch_over()

    def _not_modified(self, subscription: Subscription) -> None:
        """REST: a 304 counts an attempt of each cluster (a failed fetch counts as a lost
        stream: a warming cluster keeps waiting, as in Envoy 1.40)."""
        for cluster in self._clusters(subscription):
            self._stats_of(cluster).update_attempt.inc()

    def _released(self, subscription: Subscription) -> None:
        self.held.pop(subscription.name, None)
