"""A `Cluster` message translated once into what the pools and load balancers need
(`ClusterConfig`, frozen; the runtime's `upstream/cluster.py` holds it).

Pure: no sockets, no DNS. The proto constraints and the support table (config/table.py) are
the gate: a field the table does not accept is refused with `PATH: not supported[ yet]`, so a
cluster never silently behaves differently; a CDS cluster passes the gate here
(`require_valid`), a bootstrap's with the rest of the bootstrap.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from xds_proxy import extensions
from xds_proxy.config.dns_resolver import DnsResolverConfig, cluster_dns_resolver
from xds_proxy.config.endpoints import (  # EndpointAddress: imported from here too
    DEFAULT_OVERPROVISIONING_FACTOR,
    EndpointAddress,
    read_assignment,
)
from xds_proxy.config.health_check import (
    HealthCheckConfig,
    OutlierDetectionConfig,
    build_health_checks,
    build_outlier_detection,
)
from xds_proxy.config.original_dst import OriginalDstConfig, build_original_dst
from xds_proxy.config.support import require_valid
from xds_proxy.config.tls import UpstreamTls, upstream_tls
from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Envoy's defaults.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_DNS_REFRESH_S = 5.0
DEFAULT_CIRCUIT_BREAKER_LIMIT = 1024
DEFAULT_MAX_RETRIES = 3
DEFAULT_UPSTREAM_IDLE_TIMEOUT_S = 3600.0
DEFAULT_H2_MAX_CONCURRENT_STREAMS = 2**31 - 1
DEFAULT_LEAST_REQUEST_CHOICES = 2
DEFAULT_BUFFER_LIMIT = 1024 * 1024
DEFAULT_HEALTHY_PANIC_THRESHOLD = 50.0
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537  # the Maglev paper's recommended (prime) size


class DiscoveryType(enum.Enum):
    STATIC = cluster_pb2.Cluster.STATIC
    STRICT_DNS = cluster_pb2.Cluster.STRICT_DNS
    LOGICAL_DNS = cluster_pb2.Cluster.LOGICAL_DNS
    EDS = cluster_pb2.Cluster.EDS
    ORIGINAL_DST = cluster_pb2.Cluster.ORIGINAL_DST  # hosts made on demand (original_dst.py)


class LbPolicy(enum.Enum):
    ROUND_ROBIN = cluster_pb2.Cluster.ROUND_ROBIN
    LEAST_REQUEST = cluster_pb2.Cluster.LEAST_REQUEST
    RANDOM = cluster_pb2.Cluster.RANDOM
    RING_HASH = cluster_pb2.Cluster.RING_HASH
    MAGLEV = cluster_pb2.Cluster.MAGLEV
    CLUSTER_PROVIDED = cluster_pb2.Cluster.CLUSTER_PROVIDED  # ORIGINAL_DST's own balancer


class UpstreamProtocol(enum.Enum):
    HTTP1 = 1
    HTTP2 = 2
    DOWNSTREAM = 3  # `use_downstream_protocol_config`: the protocol each request came in on


class DnsFamily(enum.Enum):
    """Envoy's `dns_lookup_family`; AUTO prefers IPv6 and falls back to IPv4."""

    AUTO = cluster_pb2.Cluster.AUTO
    V4_ONLY = cluster_pb2.Cluster.V4_ONLY
    V6_ONLY = cluster_pb2.Cluster.V6_ONLY
    V4_PREFERRED = cluster_pb2.Cluster.V4_PREFERRED
    ALL = cluster_pb2.Cluster.ALL


@dataclass(frozen=True, slots=True)
class EdsSpec:
    """An EDS cluster's `eds_cluster_config`: the assignment's name and where it comes from."""

    service_name: str  # `service_name`, else the cluster's name
    source: config_source_pb2.ConfigSource

    @property
    def aggregated(self) -> bool:
        return self.source.WhichOneof("config_source_specifier") == "ads"


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """The DEFAULT priority thresholds; the router sends everything at DEFAULT priority."""

    max_connections: int = DEFAULT_CIRCUIT_BREAKER_LIMIT
    max_pending_requests: int = DEFAULT_CIRCUIT_BREAKER_LIMIT
    max_requests: int = DEFAULT_CIRCUIT_BREAKER_LIMIT
    max_retries: int = DEFAULT_MAX_RETRIES
    # `circuit_breakers.default.remaining_*` gauges, as Envoy shows them when asked.
    track_remaining: bool = False


@dataclass(frozen=True, slots=True)
class HashingSettings:
    """The ring hash and Maglev balancers' settings (Envoy's defaults)."""

    minimum_ring_size: int = DEFAULT_MIN_RING_SIZE
    maximum_ring_size: int = DEFAULT_MAX_RING_SIZE
    murmur_hash_2: bool = False  # the ring's hash function: MURMUR_HASH_2, else XX_HASH
    maglev_table_size: int = DEFAULT_MAGLEV_TABLE_SIZE


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    discovery: DiscoveryType
    endpoints: tuple[EndpointAddress, ...]
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    least_request_choices: int = DEFAULT_LEAST_REQUEST_CHOICES
    hashing: HashingSettings = HashingSettings()
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    dns_family: DnsFamily = DnsFamily.AUTO
    dns_refresh_s: float = DEFAULT_DNS_REFRESH_S
    dns_jitter_s: float = 0.0  # a random [0, jitter) added to each refresh
    # `respect_dns_ttl`: a host's next lookup comes after its answer's TTL (upstream/dns.py).
    respect_dns_ttl: bool = False
    dns_resolver: DnsResolverConfig | None = None  # a resolver the cluster names, else None
    health_checks: tuple[HealthCheckConfig, ...] = ()
    outlier_detection: OutlierDetectionConfig | None = None
    # Below this share of healthy hosts the balancer ignores health (Envoy's panic mode).
    healthy_panic_threshold_percent: float = DEFAULT_HEALTHY_PANIC_THRESHOLD
    idle_timeout_s: float | None = DEFAULT_UPSTREAM_IDLE_TIMEOUT_S
    max_requests_per_connection: int | None = None
    h2_max_concurrent_streams: int = DEFAULT_H2_MAX_CONCURRENT_STREAMS
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    tls: UpstreamTls | None = None
    alt_stat_name: str = ""
    source_address: tuple[str, int] | None = None  # upstream_bind_config: bind before connect
    original_dst: OriginalDstConfig | None = None  # an ORIGINAL_DST cluster's settings

    eds: EdsSpec | None = None  # type EDS: the assignment comes from EDS (xds/eds.py)
    # The assignment's `policy.overprovisioning_factor` (percent; EDS: per assignment).
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR
    locality_weighted: bool = False  # `common_lb_config.locality_weighted_lb_config`
    # A host gone from the assignment but passing active health checks stays until it fails.
    ignore_health_on_host_removal: bool = False

    @property
    def stat_name(self) -> str:
        """The cluster's stats are `cluster.<stat_name>.*`: alt_stat_name, else its name."""
        return self.alt_stat_name or self.name


def build_cluster_config(cluster: cluster_pb2.Cluster, path: str) -> ClusterConfig:
    """Check one `Cluster` (proto constraints, then the support table), then translate it;
    raises `ConfigError("PATH.FIELD: reason")`."""
    require_valid(cluster, path)
    if not cluster.name:
        raise ConfigError(f"{path}.name: value length must be at least 1 characters")
    dns = _dns_cluster(cluster)
    if dns is not None:
        discovery = (
            DiscoveryType.LOGICAL_DNS
            if dns.all_addresses_in_single_endpoint
            else DiscoveryType.STRICT_DNS
        )
    else:
        try:
            discovery = DiscoveryType(cluster.type)
        except ValueError:
            kind = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)
            raise ConfigError(f"{path}.type: {kind} not supported") from None
    original_dst = build_original_dst(cluster, path)
    lb_policy, choices, hashing = _balancing(cluster, path)
    if lb_policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV):
        _refuse_endpoint_hash_keys(cluster, path)
    eds = None
    overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR
    if discovery is DiscoveryType.EDS:
        if not cluster.HasField("eds_cluster_config"):
            raise ConfigError(
                f"{path}.eds_cluster_config: cannot create an EDS cluster without an EDS config"
            )
        eds = eds_spec(cluster.eds_cluster_config, cluster.name, f"{path}.eds_cluster_config")
        endpoints: tuple[EndpointAddress, ...] = ()
    else:
        endpoints, overprovisioning_factor = _endpoints(cluster, path, discovery)
    protocol, idle_timeout_s, max_requests, h2_streams = _protocol(cluster, path)
    connect_timeout_s = DEFAULT_CONNECT_TIMEOUT_S
    if cluster.HasField("connect_timeout"):
        connect_timeout_s = duration_seconds(cluster.connect_timeout)
    dns_family, dns_refresh_s, dns_jitter_s, respect_dns_ttl = _dns_settings(cluster, dns)
    buffer_limit = DEFAULT_BUFFER_LIMIT
    if cluster.HasField("per_connection_buffer_limit_bytes"):
        # Envoy's 0 (no limit) keeps the default here, as on listeners.
        buffer_limit = cluster.per_connection_buffer_limit_bytes.value or DEFAULT_BUFFER_LIMIT
    if cluster.max_requests_per_connection.value:
        max_requests = cluster.max_requests_per_connection.value
    tls = None
    if cluster.HasField("transport_socket"):
        tls = upstream_tls(cluster.transport_socket, f"{path}.transport_socket")
    return ClusterConfig(
        name=cluster.name,
        discovery=discovery,
        endpoints=endpoints,
        connect_timeout_s=connect_timeout_s,
        lb_policy=lb_policy,
        least_request_choices=choices,
        hashing=hashing,
        protocol=protocol,
        circuit_breakers=_circuit_breakers(cluster, path),
        dns_family=dns_family,
        dns_refresh_s=dns_refresh_s,
        dns_jitter_s=dns_jitter_s,
        respect_dns_ttl=respect_dns_ttl,
        dns_resolver=cluster_dns_resolver(cluster, dns, path),
        health_checks=build_health_checks(cluster.name, list(cluster.health_checks), path),
        outlier_detection=(
            build_outlier_detection(cluster.outlier_detection, f"{path}.outlier_detection")
            if cluster.HasField("outlier_detection")
            else None
        ),
        healthy_panic_threshold_percent=(
            cluster.common_lb_config.healthy_panic_threshold.value
            if cluster.common_lb_config.HasField("healthy_panic_threshold")
            else DEFAULT_HEALTHY_PANIC_THRESHOLD
        ),
        idle_timeout_s=idle_timeout_s,
        max_requests_per_connection=max_requests,
        h2_max_concurrent_streams=h2_streams,
        buffer_limit=buffer_limit,
        tls=tls,
        alt_stat_name=cluster.alt_stat_name,
        source_address=_source_address(cluster, path),
        eds=eds,
        overprovisioning_factor=overprovisioning_factor,
        locality_weighted=cluster.common_lb_config.HasField("locality_weighted_lb_config"),
        ignore_health_on_host_removal=cluster.ignore_health_on_host_removal,
        original_dst=original_dst,
    )


def _source_address(cluster: cluster_pb2.Cluster, path: str) -> tuple[str, int] | None:
    """`upstream_bind_config.source_address`: the local address upstream connections bind."""
    if not cluster.upstream_bind_config.HasField("source_address"):
        return None
    address = cluster.upstream_bind_config.source_address
    where = f"{path}.upstream_bind_config.source_address"
    try:
        ip = str(ipaddress.ip_address(address.address))
    except ValueError:
        raise ConfigError(f"{where}.address: '{address.address}' is not an IP address") from None
    return ip, address.port_value


def eds_spec(config: cluster_pb2.Cluster.EdsClusterConfig, cluster_name: str, path: str) -> EdsSpec:
    """An `eds_cluster_config` the gate accepted; its source must be `ads` or an
    `api_config_source`."""
    kind = config.eds_config.WhichOneof("config_source_specifier")
    if kind not in ("ads", "api_config_source"):
        raise ConfigError(f"{path}.eds_config: one of ads or api_config_source is required")
    return EdsSpec(config.service_name or cluster_name, config.eds_config)


# The DNS cluster extension's lookup family; UNSPECIFIED is AUTO, as in Envoy.
_DNS_FAMILIES = {
    dns_pb2.UNSPECIFIED: DnsFamily.AUTO,
    dns_pb2.AUTO: DnsFamily.AUTO,
    dns_pb2.V4_ONLY: DnsFamily.V4_ONLY,
    dns_pb2.V6_ONLY: DnsFamily.V6_ONLY,
    dns_pb2.V4_PREFERRED: DnsFamily.V4_PREFERRED,
    dns_pb2.ALL: DnsFamily.ALL,
}


def _dns_cluster(cluster: cluster_pb2.Cluster) -> dns_cluster_pb2.DnsCluster | None:
    """`cluster_type` `envoy.clusters.dns` (the gate allows no other), else None."""
    if cluster.WhichOneof("cluster_discovery_type") != "cluster_type":
        return None
    dns = dns_cluster_pb2.DnsCluster()
    cluster.cluster_type.typed_config.Unpack(dns)
    return dns


def _dns_settings(
    cluster: cluster_pb2.Cluster, dns: dns_cluster_pb2.DnsCluster | None
) -> tuple[DnsFamily, float, float, bool]:
    """(lookup family, refresh seconds, jitter seconds, respect the TTL): from the DNS cluster
    extension when the cluster has one (its own fields then win, as in Envoy), else the
    cluster's fields."""
    if dns is not None:
        refresh = (
            duration_seconds(dns.dns_refresh_rate)
            if dns.HasField("dns_refresh_rate")
            else DEFAULT_DNS_REFRESH_S
        )
        jitter = duration_seconds(dns.dns_jitter) if dns.HasField("dns_jitter") else 0.0
        return _DNS_FAMILIES[dns.dns_lookup_family], refresh, jitter, dns.respect_dns_ttl
    refresh = DEFAULT_DNS_REFRESH_S
    if cluster.HasField("dns_refresh_rate"):
        refresh = duration_seconds(cluster.dns_refresh_rate)
    return DnsFamily(cluster.dns_lookup_family), refresh, 0.0, cluster.respect_dns_ttl


def _balancing(cluster: cluster_pb2.Cluster, path: str) -> tuple[LbPolicy, int, HashingSettings]:
    """(policy, least-request choices, hashing settings). `load_balancing_policy` wins over
    `lb_policy`; of its list, Envoy uses the first policy it knows, and the gate lets only
    known ones through."""
    policies = cluster.load_balancing_policy.policies
    choices = DEFAULT_LEAST_REQUEST_CHOICES
    if policies:
        typed_config = policies[0].typed_extension_config.typed_config
        policy_path = (
            f"{path}.load_balancing_policy.policies[0].typed_extension_config.typed_config"
        )
        kind = extensions.type_name(typed_config.type_url)
        if kind == extensions.LEAST_REQUEST:
            least_request = least_request_pb2.LeastRequest()
            typed_config.Unpack(least_request)
            return LbPolicy.LEAST_REQUEST, _choices(least_request.choice_count), HashingSettings()
        if kind == extensions.RANDOM:
            return LbPolicy.RANDOM, choices, HashingSettings()
        if kind == extensions.RING_HASH:
            ring_hash = ring_hash_pb2.RingHash()
            typed_config.Unpack(ring_hash)
            murmur = ring_hash.hash_function == ring_hash_pb2.RingHash.MURMUR_HASH_2
            return LbPolicy.RING_HASH, choices, _ring(ring_hash, murmur, policy_path)
        if kind == extensions.MAGLEV:
            maglev = maglev_pb2.Maglev()
            typed_config.Unpack(maglev)
            return LbPolicy.MAGLEV, choices, _maglev(maglev, policy_path)
        return LbPolicy.ROUND_ROBIN, choices, HashingSettings()
    if cluster.lb_policy == cluster_pb2.Cluster.LOAD_BALANCING_POLICY_CONFIG:
        raise ConfigError(f"{path}: field load_balancing_policy need to be set")
    try:
        lb_policy = LbPolicy(cluster.lb_policy)
    except ValueError:
        kind = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
        raise ConfigError(f"{path}.lb_policy: {kind} not supported") from None
    # `lb_config` is a oneof: at most one of these is set (read whatever the policy).
    hashing = HashingSettings()
    if cluster.HasField("ring_hash_lb_config"):
        config = cluster.ring_hash_lb_config
        murmur = config.hash_function == cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2
        hashing = _ring(config, murmur, f"{path}.ring_hash_lb_config")
    elif cluster.HasField("maglev_lb_config"):
        hashing = _maglev(cluster.maglev_lb_config, f"{path}.maglev_lb_config")
    return lb_policy, _choices(cluster.least_request_lb_config.choice_count), hashing


def _refuse_endpoint_hash_keys(cluster: cluster_pb2.Cluster, path: str) -> None:
    """Envoy's hashing balancers key a host by its endpoint's `envoy.lb` metadata `hash_key`
    when it has one; ours key hosts by address only, so such a key is refused, not ignored."""
    for l_index, locality in enumerate(cluster.load_assignment.endpoints):
        for e_index, lb_endpoint in enumerate(locality.lb_endpoints):
            envoy_lb = lb_endpoint.metadata.filter_metadata.get("envoy.lb")
            if envoy_lb is not None and "hash_key" in envoy_lb.fields:
                raise ConfigError(
                    f"{path}.load_assignment.endpoints[{l_index}].lb_endpoints[{e_index}]"
                    ".metadata.filter_metadata['envoy.lb'].hash_key: not supported yet"
                )


def _ring(config: Message, murmur: bool, path: str) -> HashingSettings:
    """A `RingHashLbConfig` or `RingHash` extension (the same two size fields)."""
    minimum = DEFAULT_MIN_RING_SIZE
    maximum = DEFAULT_MAX_RING_SIZE
    if config.HasField("minimum_ring_size"):
        minimum = config.minimum_ring_size.value  # type: ignore[attr-defined]
    if config.HasField("maximum_ring_size"):
        maximum = config.maximum_ring_size.value  # type: ignore[attr-defined]
    if minimum > maximum:
        raise ConfigError(
            f"{path}: ring hash: minimum_ring_size ({minimum}) > maximum_ring_size ({maximum})"
        )
    return HashingSettings(
        minimum_ring_size=minimum, maximum_ring_size=maximum, murmur_hash_2=murmur
    )


def _maglev(config: Message, path: str) -> HashingSettings:
    """A `MaglevLbConfig` or `Maglev` extension: `table_size`, which must be prime."""
    size = DEFAULT_MAGLEV_TABLE_SIZE
    if config.HasField("table_size"):
        size = config.table_size.value  # type: ignore[attr-defined]
    if not _is_prime(size):
        raise ConfigError(f"{path}.table_size: The table size of maglev must be prime number")
    return HashingSettings(maglev_table_size=size)


def _is_prime(number: int) -> bool:
    if number < 2:
        return False
    divisor = 2
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 1
    return True


def _choices(choice_count: Message) -> int:
    """A `choice_count` UInt32Value: unset is Envoy's default of 2 (PGV keeps it >= 2)."""
    value = choice_count.value  # type: ignore[attr-defined]
    return value if value else DEFAULT_LEAST_REQUEST_CHOICES


def _endpoints(
    cluster: cluster_pb2.Cluster, path: str, discovery: DiscoveryType
) -> tuple[tuple[EndpointAddress, ...], int]:
    """(the endpoints, the overprovisioning factor) of the cluster's own `load_assignment`."""
    assignment_path = f"{path}.load_assignment"
    require_ip = discovery is DiscoveryType.STATIC
    built = read_assignment(cluster.load_assignment, assignment_path, require_ip)
    if discovery is DiscoveryType.LOGICAL_DNS and len(built.endpoints) != 1:
        raise ConfigError(
            f"{assignment_path}: LOGICAL_DNS clusters must have a single locality_lb_endpoint "
            "and a single lb_endpoint"
        )
    return built.endpoints, built.overprovisioning_factor


def _circuit_breakers(cluster: cluster_pb2.Cluster, path: str) -> CircuitBreakers:
    breakers = cluster.circuit_breakers
    breakers_path = f"{path}.circuit_breakers"
    for index, thresholds in enumerate(breakers.thresholds):
        if thresholds.priority != 0:  # only DEFAULT traffic exists here
            continue
        return _thresholds(thresholds, f"{breakers_path}.thresholds[{index}]")
    return CircuitBreakers()


def _thresholds(
    thresholds: circuit_breaker_pb2.CircuitBreakers.Thresholds, path: str
) -> CircuitBreakers:

    def limit(name: str, default: int = DEFAULT_CIRCUIT_BREAKER_LIMIT) -> int:
        if thresholds.HasField(name):
            return getattr(thresholds, name).value
        return default

    return CircuitBreakers(
        max_connections=limit("max_connections"),
        max_pending_requests=limit("max_pending_requests"),
        max_requests=limit("max_requests"),
        max_retries=limit("max_retries", DEFAULT_MAX_RETRIES),
        track_remaining=thresholds.track_remaining,
    )


def _protocol(
    cluster: cluster_pb2.Cluster, path: str
) -> tuple[UpstreamProtocol, float | None, int | None, int]:
    """(protocol, idle timeout, max requests per connection, HTTP/2 max concurrent streams)
    from `typed_extension_protocol_options` or the legacy cluster fields."""
    protocol = UpstreamProtocol.HTTP1
    h2_options: protocol_pb2.Http2ProtocolOptions | None = None
    common: protocol_pb2.HttpProtocolOptions | None = None
    if cluster.HasField("http2_protocol_options"):
        protocol = UpstreamProtocol.HTTP2
        h2_options = cluster.http2_protocol_options
    if cluster.HasField("common_http_protocol_options"):
        common = cluster.common_http_protocol_options
    for key in sorted(cluster.typed_extension_protocol_options):
        options = http_protocol_options_pb2.HttpProtocolOptions()
        cluster.typed_extension_protocol_options[key].Unpack(options)  # the table checked it
        if options.HasField("common_http_protocol_options"):
            common = options.common_http_protocol_options
        if options.HasField("explicit_http_config"):
            explicit = options.explicit_http_config
            kind = explicit.WhichOneof("protocol_config")
            if kind == "http2_protocol_options":
                protocol = UpstreamProtocol.HTTP2
                h2_options = explicit.http2_protocol_options
            elif kind == "http_protocol_options":
                protocol = UpstreamProtocol.HTTP1
                h2_options = None
            else:
                explicit_path = f"{path}.typed_extension_protocol_options['{key}']"
                raise ConfigError(
                    f"{explicit_path}.explicit_http_config: {kind or 'protocol_config'}"
                    " not supported"
                )
        if options.HasField("use_downstream_protocol_config"):
            protocol = UpstreamProtocol.DOWNSTREAM
            h2_options = options.use_downstream_protocol_config.http2_protocol_options
    h2_streams = DEFAULT_H2_MAX_CONCURRENT_STREAMS
    if h2_options is not None and h2_options.HasField("max_concurrent_streams"):
        h2_streams = h2_options.max_concurrent_streams.value
    idle_timeout_s: float | None = DEFAULT_UPSTREAM_IDLE_TIMEOUT_S
    max_requests: int | None = None
    if common is not None:
        if common.HasField("idle_timeout"):
            idle_timeout_s = duration_seconds(common.idle_timeout) or None
        if common.HasField("max_requests_per_connection"):
            max_requests = common.max_requests_per_connection.value or None
    return protocol, idle_timeout_s, max_requests, h2_streams
