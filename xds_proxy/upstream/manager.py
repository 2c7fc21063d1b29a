"""The cluster manager: every cluster by name, from the bootstrap and (later) CDS.

Add/update/remove are by name and content, as for listeners: an update with an identical
`Cluster` changes nothing (connections and DNS state are kept); a changed one replaces the
cluster (the old one retires: its busy connections finish their streams, idle ones close).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2

from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.config import build_cluster_config

log = logging.getLogger("xds_proxy.upstream")


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """How a cluster got here, for `/config_dump` and `/clusters`."""

    message: bytes  # the Cluster, serialized deterministically (also the identity check)
    version_info: str  # the CDS response that added or last changed it ("" for static)
    last_updated: float  # wall clock, seconds

    def cluster(self) -> cluster_pb2.Cluster:
        return cluster_pb2.Cluster.FromString(self.message)


class ClusterManager:
    def __init__(self, stats: Stats, rng: random.Random | None = None) -> None:
        self.stats = stats
        self._rng = rng
        self.clusters: dict[str, Cluster] = {}
        self.records: dict[str, ClusterRecord] = {}
        self.static_names: set[str] = set()
        self._started = False
        self._active_gauge = stats.gauge("cluster_manager.active_clusters")
        self._added = stats.counter("cluster_manager.cluster_added")
        self._modified = stats.counter("cluster_manager.cluster_modified")
        self._removed = stats.counter("cluster_manager.cluster_removed")

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def add_or_update(
        self,
        cluster: cluster_pb2.Cluster,
        path: str = "cluster",
        static: bool = False,
        version_info: str = "",
    ) -> bool:
        """Add or replace a cluster; False when an identical one exists. Raises ConfigError
        (nothing changes then)."""
        key = cluster.SerializeToString(deterministic=True)
        name = cluster.name
        held = self.records.get(name)
        if held is not None and held.message == key:
            return False
        if name in self.static_names and not static:
            raise ConfigError(f"{path}.name: '{name}' is a static cluster and cannot be updated")
        config = build_cluster_config(cluster, path)
        new = Cluster(config, self.stats, self._rng)
        old = self.clusters.get(name)
        self.clusters[name] = new
        self.records[name] = ClusterRecord(key, version_info, time.time())
        if static:
            self.static_names.add(name)
        if old is not None:
            old.retire()
            self._modified.inc()
        else:
            self._added.inc()
        self._active_gauge.set(len(self.clusters))
        if self._started:
            new.start()
        return True

    def remove(self, name: str) -> bool:
        if name in self.static_names:
            return False
        cluster = self.clusters.pop(name, None)
        self.records.pop(name, None)
        if cluster is None:
            return False
        cluster.retire()
        self._removed.inc()
        self._active_gauge.set(len(self.clusters))
        return True

    def add_static(self, bootstrap: bootstrap_pb2.Bootstrap) -> None:
        """Every `static_resources.clusters[]`; raises ConfigError with the field path."""
        for index, cluster in enumerate(bootstrap.static_resources.clusters):
            self.add_or_update(cluster, f"static_resources.clusters[{index}]", static=True)

    def start(self) -> None:
        """Start DNS resolution of every cluster (call on the running loop)."""
        self._started = True
        for cluster in self.clusters.values():
            cluster.start()

    async def wait_resolved(self, timeout: float) -> None:
        """Wait (bounded) until every DNS cluster has its first answer, as Envoy's cluster
        warming does before listeners start."""
        events = [c.resolved.wait() for c in self.clusters.values() if c.resolved is not None]
        if events:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*events)
            except TimeoutError:
                log.warning("some DNS clusters did not resolve within %.1f s", timeout)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


def build_cluster_manager(bootstrap: bootstrap_pb2.Bootstrap, stats: Stats) -> ClusterManager:
    """Every `static_resources.clusters[]`; raises ConfigError with the field path."""
    manager = ClusterManager(stats)
    manager.add_static(bootstrap)
    return manager
