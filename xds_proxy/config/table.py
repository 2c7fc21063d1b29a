"""The one table of the config fields xds-proxy accepts, per message type.

A field set to a non-default value that is not in the table is an error (`path: not supported`),
never silently ignored; a field we will build says `not supported yet` (`NotYet("why")`); the
inert bootstrap sections (they change nothing observable here) are accepted with one warning.
Where the same message means different things in different places, the place says so: a
`Supported(fields=...)` rule on the parent's field replaces the type's table there (an HCM's
`common_http_protocol_options` vs. a cluster's; a certificate's DataSource vs. a body's).

Every field accepted here is read by a builder (tests/unit/test_config_invariant.py).
"""

from __future__ import annotations

from xds_proxy.config.overload import is_global_monitor
from xds_proxy.config.rules import (
    INERT,
    OK,
    OPAQUE,
    Extension,
    InertExcept,
    NotYet,
    Rule,
    Supported,
    Values,
)

_CORE = "envoy.config.core.v3."
_LISTENER = "envoy.config.listener.v3."
_ROUTE = "envoy.config.route.v3."
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3."
_BOOTSTRAP = "envoy.config.bootstrap.v3."
_ENDPOINT = "envoy.config.endpoint.v3."
_MATCHER = "envoy.type.matcher.v3."
_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "envoy.extensions.transport_sockets.tls.v3."

# A DataSource as a response body (direct_response, a route's direct_response): read once.
DATA_SOURCE = Supported(
    {"inline_string": OK, "inline_bytes": OK, "filename": OK, "environment_variable": OK}
)
# A DataSource of TLS material (files are read again when the xDS channel reconnects).
_TLS_DATA_SOURCE = Supported({"filename": OK, "inline_string": OK, "inline_bytes": OK})
_TLS_CERTIFICATES = Supported(
    {"certificate_chain": _TLS_DATA_SOURCE, "private_key": _TLS_DATA_SOURCE}
)
_TLS_VALIDATION = Supported({"trusted_ca": _TLS_DATA_SOURCE})
# SDS references of a TLS context (config/secrets.py; the secret store, xds_proxy/secrets/).
_TLS_SDS = {
    "tls_certificate_sds_secret_configs": OK,
    "validation_context_sds_secret_config": OK,
    "combined_validation_context": Supported(
        {"default_validation_context": _TLS_VALIDATION, "validation_context_sds_secret_config": OK}
    ),
}
_NO_MAX_DURATIONS = NotYet("connection and stream lifetimes are not enforced")
# A DNS cluster's resolver (config/dns_resolver.py): the c-ares extension's servers and options.
_DNS_RESOLVER_OPTIONS = Supported({"use_tcp_for_dns_lookups": OK, "no_default_search_domain": OK})
_DNS_RESOLVERS = Supported({"socket_address": Supported({"address": OK, "port_value": OK})})
_TYPED_DNS_RESOLVER = Supported({"name": OK, "typed_config": Extension("dns_resolver")})
# The consistent-hashing options of the ring hash and Maglev balancers.
_HOSTNAME_HASHING = NotYet("hosts are hashed by their address")
_BOUNDED_LOAD = NotYet("no bounded-load consistent hashing")

# What a cluster (upstream) reads of the protocol option messages it shares with the HCM.
_CLUSTER_HTTP1 = Supported({})  # the upstream HTTP/1.1 client has no options
_UPSTREAM_WINDOWS = NotYet("the upstream HTTP/2 flow-control windows are not configurable")
_CLUSTER_HTTP2 = Supported(
    {
        "max_concurrent_streams": OK,
        "initial_stream_window_size": _UPSTREAM_WINDOWS,
        "initial_connection_window_size": _UPSTREAM_WINDOWS,
    }
)
_CLUSTER_COMMON_HTTP = Supported(
    {
        "idle_timeout": OK,
        "max_requests_per_connection": OK,
        "max_connection_duration": _NO_MAX_DURATIONS,
        "max_stream_duration": _NO_MAX_DURATIONS,
    }
)


# Access logs (config/access_log.py): a text format's source is read once.
_FORMAT_SOURCE = Supported({"inline_string": OK, "inline_bytes": OK, "filename": OK})
_LOG_FORMAT = Supported(
    {
        "text_format_source": _FORMAT_SOURCE,
        "json_format": OK,
        "omit_empty_values": OK,
    }
)
_COMPARISON = Supported({"op": OK, "value": Supported({"default_value": OK, "runtime_key": OK})})
_ACCESS_LOG = "envoy.config.accesslog.v3."
_ACCESS_LOGGERS = "envoy.extensions.access_loggers."
# An AccessLogFilter's filters other than and/or. and_filter / or_filter nest two levels deep
# (a per-place table: the message type is recursive, the table walk is not).
_LEAF_FILTERS: dict[str, Rule] = {
    "status_code_filter": OK,
    "duration_filter": OK,
    "not_health_check_filter": OK,
    "runtime_filter": OK,
    "response_flag_filter": OK,
}
_INNER_FILTERS = Supported(
    {
        **_LEAF_FILTERS,
        "and_filter": Supported({"filters": Supported(_LEAF_FILTERS)}),
        "or_filter": Supported({"filters": Supported(_LEAF_FILTERS)}),
    }
)


# message full name -> {field name -> rule}; a set field absent here is `not supported`.
TABLE: dict[str, dict[str, Rule]] = {
    # --- access logs (config/access_log.py)
    _ACCESS_LOG + "AccessLog": {
        "name": OK,
        "filter": OK,
        "typed_config": Extension("access_logger"),
    },
    _ACCESS_LOG + "AccessLogFilter": {
        **_LEAF_FILTERS,
        "and_filter": Supported({"filters": _INNER_FILTERS}),
        "or_filter": Supported({"filters": _INNER_FILTERS}),
    },
    _ACCESS_LOG + "StatusCodeFilter": {"comparison": _COMPARISON},
    _ACCESS_LOG + "DurationFilter": {"comparison": _COMPARISON},
    _ACCESS_LOG + "NotHealthCheckFilter": {},
    _ACCESS_LOG + "RuntimeFilter": {
        "runtime_key": OK,
        "percent_sampled": OK,
        "use_independent_randomness": OK,
    },
    "envoy.type.v3.FractionalPercent": {"numerator": OK, "denominator": OK},
    _ACCESS_LOG + "ResponseFlagFilter": {"flags": OK},
    _ACCESS_LOGGERS + "file.v3.FileAccessLog": {
        "path": OK,
        "format": OK,
        "json_format": OK,
        "log_format": _LOG_FORMAT,
    },
    _ACCESS_LOGGERS + "stream.v3.StdoutAccessLog": {"log_format": _LOG_FORMAT},
    _ACCESS_LOGGERS + "stream.v3.StderrAccessLog": {"log_format": _LOG_FORMAT},
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
        "resource_monitors": InertExcept(is_global_monitor),
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
    _BOOTSTRAP + "Bootstrap.StaticResources": {"listeners": OK, "clusters": OK, "secrets": OK},
    _BOOTSTRAP + "Bootstrap.DynamicResources": {
        "lds_config": OK,
        "ads_config": OK,
        "cds_config": OK,  # SotW and Delta CDS (xds/cds.py)
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
        "api_type": Values({"GRPC": OK, "DELTA_GRPC": OK, "REST": OK}),  # REST: xds/rest.py
        "transport_api_version": Values({"AUTO": OK, "V3": OK}),
        "grpc_services": OK,
        "cluster_names": OK,  # REST: the one static cluster polled
        "refresh_delay": OK,  # REST: required
        "request_timeout": OK,  # REST: default 1 s
        "rate_limit_settings": NotYet("xDS request rate limiting is not built"),
    },
    _CORE + "GrpcService": {"envoy_grpc": OK},
    _CORE + "GrpcService.EnvoyGrpc": {
        "cluster_name": OK,
        # The xDS stream's reconnect back-off (Envoy reads only retry_back_off here).
        "retry_policy": Supported({"retry_back_off": OK}),
    },
    _CORE + "BackoffStrategy": {"base_interval": OK, "max_interval": OK},
    # --- addresses
    _CORE + "Address": {"socket_address": OK},
    _CORE + "SocketAddress": {
        "protocol": Values({"TCP": OK}),
        "address": OK,
        "port_value": OK,
    },
    # A UNIX stream socket, where a place accepts one (listener/sockets.py binds it).
    _CORE + "Pipe": {"path": OK, "mode": OK},
    _CORE + "CidrRange": {"address_prefix": OK, "prefix_len": OK},
    _CORE + "TransportSocket": {"name": OK, "typed_config": Extension("transport_socket")},
    # --- listeners
    _LISTENER + "Listener": {
        "name": OK,
        "address": Supported({"socket_address": OK, "pipe": OK}),
        "additional_addresses": OK,
        "filter_chains": OK,
        "default_filter_chain": OK,
        "per_connection_buffer_limit_bytes": OK,
        "metadata": OPAQUE,
        "drain_type": OK,
        "listener_filters": OK,
        "listener_filters_timeout": OK,
        "continue_on_listener_filters_timeout": OK,
        "traffic_direction": OK,
        "enable_reuse_port": OK,
        "ignore_global_conn_limit": OK,
        "access_log": OK,  # connection-level lines (access_log/connection.py)
        "stat_prefix": OK,  # listener.<stat_prefix>.* instead of listener.<address>.*
        # The accept loop (uvloop's, under loop.create_server) takes every connection the
        # kernel has queued per readiness event; a bound only spreads the same accepts over
        # more loop iterations (every connection is served either way): docs/hcm-fields.md.
        "max_connections_to_accept_per_socket_event": OK,
        # listener/original_dst.py: redirected connections go to the listener of their
        # original destination, which need not bind a socket.
        "use_original_dst": OK,
        "bind_to_port": OK,
    },
    _LISTENER + "AdditionalAddress": {"address": OK},
    _LISTENER + "FilterChain": {
        "filter_chain_match": OK,
        "filters": OK,
        "metadata": OPAQUE,
        "transport_socket": OK,  # DownstreamTlsContext (config/tls.py)
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
        "codec_type": Values({"AUTO": OK, "HTTP1": OK, "HTTP2": OK}),
        "stat_prefix": OK,
        "route_config": OK,
        "rds": OK,  # config/rds.py, the route registry (xds_proxy/routes/)
        "http_filters": OK,
        "common_http_protocol_options": Supported(
            {
                "idle_timeout": OK,
                "max_headers_count": OK,
                "headers_with_underscores_action": OK,  # config/hcm.py Underscores
                "max_requests_per_connection": NotYet(
                    "closing a downstream connection after N requests is not built"
                ),
                "max_connection_duration": _NO_MAX_DURATIONS,
                "max_stream_duration": _NO_MAX_DURATIONS,
            }
        ),
        "http2_protocol_options": OK,
        "http_protocol_options": OK,
        "server_name": OK,
        "strip_any_host_port": OK,
        "use_remote_address": OK,
        "xff_num_trusted_hops": OK,
        "skip_xff_append": OK,
        "generate_request_id": OK,
        "preserve_external_request_id": OK,
        "server_header_transformation": OK,
        "internal_address_config": OK,  # config/internal_address.py
        "forward_client_cert_details": OK,  # upstream/client_cert.py
        "set_current_client_cert_details": OK,
        # Before routing (http/path_normalization.py).
        "normalize_path": OK,
        "merge_slashes": OK,
        "path_with_escaped_slashes_action": OK,
        "max_request_headers_kb": OK,
        "stream_idle_timeout": OK,
        "request_timeout": OK,
        "request_headers_timeout": OK,
        "drain_timeout": OK,
        "delayed_close_timeout": OK,
        "access_log": OK,  # config/access_log.py
        "upgrade_configs": OK,  # config/hcm.py `upgrades`, http/http1_upgrade.py
    },
    _HCM + "HttpConnectionManager.UpgradeConfig": {
        "upgrade_type": OK,
        "enabled": OK,
        "filters": NotYet("an upgrade's own HTTP filter chain is not built"),
    },
    _HCM + "HttpConnectionManager.InternalAddressConfig": {"unix_sockets": OK, "cidr_ranges": OK},
    _HCM + "HttpConnectionManager.SetCurrentClientCertDetails": {
        "subject": OK,
        "uri": OK,
        "cert": OK,
        "dns": OK,
        "chain": NotYet("Python 3.11's ssl does not give the peer's certificate chain"),
    },
    _HCM + "Rds": {"config_source": OK, "route_config_name": OK},
    _HCM + "HttpFilter": {
        "name": OK,
        "typed_config": Extension("http_filter"),
        "is_optional": OK,
        "disabled": OK,
    },
    "envoy.extensions.filters.http.router.v3.Router": {
        "suppress_envoy_headers": OK,  # config/hcm.py ProxyPolicy
    },
    _CORE + "Http1ProtocolOptions": {"accept_http_10": OK, "default_host_for_http_10": OK},
    # The HCM's (downstream) HTTP/2 settings; a cluster's are _CLUSTER_HTTP2.
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
        "retry_policy": OK,  # config/retry.py; a route's own wins
        "include_request_attempt_count": OK,  # x-envoy-attempt-count upstream
        "include_attempt_count_in_response": OK,  # x-envoy-attempt-count downstream
    },
    _ROUTE + "Route": {
        # Envoy reads the decorator only for tracing (the span name, and the upstream's
        # x-envoy-decorator-operation), and an HCM with `tracing` is refused here.
        "decorator": OPAQUE,
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
        "host_rewrite_header": OK,
        "host_rewrite_path_regex": OK,
        "auto_host_rewrite": OK,  # applied once the cluster has chosen the host
        "timeout": OK,
        "hash_policy": OK,  # config/hash_policy.py, for the ring hash and Maglev balancers
        "retry_policy": OK,  # config/retry.py, carried out by upstream/retry.py
        "upgrade_configs": OK,  # upstream/forward.py ForwardAction.upgrades
        "max_stream_duration": OK,  # upstream/forward.py
    },
    _ROUTE + "RouteAction.MaxStreamDuration": {
        # Only 0s (no limit), what control planes send: a stream's duration is not enforced.
        "max_stream_duration": OK,
        # Envoy then limits the stream to the request's grpc-timeout and answers gRPC
        # requests with grpc-status 4 (we have no gRPC-shaped local replies yet).
        "grpc_timeout_header_max": NotYet(
            "the grpc-timeout header as the stream's duration is not built"
        ),
        "grpc_timeout_header_offset": NotYet("the grpc-timeout header is not read"),
    },
    _ROUTE + "RouteAction.UpgradeConfig": {
        "upgrade_type": OK,
        "enabled": OK,
        "connect_config": NotYet("CONNECT terminated at the proxy is not built"),
    },
    _ROUTE + "RetryPolicy": {
        "retry_on": OK,
        "num_retries": OK,
        "per_try_timeout": OK,
        "per_try_idle_timeout": NotYet("no per-try idle timer: only per_try_timeout"),
        "retry_back_off": OK,
        "retriable_status_codes": OK,
        "retry_host_predicate": OK,
        "host_selection_retry_max_attempts": OK,
        "retriable_headers": NotYet("responses are not matched against header matchers"),
        "retriable_request_headers": NotYet("requests are not matched against header matchers"),
        "rate_limited_retry_back_off": NotYet("no back-off from rate-limit response headers"),
        "retry_priority": NotYet("all hosts are one priority: nothing to spread retries over"),
        "retry_options_predicates": NotYet("no retry options predicate extensions"),
    },
    _ROUTE + "RetryPolicy.RetryBackOff": {"base_interval": OK, "max_interval": OK},
    _ROUTE + "RetryPolicy.RetryHostPredicate": {
        "name": OK,
        "typed_config": Extension("retry_host_predicate"),
    },
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": {},
    _ROUTE + "RouteAction.HashPolicy": {
        "header": OK,
        "cookie": OK,
        "connection_properties": OK,
        "query_parameter": OK,
        "filter_state": NotYet("no filter state objects are set"),
        "terminal": OK,
    },
    _ROUTE + "RouteAction.HashPolicy.Header": {
        "header_name": OK,
        "regex_rewrite": NotYet("header values are hashed as they are"),
    },
    _ROUTE + "RouteAction.HashPolicy.Cookie": {
        "name": OK,
        "ttl": OK,  # a request without the cookie gets one (set-cookie)
        "path": OK,
        "attributes": OK,
    },
    _ROUTE + "RouteAction.HashPolicy.CookieAttribute": {"name": OK, "value": OK},
    _ROUTE + "RouteAction.HashPolicy.ConnectionProperties": {"source_ip": OK},
    _ROUTE + "RouteAction.HashPolicy.QueryParameter": {"name": OK},
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
        "access_log": OK,  # config/access_log.py
        "hash_policy": OK,  # source_ip, for the ring hash and Maglev balancers
    },
    "envoy.type.v3.HashPolicy": {
        "source_ip": OK,
        "filter_state": NotYet("no filter state objects are set"),
    },
    "envoy.type.v3.HashPolicy.SourceIp": {},
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
    _MATCHER + "RegexMatchAndSubstitute": {"pattern": OK, "substitution": OK},
    "envoy.type.v3.Int64Range": {"start": OK, "end": OK},
    # --- clusters (config/cluster.py)
    "envoy.config.cluster.v3.Cluster": {
        "name": OK,
        "type": Values(
            {"STATIC": OK, "STRICT_DNS": OK, "LOGICAL_DNS": OK, "EDS": OK, "ORIGINAL_DST": OK}
        ),
        "eds_cluster_config": OK,  # xds/eds.py (config/endpoints.py builds the assignments)
        "ignore_health_on_host_removal": OK,
        # ORIGINAL_DST (config/original_dst.py, upstream/original_dst.py)
        "original_dst_lb_config": Supported(
            {
                "use_http_header": OK,
                "http_header_name": OK,
                "upstream_port_override": OK,
                "metadata_key": NotYet("no dynamic metadata is set"),
            }
        ),
        "cleanup_interval": OK,
        "connect_timeout": OK,
        "load_assignment": OK,
        "typed_extension_protocol_options": Extension("upstream_protocol_options"),
        "http2_protocol_options": _CLUSTER_HTTP2,
        "transport_socket": OK,  # UpstreamTlsContext (config/tls.py)
        "cluster_type": OK,  # envoy.clusters.dns
        "lb_policy": Values(
            {
                "ROUND_ROBIN": OK,
                "LEAST_REQUEST": OK,
                "RANDOM": OK,
                "RING_HASH": OK,
                "MAGLEV": OK,
                "CLUSTER_PROVIDED": OK,  # ORIGINAL_DST only, as Envoy checks
                "LOAD_BALANCING_POLICY_CONFIG": OK,  # with load_balancing_policy (as Envoy)
            }
        ),
        "least_request_lb_config": OK,
        "ring_hash_lb_config": OK,
        "maglev_lb_config": OK,
        "load_balancing_policy": OK,
        "common_lb_config": OK,
        "health_checks": OK,  # active HTTP and TCP checks (upstream/health_check.py)
        "outlier_detection": OK,  # upstream/outlier.py
        "circuit_breakers": OK,
        "dns_lookup_family": OK,
        "dns_refresh_rate": OK,
        "respect_dns_ttl": OK,  # upstream/dns.py
        "typed_dns_resolver_config": _TYPED_DNS_RESOLVER,
        # (deprecated, as Envoy still reads them: typed_dns_resolver_config wins over both)
        "dns_resolution_config": Supported(
            {"resolvers": _DNS_RESOLVERS, "dns_resolver_options": _DNS_RESOLVER_OPTIONS}
        ),
        "dns_resolvers": _DNS_RESOLVERS,
        "use_tcp_for_dns_lookups": OK,
        "http_protocol_options": _CLUSTER_HTTP1,
        "common_http_protocol_options": _CLUSTER_COMMON_HTTP,
        "per_connection_buffer_limit_bytes": OK,
        "max_requests_per_connection": OK,
        "metadata": OPAQUE,
        "alt_stat_name": OK,  # cluster.<alt_stat_name>.* instead of cluster.<name>.*
        "upstream_bind_config": Supported({"source_address": OK}),
    },
    # (the DEFAULT priority thresholds apply)
    "envoy.config.cluster.v3.CircuitBreakers": {"thresholds": OK},
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
        "priority": OK,
        "max_connections": OK,
        "max_pending_requests": OK,
        "max_requests": OK,
        "max_retries": OK,
        "track_remaining": OK,  # circuit_breakers.default.remaining_* gauges
    },
    "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": {"choice_count": OK},
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig": {
        "minimum_ring_size": OK,
        "maximum_ring_size": OK,
        "hash_function": Values({"XX_HASH": OK, "MURMUR_HASH_2": OK}),
    },
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig": {"table_size": OK},
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig": {
        "use_hostname_for_hashing": _HOSTNAME_HASHING,
        "hash_balance_factor": _BOUNDED_LOAD,
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig": {
        "healthy_panic_threshold": OK,
        "locality_weighted_lb_config": OK,
        "consistent_hashing_lb_config": OK,  # (an empty one: its fields are not built)
    },
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig": {},
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig": {"eds_config": OK, "service_name": OK},
    "envoy.type.v3.Percent": {"value": OK},
    "envoy.config.cluster.v3.OutlierDetection": {
        **{
            name: OK
            for name in (
                "consecutive_5xx",
                "interval",
                "base_ejection_time",
                "max_ejection_percent",
                "enforcing_consecutive_5xx",
                "enforcing_success_rate",
                "success_rate_minimum_hosts",
                "success_rate_request_volume",
                "success_rate_stdev_factor",
                "consecutive_gateway_failure",
                "enforcing_consecutive_gateway_failure",
                "split_external_local_origin_errors",
                "consecutive_local_origin_failure",
                "enforcing_consecutive_local_origin_failure",
                "enforcing_local_origin_success_rate",
                "failure_percentage_threshold",
                "enforcing_failure_percentage",
                "enforcing_failure_percentage_local_origin",
                "failure_percentage_minimum_hosts",
                "failure_percentage_request_volume",
                "max_ejection_time",
                "max_ejection_time_jitter",
                "successful_active_health_check_uneject_host",
                "always_eject_one_host",
            )
        },
        "monitors": NotYet("no outlier detection extensions"),
    },
    _CORE + "HealthCheck": {
        "timeout": OK,
        "interval": OK,
        "initial_jitter": OK,
        "interval_jitter": OK,
        "interval_jitter_percent": OK,
        "unhealthy_threshold": OK,
        "healthy_threshold": OK,
        "reuse_connection": OK,
        "http_health_check": OK,
        "tcp_health_check": OK,
        "no_traffic_interval": OK,
        "no_traffic_healthy_interval": OK,
        "unhealthy_interval": OK,
        "unhealthy_edge_interval": OK,
        "healthy_edge_interval": OK,
        "alt_port": NotYet("checks go to the host's own port"),
        "grpc_health_check": NotYet("HTTP and TCP checks only"),
        "custom_health_check": NotYet("HTTP and TCP checks only"),
        "event_log_path": NotYet("no health check event log"),
        "event_logger": NotYet("no health check event log"),
        "always_log_health_check_failures": NotYet("no health check event log"),
        "always_log_health_check_success": NotYet("no health check event log"),
        "tls_options": NotYet("checks use the cluster's transport socket as it is"),
    },
    _CORE + "HealthCheck.HttpHealthCheck": {
        "host": OK,
        "path": OK,
        "expected_statuses": OK,
        "retriable_statuses": OK,
        "codec_client_type": Values({"HTTP1": OK}),
        "method": Values({"GET": OK}),
        "request_headers_to_add": NotYet("health check requests carry no extra headers"),
        "request_headers_to_remove": NotYet("health check requests carry no extra headers"),
        "send": NotYet("health check requests have no body"),
        "receive": NotYet("only the status is checked"),
        "response_buffer_size": NotYet("only the status is checked"),
    },
    _CORE + "HealthCheck.TcpHealthCheck": {"send": OK, "receive": OK},
    _CORE + "HealthCheck.Payload": {"text": OK, "binary": OK},
    "envoy.config.cluster.v3.Cluster.CustomClusterType": {
        "name": OK,
        "typed_config": Extension("cluster_type"),
    },
    "envoy.extensions.clusters.dns.v3.DnsCluster": {
        "dns_refresh_rate": OK,
        "dns_jitter": OK,
        "dns_lookup_family": OK,
        "all_addresses_in_single_endpoint": OK,
        "respect_dns_ttl": OK,
        "dns_failure_refresh_rate": NotYet("a failed lookup is retried at dns_refresh_rate"),
        "typed_dns_resolver_config": _TYPED_DNS_RESOLVER,
    },
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig": {
        "resolvers": _DNS_RESOLVERS,
        "dns_resolver_options": _DNS_RESOLVER_OPTIONS,
        "use_resolvers_as_fallback": NotYet("the resolvers given are the only ones asked"),
        "filter_unroutable_families": NotYet("both families are asked whatever the interfaces"),
        "udp_max_queries": NotYet("no limit of queries per UDP socket"),
        "query_timeout_seconds": NotYet("dnspython's own timeouts"),
        "query_tries": NotYet("dnspython's own timeouts"),
        "rotate_nameservers": NotYet("the resolvers are asked in order"),
        "edns0_max_payload_size": NotYet("queries are sent without EDNS0"),
        "max_udp_channel_duration": NotYet("no UDP channel refresh"),
        "reinit_channel_on_timeout": NotYet("no UDP channel refresh"),
    },
    "envoy.config.cluster.v3.LoadBalancingPolicy": {"policies": OK},
    "envoy.config.cluster.v3.LoadBalancingPolicy.Policy": {
        "typed_extension_config": Supported(
            {"name": OK, "typed_config": Extension("load_balancing_policy")}
        ),
    },
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin": {
        "slow_start_config": NotYet("no slow start"),
        "locality_lb_config": NotYet("locality weights are not read yet"),
    },
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest": {
        "choice_count": OK,
        "active_request_bias": NotYet("weighted hosts use Envoy's default bias, 1.0"),
        "slow_start_config": NotYet("no slow start"),
        "locality_lb_config": NotYet("locality weights are not read yet"),
        "enable_full_scan": NotYet("only the random choices of `choice_count`"),
        "selection_method": NotYet("only the random choices of `choice_count`"),
    },
    "envoy.extensions.load_balancing_policies.random.v3.Random": {
        "locality_lb_config": NotYet("locality weights are not read yet"),
    },
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash": {
        "hash_function": Values({"XX_HASH": OK, "MURMUR_HASH_2": OK}),
        "minimum_ring_size": OK,
        "maximum_ring_size": OK,
        "use_hostname_for_hashing": _HOSTNAME_HASHING,
        "hash_balance_factor": _BOUNDED_LOAD,
        "consistent_hashing_lb_config": OK,  # (an empty one: its fields are not built)
        "locality_weighted_lb_config": NotYet("locality weights are not read yet"),
    },
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev": {
        "table_size": OK,
        "consistent_hashing_lb_config": OK,  # (an empty one: its fields are not built)
        "locality_weighted_lb_config": NotYet("locality weights are not read yet"),
    },
    "envoy.extensions.load_balancing_policies.common.v3.ConsistentHashingLbConfig": {
        "use_hostname_for_hashing": _HOSTNAME_HASHING,
        "hash_balance_factor": _BOUNDED_LOAD,
        "hash_policy": NotYet("the route's hash_policy is the only hash policy"),
    },
    # --- TLS to upstream hosts and to the xDS server (a cluster's transport_socket)
    _TLS + "UpstreamTlsContext": {
        "common_tls_context": Supported(
            {
                "tls_certificates": _TLS_CERTIFICATES,
                "validation_context": _TLS_VALIDATION,
                **_TLS_SDS,
                "alpn_protocols": OK,
            }
        ),
        "sni": OK,
    },
    # --- downstream TLS (config/tls.py) and listener filters (listener/inspectors.py)
    _TLS + "DownstreamTlsContext": {
        "common_tls_context": Supported(
            {
                "tls_certificates": _TLS_CERTIFICATES,
                "validation_context": _TLS_VALIDATION,
                **_TLS_SDS,
                "alpn_protocols": OK,
                "tls_params": OK,
            }
        ),
        "require_client_certificate": OK,
    },
    _TLS + "SdsSecretConfig": {"name": OK, "sds_config": OK},
    _TLS + "Secret": {
        "name": OK,
        "tls_certificate": _TLS_CERTIFICATES,
        "validation_context": _TLS_VALIDATION,
        "session_ticket_keys": NotYet("TLS session tickets are not configurable"),
        "generic_secret": NotYet("no extension reads generic secrets"),
    },
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
    # --- endpoints: a cluster's load_assignment and EDS (config/endpoints.py)
    _ENDPOINT + "ClusterLoadAssignment": {
        "cluster_name": OK,
        "endpoints": OK,
        "policy": OK,
        "named_endpoints": NotYet("endpoints are listed in `endpoints` only"),
    },
    _ENDPOINT + "ClusterLoadAssignment.Policy": {
        "overprovisioning_factor": OK,
        "drop_overloads": NotYet("no request is dropped by the assignment"),
        "weighted_priority_health": NotYet("a priority's health counts hosts, not weights"),
    },
    _ENDPOINT + "LocalityLbEndpoints": {
        "locality": OK,
        "lb_endpoints": OK,
        "load_balancing_weight": OK,
        "priority": OK,
    },
    _ENDPOINT + "LbEndpoint": {
        "endpoint": OK,
        "metadata": OPAQUE,
        "health_status": OK,  # only HEALTHY and UNKNOWN hosts take traffic (DEGRADED: after)
        "load_balancing_weight": OK,
    },
    _ENDPOINT + "Endpoint": {
        "address": Supported({"socket_address": OK, "pipe": OK}),  # pipe: upstream/connect.py
        "hostname": OK,
        "health_check_config": Supported(
            {
                "port_value": OK,  # active health checks go to that port
                "hostname": NotYet("health checks use the cluster's host header"),
                "address": NotYet("health checks go to the host's own address"),
                "disable_active_health_check": NotYet("every host of a checked cluster is checked"),
            }
        ),
    },
    _UPSTREAM_HTTP: {
        "explicit_http_config": Supported(
            {"http_protocol_options": _CLUSTER_HTTP1, "http2_protocol_options": _CLUSTER_HTTP2}
        ),
        "common_http_protocol_options": _CLUSTER_COMMON_HTTP,
        "use_downstream_protocol_config": Supported(
            {"http_protocol_options": _CLUSTER_HTTP1, "http2_protocol_options": _CLUSTER_HTTP2}
        ),
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
