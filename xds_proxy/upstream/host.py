"""One upstream host and what the pools need of the cluster that owns it.

The pools (pool.py, http1_pool.py, http2_pool.py) and connect.py depend on this module only;
cluster.py creates the pools. So the cluster knows its pools and the pools know the cluster
only as a `PoolOwner`: its name, config, circuit-breaker resources and stats.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from xds_proxy.config.cluster import ClusterConfig
from xds_proxy.config.endpoints import (
    DEGRADED_EDS_HEALTH,
    FAILED_EDS_HEALTH,
    NO_LOCALITY,
    PIPE_PORT,
    Locality,
)
from xds_proxy.upstream.stats import ClusterStats
from xds_proxy.upstream.stream import RequestHead, ResponseHandler, UpstreamStream

# Envoy's host stats, counters first then gauges (the order of `/clusters?format=json`).
HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
HOST_STAT_NAMES = HOST_COUNTERS + HOST_GAUGES


def host_address_text(address: tuple[str, int]) -> str:
    """As Envoy prints a host's address: `ip:port`, `[ip6]:port`, or a pipe's path (a host
    on a UNIX socket has the address (path, PIPE_PORT))."""
    ip, port = address
    if port == PIPE_PORT:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
    """One upstream address of a cluster; `hostname` is the DNS name it was resolved from (or
    the endpoint's `hostname`). Its weight, priority, locality and EDS health come from its
    `lb_endpoint` (config/endpoints.py)."""

    __slots__ = (
        "active_hc_timeout",
        "active_requests",
        "address",
        "eds_health",
        "failed_active_hc",
        "failed_outlier_check",
        "health_check_port",
        "hostname",
        "last_connect_error",
        "locality",
        "pending_active_hc",
        "pending_dynamic_removal",
        "pools",
        "priority",
        "stats",
        "weight",
    )

    def __init__(
        self,
        address: tuple[str, int],
        hostname: str = "",
        health_checked: bool = False,
        weight: int = 1,
    ) -> None:
        self.address = address
        self.hostname = hostname
        self.weight = weight  # `load_balancing_weight` (1 when unset, as Envoy)
        self.priority = 0
        self.locality: Locality = NO_LOCALITY
        self.eds_health = 0  # the endpoint's `health_status` (UNKNOWN)
        self.health_check_port = 0  # `health_check_config.port_value`; 0: the host's port
        # Gone from the assignment but still passing active health checks: kept until it fails.
        self.pending_dynamic_removal = False
        self.active_requests = 0
        # Envoy's active health-check flags: a checked host starts failed and pending.
        self.failed_active_hc = health_checked
        self.pending_active_hc = health_checked
        self.active_hc_timeout = False
        self.failed_outlier_check = False  # ejected by outlier detection
        # Why the latest connection attempt failed, as Envoy words it (access logs).
        self.last_connect_error: str | None = None
        # One pool per upstream protocol in use (two with `use_downstream_protocol_config`),
        # by HTTP major version (1 or 2).
        self.pools: dict[int, HostPool] = {}
        self.stats = HostStats()

    def __repr__(self) -> str:
        return f"Host({host_address_text(self.address)})"

    @property
    def failed_eds_health(self) -> bool:
        return self.eds_health in FAILED_EDS_HEALTH

    @property
    def degraded_eds_health(self) -> bool:
        return self.eds_health in DEGRADED_EDS_HEALTH

    def health_flags(self) -> str:
        """Envoy's `/clusters` health_flags: `healthy`, or each flag set after a slash."""
        flags = [
            name
            for name, is_set in (
                ("failed_active_hc", self.failed_active_hc),
                ("failed_outlier_check", self.failed_outlier_check),
                ("failed_eds_health", self.failed_eds_health),
                ("degraded_eds_health", self.degraded_eds_health),
                ("pending_dynamic_removal", self.pending_dynamic_removal),
                ("pending_active_hc", self.pending_active_hc),
                ("active_hc_timeout", self.active_hc_timeout),
            )
            if is_set
        ]
        return "".join("/" + flag for flag in flags) if flags else "healthy"


# A host's health as one process decides it for all (`--concurrency N`: the main process runs
# the active checks and the outlier detector; the workers follow): one int of these bits.
FAILED_ACTIVE_HC = 1
PENDING_ACTIVE_HC = 2
ACTIVE_HC_TIMEOUT = 4
FAILED_OUTLIER_CHECK = 8
ACTIVE_HC_BITS = FAILED_ACTIVE_HC | PENDING_ACTIVE_HC | ACTIVE_HC_TIMEOUT

# Decided health per host address (as `/clusters` prints it).
DecidedHealth = Mapping[str, int]


def decided_health(host: Host) -> int:
    """The host's health flags that the main process decides, as bits."""
    return (
        (FAILED_ACTIVE_HC if host.failed_active_hc else 0)
        | (PENDING_ACTIVE_HC if host.pending_active_hc else 0)
        | (ACTIVE_HC_TIMEOUT if host.active_hc_timeout else 0)
        | (FAILED_OUTLIER_CHECK if host.failed_outlier_check else 0)
    )


class HealthRole(Protocol):
    """Who decides a cluster's host health (upstream/manager.py): this process (active checks,
    outlier detection), or, in a worker of `--concurrency N`, the main process. The cluster
    builds its checker and detector through it, with the arguments of
    upstream/health_check.py `HealthChecker` and upstream/outlier.py `OutlierDetector`."""

    def checker(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        tls: Any,
        had_traffic: Callable[[], bool],
        on_change: Callable[[], None],
        rng: random.Random,
        on_healthy_check: Callable[[Host], None],
    ) -> Any: ...

    def detector(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        on_change: Callable[[], None],
        rng: random.Random,
    ) -> Any: ...


class Resources:
    """Circuit-breaker accounting for one cluster (DEFAULT priority)."""

    __slots__ = ("connections", "pending", "requests", "retries")

    def __init__(self) -> None:
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0  # retries pending or under way (upstream/retry.py)


class PoolOwner(Protocol):
    """What a pool reads of its cluster."""

    name: str
    config: ClusterConfig
    resources: Resources
    stats: ClusterStats
