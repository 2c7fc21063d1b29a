"""An ORIGINAL_DST cluster's settings (`original_dst_lb_config`, `cleanup_interval`) and the
checks Envoy makes of such a cluster, with Envoy's words. Pure; `config/cluster.py` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2

from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

DEFAULT_HEADER = "x-envoy-original-dst-host"
DEFAULT_CLEANUP_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class OriginalDstConfig:
    """Where a request's destination comes from: the header `header_name` (when
    `use_http_header`), else the downstream connection's restored local address; its port
    replaced by `port_override` when set. Hosts no connection uses are removed every
    `cleanup_interval_s`."""

    header_name: str | None = None
    port_override: int | None = None
    cleanup_interval_s: float = DEFAULT_CLEANUP_INTERVAL_S


def build_original_dst(cluster: cluster_pb2.Cluster, path: str) -> OriginalDstConfig | None:
    """The settings of an ORIGINAL_DST cluster, None for another type; ConfigError as Envoy."""
    provided = cluster.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    if cluster.type != cluster_pb2.Cluster.ORIGINAL_DST or cluster.HasField("cluster_type"):
        if provided:
            raise ConfigError(
                f"{path}: cluster manager: cluster provided LB specified but cluster "
                f"'{cluster.name}' did not provide one. Check cluster documentation."
            )
        return None
    if not provided:
        policy = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
        raise ConfigError(
            f"{path}: cluster: LB policy {policy} is not valid for Cluster type ORIGINAL_DST. "
            "Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'"
        )
    lb_config = cluster.original_dst_lb_config
    header_name = None
    if lb_config.use_http_header:
        header_name = (lb_config.http_header_name or DEFAULT_HEADER).lower()
    elif lb_config.http_header_name:
        raise ConfigError(
            f"{path}: ORIGINAL_DST cluster: invalid config "
            f"http_header_name={lb_config.http_header_name} and use_http_header is false. "
            "Set use_http_header to true if http_header_name is desired."
        )
    if cluster.HasField("load_assignment"):
        raise ConfigError(f"{path}: ORIGINAL_DST clusters must have no load assignment configured")
    cleanup = DEFAULT_CLEANUP_INTERVAL_S
    if cluster.HasField("cleanup_interval"):
        cleanup = duration_seconds(cluster.cleanup_interval)
    port_override = None
    if lb_config.HasField("upstream_port_override"):
        port_override = lb_config.upstream_port_override.value
    return OriginalDstConfig(header_name, port_override, cleanup)
