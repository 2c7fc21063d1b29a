"""The cluster manager: every cluster by name, from the bootstrap and CDS.

Add/update/remove are by name and content, as for listeners: an update with an identical
`Cluster` changes nothing (connections and DNS state are kept); a changed one replaces the
cluster (the old one retires: its busy connections finish their streams, idle ones close).

A changed DNS cluster warms first, as in Envoy: the old version keeps serving until the new
one has its first DNS answer (`cluster_manager.warming_clusters`), so that a push never leaves
a route without hosts for the time of a lookup. A cluster whose upstream TLS takes a secret
from SDS warms until the secret store has it (or gives up on it), as Envoy's; the cluster is
the store's user of those names (docs/secrets.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2

from xds_proxy.config.cluster import (
    ClusterConfig,
    DnsFamily,
    EndpointAddress,
    build_cluster_config,
)
from xds_proxy.config.tls import SecretWatches
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster

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
    def __init__(
        self,
        stats: Stats,
        rng: random.Random | None = None,
        resolve: Callable[[EndpointAddress, DnsFamily], Awaitable] | None = None,
    ) -> None:
        self.stats = stats
        self._rng = rng
        self._resolve = resolve  # tests inject a resolver; None: the system's
        self.clusters: dict[str, Cluster] = {}
        self.records: dict[str, ClusterRecord] = {}
        # Replacements waiting for their first DNS answer; the old version serves meanwhile.
        self.warming: dict[str, tuple[Cluster, ClusterRecord]] = {}
        self._warming_tasks: set[asyncio.Task] = set()
        self.static_names: set[str] = set()
        self._started = False
        self._active_gauge = stats.gauge("cluster_manager.active_clusters")
        self._added = stats.counter("cluster_manager.cluster_added")
        self._modified = stats.counter("cluster_manager.cluster_modified")
        self._removed = stats.counter("cluster_manager.cluster_removed")
        self._warming_gauge = stats.gauge("cluster_manager.warming_clusters")
        self.secrets: SecretWatches | None = None  # the secret store (set by the server)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def known(self, name: str) -> bool:
        """Active or warming: what a route's `validate_clusters` accepts (as Envoy's)."""
        return name in self.clusters or name in self.warming

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
        warming = self.warming.get(name)
        held = warming[1] if warming is not None else self.records.get(name)
        if held is not None and held.message == key:
            return False
        if name in self.static_names and not static:
            raise ConfigError(f"{path}.name: '{name}' is a static cluster and cannot be updated")
        config = build_cluster_config(cluster, path)
        self._use_secrets(config)
        new = Cluster(config, self.stats, self._rng, self._resolve)
        record = ClusterRecord(key, version_info, time.time())
        old = self.clusters.get(name)
        if static:
            self.static_names.add(name)
        if old is not None:
            self._modified.inc()
        else:
            self._added.inc()
        if warming is not None:  # a newer version replaces the one still warming
            warming[0].retire()
            del self.warming[name]
        tls = config.tls
        if tls is not None and tls.sds_names and tls.context is None:
            # As Envoy: it warms until its secrets arrive (or fail: NACK, timeout); the old
            # version, if any, serves meanwhile.
            self.warming[name] = (new, record)
            tls.on_settled = functools.partial(self._secrets_settled, new)
        else:
            self._place(new, record)
        self._warming_gauge.set(len(self.warming))
        return True

    def _secrets_settled(self, new: Cluster) -> None:
        warming = self.warming.get(new.name)
        if warming is None or warming[0] is not new:
            return  # replaced or removed meanwhile
        del self.warming[new.name]
        self._place(new, warming[1])
        self._warming_gauge.set(len(self.warming))

    def _place(self, new: Cluster, record: ClusterRecord) -> None:
        """Activate `new`, or (a changed DNS cluster) warm it until its first answer."""
        name = new.name
        old = self.clusters.get(name)
        if old is not None and new.resolved is not None and self._started:
            self.warming[name] = (new, record)
            new.start()
            task = asyncio.get_running_loop().create_task(self._activate_when_resolved(new))
            self._warming_tasks.add(task)
            task.add_done_callback(self._warming_tasks.discard)
        else:
            self._activate(new, record)
            if self._started:
                new.start()

    def _use_secrets(self, config: ClusterConfig) -> None:
        """A cluster's TLS secrets: static ones now (ConfigError if unknown), SDS ones
        subscribed (the cluster is the user); a new copy is used by its next connection."""
        tls = config.tls
        if tls is None or not tls.common.refs:
            return
        if self.secrets is None:
            raise ConfigError("transport_socket: TLS secrets need the secret store")
        tls.bind(self.secrets)
        prefix = f"cluster.{config.name}.client_ssl_socket_factory."
        self.stats.counter(prefix + "downstream_context_secrets_not_ready")  # Envoy lists it
        updates = self.stats.counter(prefix + "ssl_context_update_by_sds")
        not_ready = self.stats.counter(prefix + "upstream_context_secrets_not_ready")
        tls.on_update = updates.inc
        tls.on_not_ready = not_ready.inc
        user = ("cluster", config.name)
        self.secrets.unwatch(user)
        self.secrets.watch(user, tuple(sorted(tls.sds_names)))
        self.secrets.flush()

    def _activate(self, new: Cluster, record: ClusterRecord) -> None:
        old = self.clusters.get(new.name)
        self.clusters[new.name] = new
        self.records[new.name] = record
        if old is not None:
            old.retire()
        self._active_gauge.set(len(self.clusters))

    async def _activate_when_resolved(self, new: Cluster) -> None:
        assert new.resolved is not None
        await new.resolved.wait()  # set after the first lookup, answered or failed
        warming = self.warming.get(new.name)
        if warming is None or warming[0] is not new:
            return  # replaced or removed meanwhile
        del self.warming[new.name]
        self._activate(new, warming[1])
        self._warming_gauge.set(len(self.warming))

    def remove(self, name: str) -> bool:
        if name in self.static_names:
            return False
        warming = self.warming.pop(name, None)
        if warming is not None:
            warming[0].retire()
            self._warming_gauge.set(len(self.warming))
        if self.secrets is not None:
            self.secrets.unwatch(("cluster", name))
            self.secrets.flush()
        cluster = self.clusters.pop(name, None)
        self.records.pop(name, None)
        if cluster is None:
            return warming is not None
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
        for task in self._warming_tasks:
            task.cancel()
        for cluster, _ in self.warming.values():
            cluster.close()
        for cluster in self.clusters.values():
            cluster.close()


def build_cluster_manager(bootstrap: bootstrap_pb2.Bootstrap, stats: Stats) -> ClusterManager:
    """Every `static_resources.clusters[]`; raises ConfigError with the field path."""
    manager = ClusterManager(stats)
    manager.add_static(bootstrap)
    return manager
