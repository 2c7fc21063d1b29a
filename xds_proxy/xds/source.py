"""Where the LDS (and CDS) subscription connects: read from the bootstrap, checked with
field paths.

Two shapes are supported, as in Envoy, each state of the world (`GRPC`) or Delta
(`DELTA_GRPC`):
- `lds_config.api_config_source {api_type, grpc_services[0].envoy_grpc.cluster_name}`:
  `ListenerDiscoveryService.StreamListeners` / `DeltaListeners`;
- `lds_config.ads {}` with `dynamic_resources.ads_config {api_type, ...}`:
  `AggregatedDiscoveryService.StreamAggregatedResources` / `DeltaAggregatedResources`.
The named cluster must be a static cluster of the bootstrap with a `load_assignment`
endpoint; STRICT_DNS/LOGICAL_DNS hosts are resolved by gRPC through the `host:port` target.
Its `transport_socket` (`envoy.transport_sockets.tls`) makes the channel TLS or mTLS
(`xds.tls`).

A third shape is Envoy's REST polling (`api_type: REST`, `xds.rest`): `api_config_source
{api_type: REST, cluster_names: [one static cluster], refresh_delay (required),
request_timeout (default 1 s)}`, plain HTTP/1.1 to that cluster's first endpoint. There is no
ADS over REST: every type polls on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2

from xds_proxy.errors import ConfigError
from xds_proxy.xds.backoff import BASE_INTERVAL_MS, MAX_INTERVAL_MS
from xds_proxy.xds.tls import ChannelTls, channel_tls

DEFAULT_INITIAL_FETCH_TIMEOUT_S = 15.0
DEFAULT_REST_REQUEST_TIMEOUT_S = 1.0  # Envoy's default `request_timeout`
_DYN = "dynamic_resources"
_API = config_source_pb2.ApiConfigSource
_SUPPORTED_DISCOVERY = {
    cluster_pb2.Cluster.STATIC,
    cluster_pb2.Cluster.STRICT_DNS,
    cluster_pb2.Cluster.LOGICAL_DNS,
}


@dataclass(frozen=True, slots=True)
class RestPolling:
    """How a REST subscription polls (`api_type: REST`)."""

    host: str  # the cluster's first endpoint (an IP or a name to resolve)
    port: int
    refresh_delay_s: float  # the next poll goes out this long (plus jitter) after each answer
    request_timeout_s: float  # a poll not answered in full by then is a failed fetch


@dataclass(frozen=True, slots=True)
class XdsServer:
    """One gRPC xDS server as the LDS client needs it."""

    aggregated: bool  # True: ADS StreamAggregatedResources; False: LDS StreamListeners
    delta: bool  # True: the Delta variant of either (DELTA_GRPC)
    cluster_name: str
    target: str  # gRPC channel target, "host:port" ("[v6]:port")
    authority: str  # Envoy sends the cluster name as :authority unless configured
    initial_metadata: tuple[tuple[str, str], ...]
    initial_fetch_timeout_s: float | None  # None: wait forever
    node_on_first_request_only: bool
    tls: ChannelTls | None = None  # None: plaintext
    # The stream's reconnect back-off: base and cap of the jittered interval (Envoy's
    # defaults, or `envoy_grpc.retry_policy.retry_back_off`).
    backoff_ms: tuple[int, int] = (BASE_INTERVAL_MS, MAX_INTERVAL_MS)
    rest: RestPolling | None = None  # set: Envoy's REST polling instead of a gRPC stream


def lds_configured(bootstrap: bootstrap_pb2.Bootstrap) -> bool:
    return bootstrap.HasField(_DYN) and bootstrap.dynamic_resources.HasField("lds_config")


def cds_configured(bootstrap: bootstrap_pb2.Bootstrap) -> bool:
    return bootstrap.HasField(_DYN) and bootstrap.dynamic_resources.HasField("cds_config")


def lds_server(bootstrap: bootstrap_pb2.Bootstrap) -> XdsServer:
    """The LDS server of `bootstrap`; raises ConfigError (`FIELD_PATH: reason`)."""
    return config_server(bootstrap, "lds_config")


def cds_server(bootstrap: bootstrap_pb2.Bootstrap) -> XdsServer:
    """The CDS server of `bootstrap`; raises ConfigError (`FIELD_PATH: reason`)."""
    return config_server(bootstrap, "cds_config")


def config_server(bootstrap: bootstrap_pb2.Bootstrap, source_field: str) -> XdsServer:
    """The server of `dynamic_resources.<source_field>` (a ConfigSource)."""
    source = getattr(bootstrap.dynamic_resources, source_field)
    return source_server(bootstrap, source, f"{_DYN}.{source_field}")


# A worker process (`--concurrency` > 1) has one control plane whatever its configs name:
# the main process's relay (xds_proxy/workers/relay.py), over ADS.
_worker_relay: XdsServer | None = None


def use_worker_relay(path: str, worker_index: int) -> None:
    """From now on every ConfigSource means the relay on the UNIX socket at `path` (each
    stream says which worker it comes from)."""
    global _worker_relay
    _worker_relay = XdsServer(
        aggregated=True,
        delta=False,
        cluster_name="xds_proxy_main",
        target=f"unix:{path}",
        authority="xds_proxy_main",
        initial_metadata=(("xds-proxy-worker", str(worker_index)),),
        initial_fetch_timeout_s=DEFAULT_INITIAL_FETCH_TIMEOUT_S,
        node_on_first_request_only=False,
        backoff_ms=(50, 500),  # the main process is local: reconnect soon
    )


def source_server(
    bootstrap: bootstrap_pb2.Bootstrap, source: config_source_pb2.ConfigSource, path: str
) -> XdsServer:
    """The server a ConfigSource at `path` names (the bootstrap's ADS, or a static cluster)."""
    if _worker_relay is not None:
        return replace(_worker_relay, initial_fetch_timeout_s=_initial_fetch_timeout_s(source))
    kind = source.WhichOneof("config_source_specifier")
    if kind == "ads":
        if not bootstrap.dynamic_resources.HasField("ads_config"):
            raise ConfigError(f"{_DYN}.ads_config: required when {path}.ads is set")
        api, api_path = bootstrap.dynamic_resources.ads_config, f"{_DYN}.ads_config"
        aggregated = True
    elif kind == "api_config_source":
        api, api_path, aggregated = source.api_config_source, f"{path}.api_config_source", False
    elif kind is None:
        raise ConfigError(f"{path}: one of ads or api_config_source is required")
    else:
        raise ConfigError(f"{path}.{kind}: not supported")
    initial_fetch_timeout_s = _initial_fetch_timeout_s(source)
    if not aggregated and api.api_type == _API.REST:
        return _rest_server(bootstrap, api, api_path, initial_fetch_timeout_s)
    delta = _check_api_type(api, api_path, aggregated)
    if len(api.grpc_services) != 1:
        raise ConfigError(f"{api_path}.grpc_services: exactly one gRPC service is supported")
    service = api.grpc_services[0]
    service_path = f"{api_path}.grpc_services[0]"
    if not service.HasField("envoy_grpc"):
        raise ConfigError(f"{service_path}.envoy_grpc: required (google_grpc is not supported)")
    cluster_name = service.envoy_grpc.cluster_name
    target, tls = _cluster_target(
        bootstrap, cluster_name, f"{service_path}.envoy_grpc.cluster_name"
    )
    return XdsServer(
        aggregated=aggregated,
        delta=delta,
        cluster_name=cluster_name,
        target=target,
        authority=service.envoy_grpc.authority or cluster_name,
        initial_metadata=tuple((h.key.lower(), h.value) for h in service.initial_metadata),
        initial_fetch_timeout_s=initial_fetch_timeout_s,
        node_on_first_request_only=api.set_node_on_first_message_only,
        tls=tls,
        backoff_ms=stream_backoff_ms(service.envoy_grpc, f"{service_path}.envoy_grpc"),
    )


def _initial_fetch_timeout_s(source: config_source_pb2.ConfigSource) -> float | None:
    timeout_s = DEFAULT_INITIAL_FETCH_TIMEOUT_S
    if source.HasField("initial_fetch_timeout"):
        timeout_s = source.initial_fetch_timeout.ToNanoseconds() / 1e9
    return timeout_s if timeout_s > 0 else None


def stream_backoff_ms(
    envoy_grpc: grpc_service_pb2.GrpcService.EnvoyGrpc, path: str
) -> tuple[int, int]:
    """`retry_policy.retry_back_off` as Envoy reads it for an xDS stream: the base interval,
    and the cap (default ten times the base)."""
    if not envoy_grpc.retry_policy.HasField("retry_back_off"):
        return BASE_INTERVAL_MS, MAX_INTERVAL_MS
    back_off = envoy_grpc.retry_policy.retry_back_off
    base_ms = back_off.base_interval.ToMilliseconds()
    max_ms = back_off.max_interval.ToMilliseconds() if back_off.HasField("max_interval") else 0
    max_ms = max_ms or base_ms * 10
    if max_ms < base_ms:
        raise ConfigError(
            f"{path}.retry_policy.retry_back_off.max_interval: must be greater than or equal "
            "to the base_interval"
        )
    return base_ms, max_ms


def _rest_server(
    bootstrap: bootstrap_pb2.Bootstrap,
    api: config_source_pb2.ApiConfigSource,
    path: str,
    initial_fetch_timeout_s: float | None,
) -> XdsServer:
    """A REST source: one static cluster to poll, `refresh_delay` required (as Envoy)."""
    if api.grpc_services:
        raise ConfigError(f"{path}.grpc_services: must be empty for api_type REST")
    if len(api.cluster_names) != 1:
        raise ConfigError(f"{path}.cluster_names: exactly one cluster is needed for api_type REST")
    if not api.HasField("refresh_delay"):
        raise ConfigError(f"{path}.refresh_delay: required for api_type REST")
    refresh_delay_s = api.refresh_delay.ToNanoseconds() / 1e9
    if refresh_delay_s <= 0:
        raise ConfigError(f"{path}.refresh_delay: must be greater than 0")
    request_timeout_s = DEFAULT_REST_REQUEST_TIMEOUT_S
    if api.HasField("request_timeout"):
        request_timeout_s = api.request_timeout.ToNanoseconds() / 1e9
        if request_timeout_s <= 0:
            raise ConfigError(f"{path}.request_timeout: must be greater than 0")
    cluster_name = api.cluster_names[0]
    target, tls = _cluster_target(bootstrap, cluster_name, f"{path}.cluster_names[0]")
    if tls is not None:
        raise ConfigError(f"{path}.cluster_names[0]: a TLS cluster is not supported for REST yet")
    host, _, port = target.rpartition(":")
    return XdsServer(
        aggregated=False,
        delta=False,
        cluster_name=cluster_name,
        target=target,
        authority=cluster_name,  # Envoy's Host header: the cluster's name
        initial_metadata=(),
        initial_fetch_timeout_s=initial_fetch_timeout_s,
        node_on_first_request_only=False,  # every poll stands alone
        rest=RestPolling(host.strip("[]"), int(port), refresh_delay_s, request_timeout_s),
    )


def _check_api_type(api: config_source_pb2.ApiConfigSource, path: str, aggregated: bool) -> bool:
    """True for Delta, False for state of the world."""
    if api.api_type == _API.GRPC:
        return False
    if api.api_type == _API.DELTA_GRPC:
        return True
    if aggregated and api.api_type == _API.AGGREGATED_GRPC:
        return False
    if aggregated and api.api_type == _API.AGGREGATED_DELTA_GRPC:
        return True
    name = _API.ApiType.Name(api.api_type)
    if aggregated:
        raise ConfigError(f"{path}.api_type: {name} not supported (use GRPC or DELTA_GRPC)")
    raise ConfigError(f"{path}.api_type: {name} not supported (use GRPC, DELTA_GRPC or REST)")


def _cluster_target(
    bootstrap: bootstrap_pb2.Bootstrap, name: str, name_path: str
) -> tuple[str, ChannelTls | None]:
    if not name:
        raise ConfigError(f"{name_path}: must not be empty")
    for index, cluster in enumerate(bootstrap.static_resources.clusters):
        if cluster.name == name:
            path = f"static_resources.clusters[{index}]"
            tls = None
            if cluster.HasField("transport_socket"):
                tls = channel_tls(cluster.transport_socket, f"{path}.transport_socket")
            return _endpoint_target(cluster, path), tls
    raise ConfigError(f"{name_path}: unknown static cluster '{name}'")


def _endpoint_target(cluster: cluster_pb2.Cluster, path: str) -> str:
    if cluster.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise ConfigError(f"{path}.cluster_type: not supported for the xDS cluster")
    if cluster.type not in _SUPPORTED_DISCOVERY:
        kind = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)
        raise ConfigError(f"{path}.type: {kind} not supported for the xDS cluster")
    for e_index, locality in enumerate(cluster.load_assignment.endpoints):
        for l_index, lb_endpoint in enumerate(locality.lb_endpoints):
            address = lb_endpoint.endpoint.address
            where = f"{path}.load_assignment.endpoints[{e_index}].lb_endpoints[{l_index}]"
            if not address.HasField("socket_address"):
                raise ConfigError(f"{where}.endpoint.address.socket_address: required")
            socket_address = address.socket_address
            if socket_address.WhichOneof("port_specifier") != "port_value":
                raise ConfigError(f"{where}.endpoint.address.socket_address.port_value: required")
            host = socket_address.address
            if ":" in host:
                host = f"[{host}]"
            return f"{host}:{socket_address.port_value}"
    raise ConfigError(f"{path}.load_assignment: needs one endpoint for the xDS server")
