"""The config compiler's invariant: every field the support table accepts is read by a builder,
and every field a builder reads is in the table.

For each root a builder compiles (an HCM, a tcp_proxy, a direct_response, a connection_limit,
a cluster, a listener's TLS context, its listener filters), the table is walked from the
root's message type. For every accepted field, a minimal valid config sets that field to a
non-default value (generated from the field's type, or taken from EXAMPLES), passes the
compiler's gate (PGV rules and the support table) and is built; its compiled result must
differ from the result without the field (the "baseline": the same config with the field's
parents present), unless the field is listed in NO_EFFECT with the reason.
The other way round, every field of the same message types that the table refuses is set on a
valid config and built without the gate: the compiled result must not change (a builder that
reads it would need it in the table). Accepted fields outside the builder roots (the listener's
own fields, the bootstrap's) must name their reader in READ_OUTSIDE_BUILDERS.

Compiled results are compared by a structural fingerprint (`fingerprint`): dataclasses,
slotted objects, closures (their code and captured values) and SSL contexts, down to values.
"""

from __future__ import annotations

import base64
import copy
import enum
import re
import ssl
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tests.helpers.certs import CertificateAuthority
from xds_proxy import extensions
from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.config.rds import rds_spec
from xds_proxy.config.rules import Extension, Inert, NotYet, Opaque, Rule, Supported, Values
from xds_proxy.config.secrets import build_secret
from xds_proxy.config.support import require_valid
from xds_proxy.config.table import LEAF_TYPES, TABLE
from xds_proxy.config.tcp_proxy import build_tcp_proxy_settings
from xds_proxy.config.tls import downstream_tls
from xds_proxy.errors import ConfigError
from xds_proxy.http.conn_manager import build_http_connection_manager
from xds_proxy.listener.inspectors import listener_filters
from xds_proxy.listener.limits import connection_limit_config
from xds_proxy.network_filters import build_direct_response_body
from xds_proxy.stats import Counter, Gauge, Stats, TextReadout
from xds_proxy.xds.source import stream_backoff_ms
from xds_proxy.xds.subscriptions import initial_fetch_timeout_s

PREFIX = extensions.TYPE_URL_PREFIX
ROUTER = PREFIX + extensions.ROUTER
UPSTREAM_HTTP = PREFIX + extensions.UPSTREAM_HTTP_PROTOCOL_OPTIONS
UPSTREAM_TLS = PREFIX + extensions.UPSTREAM_TLS
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
BODY_VARIABLE = "XDS_PROXY_INVARIANT_BODY"


# trusted_ca examples (the compiled SSL context lists the CA) and a listener's certificate.
_CA = CertificateAuthority("invariant root")
_SERVER = _CA.issue("invariant server")
CA_PEM = _CA.cert_pem.decode()
BASE_CA_PEM = CertificateAuthority("invariant base root").cert_pem.decode()
SERVER_PEM, SERVER_KEY_PEM = _SERVER.cert_pem.decode(), _SERVER.key_pem.decode()


# -- the roots -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Root:
    name: str
    message_class: type[Message]
    base: dict
    build: Callable[[Message, str], Any]
    # The root's fields this builder reads (None: all); the extensions its Any fields take.
    fields: frozenset[str] | None = None
    extension_types: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("http_filter", (extensions.ROUTER,)),
        (
            "access_logger",
            (
                extensions.FILE_ACCESS_LOG,
                extensions.STDOUT_ACCESS_LOG,
                extensions.STDERR_ACCESS_LOG,
            ),
        ),
        ("upstream_protocol_options", (extensions.UPSTREAM_HTTP_PROTOCOL_OPTIONS,)),
        ("transport_socket", (extensions.UPSTREAM_TLS,)),
        ("retry_host_predicate", (extensions.PREVIOUS_HOSTS,)),
    )


def _duration(message: Any, field: str) -> int | None:
    return getattr(message, field).ToNanoseconds() if message.HasField(field) else None


def _rds_routes(rds: Any, stat_prefix: str, server: str, strip: bool, path: str) -> Any:
    """The route registry's part of an HCM with `rds`: the spec and the source it subscribes
    with (xds/source.py reads the ConfigSource when it subscribes)."""
    spec = rds_spec(rds, path)
    api = spec.source.api_config_source
    clusters = tuple(service.envoy_grpc.cluster_name for service in api.grpc_services)
    backoffs = tuple(stream_backoff_ms(s.envoy_grpc, path) for s in api.grpc_services)
    # REST (xds/source.py _rest_server): the cluster polled, how often, how long a poll waits.
    rest = (tuple(api.cluster_names), _duration(api, "refresh_delay"))
    rest += (_duration(api, "request_timeout"),)
    source = (spec.aggregated, api.api_type, clusters, backoffs, rest)
    return (spec.route_config_name, spec.initial_fetch_timeout_s, source, server, strip)


def _build_downstream_tls(message: Message, path: str) -> Any:
    """A certificate from SDS takes the place of the base's static one (one certificate)."""
    socket = base_pb2.TransportSocket()
    socket.CopyFrom(message)
    context = tls_pb2.DownstreamTlsContext()
    socket.typed_config.Unpack(context)
    if context.common_tls_context.tls_certificate_sds_secret_configs:
        context.common_tls_context.ClearField("tls_certificates")
        socket.typed_config.Pack(context)
    return downstream_tls(socket, path)


def _eds_cluster(message: Message, path: str) -> Any:
    """An EDS cluster's `eds_cluster_config`: the name and the source xds/eds.py subscribes
    with (xds/source.py reads the ConfigSource when it subscribes)."""
    spec = build_cluster_config(message, path).eds  # type: ignore[arg-type]
    assert spec is not None
    api = spec.source.api_config_source
    clusters = tuple(service.envoy_grpc.cluster_name for service in api.grpc_services)
    backoffs = tuple(stream_backoff_ms(s.envoy_grpc, path) for s in api.grpc_services)
    rest = (tuple(api.cluster_names), _duration(api, "refresh_delay"))
    rest += (_duration(api, "request_timeout"),)
    timeout_s = initial_fetch_timeout_s(spec.source)
    source = (spec.aggregated, api.api_type, clusters, backoffs, rest, timeout_s)
    return (spec.service_name, source)


def _build_hcm(message: Message, path: str) -> Any:
    return build_http_connection_manager(
        message,  # type: ignore[arg-type]
        path,
        Stats(),
        _rds_routes,
    )


ROOTS = (
    Root(
        "hcm",
        hcm_pb2.HttpConnectionManager,
        {
            "stat_prefix": "s",
            "route_config": {
                "name": "r",
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                    }
                ],
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
        _build_hcm,
    ),
    Root(
        "tcp_proxy",
        tcp_proxy_pb2.TcpProxy,
        {"stat_prefix": "t", "cluster": "c"},
        lambda message, path: build_tcp_proxy_settings(message, path),  # type: ignore[arg-type]
    ),
    Root("direct_response", direct_response_pb2.Config, {}, build_direct_response_body),
    Root(
        "cluster",
        cluster_pb2.Cluster,
        {
            "name": "c",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": "c",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": 80,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        },
        build_cluster_config,
        extension_types=(
            ("upstream_protocol_options", (extensions.UPSTREAM_HTTP_PROTOCOL_OPTIONS,)),
            ("transport_socket", (extensions.UPSTREAM_TLS,)),
            ("cluster_type", (extensions.DNS_CLUSTER,)),
            ("dns_resolver", (extensions.CARES_DNS_RESOLVER,)),
            (
                "load_balancing_policy",
                (
                    extensions.LEAST_REQUEST,
                    extensions.RANDOM,
                    extensions.ROUND_ROBIN,
                    extensions.RING_HASH,
                    extensions.MAGLEV,
                ),
            ),
        ),
    ),
    Root(
        "eds_cluster",
        cluster_pb2.Cluster,
        {"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}},
        _eds_cluster,
        fields=frozenset({"eds_cluster_config"}),
    ),
    Root(
        "original_dst_cluster",
        cluster_pb2.Cluster,
        {"name": "c", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"},
        build_cluster_config,
        fields=frozenset({"original_dst_lb_config", "cleanup_interval"}),
    ),
    Root(
        "original_dst_header_cluster",
        cluster_pb2.Cluster,
        {
            "name": "c",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {"use_http_header": True},
        },
        build_cluster_config,
        fields=frozenset({"original_dst_lb_config"}),
    ),
    Root(
        "connection_limit",
        connection_limit_pb2.ConnectionLimit,
        {"stat_prefix": "cl", "max_connections": 5},
        connection_limit_config,
    ),
    Root(
        "downstream_tls",
        base_pb2.TransportSocket,
        {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": PREFIX + extensions.DOWNSTREAM_TLS,
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"inline_string": SERVER_PEM},
                            "private_key": {"inline_string": SERVER_KEY_PEM},
                        }
                    ],
                    "validation_context": {"trusted_ca": {"inline_string": BASE_CA_PEM}},
                },
            },
        },
        _build_downstream_tls,
        extension_types=(("transport_socket", (extensions.DOWNSTREAM_TLS,)),),
    ),
    Root(
        "secret",
        secret_pb2.Secret,
        {
            "name": "s",
            "tls_certificate": {
                "certificate_chain": {"inline_string": SERVER_PEM},
                "private_key": {"inline_string": SERVER_KEY_PEM},
            },
        },
        build_secret,  # type: ignore[arg-type]
    ),
    Root(
        "listener_filters",
        listener_pb2.Listener,
        {
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.tls_inspector",
                    "typed_config": {"@type": PREFIX + extensions.TLS_INSPECTOR},
                }
            ]
        },
        listener_filters,
        fields=frozenset(
            {"listener_filters", "listener_filters_timeout", "continue_on_listener_filters_timeout"}
        ),
        extension_types=(
            ("listener_filter", (extensions.TLS_INSPECTOR, extensions.HTTP_INSPECTOR)),
        ),
    ),
)

_SLOW_REQUESTS = {
    "duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 12345}}}
}

# What a message is created with when a path needs it and the base has none (the PGV rules
# refuse it empty). By message full name.
TEMPLATES: dict[str, dict] = {
    "envoy.config.route.v3.HeaderMatcher": {"name": "x-h"},
    "envoy.config.route.v3.WeightedCluster": {"clusters": [{"name": "c", "weight": 1}]},
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": {"name": "c", "weight": 1},
    "envoy.config.route.v3.DirectResponseAction": {"status": 200},
    "envoy.config.core.v3.HeaderValueOption": {"header": {"key": "x-h", "value": "v"}},
    "envoy.config.core.v3.GrpcService.EnvoyGrpc": {"cluster_name": "xds"},
    "envoy.config.core.v3.BackoffStrategy": {"base_interval": "0.1s"},
    "envoy.config.route.v3.RetryPolicy.RetryBackOff": {"base_interval": "0.1s"},
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate": {
        "name": "envoy.retry_host_predicates.previous_hosts"
    },
    "envoy.config.core.v3.SocketAddress": {"address": "127.0.0.6", "port_value": 0},
    "envoy.config.core.v3.CidrRange": {"address_prefix": "10.1.2.3"},
    "envoy.type.matcher.v3.StringMatcher": {"exact": "v"},
    "envoy.type.matcher.v3.RegexMatcher": {"regex": "a"},
    "envoy.type.matcher.v3.RegexMatchAndSubstitute": {"pattern": {"regex": "a"}},
    "envoy.config.core.v3.Pipe": {"path": "/run/p.sock"},
    "envoy.type.v3.Int64Range": {"start": 1, "end": 5},
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds": {
        "route_config_name": "r",
        "config_source": {"ads": {}},
    },
    "envoy.config.accesslog.v3.AccessLogFilter": _SLOW_REQUESTS,
    "envoy.config.accesslog.v3.ComparisonFilter": {"value": {"default_value": 200}},
    "envoy.config.accesslog.v3.StatusCodeFilter": {"comparison": {"value": {"default_value": 200}}},
    "envoy.config.accesslog.v3.DurationFilter": {"comparison": {"value": {"default_value": 5}}},
    "envoy.config.core.v3.RuntimeUInt32": {"default_value": 200},
    "envoy.config.accesslog.v3.RuntimeFilter": {"runtime_key": "k"},
    extensions.FILE_ACCESS_LOG: {"path": "/dev/null"},
    # (a filter needs a logger; the stdout and stderr loggers' fields are walked in it too)
    "envoy.config.accesslog.v3.AccessLog": {
        "typed_config": {"@type": PREFIX + extensions.FILE_ACCESS_LOG, "path": "/dev/null"}
    },
    "envoy.config.core.v3.SubstitutionFormatString": {
        "text_format_source": {"inline_string": "%PROTOCOL%\n"}
    },
    "envoy.config.accesslog.v3.AndFilter": {"filters": [_SLOW_REQUESTS, _SLOW_REQUESTS]},
    "envoy.config.accesslog.v3.OrFilter": {"filters": [_SLOW_REQUESTS, _SLOW_REQUESTS]},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster": {
        "clusters": [{"name": "c", "weight": 1}]
    },
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": {
        "name": "c",
        "weight": 1,
    },
    extensions.UPSTREAM_HTTP_PROTOCOL_OPTIONS: {
        "@type": UPSTREAM_HTTP,
        "explicit_http_config": {"http_protocol_options": {}},
    },
    "envoy.config.core.v3.TransportSocket": {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS},
    },
    "envoy.config.cluster.v3.Cluster.CustomClusterType": {"name": "envoy.clusters.dns"},
    "envoy.config.core.v3.DnsResolutionConfig": {
        "resolvers": [{"socket_address": {"address": "127.0.0.6", "port_value": 53}}]
    },
    "envoy.config.core.v3.HealthCheck": {
        "timeout": "1s",
        "interval": "1s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "http_health_check": {
            "path": "/h",
            "expected_statuses": [{"start": 200, "end": 300}],
            "retriable_statuses": [{"start": 500, "end": 600}],
        },
    },
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck": {
        "path": "/h",
        "expected_statuses": [{"start": 200, "end": 300}],
        "retriable_statuses": [{"start": 500, "end": 600}],
    },
    "envoy.config.core.v3.TypedExtensionConfig": {"name": "policy"},
    "envoy.config.route.v3.RouteAction.HashPolicy": {"header": {"header_name": "x-h"}},
    "envoy.config.route.v3.RouteAction.HashPolicy.Header": {"header_name": "x-h"},
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie": {"name": "c"},
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute": {"name": "SameSite"},
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter": {"name": "q"},
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig": {
        "name": "s",
        "sds_config": {"ads": {}},
    },
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext."
    "CombinedCertificateValidationContext": {
        "default_validation_context": {},
        "validation_context_sds_secret_config": {"name": "s", "sds_config": {"ads": {}}},
    },
    "envoy.config.route.v3.RouteAction.UpgradeConfig": {"upgrade_type": "websocket"},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    ".UpgradeConfig": {"upgrade_type": "websocket"},
}

# Values for fields whose generated values the PGV rules refuse or that need a real thing (a
# file, an environment variable, a certificate). By the field's path without indices, matched
# at its end.
EXAMPLES: dict[str, list[Any]] = {
    "body.filename": [],  # files written by the _files fixture
    "response.filename": [],
    "trusted_ca.filename": [],
    "body.environment_variable": [BODY_VARIABLE],
    "response.environment_variable": [BODY_VARIABLE],
    "trusted_ca.inline_string": [CA_PEM],
    "trusted_ca.inline_bytes": [base64.b64encode(CA_PEM.encode()).decode()],
    "domains": [["a.example"]],
    "server_name": ["proxy"],
    "source_address.address": ["127.0.0.7"],
    "host_rewrite_literal": ["h.example"],
    "host_redirect": ["h.example"],
    "scheme_redirect": ["https"],
    "header.key": ["x-other"],
    "request_headers_to_remove": [["x-r"]],
    "response_headers_to_remove": [["x-r"]],
    "alpn_protocols": [["h2"]],
    "max_request_headers_kb": [1, 96],
    "max_client_hello_size": [4096],
    "tls_minimum_protocol_version": ["TLSv1_3"],
    "tls_maximum_protocol_version": ["TLSv1_2"],
    "initial_stream_window_size": [65535],
    "initial_connection_window_size": [65535],
    "least_request_lb_config.choice_count": [3],
    "range_match.start": [2],
    "range_match.end": [9],
    "dns_refresh_rate": ["7s"],
    "resolvers.socket_address.address": ["127.0.0.9"],
    "dns_resolvers.socket_address.address": ["127.0.0.9"],
    "prefix_rewrite": ["/p"],
    "retry_policy.retry_on": ["5xx"],
    "retry_host_predicate.typed_config": [{"@type": PREFIX + extensions.PREVIOUS_HOSTS}],
    "listener_filters.typed_config": [{"@type": PREFIX + extensions.HTTP_INSPECTOR}],
    "send.text": ["0a0b"],
    "retriable_statuses.end": [550],
    "max_ejection_time": ["400s"],
    "receive.text": ["0a0b"],
    "lb_endpoints.endpoint.address.socket_address.address": ["127.0.0.2"],
    "access_log.typed_config.path": ["/dev/stderr"],
    "access_log.typed_config.format": ["%PROTOCOL%\n"],
    "text_format_source.inline_string": ["%RESPONSE_CODE%\n"],
    "text_format_source.inline_bytes": [base64.b64encode(b"%RESPONSE_CODE%\n").decode()],
    "text_format_source.filename": [],  # written by the _files fixture
    "response_flag_filter.flags": [["UF"]],
    "minimum_ring_size": [64],
    "maximum_ring_size": [4096],
    "table_size": [1031],
    "cidr_ranges.address_prefix": ["fd00::"],
}

# Accepted fields whose value changes nothing a builder produces, with the reason. By root and
# path without indices.
NO_EFFECT: dict[str, str] = {
    "hcm route_config.virtual_hosts.routes.decorator": (
        "Envoy reads it only for tracing, and an HCM with `tracing` is refused"
    ),
    "hcm route_config.virtual_hosts.routes.route.max_stream_duration.max_stream_duration": (
        "only 0s (no limit) builds: ForwardAction refuses any other value as not supported yet"
    ),
    "hcm rds.config_source.ads": "an empty message, which the filled-in Rds already sets",
    "hcm rds.config_source.resource_api_version": (
        "the table accepts AUTO and V3, both mean v3 (V2 is refused)"
    ),
    "hcm rds.config_source.api_config_source.transport_api_version": (
        "the table accepts AUTO and V3, both mean v3 (V2 is refused)"
    ),
    "hcm route_config.name": "names the table in error lines only",
    "hcm access_log.name": "a logger's name: the @type picks the logger (as Envoy)",
    "tcp_proxy access_log.name": "a logger's name: the @type picks the logger (as Envoy)",
    "hcm route_config.virtual_hosts.routes.metadata": "metadata is opaque to the router",
    "hcm route_config.virtual_hosts.routes.match.safe_regex.google_re2": (
        "deprecated in Envoy and ignored there too (RE2 is the only engine)"
    ),
    "hcm route_config.virtual_hosts.routes.match.headers.string_match.safe_regex.google_re2": (
        "deprecated in Envoy and ignored there too (RE2 is the only engine)"
    ),
    "hcm route_config.virtual_hosts.routes.match.headers.safe_regex_match.google_re2": (
        "deprecated in Envoy and ignored there too (RE2 is the only engine)"
    ),
    "hcm route_config.virtual_hosts.routes.route.host_rewrite_path_regex.pattern.google_re2": (
        "deprecated in Envoy and ignored there too (RE2 is the only engine)"
    ),
    "hcm http_filters.name": "a filter's name: the @type picks the filter (as Envoy)",
    "hcm route_config.virtual_hosts.routes.route.retry_policy.retry_host_predicate.name": (
        "a predicate's name: the @type picks the predicate (as Envoy)"
    ),
    "hcm route_config.virtual_hosts.retry_policy.retry_host_predicate.name": (
        "a predicate's name: the @type picks the predicate (as Envoy)"
    ),
    "cluster load_assignment.cluster_name": "the cluster's own name is used (as Envoy)",
    "cluster load_assignment.endpoints.lb_endpoints.endpoint.address.pipe.mode": (
        "a pipe's mode is applied where it is bound (a listener), not by a client (as Envoy)"
    ),
    **{
        f"cluster {name}": "ORIGINAL_DST clusters only (the original_dst_cluster root)"
        for name in (
            "cleanup_interval",
            "original_dst_lb_config.use_http_header",
            "original_dst_lb_config.http_header_name",
            "original_dst_lb_config.upstream_port_override",
        )
    },
    "original_dst_cluster original_dst_lb_config.http_header_name": (
        "Envoy refuses it without use_http_header: the original_dst_header_cluster root"
    ),
    "original_dst_header_cluster original_dst_lb_config.use_http_header": (
        "set in this root's base: the original_dst_cluster root checks it"
    ),
    "cluster metadata": "metadata is opaque to the cluster",
    "cluster load_assignment.endpoints.lb_endpoints.metadata": "metadata is opaque",
    "cluster eds_cluster_config": "read by EDS clusters only (the eds_cluster root), as Envoy",
    "eds_cluster eds_cluster_config.eds_config.ads": (
        "an empty message, which the filled-in base already sets"
    ),
    "eds_cluster eds_cluster_config.eds_config.resource_api_version": (
        "the table accepts AUTO and V3, both mean v3 (V2 is refused)"
    ),
    "eds_cluster eds_cluster_config.eds_config.api_config_source.transport_api_version": (
        "the table accepts AUTO and V3, both mean v3 (V2 is refused)"
    ),
    "cluster http_protocol_options": "selects HTTP/1.1, the default",
    "cluster typed_extension_protocol_options.use_downstream_protocol_config"
    ".http_protocol_options": "the upstream HTTP/1.1 client has no options",
    "cluster circuit_breakers.thresholds.priority": (
        "only DEFAULT thresholds apply: every request is DEFAULT priority (no route priority)"
    ),
    "hcm route_config.virtual_hosts.routes.route.weighted_clusters.total_weight": (
        "only checked against the sum of the weights (as Envoy): nothing else to build"
    ),
    "hcm route_config.max_direct_response_body_size_bytes": (
        "a limit checked while building: a larger body is refused, nothing else changes"
    ),
    "hcm http_filters.is_optional": "only matters for a filter we do not know: it is skipped",
    "hcm http_filters.disabled": (
        "the router is the only HTTP filter: disabling it leaves nothing to answer (refused)"
    ),
    "cluster typed_extension_protocol_options.explicit_http_config.http_protocol_options": (
        "selects HTTP/1.1, the default"
    ),
    "cluster transport_socket.name": "the @type picks the transport socket (as Envoy)",
    "cluster cluster_type.name": "the @type picks the cluster type (as Envoy)",
    "cluster typed_dns_resolver_config.name": "the @type picks the resolver (as Envoy)",
    "cluster cluster_type.typed_config.typed_dns_resolver_config.name": (
        "the @type picks the resolver (as Envoy)"
    ),
    "cluster health_checks.http_health_check.method": (
        "GET, the default, is the only method accepted"
    ),
    "cluster health_checks.http_health_check.codec_client_type": (
        "HTTP1, the default, is the only codec accepted"
    ),
    "cluster load_balancing_policy.policies.typed_extension_config.name": (
        "the @type picks the policy (as Envoy)"
    ),
    "downstream_tls name": "the @type picks the transport socket (as Envoy)",
    "secret name": "the name it is served and referenced by: the secret store's key",
    "listener_filters listener_filters.name": "the @type picks the filter (as Envoy)",
    "listener_filters listener_filters.typed_config.initial_read_buffer_size": (
        "the inspector reads what the socket gives, up to max_client_hello_size: the size of"
        " Envoy's first read changes nothing observable"
    ),
    "connection_limit runtime_enabled.runtime_key": (
        "no runtime layer: the key names nothing, default_value decides"
    ),
    "cluster transport_socket.typed_config.common_tls_context.alpn_protocols": (
        "only h2 is accepted, and it is what the client offers anyway"
    ),
}

# The same, for a field wherever it is nested (access-log filters nest in and/or filters). By
# the end of the path.
NO_EFFECT_ANYWHERE: dict[str, str] = {
    "sds_config.ads": "an empty message, which the filled-in SdsSecretConfig already sets",
    "sds_config.resource_api_version": "the table accepts AUTO and V3, both mean v3",
    "sds_config.api_config_source.transport_api_version": (
        "the table accepts AUTO and V3, both mean v3"
    ),
    "runtime_filter.runtime_key": (
        "no runtime layer: the key names nothing, percent_sampled decides"
    ),
    "runtime_filter.use_independent_randomness": (
        "every sample is drawn independently (no x-request-id based sampling)"
    ),
    "comparison.value.runtime_key": (
        "no runtime layer: the key names nothing, default_value decides"
    ),
}

# Certificate material: a certificate and its key change only together, and an SSL context
# does not show its certificate; tests/unit/test_tls.py and tests/integration/test_xds_tls.py
# load each DataSource kind and handshake with it.
CHECKED_BY_HANDSHAKE = re.compile(r"\.tls_certificates?(\.|$)")


# -- structural fingerprints of compiled results ----------------------------------------------


def fingerprint(value: Any, _stack: tuple[int, ...] = ()) -> Any:
    """A comparable, hashable-free description of a compiled config."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if id(value) in _stack:
        return ("cycle",)
    stack = (*_stack, id(value))
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.name)
    if isinstance(value, (Counter, Gauge, TextReadout)):
        return ("stat", value.name)
    if isinstance(value, Stats):
        return ("stats",)
    if isinstance(value, (tuple, list)):
        return tuple(fingerprint(item, stack) for item in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(fingerprint(item, stack)) for item in value)))
    if isinstance(value, dict):
        items = [(fingerprint(k, stack), fingerprint(v, stack)) for k, v in value.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(value, re.Pattern):
        return ("re", value.pattern, value.flags)
    if isinstance(value, ssl.SSLContext):
        return (
            "ssl",
            value.verify_mode,
            value.check_hostname,
            value.minimum_version,
            value.maximum_version,
            fingerprint(value.get_ca_certs(), stack),
        )
    if isinstance(value, types.FunctionType):
        cells = tuple(fingerprint(cell.cell_contents, stack) for cell in value.__closure__ or ())
        code = value.__code__
        return ("fn", code.co_code, fingerprint(code.co_consts, stack), cells)
    if isinstance(value, types.CodeType):
        return ("code", value.co_code)
    if isinstance(value, types.MethodType):
        return ("method", value.__func__.__qualname__, fingerprint(value.__self__, stack))
    if isinstance(value, types.BuiltinMethodType) or type(value).__name__ == "method-wrapper":
        return ("builtin", value.__name__, fingerprint(getattr(value, "__self__", None), stack))
    if is_dataclass(value):
        return (
            type(value).__name__,
            tuple((f.name, fingerprint(getattr(value, f.name), stack)) for f in fields(value)),
        )
    described = [(type(value).__name__,)]
    for cls in type(value).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(value, slot):
                described.append((slot, fingerprint(getattr(value, slot), stack)))
    if hasattr(value, "__dict__"):
        described.append(fingerprint(vars(value), stack))
    return tuple(described)


# -- walking the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a field path: a field (index 0 when repeated) or a map key; `any_type` when
    the field holds an Any packing that type."""

    field: FieldDescriptor
    key: str | None = None
    any_type: str | None = None


Path = tuple[Step, ...]


def plain(path: Path) -> str:
    return ".".join(step.field.name for step in path)


def accepted_fields(
    descriptor: Descriptor, table: dict[str, Rule], kinds: dict, path: Path = ()
) -> Iterator[tuple[Path, Rule]]:
    """Every (path, rule) the table accepts below a message type, depth first; `kinds`: the
    extension types each Any category takes at this root."""
    for name, rule in table.items():
        field = descriptor.fields_by_name[name]
        step = Step(field)
        if isinstance(rule, (NotYet, Inert)):
            continue
        if isinstance(rule, Extension):
            yield from _extension_fields(field, rule, kinds, path)
            continue
        here = (*path, step)
        sub_table = _sub_table(field, rule)
        if sub_table is None:
            yield here, rule
        else:
            if not sub_table:
                yield here, rule  # a message that can only be present: its presence is the value
            yield from accepted_fields(field.message_type, sub_table, kinds, here)


def _sub_table(field: FieldDescriptor, rule: Rule) -> dict[str, Rule] | None:
    if field.type != FieldDescriptor.TYPE_MESSAGE or isinstance(rule, (Opaque, Values)):
        return None
    name = field.message_type.full_name
    if name in LEAF_TYPES:
        return None
    if isinstance(rule, Supported) and rule.fields is not None:
        return dict(rule.fields)
    return TABLE.get(name, {})


def _extension_fields(
    field: FieldDescriptor, rule: Extension, kinds: dict, path: Path
) -> Iterator[tuple[Path, Rule]]:
    for type_name in kinds.get(rule.category, ()):
        key = HTTP_OPTIONS_KEY if field.message_type.GetOptions().map_entry else None
        step = Step(field, key=key, any_type=type_name)
        descriptor = extensions.resolve_message_class(type_name).DESCRIPTOR
        table = TABLE.get(type_name, {})
        if not table:  # an extension without fields: its @type is the value
            yield (*path, step), rule
        yield from accepted_fields(descriptor, table, kinds, (*path, step))


# -- building configs along a path -------------------------------------------------------------


def _descriptor_at(root: Descriptor, path: Path) -> Descriptor:
    descriptor = root
    for step in path:
        if step.any_type is not None:
            descriptor = extensions.resolve_message_class(step.any_type).DESCRIPTOR
        else:
            descriptor = step.field.message_type
    return descriptor


def _container(document: dict, root: Descriptor, path: Path) -> dict:
    """The dict of the message at `path`, created (from TEMPLATES) where absent; a oneof
    sibling of a created field is removed."""
    del root  # the path's steps carry their descriptors
    node = document
    for step in path:
        field = step.field
        name = field.name
        if field.containing_oneof is not None:
            for sibling in field.containing_oneof.fields:
                if sibling.name != name:
                    node.pop(sibling.name, None)
        target = (
            extensions.resolve_message_class(step.any_type).DESCRIPTOR
            if step.any_type is not None
            else field.message_type
        )
        fresh = copy.deepcopy(TEMPLATES.get(target.full_name, {}))
        if step.any_type is not None:
            fresh.setdefault("@type", PREFIX + step.any_type)
        if step.key is not None:
            node = node.setdefault(name, {}).setdefault(step.key, fresh)
        elif field.is_repeated:
            items = node.setdefault(name, [])
            if not items:
                items.append(fresh)
            node = items[0]
        else:
            node = node.setdefault(name, fresh)
    return node


_WRAPPER_CANDIDATES: dict[str, list[Any]] = {
    "google.protobuf.BoolValue": [True, False],
    "google.protobuf.UInt32Value": [7, 1, 2, 100, 65536, 0],
    "google.protobuf.UInt64Value": [7, 1, 0],
    "google.protobuf.Int32Value": [7, 1, 0],
    "google.protobuf.Int64Value": [7, 1, 0],
    "google.protobuf.DoubleValue": [0.5],
    "google.protobuf.StringValue": ["x1"],
    "google.protobuf.Duration": ["7s", "0s", "0.25s"],
    "google.protobuf.Struct": [{"a": 1}],
}


def candidates(path: Path, rule: Rule) -> list[Any]:
    """Non-default values for the field at the end of `path`."""
    dotted = plain(path)
    for suffix, examples in EXAMPLES.items():
        if dotted == suffix or dotted.endswith("." + suffix):
            return examples
    field = path[-1].field
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        # A wrapper's values, or {}: a message that can only be present.
        values = _WRAPPER_CANDIDATES.get(field.message_type.full_name, [{}])
    elif field.type == FieldDescriptor.TYPE_ENUM:
        names = [value.name for value in field.enum_type.values if value.number != 0]
        if isinstance(rule, Values):
            names = [name for name in names if name in rule.allowed]
        values = names
    elif field.type == FieldDescriptor.TYPE_BOOL:
        values = [True]
    elif field.type == FieldDescriptor.TYPE_STRING:
        values = ["x1", "/p"]
    elif field.type == FieldDescriptor.TYPE_BYTES:
        values = [base64.b64encode(b"x1").decode()]
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        values = [0.5]
    else:
        values = [7, 1, 201, 65536]
    if field.is_repeated and not field.message_type:
        return [[value] for value in values]
    if field.is_repeated:
        return [[value] for value in values]
    return values


def compile_document(root: Root, document: dict, gate: bool = True) -> Any:
    """The compiled result's fingerprint, or None when the config is refused."""
    try:
        message = json_format.ParseDict(document, root.message_class())
    except json_format.ParseError:
        return None
    try:
        if gate:
            require_valid(message, root.name)
        return fingerprint(root.build(message, root.name))
    except ConfigError:
        return None


def root_table(root: Root) -> dict[str, Rule]:
    table = TABLE[root.message_class.DESCRIPTOR.full_name]
    if root.fields is None:
        return table
    return {name: rule for name, rule in table.items() if name in root.fields}


def _cases() -> Iterator[tuple[Root, Path, Rule]]:
    for root in ROOTS:
        kinds = dict(root.extension_types)
        for path, rule in accepted_fields(root.message_class.DESCRIPTOR, root_table(root), kinds):
            yield root, path, rule


CASES = list(_cases())


@pytest.fixture(autouse=True)
def _body_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BODY_VARIABLE, "from the environment")


@pytest.fixture(autouse=True, scope="module")
def _files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Files for the `filename` examples: a small body, a CA certificate."""
    folder = tmp_path_factory.mktemp("invariant")
    body = folder / "body"
    body.write_bytes(b"from a file")
    ca = folder / "ca.pem"
    ca.write_text(CA_PEM)
    log_format = folder / "format"
    log_format.write_text("%RESPONSE_CODE%\n")
    saved = {key: EXAMPLES[key] for key in ("body.filename", "response.filename")}
    saved["text_format_source.filename"] = EXAMPLES["text_format_source.filename"]
    EXAMPLES["text_format_source.filename"] = [str(log_format)]
    saved["trusted_ca.filename"] = EXAMPLES["trusted_ca.filename"]
    EXAMPLES["body.filename"] = EXAMPLES["response.filename"] = [str(body)]
    EXAMPLES["trusted_ca.filename"] = [str(ca)]
    yield
    EXAMPLES.update(saved)


def test_the_walk_reaches_every_builder_root() -> None:
    reached = {f"{root.name} {plain(path)}" for root, path, _ in CASES}
    assert "hcm route_config.virtual_hosts.routes.route.timeout" in reached
    assert "cluster typed_extension_protocol_options.common_http_protocol_options.idle_timeout" in (
        reached
    )
    assert "tcp_proxy weighted_clusters.clusters.weight" in reached
    assert len(reached) > 150


@pytest.mark.parametrize(
    ("root", "path", "rule"), CASES, ids=[f"{r.name}:{plain(p)}" for r, p, _ in CASES]
)
def test_every_accepted_field_is_read(root: Root, path: Path, rule: Rule) -> None:
    where = f"{root.name} {plain(path)}"
    if any(plain(path).endswith(suffix) for suffix in NO_EFFECT_ANYWHERE):
        return
    if _documented(where) or CHECKED_BY_HANDSHAKE.search("." + plain(path)):
        return
    if isinstance(rule, Values) and not candidates(path, rule):
        return  # only the default value is accepted (e.g. protocol: TCP)
    root_descriptor = root.message_class.DESCRIPTOR
    baseline_document = copy.deepcopy(root.base)
    _container(baseline_document, root_descriptor, path[:-1])
    baseline = compile_document(root, baseline_document)
    if baseline is None:
        baseline = compile_document(root, root.base)
    assert baseline is not None, f"{where}: the base config does not compile"
    tried = []
    for value in candidates(path, rule):
        compiled = compile_document(root, _with(baseline_document, root_descriptor, path, value))
        tried.append(value)
        if compiled is not None and compiled != baseline:
            return
    valid = [
        value
        for value in tried
        if compile_document(root, _with(baseline_document, root_descriptor, path, value))
        is not None
    ]
    if not valid:
        pytest.fail(f"{where}: no valid example among {tried!r}; add one to EXAMPLES")
    pytest.fail(
        f"{where}: accepted by the table but no builder reads it (compiled results equal for "
        f"{valid!r}); build it, refuse it (NotYet), or list it in NO_EFFECT with the reason"
    )


def _with(document: dict, root: Descriptor, path: Path, value: Any) -> dict:
    """A copy of `document` with the field at `path` set (its oneof siblings removed)."""
    result = copy.deepcopy(document)
    node = _container(result, root, path[:-1])
    field = path[-1].field
    if field.containing_oneof is not None:
        for sibling in field.containing_oneof.fields:
            node.pop(sibling.name, None)
    node[field.name] = value
    return result


def _documented(where: str) -> bool:
    """Listed in NO_EFFECT, itself or a message above it."""
    return any(where == key or where.startswith(key + ".") for key in NO_EFFECT)


def test_no_effect_entries_name_accepted_fields() -> None:
    """A stale NO_EFFECT entry would hide a field added later under the same name."""
    reached = {f"{root.name} {plain(path)}" for root, path, _ in CASES}
    stale = [key for key in NO_EFFECT if not any(_documented_by(where, key) for where in reached)]
    assert stale == []


def _documented_by(where: str, key: str) -> bool:
    return where == key or where.startswith(key + ".")


# -- the other way round: what the table refuses, no builder reads -----------------------------


def refused_fields(
    descriptor: Descriptor, table: dict[str, Rule], kinds: dict, path: Path = ()
) -> Iterator[tuple[Path, FieldDescriptor]]:
    """Every field of every message type the table reaches (below accepted fields) that the
    table refuses at that place. A refused member of a oneof with an accepted member is left
    out: setting it would unset the accepted one (a change that is not the field's)."""
    for field in descriptor.fields:
        rule = table.get(field.name)
        if not (rule is None or isinstance(rule, NotYet)):
            continue
        oneof = field.containing_oneof
        if oneof is not None and any(_accepts(table.get(member.name)) for member in oneof.fields):
            continue
        yield path, field
    for name, rule in table.items():
        field = descriptor.fields_by_name[name]
        if isinstance(rule, Extension):
            for type_name in kinds.get(rule.category, ()):
                key = HTTP_OPTIONS_KEY if field.message_type.GetOptions().map_entry else None
                step = Step(field, key=key, any_type=type_name)
                inner = extensions.resolve_message_class(type_name).DESCRIPTOR
                yield from refused_fields(inner, TABLE.get(type_name, {}), kinds, (*path, step))
        elif _accepts(rule):
            sub_table = _sub_table(field, rule)
            if sub_table:
                yield from refused_fields(
                    field.message_type, sub_table, kinds, (*path, Step(field))
                )


def _accepts(rule: Rule | None) -> bool:
    return rule is not None and not isinstance(rule, (NotYet, Inert))


def _refused_cases() -> Iterator[tuple[Root, Path, FieldDescriptor]]:
    for root in ROOTS:
        descriptor = root.message_class.DESCRIPTOR
        seen = set()
        refused = refused_fields(descriptor, root_table(root), dict(root.extension_types))
        for path, field in refused:
            if not path and root.fields is not None and field.name not in root.fields:
                continue
            key = (plain(path), field.name)
            if key not in seen:
                seen.add(key)
                yield root, path, field


REFUSED = list(_refused_cases())


def test_the_refused_walk_covers_the_roots() -> None:
    names = {
        f"{root.name} {plain(path)}.{field.name}".replace(" .", " ")
        for root, path, field in REFUSED
    }
    assert "hcm set_current_client_cert_details.chain" in names
    assert "hcm common_http_protocol_options.max_requests_per_connection" in names
    assert "hcm route_config.virtual_hosts.routes.route.retry_policy.retry_priority" in names
    assert "cluster original_dst_lb_config.metadata_key" in names
    assert len(names) > 300


@pytest.mark.parametrize("root", ROOTS, ids=[root.name for root in ROOTS])
def test_no_builder_reads_a_refused_field(root: Root) -> None:
    root_descriptor = root.message_class.DESCRIPTOR
    read = []
    for case_root, path, field in REFUSED:
        if case_root is not root:
            continue
        baseline_document = copy.deepcopy(root.base)
        _container(baseline_document, root_descriptor, path)
        try:
            baseline = compile_document(root, baseline_document, gate=False)
        except Exception:  # parents the gate would refuse (an empty DataSource)
            continue
        if baseline is None:
            continue
        full = (*path, Step(field))
        for value in candidates(full, Supported()):
            try:
                compiled = compile_document(
                    root, _with(baseline_document, root_descriptor, full, value), gate=False
                )
            except Exception:  # a builder that never sees such a config may choke on it
                continue
            if compiled is not None and compiled != baseline:
                read.append(f"{plain(full)} = {value!r}")
                break
    assert read == [], "a builder reads fields the support table refuses"


# -- fields read outside the config builders ----------------------------------------------------


def _table_fields() -> set[str]:
    """Every `Message.field` the table accepts somewhere (type tables and per-place tables)."""
    found: set[str] = set()

    def visit(descriptor: Descriptor, table: dict[str, Rule]) -> None:
        for name, rule in table.items():
            if not _accepts(rule):
                continue
            found.add(f"{descriptor.full_name}.{name}")
            field = descriptor.fields_by_name[name]
            if isinstance(rule, Supported) and rule.fields is not None:
                visit(field.message_type, dict(rule.fields))

    for message_name, table in TABLE.items():
        visit(extensions.resolve_message_class(message_name).DESCRIPTOR, table)
    return found


def _reached_fields() -> set[str]:
    reached: set[str] = set()
    for root, path, _ in CASES:
        descriptor = root.message_class.DESCRIPTOR
        for step in path:
            reached.add(f"{descriptor.full_name}.{step.field.name}")
            descriptor = (
                extensions.resolve_message_class(step.any_type).DESCRIPTOR
                if step.any_type is not None
                else step.field.message_type
            )
    return reached


_LISTENER = "envoy.config.listener.v3."
_BOOTSTRAP = "envoy.config.bootstrap.v3."
_CORE = "envoy.config.core.v3."

# Accepted fields that the builder roots above do not reach: the listener manager and runtime,
# the filter chain matcher, the xDS clients and the server read them (their own tests cover
# them). A field added to the table outside the builder roots must be listed here with its
# reader, or reached by a root.
READ_OUTSIDE_BUILDERS: dict[str, str] = {
    _BOOTSTRAP + "Bootstrap.node": "xds/client.py (sent with every request)",
    _BOOTSTRAP + "Bootstrap.static_resources": "server.py",
    _BOOTSTRAP + "Bootstrap.StaticResources.listeners": "listener/manager.py add_static",
    _BOOTSTRAP + "Bootstrap.StaticResources.clusters": "upstream/manager.py",
    _BOOTSTRAP + "Bootstrap.StaticResources.secrets": "secrets/store.py add_static",
    _BOOTSTRAP + "Bootstrap.dynamic_resources": "xds/source.py",
    _BOOTSTRAP + "Bootstrap.DynamicResources.lds_config": "xds/source.py",
    _BOOTSTRAP + "Bootstrap.DynamicResources.cds_config": "xds/source.py",
    _BOOTSTRAP + "Bootstrap.DynamicResources.ads_config": "xds/source.py",
    _BOOTSTRAP + "Bootstrap.admin": "admin/server.py",
    _BOOTSTRAP + "Admin.address": "admin/server.py",
    _BOOTSTRAP + "Admin.ignore_global_conn_limit": (
        "no effect: the admin listener never counts toward the global limit (as Envoy 1.40)"
    ),
    _BOOTSTRAP + "Bootstrap.overload_manager": "listener/limits.py global_limit_from_bootstrap",
    "envoy.config.overload.v3.OverloadManager.resource_monitors": "listener/limits.py",
    "envoy.config.overload.v3.ResourceMonitor.name": "listener/limits.py",
    "envoy.config.overload.v3.ResourceMonitor.typed_config": "listener/limits.py",
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
    ".max_active_downstream_connections": "listener/limits.py",
    _CORE + "Node.id": "xds/client.py",
    _CORE + "Node.cluster": "xds/client.py",
    _CORE + "Node.locality": "xds/client.py (sent as given)",
    _CORE + "Node.metadata": "xds/client.py (sent as given)",
    # ConfigSource, ApiConfigSource, GrpcService: reached through the HCM's `rds` now.
    _LISTENER + "Listener.name": "listener/manager.py",
    _LISTENER + "Listener.address": "listener/manager.py",
    _LISTENER + "Listener.additional_addresses": "listener/manager.py",
    _LISTENER + "AdditionalAddress.address": "listener/manager.py",
    _LISTENER + "Listener.filter_chains": "listener/runtime.py",
    _LISTENER + "Listener.default_filter_chain": "listener/runtime.py, listener/filter_chain.py",
    _LISTENER + "Listener.per_connection_buffer_limit_bytes": "listener/runtime.py",
    _LISTENER + "Listener.metadata": "no effect: metadata is opaque to the listener",
    _LISTENER + "Listener.drain_type": "listener/runtime.py",
    _LISTENER + "Listener.traffic_direction": "listener/manager.py, listener/runtime.py",
    _LISTENER + "Listener.enable_reuse_port": "listener/manager.py",
    _LISTENER + "Listener.ignore_global_conn_limit": "listener/runtime.py",
    _LISTENER + "Listener.stat_prefix": "listener/runtime.py (the listener's stats scope)",
    _LISTENER + "Listener.use_original_dst": "listener/instance.py Acceptor (original_dst.py)",
    _LISTENER + "Listener.bind_to_port": "listener/manager.py binds, listener/runtime.py",
    _LISTENER + "Listener.max_connections_to_accept_per_socket_event": (
        "no effect: the accept loop takes all queued connections per readiness event; a bound "
        "only changes when they are accepted, never whether (docs/hcm-fields.md)"
    ),
    _LISTENER + "Listener.access_log": (
        "listener/instance.py (access_log/connection.py; its loggers are the hcm root's)"
    ),
    _LISTENER + "FilterChain.filter_chain_match": "listener/filter_chain.py",
    _LISTENER + "FilterChain.filters": "network_filters.py build_filter_chain",
    _LISTENER + "FilterChain.metadata": "no effect: metadata is opaque to the chain",
    _LISTENER + "FilterChain.name": "listener/runtime.py (in-place updates keep chains by name)",
    _LISTENER + "FilterChain.transport_socket": "tls.py downstream_tls (the downstream_tls root)",
    _LISTENER + "FilterChain.transport_socket_connect_timeout": "listener/runtime.py",
    _LISTENER + "FilterChainMatch.destination_port": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.prefix_ranges": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.source_type": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.source_prefix_ranges": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.source_ports": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.server_names": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.transport_protocol": "listener/filter_chain.py",
    _LISTENER + "FilterChainMatch.application_protocols": "listener/filter_chain.py",
    _LISTENER + "Filter.name": "network_filters.py (in error lines; the @type picks the filter)",
    _LISTENER + "Filter.typed_config": "network_filters.py (the hcm, tcp_proxy, ... roots)",
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.consistent_hashing_lb_config": (
        "no effect: accepted empty (as control planes send it); its fields are not built yet"
    ),
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash.consistent_hashing_lb_config": (
        "no effect: accepted empty (as control planes send it); its fields are not built yet"
    ),
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev.consistent_hashing_lb_config": (
        "no effect: accepted empty (as control planes send it); its fields are not built yet"
    ),
}


def test_every_accepted_field_is_reached_or_has_a_named_reader() -> None:
    unreached = _table_fields() - _reached_fields()
    assert sorted(unreached - set(READ_OUTSIDE_BUILDERS)) == []
    assert sorted(set(READ_OUTSIDE_BUILDERS) - unreached) == []
