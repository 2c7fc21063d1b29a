"""`/clusters` (text and `?format=json`) and the clusters part of `/config_dump`, in Envoy's
shapes: per cluster its circuit-breaker thresholds (DEFAULT and HIGH priority), whether CDS
added it, and per host the `cx_*`/`rq_*` numbers, health, weight and DNS name.

Every host has weight 1 and its active health-check flags; we accept no
`load_balancing_weight`, so that is what the load balancer uses.
"""

from __future__ import annotations

import re

from envoy.admin.v3 import clusters_pb2, config_dump_shared_pb2, metrics_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from google.protobuf import timestamp_pb2

from xds_proxy.upstream.host import (
    HOST_COUNTERS,
    HOST_GAUGES,
    PIPE_PORT,
    Host,
    host_address_text,
)
from xds_proxy.upstream.manager import ClusterManager

# Envoy's defaults for a priority's thresholds left unset.
_THRESHOLD_DEFAULTS = (
    ("max_connections", 1024),
    ("max_pending_requests", 1024),
    ("max_requests", 1024),
    ("max_retries", 3),
)
_PRIORITIES = ((base_pb2.DEFAULT, "default_priority"), (base_pb2.HIGH, "high_priority"))


def _thresholds(message: cluster_pb2.Cluster, priority: int) -> list[tuple[str, int]]:
    configured = next(
        (t for t in message.circuit_breakers.thresholds if t.priority == priority), None
    )
    values = []
    for name, default in _THRESHOLD_DEFAULTS:
        if configured is not None and configured.HasField(name):
            values.append((name, getattr(configured, name).value))
        else:
            values.append((name, default))
    return values


def _host_key(host: Host) -> str:
    return host_address_text(host.address)


def clusters_text(manager: ClusterManager) -> str:
    """Envoy's `/clusters` text: `name::field::value` lines, hosts as `name::ip:port::...`."""
    lines: list[str] = []
    for name, cluster in manager.clusters.items():
        message = manager.records[name].cluster()
        lines.append(f"{name}::observability_name::{name}")
        for priority, label in _PRIORITIES:
            for field, value in _thresholds(message, priority):
                lines.append(f"{name}::{label}::{field}::{value}")
        lines.append(f"{name}::added_via_api::{_added_via_api(manager, name)}".lower())
        for host in cluster.hosts:
            prefix = f"{name}::{_host_key(host)}::"
            stats = host.stats
            for stat in sorted(HOST_COUNTERS + HOST_GAUGES):
                lines.append(f"{prefix}{stat}::{getattr(stats, stat)}")
            lines += [
                f"{prefix}hostname::{host.hostname}",
                f"{prefix}health_flags::{host.health_flags()}",
                f"{prefix}weight::1",
                f"{prefix}region::",
                f"{prefix}zone::",
                f"{prefix}sub_zone::",
                f"{prefix}canary::false",
                f"{prefix}priority::0",
                f"{prefix}success_rate::-1",
                f"{prefix}local_origin_success_rate::-1",
            ]
    return "".join(line + "\n" for line in lines)


def clusters_message(manager: ClusterManager) -> clusters_pb2.Clusters:
    """`/clusters?format=json` as the `envoy.admin.v3.Clusters` message."""
    result = clusters_pb2.Clusters()
    for name, cluster in manager.clusters.items():
        status = result.cluster_statuses.add(
            name=name, observability_name=name, added_via_api=_added_via_api(manager, name)
        )
        message = manager.records[name].cluster()
        for priority, _ in _PRIORITIES:
            thresholds = status.circuit_breakers.thresholds.add(priority=priority)
            for field, value in _thresholds(message, priority):
                getattr(thresholds, field).value = value
        for host in cluster.hosts:  # the live hosts (resolved, for DNS clusters)
            _add_host(status, host)
    return result


def _add_host(status: clusters_pb2.ClusterStatus, host: Host) -> None:
    entry = status.host_statuses.add(weight=1, hostname=host.hostname)
    if host.address[1] == PIPE_PORT:
        entry.address.pipe.path = host.address[0]
    else:
        entry.address.socket_address.address = host.address[0]
        entry.address.socket_address.port_value = host.address[1]
    for stat in HOST_COUNTERS:
        entry.stats.add(name=stat, value=getattr(host.stats, stat))
    for stat in HOST_GAUGES:
        entry.stats.add(
            name=stat, value=getattr(host.stats, stat), type=metrics_pb2.SimpleMetric.GAUGE
        )
    entry.health_status.eds_health_status = health_check_pb2.HEALTHY
    entry.health_status.failed_active_health_check = host.failed_active_hc
    entry.health_status.failed_outlier_check = host.failed_outlier_check
    entry.health_status.pending_active_hc = host.pending_active_hc
    entry.health_status.active_hc_timeout = host.active_hc_timeout
    entry.locality.SetInParent()


def _added_via_api(manager: ClusterManager, name: str) -> bool:
    return name not in manager.static_names


def clusters_dump(
    manager: ClusterManager, version_info: str, name_regex: re.Pattern[str] | None = None
) -> config_dump_shared_pb2.ClustersConfigDump:
    """The `ClustersConfigDump` of `/config_dump`: static, CDS active, then CDS warming."""
    dump = config_dump_shared_pb2.ClustersConfigDump(version_info=version_info)
    for name, record in manager.records.items():
        if name_regex is not None and not name_regex.search(name):
            continue
        stamp = _stamp(record.last_updated)
        if name in manager.static_names:
            entry = dump.static_clusters.add(last_updated=stamp)
        else:
            entry = dump.dynamic_active_clusters.add(
                version_info=record.version_info, last_updated=stamp
            )
        entry.cluster.Pack(record.cluster())
    for name, (_, record) in manager.warming.items():
        if name_regex is None or name_regex.search(name):
            warming = dump.dynamic_warming_clusters.add(
                version_info=record.version_info, last_updated=_stamp(record.last_updated)
            )
            warming.cluster.Pack(record.cluster())
    return dump


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(int(seconds * 1000))
    return stamp
