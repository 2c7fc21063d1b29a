"""INTERFACE.md's "supported fields" policy: a table of the fields we accept, per message type.

A field set to a non-default value that is not in the table is an error (`path: not supported`),
never silently ignored; a field that a later issue builds says `not supported yet`; the inert
bootstrap sections (they change nothing observable here) are accepted with one warning.
`check_listener` is also the LDS path's check, so its paths start at the caller's prefix.

To switch on a feature when its issue lands, add the issue's number to IMPLEMENTED_ISSUES
(every `Later(n)` entry then counts as supported), or edit the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xds_proxy import extensions
from xds_proxy.bounded_cache import RELATIVE_ROOT, BoundedCache, cached, relocate
from xds_proxy.errors import ConfigError
from xds_proxy.listener import limits
from xds_proxy.validation import (
    CACHED_SUBTREES,
    canonical_ip,
    join_path,
    map_key_path,
    validate_message,
)

# Issues whose features count as built. 4 and 5 (LDS core, drain) are built alongside this one.
IMPLEMENTED_ISSUES: frozenset[int] = frozenset({2, 4, 5, 6})


@dataclass(frozen=True)
class Supported:
    """Accepted; a sub-message is checked against its type's table, or against `fields` when
    what this place accepts differs from the type's other uses (DataSource: bodies vs certs)."""

    fields: Mapping[str, Rule] | None = None


@dataclass(frozen=True)
class Later:
    """A later issue builds it: `not supported yet` until the issue is in IMPLEMENTED_ISSUES."""

    issue: int


@dataclass(frozen=True)
class Inert:
    """Accepted, changes nothing observable here: one warning names it."""


@dataclass(frozen=True)
class InertExcept:
    """A repeated field whose items are inert (one warning names each) except those `active`
    selects, which are checked against their type's table: e.g. the one resource monitor of
    the overload manager that xds-proxy implements."""

    active: Callable[[Message], bool]


@dataclass(frozen=True)
class Values:
    """An enum (by value name) or scalar field: each allowed value has its own rule."""

    allowed: Mapping[object, Supported | Later]


@dataclass(frozen=True)
class Extension:
    """An `Any` (or a map of them) whose @type must be in an extensions.py category."""

    category: str
    required: bool = True


@dataclass(frozen=True)
class Opaque:
    """Accepted with whatever is inside (metadata, free-form structs)."""


Rule = Supported | Later | Inert | InertExcept | Values | Extension | Opaque

OK = Supported()
# A DataSource as the router and direct_response read it (http/router.py data_source_bytes).
DATA_SOURCE = Supported(
    {"inline_string": OK, "inline_bytes": OK, "filename": OK, "environment_variable": OK}
)
OPAQUE = Opaque()
INERT = Inert()

_CORE = "envoy.config.core.v3."
_LISTENER = "envoy.config.listener.v3."
_ROUTE = "envoy.config.route.v3."
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3."
_BOOTSTRAP = "envoy.config.bootstrap.v3."
_ENDPOINT = "envoy.config.endpoint.v3."
_MATCHER = "envoy.type.matcher.v3."
_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "envoy.extensions.transport_sockets.tls.v3."


# message full name -> {field name -> rule}; a set field absent here is `not supported`.
TABLE: dict[str, dict[str, Rule]] = {
    # --- bootstrap
    _BOOTSTRAP + "Bootstrap": {
        "node": OK,
        "static_resources": OK,
        "dynamic_resources": OK,
        "admin": OK,
        "layered_runtime": INERT,
        "stats_config": INERT,
        "overload_manager": OK,  # only the global connection limit acts (listener/limits.py)
        "stats_sinks": INERT,
        "stats_flush_interval": INERT,
        "stats_flush_on_admin": INERT,
    },
    _BOOTSTRAP + "Admin": {
        "address": OK,
        "access_log": INERT,
        "access_log_path": INERT,
        "ignore_global_conn_limit": OK,  # the admin listener never counts here (as Envoy 1.40)
    },
    "envoy.config.overload.v3.OverloadManager": {
        "refresh_interval": INERT,
        "resource_monitors": InertExcept(limits.is_global_monitor),
        "actions": INERT,
        "loadshed_points": INERT,
        "buffer_factory_config": INERT,
    },
    "envoy.config.overload.v3.ResourceMonitor": {
        "name": OK,
        "typed_config": Extension("resource_monitor"),
    },
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": {
        "max_active_downstream_connections": OK,
    },
    _BOOTSTRAP + "Bootstrap.StaticResources": {"listeners": OK, "clusters": OK},
    _BOOTSTRAP + "Bootstrap.DynamicResources": {
        "lds_config": OK,
        "ads_config": OK,
        "cds_config": OK,  # SotW CDS (xds/cds.py); the rest of issue 8 is still Later
    },
    _CORE + "Node": {"id": OK, "cluster": OK, "metadata": OPAQUE, "locality": OK},
    _CORE + "Locality": {"region": OK, "zone": OK, "sub_zone": OK},
    # --- xDS config sources
    _CORE + "ConfigSource": {
        "api_config_source": OK,
        "ads": OK,
        "initial_fetch_timeout": OK,
        "resource_api_version": Values({"AUTO": OK, "V3": OK}),
    },
    _CORE + "AggregatedConfigSource": {},
    _CORE + "ApiConfigSource": {
        "api_type": Values({"GRPC": OK, "DELTA_GRPC": OK}),
        "transport_api_version": Values({"AUTO": OK, "V3": OK}),
        "grpc_services": OK,
    },
    _CORE + "GrpcService": {"envoy_grpc": OK},
    _CORE + "GrpcService.EnvoyGrpc": {"cluster_name": OK},
    # --- addresses
    _CORE + "Address": {"socket_address": OK},
    _CORE + "SocketAddress": {
        "protocol": Values({"TCP": OK}),
        "address": OK,
        "port_value": OK,
    },
    _CORE + "CidrRange": {"address_prefix": OK, "prefix_len": OK},
    _CORE + "TransportSocket": {"name": OK, "typed_config": Extension("transport_socket")},
    # --- listeners
    _LISTENER + "Listener": {
        "name": OK,
        "address": OK,
        "additional_addresses": Later(4),
        "filter_chains": OK,
        "default_filter_chain": Later(4),
        "per_connection_buffer_limit_bytes": Later(4),
        "metadata": OPAQUE,
        "drain_type": Later(4),
        "listener_filters": OK,
        "listener_filters_timeout": OK,
        "continue_on_listener_filters_timeout": OK,
        "traffic_direction": Later(4),
        "enable_reuse_port": Later(4),
        "ignore_global_conn_limit": OK,
    },
    _LISTENER + "AdditionalAddress": {"address": OK},
    _LISTENER + "FilterChain": {
        "filter_chain_match": Later(4),
        "filters": OK,
        "metadata": OPAQUE,
        "transport_socket": OK,  # DownstreamTlsContext, checked by tls.py
        "transport_socket_connect_timeout": OK,
        "name": OK,
    },
    _LISTENER + "FilterChainMatch": {
        "destination_port": OK,
        "prefix_ranges": OK,
        "source_type": OK,
        "source_prefix_ranges": OK,
        "source_ports": OK,
        "server_names": OK,
        "transport_protocol": OK,
        "application_protocols": OK,
    },
    _LISTENER + "Filter": {"name": OK, "typed_config": Extension("network_filter")},
    _LISTENER + "ListenerFilter": {"name": OK, "typed_config": Extension("listener_filter")},
    # --- network filters
    "envoy.extensions.filters.network.direct_response.v3.Config": {"response": DATA_SOURCE},
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit": {
        "stat_prefix": OK,
        "max_connections": OK,
        "delay": OK,
        "runtime_enabled": OK,
    },
    _CORE + "RuntimeFeatureFlag": {"default_value": OK, "runtime_key": OK},
    _HCM + "HttpConnectionManager": {
        "codec_type": Values({"AUTO": OK, "HTTP1": OK, "HTTP2": Later(6)}),
        "stat_prefix": OK,
        "route_config": OK,
        "http_filters": OK,
        "common_http_protocol_options": OK,
        "http2_protocol_options": Later(6),
        "http_protocol_options": OK,
        "server_name": OK,
        "strip_any_host_port": OK,
        "use_remote_address": OK,
        "xff_num_trusted_hops": OK,
        "skip_xff_append": OK,
        "generate_request_id": OK,
        "max_request_headers_kb": OK,
        "stream_idle_timeout": OK,
        "request_timeout": OK,
        "request_headers_timeout": OK,
        "drain_timeout": OK,
        "delayed_close_timeout": OK,
    },
    _HCM + "HttpFilter": {
        "name": OK,
        "typed_config": Extension("http_filter"),
        "is_optional": OK,
        "disabled": OK,
    },
    "envoy.extensions.filters.http.router.v3.Router": {"suppress_envoy_headers": OK},
    _CORE + "HttpProtocolOptions": {
        "idle_timeout": OK,
        "max_headers_count": OK,
        "max_requests_per_connection": OK,
        "max_connection_duration": Later(14),
        "max_stream_duration": Later(14),
    },
    _CORE + "Http1ProtocolOptions": {"accept_http_10": OK, "default_host_for_http_10": OK},
    _CORE + "Http2ProtocolOptions": {
        "max_concurrent_streams": OK,
        "initial_stream_window_size": OK,
        "initial_connection_window_size": OK,
    },
    # --- routes
    _ROUTE + "RouteConfiguration": {
        "name": OK,
        "virtual_hosts": OK,
        "validate_clusters": OK,
        "max_direct_response_body_size_bytes": OK,
        "ignore_port_in_host_matching": OK,
        "request_headers_to_add": OK,
        "request_headers_to_remove": OK,
        "response_headers_to_add": OK,
        "response_headers_to_remove": OK,
    },
    _ROUTE + "VirtualHost": {
        "name": OK,
        "domains": OK,
        "routes": OK,
        "request_headers_to_add": OK,
        "request_headers_to_remove": OK,
        "response_headers_to_add": OK,
        "response_headers_to_remove": OK,
    },
    _ROUTE + "Route": {
        "name": OK,
        "match": OK,
        "route": OK,
        "redirect": OK,
        "direct_response": OK,
        "metadata": OPAQUE,
        "request_headers_to_add": OK,
        "request_headers_to_remove": OK,
        "response_headers_to_add": OK,
        "response_headers_to_remove": OK,
    },
    _ROUTE + "RouteAction": {
        "cluster": OK,
        "weighted_clusters": OK,
        "cluster_not_found_response_code": OK,
        "prefix_rewrite": OK,
        "host_rewrite_literal": OK,
        "timeout": OK,
    },
    _ROUTE + "WeightedCluster": {"clusters": OK, "total_weight": OK},
    _ROUTE + "WeightedCluster.ClusterWeight": {"name": OK, "weight": OK},
    _CORE + "HeaderValueOption": {
        "header": OK,
        "append": OK,
        "append_action": OK,
        "keep_empty_value": OK,
    },
    _CORE + "HeaderValue": {"key": OK, "value": OK, "raw_value": OK},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
        "stat_prefix": OK,
        "cluster": OK,
        "weighted_clusters": OK,
        "idle_timeout": OK,
        "max_connect_attempts": OK,
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster": {"clusters": OK},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": {
        "name": OK,
        "weight": OK,
    },
    _ROUTE + "RouteMatch": {
        "prefix": OK,
        "path": OK,
        "safe_regex": OK,
        "headers": OK,
        "case_sensitive": OK,
    },
    _ROUTE + "RedirectAction": {
        "https_redirect": OK,
        "scheme_redirect": OK,
        "host_redirect": OK,
        "port_redirect": OK,
        "path_redirect": OK,
        "prefix_rewrite": OK,
        "response_code": OK,
        "strip_query": OK,
    },
    _ROUTE + "HeaderMatcher": {
        "name": OK,
        "exact_match": OK,
        "safe_regex_match": OK,
        "range_match": OK,
        "present_match": OK,
        "prefix_match": OK,
        "suffix_match": OK,
        "contains_match": OK,
        "string_match": OK,
        "invert_match": OK,
        "treat_missing_header_as_empty": OK,
    },
    _ROUTE + "DirectResponseAction": {"status": OK, "body": DATA_SOURCE},
    _MATCHER + "StringMatcher": {
        "exact": OK,
        "prefix": OK,
        "suffix": OK,
        "safe_regex": OK,
        "contains": OK,
        "ignore_case": OK,
    },
    _MATCHER + "RegexMatcher": {"google_re2": OPAQUE, "regex": OK},
    "envoy.type.v3.Int64Range": {"start": OK, "end": OK},
    # --- clusters (the xDS cluster now; routing to clusters is issue 8)
    "envoy.config.cluster.v3.Cluster": {
        "name": OK,
        "type": Values({"STATIC": OK, "STRICT_DNS": OK, "LOGICAL_DNS": OK}),
        "connect_timeout": OK,
        "load_assignment": OK,
        "typed_extension_protocol_options": Extension("upstream_protocol_options"),
        "http2_protocol_options": OK,
        "transport_socket": OK,  # the xDS cluster's TLS/mTLS (xds/tls.py)
        "lb_policy": Values({"ROUND_ROBIN": OK, "LEAST_REQUEST": OK}),
        "least_request_lb_config": OK,
        "circuit_breakers": OK,
        "dns_lookup_family": OK,
        "dns_refresh_rate": OK,
        "http_protocol_options": OK,
        "common_http_protocol_options": OK,
        "per_connection_buffer_limit_bytes": OK,
        "max_requests_per_connection": OK,
        "metadata": OPAQUE,
    },
    # upstream/config.py reads these
    "envoy.config.cluster.v3.CircuitBreakers": {"thresholds": OK},
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
        "priority": OK,
        "max_connections": OK,
        "max_pending_requests": OK,
        "max_requests": OK,
        "max_retries": OK,
    },
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": {"choice_count": OK},
    # --- TLS to the xDS server (issue 12 item 3; the xDS cluster's transport_socket)
    _TLS + "UpstreamTlsContext": {"common_tls_context": OK, "sni": OK},
    # --- downstream TLS and listener filters (tls.py, listener/inspectors.py)
    _TLS + "DownstreamTlsContext": {"common_tls_context": OK, "require_client_certificate": OK},
    _TLS + "TlsParameters": {
        "tls_minimum_protocol_version": OK,
        "tls_maximum_protocol_version": OK,
    },
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {
        "initial_read_buffer_size": OK,
        "max_client_hello_size": OK,
        "close_connection_on_client_hello_parsing_errors": OK,
    },
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": {},
    _TLS + "CommonTlsContext": {
        "tls_certificates": OK,
        "validation_context": OK,
        "alpn_protocols": OK,
        "tls_params": OK,
    },
    # The certificates' DataSources are checked by xds/tls.py (filename / inline only).
    _TLS + "TlsCertificate": {"certificate_chain": OPAQUE, "private_key": OPAQUE},
    _TLS + "CertificateValidationContext": {"trusted_ca": OPAQUE},
    _ENDPOINT + "ClusterLoadAssignment": {"cluster_name": OK, "endpoints": OK},
    _ENDPOINT + "LocalityLbEndpoints": {"locality": OK, "lb_endpoints": OK},
    _ENDPOINT + "LbEndpoint": {"endpoint": OK, "metadata": OPAQUE},
    _ENDPOINT + "Endpoint": {"address": OK},
    _UPSTREAM_HTTP: {
        "explicit_http_config": OK,
        "common_http_protocol_options": OK,
        "use_downstream_protocol_config": OK,
    },
    _UPSTREAM_HTTP + ".UseDownstreamHttpConfig": {
        "http_protocol_options": OK,
        "http2_protocol_options": OK,
    },
    _UPSTREAM_HTTP + ".ExplicitHttpConfig": {
        "http_protocol_options": OK,
        "http2_protocol_options": OK,
    },
}

# Message types checked as a whole value, never field by field.
LEAF_TYPES: frozenset[str] = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.BoolValue",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.Empty",
    }
)


@dataclass
class _Findings:
    errors: list[str] = field(default_factory=list)
    inert: list[str] = field(default_factory=list)

    def add_relocated(self, found: tuple[tuple[str, ...], tuple[str, ...]], path: str) -> None:
        """Findings computed under RELATIVE_ROOT, as if found under `path`."""
        self.errors += relocate(found[0], path)
        self.inert += relocate(found[1], path)


def _relative_findings(
    check: Callable[[_Findings], None],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    relative = _Findings()
    check(relative)
    return tuple(relative.errors), tuple(relative.inert)


def _status(rule: Later) -> str | None:
    return None if rule.issue in IMPLEMENTED_ISSUES else "not supported yet"


def _check(
    message: Message, path: str, findings: _Findings, table: Mapping[str, Rule] | None = None
) -> None:
    name = message.DESCRIPTOR.full_name
    if name in LEAF_TYPES:
        return
    if table is None:
        if path and name in CACHED_SUBTREES:
            _check_cached(message, name, path, findings)
            return
        table = TABLE.get(name, {})
    _check_fields(message, path, findings, table)


def _check_cached(message: Message, name: str, path: str, findings: _Findings) -> None:
    """A message that repeats byte for byte (a filter chain): checked once per content."""
    packed = message.SerializeToString()
    table = TABLE.get(name, {})
    found = cached(
        _packed_findings,
        (name, packed, IMPLEMENTED_ISSUES),
        len(packed),
        lambda: _relative_findings(lambda f: _check_fields(message, RELATIVE_ROOT, f, table)),
    )
    findings.add_relocated(found, path)


def _check_fields(
    message: Message, path: str, findings: _Findings, table: Mapping[str, Rule]
) -> None:
    for descriptor, value in message.ListFields():
        field_path = join_path(path, descriptor.name)
        rule = table.get(descriptor.name)
        if rule is None:
            findings.errors.append(f"{field_path}: not supported")
        elif isinstance(rule, Later):
            reason = _status(rule)
            if reason is not None:
                findings.errors.append(f"{field_path}: {reason}")
            else:
                _descend(descriptor, value, field_path, findings)
        elif isinstance(rule, Inert):
            findings.inert.append(field_path)
        elif isinstance(rule, InertExcept):
            for position, item in enumerate(value):
                item_path = f"{field_path}[{position}]"
                if rule.active(item):
                    _check(item, item_path, findings)
                else:
                    findings.inert.append(item_path)
        elif isinstance(rule, Values):
            _check_value(descriptor, value, rule, field_path, findings)
        elif isinstance(rule, Extension):
            _check_extension(descriptor, value, rule, field_path, findings, message)
        elif isinstance(rule, Supported):
            _descend(descriptor, value, field_path, findings, rule.fields)
    for field_name, rule in table.items():
        if isinstance(rule, Extension) and rule.required:
            descriptor = message.DESCRIPTOR.fields_by_name[field_name]
            if not descriptor.is_repeated and not message.HasField(field_name):
                findings.errors.append(f"{join_path(path, field_name)}: is required")


def _descend(
    descriptor: FieldDescriptor,
    value: object,
    path: str,
    findings: _Findings,
    table: Mapping[str, Rule] | None = None,
) -> None:
    if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
        return
    if descriptor.message_type.GetOptions().map_entry:
        value_field = descriptor.message_type.fields_by_name["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            for key in sorted(value):
                _check(value[key], map_key_path(path, key), findings, table)
    elif descriptor.is_repeated:
        for position, item in enumerate(value):
            _check(item, f"{path}[{position}]", findings, table)
    else:
        _check(value, path, findings, table)


def _check_value(
    descriptor: FieldDescriptor, value: object, rule: Values, path: str, findings: _Findings
) -> None:
    shown = value
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        enum_value = descriptor.enum_type.values_by_number.get(value)
        shown = enum_value.name if enum_value is not None else value
    allowed = rule.allowed.get(shown)
    if allowed is None:
        findings.errors.append(f"{path}: {shown} not supported")
    elif isinstance(allowed, Later):
        reason = _status(allowed)
        if reason is not None:
            findings.errors.append(f"{path}: {shown} {reason}")


def _check_extension(
    descriptor: FieldDescriptor,
    value: object,
    rule: Extension,
    path: str,
    findings: _Findings,
    parent: Message,
) -> None:
    if descriptor.message_type.GetOptions().map_entry:
        for key in sorted(value):
            _check_any(value[key], rule, map_key_path(path, key), findings, optional=False)
        return
    optional = bool(getattr(parent, "is_optional", False))
    _check_any(value, rule, path, findings, optional=optional)


def _check_any(
    any_msg: any_pb2.Any, rule: Extension, path: str, findings: _Findings, optional: bool
) -> None:
    type_url = any_msg.type_url
    if not type_url:
        findings.errors.append(f"{path}: @type is required")
        return
    name = extensions.type_name(type_url)
    category = extensions.CATEGORIES[rule.category]
    if name not in category:
        if optional:
            return  # an optional HTTP filter we do not know is skipped, as Envoy does
        findings.errors.append(f"{path}: @type '{type_url}' not supported")
        return
    later = extensions.LATER.get(name)
    if later is not None and later not in IMPLEMENTED_ISSUES:
        findings.errors.append(f"{path}: @type '{type_url}' not supported yet")
        return
    if not path:
        _check_packed(any_msg, path, findings)
        return
    # What is inside depends on the bytes only: checked once per distinct content.
    packed = any_msg.value
    found = cached(
        _packed_findings,
        (type_url, packed, IMPLEMENTED_ISSUES),
        len(packed),
        lambda: _relative_findings(lambda f: _check_packed(any_msg, RELATIVE_ROOT, f)),
    )
    findings.add_relocated(found, path)


def _check_packed(any_msg: any_pb2.Any, path: str, findings: _Findings) -> None:
    try:
        inner = extensions.unpack(any_msg, path)
    except ConfigError as error:
        findings.errors.append(str(error))
        return
    _check(inner, path, findings)


# (type URL or type name, bytes, IMPLEMENTED_ISSUES) -> (errors, inert paths), under
# RELATIVE_ROOT: an Any's content, or a message of CACHED_SUBTREES.
_packed_findings: BoundedCache[tuple[str, bytes, frozenset[int]], tuple[tuple[str, ...], ...]] = (
    BoundedCache.for_config_bytes()
)


def listener_errors(listener: listener_pb2.Listener) -> list[str]:
    """Proto constraint violations, else what we do not support: the LDS path's check.

    The listeners of a fleet differ in name and address only, so everything else is checked
    once per content: keyed by the listener's bytes without those two fields."""
    if not listener.HasField("address"):
        return validate_message(listener) or check_listener(listener)
    shape = listener_pb2.Listener()
    shape.CopyFrom(listener)
    shape.ClearField("name")
    shape.ClearField("address")
    key = shape.SerializeToString()
    violations, unsupported = cached(_listener_shapes, key, len(key), lambda: _shape_errors(shape))
    address_violations = validate_message(listener.address, "address")
    if address_violations or violations:
        return address_violations + list(violations)
    findings = _Findings()
    _check(listener.address, "address", findings)
    return _listener_semantics(listener, "") + findings.errors + list(unsupported)


def _shape_errors(shape: listener_pb2.Listener) -> tuple[tuple[str, ...], tuple[str, ...]]:
    findings = _Findings()
    _check(shape, "", findings)
    return tuple(validate_message(shape)), tuple(findings.errors)


# A listener's bytes without name and address -> (violations, unsupported fields).
_listener_shapes: BoundedCache[bytes, tuple[tuple[str, ...], tuple[str, ...]]] = (
    BoundedCache.for_config_bytes()
)


def check_listener(listener: listener_pb2.Listener, path: str = "") -> list[str]:
    """Errors for fields of a listener that we do not support (LDS NACKs with these lines)."""
    findings = _Findings()
    _check(listener, path, findings)
    return _listener_semantics(listener, path) + findings.errors


def _listener_semantics(listener: listener_pb2.Listener, path: str) -> list[str]:
    """What Envoy refuses when it adds a listener, beyond the PGV rules."""
    errors = []
    if not listener.HasField("address"):
        errors.append(f"{join_path(path, 'address')}: is required")
    addresses = [(join_path(path, "address"), listener.address)] + [
        (join_path(path, f"additional_addresses[{i}].address"), extra.address)
        for i, extra in enumerate(listener.additional_addresses)
    ]
    for address_path, address in addresses:
        if address.HasField("socket_address"):
            errors += _ip_literal(address.socket_address, f"{address_path}.socket_address")
    if not listener.filter_chains and not listener.HasField("default_filter_chain"):
        errors.append(f"{join_path(path, 'filter_chains')}: must have at least 1 item, got 0")
    return errors


def _ip_literal(socket_address: address_pb2.SocketAddress, path: str) -> list[str]:
    if canonical_ip(socket_address.address) is None:
        return [f"{path}.address: must be an IP address, got {socket_address.address!r}"]
    return []


def address_key(socket_address: address_pb2.SocketAddress) -> str:
    """`ip:port` as Envoy prints it (`[::1]:80` for IPv6)."""
    host = socket_address.address
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{socket_address.port_value}"


def check_bootstrap(b: bootstrap_pb2.Bootstrap) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a bootstrap that already passed the PGV rules."""
    findings = _Findings()
    _check(b, "", findings)
    errors: list[str] = []
    for position, listener in enumerate(b.static_resources.listeners):
        errors += _listener_semantics(listener, f"static_resources.listeners[{position}]")
    errors += findings.errors + _cross_references(b)
    warnings = []
    if findings.inert:
        warnings.append(
            f"{', '.join(findings.inert)}: accepted and ignored (no effect in xds-proxy)"
        )
    return errors, warnings


def _cross_references(b: bootstrap_pb2.Bootstrap) -> list[str]:
    """What Envoy checks when it starts: unique names, xDS clusters that exist, ADS configured."""
    errors: list[str] = []
    errors += _duplicates([lst.name for lst in b.static_resources.listeners], "listeners")
    errors += _duplicate_addresses(b.static_resources.listeners)
    cluster_names = [cluster.name for cluster in b.static_resources.clusters]
    errors += _duplicates(cluster_names, "clusters")
    errors += _static_cluster_ips(b.static_resources.clusters)
    errors += limits.global_limit_errors(b)
    dynamic = b.dynamic_resources
    sources: list[tuple[str, object]] = []
    if dynamic.HasField("lds_config"):
        if dynamic.lds_config.HasField("api_config_source"):
            sources.append(
                (
                    "dynamic_resources.lds_config.api_config_source",
                    dynamic.lds_config.api_config_source,
                )
            )
        if dynamic.lds_config.HasField("ads") and not dynamic.HasField("ads_config"):
            errors.append("dynamic_resources.lds_config.ads: needs dynamic_resources.ads_config")
    if dynamic.HasField("ads_config"):
        sources.append(("dynamic_resources.ads_config", dynamic.ads_config))
    for path, source in sources:
        if len(source.grpc_services) != 1:
            errors.append(
                f"{path}.grpc_services: must have exactly 1 item, got {len(source.grpc_services)}"
            )
            continue
        grpc = source.grpc_services[0]
        if grpc.HasField("envoy_grpc") and grpc.envoy_grpc.cluster_name not in cluster_names:
            errors.append(
                f"{path}.grpc_services[0].envoy_grpc.cluster_name: unknown cluster"
                f" '{grpc.envoy_grpc.cluster_name}' (not in static_resources.clusters)"
            )
    return errors


def _duplicate_addresses(listeners) -> list[str]:
    owners: dict[str, str] = {}
    errors = []
    for position, listener in enumerate(listeners):
        socket_address = listener.address.socket_address
        if not listener.address.HasField("socket_address") or socket_address.port_value == 0:
            continue
        key = address_key(socket_address)
        if key in owners:
            errors.append(
                f"static_resources.listeners[{position}].address: duplicate address '{key}'"
                f" (listener '{owners[key]}')"
            )
        else:
            owners[key] = listener.name
    return errors


def _static_cluster_ips(clusters) -> list[str]:
    """A STATIC cluster's endpoints are IP literals (Envoy: malformed IP address)."""
    errors = []
    for c_index, cluster in enumerate(clusters):
        if cluster.type != cluster_pb2.Cluster.STATIC:
            continue
        for e_index, locality in enumerate(cluster.load_assignment.endpoints):
            for l_index, lb_endpoint in enumerate(locality.lb_endpoints):
                address = lb_endpoint.endpoint.address
                if address.HasField("socket_address"):
                    errors += _ip_literal(
                        address.socket_address,
                        f"static_resources.clusters[{c_index}].load_assignment.endpoints"
                        f"[{e_index}].lb_endpoints[{l_index}].endpoint.address.socket_address",
                    )
    return errors


def _duplicates(names: list[str], section: str) -> list[str]:
    seen: set[str] = set()
    errors = []
    for position, name in enumerate(names):
        if name in seen:
            errors.append(f"static_resources.{section}[{position}].name: duplicate name '{name}'")
        seen.add(name)
    return errors
