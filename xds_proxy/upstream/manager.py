"""The cluster manager: every cluster by name, from the bootstrap and CDS.

Add/update/remove are by name and content, as for listeners: an update with an identical
`Cluster` changes nothing (connections and DNS state are kept); a changed one replaces the
cluster (the old one retires: its busy connections finish their streams, idle ones close).

A changed DNS cluster warms first, as in Envoy: the old version keeps serving until the new
one has its first DNS answer (`cluster_manager.warming_clusters`), so that a push never leaves
a route without hosts for the time of a lookup.

An EDS cluster (new or changed) warms until its first assignment or the end of its initial
fetch (xds/eds.py, reached through the `EndpointWatcher` port: `watch` when a version of the
cluster is built, `unwatch` when it retires, `flush` once a batch of changes is done); a
changed one's old version keeps serving its hosts meanwhile. `wait_warm()` lets the CDS
client end its initialisation only once the clusters of its first response are warm (Envoy's
init order CDS → EDS → LDS).

A cluster whose upstream TLS takes a secret from SDS warms until the secret store has it (or
gives up on it), as Envoy's; the cluster is the store's user of those names
(docs/secrets.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2

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
from xds_proxy.upstream.shared_health import DecidingHealth, FollowingHealth, version_key

log = logging.getLogger("xds_proxy.upstream")


class EndpointWatcher(Protocol):
    """The owner of EDS subscriptions (xds/eds.py), as the cluster manager uses it."""

    def watch(self, cluster: Cluster) -> None:
        """`cluster` (type EDS) wants the assignment its config names."""
        ...

    def unwatch(self, cluster: Cluster) -> None: ...

    def flush(self) -> None:
        """Send the subscription changes of the last batch."""
        ...

    def check_source(self, source: config_source_pb2.ConfigSource, path: str) -> None:
        """Raise ConfigError (`path...: reason`) if EDS cannot subscribe with `source`."""
        ...


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
        endpoints: EndpointWatcher | None = None,
    ) -> None:
        """`endpoints`: where EDS clusters get their assignments (None: EDS is refused)."""
        self.stats = stats
        self._rng = rng
        self._resolve = resolve  # tests inject a resolver; None: the system's
        self._endpoints = endpoints
        self.clusters: dict[str, Cluster] = {}
        self.records: dict[str, ClusterRecord] = {}
        # Replacements waiting for their first DNS answer; the old version serves meanwhile.
        self.warming: dict[str, tuple[Cluster, ClusterRecord]] = {}
        self._warming_tasks: dict[str, asyncio.Task] = {}  # by cluster name
        self.static_names: set[str] = set()
        self._started = False
        self._active_gauge = stats.gauge("cluster_manager.active_clusters")
        self._added = stats.counter("cluster_manager.cluster_added")
        self._modified = stats.counter("cluster_manager.cluster_modified")
        self._removed = stats.counter("cluster_manager.cluster_removed")
        self._warming_gauge = stats.gauge("cluster_manager.warming_clusters")
        self._none_warming = asyncio.Event()  # set whenever no cluster warms
        self.secrets: SecretWatches | None = None  # the secret store (set by the server)
        # Who decides host health (upstream/shared_health.py): this process, and its workers
        # follow (`--concurrency N`); or, in a worker, the main process (`follow_main`).
        self.health: DecidingHealth | FollowingHealth = DecidingHealth()
        self._health_keys: dict[Cluster, str] = {}  # clusters checked or with outlier detection
        # A worker: the EDS clusters whose fetch the main process ended without an assignment.
        self._fetches_over: set[str] = set()

    def follow_main(self, send: Callable[[dict], None]) -> FollowingHealth:
        """A worker (before any cluster is built): host health is the main process's, which
        gets this process's request results through `send`."""
        self.health = FollowingHealth(send)
        return self.health

    def follow(self, message: dict) -> None:
        """A worker: a message of the main process (workers/channel.py, *events*)."""
        ended = message.get("eds_fetch_over")
        if ended is not None:
            self._end_fetches(set(ended))
        if isinstance(self.health, FollowingHealth):
            self.health.follow(message)

    def _end_fetches(self, names: set[str]) -> None:
        """The main process's EDS clusters `names` ended their initial fetch without an
        assignment: ours end theirs (now, or when they are built)."""
        self._fetches_over = names
        for cluster in [*self.clusters.values(), *(c for c, _ in self.warming.values())]:
            if cluster.name in names:
                cluster.initial_fetch_over()

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
        if config.eds is not None:
            if self._endpoints is None:
                raise ConfigError(f"{path}.type: EDS clusters need an EDS subscription")
            # As Envoy: a source it cannot subscribe with rejects the cluster now.
            self._endpoints.check_source(config.eds.source, f"{path}.eds_cluster_config.eds_config")
        self._use_secrets(config)
        new = self._build(config, key)
        record = ClusterRecord(key, version_info, time.time())
        old = self.clusters.get(name)
        if static:
            self.static_names.add(name)
        if old is not None:
            self._modified.inc()
        else:
            self._added.inc()
        if config.eds is not None:
            assert self._endpoints is not None
            self._endpoints.watch(new)  # a held assignment is applied at once
            if name in self._fetches_over:
                new.initial_fetch_over()
        if warming is not None:  # a newer version replaces the one still warming
            self._retire(warming[0])
            del self.warming[name]
            self._cancel_warming_task(name)
        tls = config.tls
        if tls is not None and tls.sds_names and tls.context is None:
            # As Envoy: it warms until its secrets arrive (or fail: NACK, timeout); the old
            # version, if any, serves meanwhile.
            self.warming[name] = (new, record)
            tls.on_settled = functools.partial(self._secrets_settled, new)
        else:
            self._place(new, record)
        self._warming_changed()
        return True

    def _build(self, config: ClusterConfig, message: bytes) -> Cluster:
        """A cluster whose hosts' health `self.health` decides or follows; an ORIGINAL_DST
        cluster's hosts are made by each process for its own requests, so each decides
        for itself."""
        decided = config.health_checks or config.outlier_detection is not None
        if not decided or config.original_dst is not None:
            return Cluster(config, self.stats, self._rng, self._resolve)
        key = version_key(config.name, message)
        new = Cluster(config, self.stats, self._rng, self._resolve, self.health.role(key))
        self.health.built(key, lambda: new.hosts)
        self._health_keys[new] = key
        return new

    def _secrets_settled(self, new: Cluster) -> None:
        warming = self.warming.get(new.name)
        if warming is None or warming[0] is not new:
            return  # replaced or removed meanwhile
        del self.warming[new.name]
        self._place(new, warming[1])
        self._warming_changed()

    def _place(self, new: Cluster, record: ClusterRecord) -> None:
        """Activate `new`, or warm it: a changed DNS cluster until its first answer, an EDS
        cluster until its first assignment (or the end of its initial fetch)."""
        name = new.name
        old = self.clusters.get(name)
        warms = old is not None or new.config.eds is not None
        if warms and new.resolved is not None and self._started:
            self.warming[name] = (new, record)
            new.start()
            task = asyncio.get_running_loop().create_task(self._activate_when_resolved(new))
            self._warming_tasks[name] = task
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
            self._retire(old)
        self._active_gauge.set(len(self.clusters))

    def _retire(self, cluster: Cluster) -> None:
        cluster.retire()
        key = self._health_keys.pop(cluster, None)
        if key is not None:
            self.health.retired(key)
        if cluster.config.eds is not None and self._endpoints is not None:
            self._endpoints.unwatch(cluster)

    def _cancel_warming_task(self, name: str) -> None:
        task = self._warming_tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _activate_when_resolved(self, new: Cluster) -> None:
        assert new.resolved is not None
        await new.resolved.wait()  # set after the first lookup (answered or failed), EDS's
        warming = self.warming.get(new.name)  # first assignment or the end of its fetch
        if warming is None or warming[0] is not new:
            return  # replaced or removed meanwhile
        del self.warming[new.name]
        self._warming_tasks.pop(new.name, None)
        self._activate(new, warming[1])
        self._warming_changed()

    def _warming_changed(self) -> None:
        self._warming_gauge.set(len(self.warming))
        if not self.warming:
            self._none_warming.set()

    async def wait_warm(self) -> None:
        """Until no cluster warms (on DNS, EDS or its secrets): each became active, or was
        replaced or removed."""
        while self.warming:
            self._none_warming.clear()
            await self._none_warming.wait()

    def _static_eds(self) -> list[Cluster]:
        """The bootstrap's EDS clusters that have no hosts yet (nor ended their fetch)."""
        return [
            cluster
            for name, cluster in self.clusters.items()
            if name in self.static_names
            and cluster.resolved is not None
            and not cluster.resolved.is_set()
            and cluster.config.eds is not None
        ]

    def static_warming(self) -> bool:
        return bool(self._static_eds())

    async def wait_static_warm(self) -> None:
        """Until the bootstrap's EDS clusters are warm (first assignment or the end of the
        initial fetch)."""
        events = [cluster.resolved.wait() for cluster in self._static_eds()]  # type: ignore[union-attr]
        if events:
            await asyncio.gather(*events)

    def flush_watches(self) -> None:
        """A batch of changes is done: EDS sends its new subscriptions."""
        if self._endpoints is not None:
            self._endpoints.flush()

    def remove(self, name: str) -> bool:
        if name in self.static_names:
            return False
        warming = self.warming.pop(name, None)
        if warming is not None:
            self._retire(warming[0])
            self._cancel_warming_task(name)
            self._warming_changed()
        if self.secrets is not None:
            self.secrets.unwatch(("cluster", name))
            self.secrets.flush()
        cluster = self.clusters.pop(name, None)
        self.records.pop(name, None)
        if cluster is None:
            if warming is not None:  # a new cluster removed while it warmed
                self._removed.inc()
            return warming is not None
        self._retire(cluster)
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
        for task in self._warming_tasks.values():
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
