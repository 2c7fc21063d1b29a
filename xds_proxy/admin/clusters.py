"""`/clusters` (text and `?format=json`) and the clusters part of `/config_dump`, in Envoy's
shapes: per cluster its circuit-breaker thresholds (DEFAULT and HIGH priority), whether CDS
added it, its EDS service name, and per host the `cx_*`/`rq_*` numbers, health flags (active
checks, outlier detection, EDS health), weight, priority, locality and hostname. Also the
`EndpointsConfigDump` of `/config_dump?include_eds`: every cluster's hosts as the
ClusterLoadAssignment Envoy rebuilds from them (static clusters, then the others).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from envoy.admin.v3 import clusters_pb2, config_dump_shared_pb2, metrics_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import timestamp_pb2

from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.host import (
    HOST_COUNTERS,
    HOST_GAUGES,
    HOST_STAT_NAMES,
    PIPE_PORT,
    Host,
    host_address_text,
)
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.upstream.priority import is_degraded, is_healthy

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


# What other processes counted per host (`--concurrency N`: the workers, added up): cluster ->
# host address -> values in HOST_STAT_NAMES order, added to the host's own stats.
ExtraCounts = Mapping[str, Mapping[str, Sequence[int]]]


def _host_values(host: Host, extra: Sequence[int] | None) -> dict[str, int]:
    values = {stat: getattr(host.stats, stat) for stat in HOST_STAT_NAMES}
    if extra is not None:
        for stat, more in zip(HOST_STAT_NAMES, extra, strict=True):
            values[stat] += more
    return values


def clusters_text(manager: ClusterManager, extra: ExtraCounts | None = None) -> str:
    """Envoy's `/clusters` text: `name::field::value` lines, hosts as `name::ip:port::...`."""
    extra = extra or {}
    lines: list[str] = []
    for name, cluster in manager.clusters.items():
        counted = extra.get(name, {})
        message = manager.records[name].cluster()
        lines.append(f"{name}::observability_name::{name}")
        for priority, label in _PRIORITIES:
            for field, value in _thresholds(message, priority):
                lines.append(f"{name}::{label}::{field}::{value}")
        lines.append(f"{name}::added_via_api::{str(_added_via_api(manager, name)).lower()}")
        if cluster.config.eds is not None:
            lines.append(f"{name}::eds_service_name::{cluster.config.eds.service_name}")
        for host in cluster.hosts:
            key = _host_key(host)
            prefix = f"{name}::{key}::"
            values = _host_values(host, counted.get(key))
            for stat in sorted(HOST_STAT_NAMES):
                lines.append(f"{prefix}{stat}::{values[stat]}")
            lines += [
                f"{prefix}hostname::{host.hostname}",
                f"{prefix}health_flags::{host.health_flags()}",
                f"{prefix}weight::{host.weight}",
                f"{prefix}region::{host.locality.region}",
                f"{prefix}zone::{host.locality.zone}",
                f"{prefix}sub_zone::{host.locality.sub_zone}",
                f"{prefix}canary::false",
                f"{prefix}priority::{host.priority}",
                f"{prefix}success_rate::-1",
                f"{prefix}local_origin_success_rate::-1",
            ]
    return "".join(line + "\n" for line in lines)


def clusters_message(
    manager: ClusterManager, extra: ExtraCounts | None = None
) -> clusters_pb2.Clusters:
    """`/clusters?format=json` as the `envoy.admin.v3.Clusters` message."""
    extra = extra or {}
    result = clusters_pb2.Clusters()
    for name, cluster in manager.clusters.items():
        counted = extra.get(name, {})
        status = result.cluster_statuses.add(
            name=name, observability_name=name, added_via_api=_added_via_api(manager, name)
        )
        message = manager.records[name].cluster()
        for priority, _ in _PRIORITIES:
            thresholds = status.circuit_breakers.thresholds.add(priority=priority)
            for field, value in _thresholds(message, priority):
                getattr(thresholds, field).value = value
        for host in cluster.hosts:  # the live hosts (resolved, for DNS clusters)
            _add_host(status, host, _host_values(host, counted.get(_host_key(host))))
        if cluster.config.eds is not None:
            status.eds_service_name = cluster.config.eds.service_name
    return result


def _add_host(status: clusters_pb2.ClusterStatus, host: Host, values: dict[str, int]) -> None:
    entry = status.host_statuses.add(
        weight=host.weight, hostname=host.hostname, priority=host.priority
    )
    if host.address[1] == PIPE_PORT:
        entry.address.pipe.path = host.address[0]
    else:
        entry.address.socket_address.address = host.address[0]
        entry.address.socket_address.port_value = host.address[1]
    for stat in HOST_COUNTERS:
        entry.stats.add(name=stat, value=values[stat])
    for stat in HOST_GAUGES:
        entry.stats.add(name=stat, value=values[stat], type=metrics_pb2.SimpleMetric.GAUGE)
    entry.health_status.eds_health_status = host.eds_health or health_check_pb2.HEALTHY
    entry.health_status.failed_active_health_check = host.failed_active_hc
    entry.health_status.failed_outlier_check = host.failed_outlier_check
    entry.health_status.pending_dynamic_removal = host.pending_dynamic_removal
    entry.health_status.pending_active_hc = host.pending_active_hc
    entry.health_status.active_hc_timeout = host.active_hc_timeout
    entry.locality.SetInParent()
    entry.locality.region = host.locality.region
    entry.locality.zone = host.locality.zone
    entry.locality.sub_zone = host.locality.sub_zone


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


def endpoints_dump(
    manager: ClusterManager, name_regex: re.Pattern[str] | None = None
) -> config_dump_shared_pb2.EndpointsConfigDump:
    """`EndpointsConfigDump`: each active cluster's hosts, static clusters first."""
    dump = config_dump_shared_pb2.EndpointsConfigDump()
    for static in (True, False):
        for name, cluster in manager.clusters.items():
            if (name in manager.static_names) != static:
                continue
            if name_regex is not None and not name_regex.search(name):
                continue
            held = dump.static_endpoint_configs if static else dump.dynamic_endpoint_configs
            held.add().endpoint_config.Pack(_assignment_of(cluster))
    return dump


def _assignment_of(cluster: Cluster) -> endpoint_pb2.ClusterLoadAssignment:
    """The hosts as Envoy shows them: grouped by priority and locality, each host's coarse
    health, weight and (empty) health check config."""
    eds = cluster.config.eds
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=eds.service_name if eds is not None else cluster.name
    )
    groups: dict[tuple, endpoint_pb2.LocalityLbEndpoints] = {}
    for host in cluster.hosts:
        key = (host.priority, host.locality)
        group = groups.get(key)
        if group is None:
            group = groups[key] = assignment.endpoints.add(priority=host.priority)
            group.locality.SetInParent()
            group.locality.region = host.locality.region
            group.locality.zone = host.locality.zone
            group.locality.sub_zone = host.locality.sub_zone
            group.load_balancing_weight.value = cluster.locality_weight(
                host.priority, host.locality
            )
        lb_endpoint = group.lb_endpoints.add()
        lb_endpoint.endpoint.address.socket_address.address = host.address[0]
        lb_endpoint.endpoint.address.socket_address.port_value = host.address[1]
        lb_endpoint.endpoint.health_check_config.SetInParent()
        lb_endpoint.endpoint.health_check_config.port_value = host.health_check_port
        if host.hostname and cluster.config.eds is not None:
            lb_endpoint.endpoint.hostname = host.hostname
        lb_endpoint.load_balancing_weight.value = host.weight
        if is_healthy(host):
            lb_endpoint.health_status = health_check_pb2.HEALTHY
        elif is_degraded(host):
            lb_endpoint.health_status = health_check_pb2.DEGRADED
        else:
            lb_endpoint.health_status = health_check_pb2.UNHEALTHY
    assignment.policy.overprovisioning_factor.value = cluster.overprovisioning_factor
    return assignment
