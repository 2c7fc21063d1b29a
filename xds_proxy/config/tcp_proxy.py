"""`envoy.filters.network.tcp_proxy`'s config, translated once per filter chain (the
connections are tcp_proxy.py's)."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xds_proxy.config.access_log import AccessLogSpec, build_access_logs
from xds_proxy.config.values import duration_seconds
from xds_proxy.config.weighted import WeightedClusters

DEFAULT_IDLE_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class TcpProxySettings:
    stat_prefix: str
    clusters: WeightedClusters
    idle_timeout_s: float | None  # None: no idle timeout
    max_connect_attempts: int
    access_logs: tuple[AccessLogSpec, ...] = ()
    # `hash_policy` `source_ip`: the ring hash and Maglev balancers hash the client's IP.
    hash_source_ip: bool = False


def build_tcp_proxy_settings(
    message: tcp_proxy_pb2.TcpProxy, path: str = "tcp_proxy"
) -> TcpProxySettings:
    """Translate a TcpProxy that passed the PGV rules and the support table."""
    if message.WhichOneof("cluster_specifier") == "weighted_clusters":
        weighted = message.weighted_clusters.clusters
        clusters = WeightedClusters.of((entry.name, entry.weight) for entry in weighted)
    else:
        clusters = WeightedClusters.single(message.cluster)
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    if message.HasField("idle_timeout"):
        idle_timeout_s = duration_seconds(message.idle_timeout) or None
    attempts = 1
    if message.HasField("max_connect_attempts"):
        attempts = message.max_connect_attempts.value
    access_logs = build_access_logs(message.access_log, f"{path}.access_log")
    # Envoy reads the first policy only (the field allows at most one, PGV).
    hash_source_ip = bool(message.hash_policy) and message.hash_policy[0].HasField("source_ip")
    return TcpProxySettings(
        message.stat_prefix, clusters, idle_timeout_s, attempts, access_logs, hash_source_ip
    )
