"""One upstream host and what the pools need of the cluster that owns it.

The pools (pool.py, http1_pool.py, http2_pool.py) and connect.py depend on this module only;
cluster.py creates the pools. So the cluster knows its pools and the pools know the cluster
only as a `PoolOwner`: its name, config, circuit-breaker resources and stats.
"""

from __future__ import annotations

from typing import Protocol

from xds_proxy.config.cluster import ClusterConfig, UpstreamProtocol
from xds_proxy.upstream.stats import ClusterStats
from xds_proxy.upstream.stream import RequestHead, ResponseHandler, UpstreamStream

# Envoy's host stats, counters first then gauges (the order of `/clusters?format=json`).
HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
HOST_STAT_NAMES = HOST_COUNTERS + HOST_GAUGES


class HostStats:
    """Envoy's per-host stats (`/clusters`): plain numbers, not in the stats store."""

    __slots__ = HOST_STAT_NAMES

    def __init__(self) -> None:
        for name in HOST_STAT_NAMES:
            setattr(self, name, 0)


class HostPool(Protocol):
    """A host's connection pool for one protocol, as the host and its cluster use it."""

    def new_stream(
        self, head: RequestHead, handler: ResponseHandler, end_stream: bool
    ) -> UpstreamStream: ...

    def retire(self) -> None: ...

    def close(self) -> None: ...


class Host:
    """One upstream address of a cluster; `hostname` is the DNS name it was resolved from."""

    __slots__ = (
        "active_requests",
        "address",
        "hostname",
        "last_connect_error",
        "pools",
        "stats",
    )

    def __init__(self, address: tuple[str, int], hostname: str = "") -> None:
        self.address = address
        self.hostname = hostname
        self.active_requests = 0
        # Why the latest connection attempt failed, as Envoy words it (access logs).
        self.last_connect_error: str | None = None
        # One pool per upstream protocol in use (two with `use_downstream_protocol_config`).
        self.pools: dict[UpstreamProtocol, HostPool] = {}
        self.stats = HostStats()

    def __repr__(self) -> str:
        return f"Host({self.address[0]}:{self.address[1]})"


class Resources:
    """Circuit-breaker accounting for one cluster (DEFAULT priority)."""

    __slots__ = ("connections", "pending", "requests")

    def __init__(self) -> None:
        self.connections = 0
        self.pending = 0
        self.requests = 0


class PoolOwner(Protocol):
    """What a pool reads of its cluster."""

    name: str
    config: ClusterConfig
    resources: Resources
    stats: ClusterStats
