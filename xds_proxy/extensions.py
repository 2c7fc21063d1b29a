"""The one registry of the `@type`s xds-proxy understands, shared by the bootstrap and LDS.

Envoy picks an extension by the type URL of its `typed_config`; so do we. Each category maps a
type name to the canonical extension name. `NOT_YET` holds registered types that are not built
yet (with the reason in words): the support table answers `not supported yet` for them.
Importing the xds-protos modules below registers their messages in the protobuf descriptor
pool, which the JSON/YAML loader and `Any` unpacking rely on.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import cache

from envoy.config.core.v3 import base_pb2  # noqa: F401 - registers core types
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from xds_proxy.errors import ConfigError

TYPE_URL_PREFIX = "type.googleapis.com/"


def _name(message_class: type[Message]) -> str:
    return message_class.DESCRIPTOR.full_name


HCM = _name(hcm_pb2.HttpConnectionManager)
TCP_PROXY = _name(tcp_proxy_pb2.TcpProxy)
DIRECT_RESPONSE = _name(direct_response_pb2.Config)
CONNECTION_LIMIT = _name(connection_limit_pb2.ConnectionLimit)
DOWNSTREAM_CONNECTIONS = _name(downstream_connections_pb2.DownstreamConnectionsConfig)
ROUTER = _name(router_pb2.Router)
TLS_INSPECTOR = _name(tls_inspector_pb2.TlsInspector)
HTTP_INSPECTOR = _name(http_inspector_pb2.HttpInspector)
DOWNSTREAM_TLS = _name(tls_pb2.DownstreamTlsContext)
UPSTREAM_TLS = _name(tls_pb2.UpstreamTlsContext)
UPSTREAM_HTTP_PROTOCOL_OPTIONS = _name(http_protocol_options_pb2.HttpProtocolOptions)
ROUND_ROBIN = _name(round_robin_pb2.RoundRobin)
LEAST_REQUEST = _name(least_request_pb2.LeastRequest)
RANDOM = _name(random_pb2.Random)
RING_HASH = _name(ring_hash_pb2.RingHash)
MAGLEV = _name(maglev_pb2.Maglev)
DNS_CLUSTER = _name(dns_cluster_pb2.DnsCluster)
CARES_DNS_RESOLVER = _name(cares_dns_resolver_pb2.CaresDnsResolverConfig)
FILE_ACCESS_LOG = _name(file_pb2.FileAccessLog)
STDOUT_ACCESS_LOG = _name(stream_pb2.StdoutAccessLog)
STDERR_ACCESS_LOG = _name(stream_pb2.StderrAccessLog)
PREVIOUS_HOSTS = _name(previous_hosts_pb2.PreviousHostsPredicate)

# type name (without the type.googleapis.com/ prefix) -> canonical extension name
SUPPORTED_NETWORK_FILTERS: dict[str, str] = {
    HCM: "envoy.filters.network.http_connection_manager",
    TCP_PROXY: "envoy.filters.network.tcp_proxy",
    DIRECT_RESPONSE: "envoy.filters.network.direct_response",
    CONNECTION_LIMIT: "envoy.filters.network.connection_limit",
}
SUPPORTED_HTTP_FILTERS: dict[str, str] = {ROUTER: "envoy.filters.http.router"}
SUPPORTED_LISTENER_FILTERS: dict[str, str] = {
    TLS_INSPECTOR: "envoy.filters.listener.tls_inspector",
    HTTP_INSPECTOR: "envoy.filters.listener.http_inspector",
}
SUPPORTED_TRANSPORT_SOCKETS: dict[str, str] = {
    DOWNSTREAM_TLS: "envoy.transport_sockets.tls",
    UPSTREAM_TLS: "envoy.transport_sockets.tls",
}
SUPPORTED_UPSTREAM_PROTOCOL_OPTIONS: dict[str, str] = {
    UPSTREAM_HTTP_PROTOCOL_OPTIONS: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
}

# A cluster's `load_balancing_policy` (config/cluster.py) and `cluster_type`.
SUPPORTED_LOAD_BALANCING_POLICIES: dict[str, str] = {
    ROUND_ROBIN: "envoy.load_balancing_policies.round_robin",
    LEAST_REQUEST: "envoy.load_balancing_policies.least_request",
    RANDOM: "envoy.load_balancing_policies.random",
    RING_HASH: "envoy.load_balancing_policies.ring_hash",
    MAGLEV: "envoy.load_balancing_policies.maglev",
}
SUPPORTED_CLUSTER_TYPES: dict[str, str] = {DNS_CLUSTER: "envoy.clusters.dns"}
# A DNS cluster's `typed_dns_resolver_config` (config/dns_resolver.py).
SUPPORTED_DNS_RESOLVERS: dict[str, str] = {CARES_DNS_RESOLVER: "envoy.network.dns_resolver.cares"}
SUPPORTED_ACCESS_LOGGERS: dict[str, str] = {
    FILE_ACCESS_LOG: "envoy.access_loggers.file",
    STDOUT_ACCESS_LOG: "envoy.access_loggers.stdout",
    STDERR_ACCESS_LOG: "envoy.access_loggers.stderr",
}

# The overload manager's resource monitors we implement (listener/limits.py); the others are
# accepted and inert (config/table.py).
SUPPORTED_RESOURCE_MONITORS: dict[str, str] = {
    DOWNSTREAM_CONNECTIONS: "envoy.resource_monitors.global_downstream_max_connections",
}

# A route retry policy's `retry_host_predicate` (config/retry.py).
SUPPORTED_RETRY_HOST_PREDICATES: dict[str, str] = {
    PREVIOUS_HOSTS: "envoy.retry_host_predicates.previous_hosts",
}

CATEGORIES: dict[str, dict[str, str]] = {
    "network_filter": SUPPORTED_NETWORK_FILTERS,
    "http_filter": SUPPORTED_HTTP_FILTERS,
    "listener_filter": SUPPORTED_LISTENER_FILTERS,
    "transport_socket": SUPPORTED_TRANSPORT_SOCKETS,
    "upstream_protocol_options": SUPPORTED_UPSTREAM_PROTOCOL_OPTIONS,
    "resource_monitor": SUPPORTED_RESOURCE_MONITORS,
    "load_balancing_policy": SUPPORTED_LOAD_BALANCING_POLICIES,
    "cluster_type": SUPPORTED_CLUSTER_TYPES,
    "dns_resolver": SUPPORTED_DNS_RESOLVERS,
    "access_logger": SUPPORTED_ACCESS_LOGGERS,
    "retry_host_predicate": SUPPORTED_RETRY_HOST_PREDICATES,
}

# Registered types that are not built yet (type name -> what is missing, in words).
NOT_YET: dict[str, str] = {}  # every registered type is built now

_CLASSES: dict[str, type[Message]] = {
    _name(cls): cls
    for cls in (
        hcm_pb2.HttpConnectionManager,
        tcp_proxy_pb2.TcpProxy,
        direct_response_pb2.Config,
        connection_limit_pb2.ConnectionLimit,
        downstream_connections_pb2.DownstreamConnectionsConfig,
        router_pb2.Router,
        tls_inspector_pb2.TlsInspector,
        http_inspector_pb2.HttpInspector,
        tls_pb2.DownstreamTlsContext,
        tls_pb2.UpstreamTlsContext,
        http_protocol_options_pb2.HttpProtocolOptions,
        round_robin_pb2.RoundRobin,
        least_request_pb2.LeastRequest,
        random_pb2.Random,
        ring_hash_pb2.RingHash,
        maglev_pb2.Maglev,
        dns_cluster_pb2.DnsCluster,
        cares_dns_resolver_pb2.CaresDnsResolverConfig,
        file_pb2.FileAccessLog,
        stream_pb2.StdoutAccessLog,
        stream_pb2.StderrAccessLog,
        previous_hosts_pb2.PreviousHostsPredicate,
    )
}


def type_name(type_url: str) -> str:
    """`type.googleapis.com/a.b.C` -> `a.b.C` (any prefix up to the last slash, as protobuf)."""
    return type_url.rsplit("/", 1)[-1]


def message_class(type_url: str) -> type[Message] | None:
    """The generated class of a registered `@type`, or None when we do not know it."""
    return _CLASSES.get(type_name(type_url))


def category_of(type_url: str) -> str | None:
    name = type_name(type_url)
    for category, types in CATEGORIES.items():
        if name in types:
            return category
    return None


def is_implemented(type_url: str) -> bool:
    """Registered and built now (not `NOT_YET`)."""
    name = type_name(type_url)
    return name in _CLASSES and name not in NOT_YET


def unpack(any_msg: any_pb2.Any, path: str) -> Message:
    """Decode a registered `Any`; errors name `path` (the field holding the Any)."""
    cls = message_class(any_msg.type_url)
    if cls is None:
        raise ConfigError(f"{path}: unknown @type '{any_msg.type_url}'")
    message = cls()
    try:
        message.ParseFromString(any_msg.value)
    except DecodeError:
        raise ConfigError(
            f"{path}: cannot decode the value of @type '{any_msg.type_url}'"
        ) from None
    return message


@cache
def resolve_message_class(full_name: str) -> type[Message] | None:
    """Any message class of the installed protos by full name, importing its package on demand.

    The loader needs this for `@type`s outside the registry (to parse them, then say `not
    supported` by name rather than fail on an unknown type).
    """
    found = _class_in_pool(full_name)
    if found is not None:
        return found
    parts = full_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if _import_proto_package(".".join(parts[:cut])):
            return _class_in_pool(full_name)
    return None


def _class_in_pool(full_name: str) -> type[Message] | None:
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor)


def _import_proto_package(package: str) -> bool:
    """Import every `*_pb2` module of a Python package; False if there is no such package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    found = False
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        if module.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{module.name}")
            except Exception:  # a broken generated module: leave the type unknown
                continue
            found = True
    return found
