"""Cluster config translation (pure): defaults, protocols, limits and one-line errors."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.load_balancing_policies.cluster_provided.v3 import (  # noqa: F401 - @type
    cluster_provided_pb2,
)
from google.protobuf import json_format

from tests.helpers.upstreams import cluster_dict
from xds_proxy.config.cluster import (
    CircuitBreakers,
    DiscoveryType,
    DnsFamily,
    EndpointAddress,
    LbPolicy,
    UpstreamProtocol,
    build_cluster_config,
)
from xds_proxy.errors import ConfigError

PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/" + PROTOCOL_OPTIONS_KEY


def parse(document: dict) -> cluster_pb2.Cluster:
    return json_format.ParseDict(document, cluster_pb2.Cluster())


def build(document: dict):
    return build_cluster_config(parse(document), "clusters[0]")


def test_static_defaults() -> None:
    config = build(cluster_dict("web", [8080, 8081]))
    assert config.name == "web"
    assert config.discovery is DiscoveryType.STATIC
    assert config.endpoints == (
        EndpointAddress("127.0.0.1", 8080),
        EndpointAddress("127.0.0.1", 8081),
    )
    assert config.connect_timeout_s == 1.0
    assert config.lb_policy is LbPolicy.ROUND_ROBIN
    assert config.protocol is UpstreamProtocol.HTTP1
    assert config.circuit_breakers == CircuitBreakers(1024, 1024, 1024)
    assert config.idle_timeout_s == 3600.0
    assert config.dns_family is DnsFamily.AUTO


@pytest.mark.parametrize(("value", "limit"), [(None, 1 << 20), (4096, 4096), (0, 1 << 20)])
def test_per_connection_buffer_limit(value: int | None, limit: int) -> None:
    """Envoy's 0 (no limit) keeps the 1 MiB default, as on listeners."""
    fields = {} if value is None else {"per_connection_buffer_limit_bytes": value}
    assert build(cluster_dict("web", [80], **fields)).buffer_limit == limit


def test_connect_timeout_default_is_five_seconds() -> None:
    document = cluster_dict("web", [1])
    del document["connect_timeout"]
    assert build(document).connect_timeout_s == 5.0


def test_http2_by_typed_extension_protocol_options() -> None:
    config = build(cluster_dict("grpc", [1], http2=True))
    assert config.protocol is UpstreamProtocol.HTTP2


def test_http2_by_legacy_field_and_stream_limit() -> None:
    document = cluster_dict("grpc", [1])
    document["http2_protocol_options"] = {"max_concurrent_streams": 7}
    config = build(document)
    assert config.protocol is UpstreamProtocol.HTTP2
    assert config.h2_max_concurrent_streams == 7


def test_explicit_http1_and_common_options() -> None:
    document = cluster_dict("web", [1])
    document["typed_extension_protocol_options"] = {
        PROTOCOL_OPTIONS_KEY: {
            "@type": PROTOCOL_OPTIONS_TYPE,
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {
                "idle_timeout": "2s",
                "max_requests_per_connection": 3,
            },
        }
    }
    config = build(document)
    assert config.protocol is UpstreamProtocol.HTTP1
    assert config.idle_timeout_s == 2.0
    assert config.max_requests_per_connection == 3


def test_circuit_breakers_default_priority_only() -> None:
    document = cluster_dict("web", [1])
    document["circuit_breakers"] = {
        "thresholds": [
            {"priority": "HIGH", "max_connections": 1},
            {"max_connections": 2, "max_pending_requests": 3, "max_requests": 4},
        ]
    }
    assert build(document).circuit_breakers == CircuitBreakers(2, 3, 4)


def test_least_request_with_choice_count() -> None:
    document = cluster_dict("web", [1], lb_policy="LEAST_REQUEST")
    document["least_request_lb_config"] = {"choice_count": 3}
    config = build(document)
    assert config.lb_policy is LbPolicy.LEAST_REQUEST
    assert config.least_request_choices == 3


def test_dns_types_take_host_names() -> None:
    document = cluster_dict("dns", [80], host="localhost", type="STRICT_DNS")
    document["dns_lookup_family"] = "V4_ONLY"
    document["dns_refresh_rate"] = "0.5s"
    config = build(document)
    assert config.discovery is DiscoveryType.STRICT_DNS
    assert config.endpoints == (EndpointAddress("localhost", 80),)
    assert config.dns_family is DnsFamily.V4_ONLY
    assert config.dns_refresh_s == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "load_assignment": {
                    "cluster_name": "web",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "not-an-ip",
                                                "port_value": 1,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                }
            },
            r"^clusters\[0\]\.load_assignment\.endpoints\[0\]\.lb_endpoints\[0\]\.endpoint"
            r"\.address\.socket_address\.address: malformed IP address: not-an-ip$",
        ),
        (
            {"lb_policy": "CLUSTER_PROVIDED"},
            r"^clusters\[0\]: cluster manager: cluster provided LB specified but cluster 'web' "
            r"did not provide one\. Check cluster documentation\.$",
        ),
        (
            {"type": "EDS"},
            r"^clusters\[0\]\.eds_cluster_config: cannot create an EDS cluster without an EDS"
            r" config$",
        ),
        (
            {"close_connections_on_host_health_failure": True},
            r"^clusters\[0\]\.close_connections_on_host_health_failure: not supported$",
        ),
        (
            {"original_dst_lb_config": {"metadata_key": {"key": "k", "path": [{"key": "a"}]}}},
            r"^clusters\[0\]\.original_dst_lb_config\.metadata_key: not supported yet",
        ),
        (
            {"circuit_breakers": {"thresholds": [{"retry_budget": {}}]}},
            r"^clusters\[0\]\.circuit_breakers\.thresholds\[0\]\.retry_budget: not supported$",
        ),
        (
            {"least_request_lb_config": {"choice_count": 1}},
            r"^clusters\[0\]\.least_request_lb_config\.choice_count: must be >= 2, got 1$",
        ),
        ({"connect_timeout": "0s"}, r"^clusters\[0\]\.connect_timeout: must be > 0s, got 0s$"),
    ],
)
def test_errors_are_one_line_with_the_field_path(change: dict, message: str) -> None:
    document = {**cluster_dict("web", [1]), **change}
    with pytest.raises(ConfigError, match=message):
        build(document)


def test_logical_dns_needs_exactly_one_endpoint() -> None:
    document = cluster_dict("dns", [80, 81], host="localhost", type="LOGICAL_DNS")
    with pytest.raises(ConfigError, match=r"single lb_endpoint$"):
        build(document)


def test_unsupported_protocol_options_type() -> None:
    document = cluster_dict("web", [1])
    document["typed_extension_protocol_options"] = {
        PROTOCOL_OPTIONS_KEY: {"@type": PROTOCOL_OPTIONS_TYPE, "auto_config": {}}
    }
    with pytest.raises(
        ConfigError,
        match=r"^clusters\[0\]\.typed_extension_protocol_options\['envoy\.extensions\.upstreams"
        r"\.http\.v3\.HttpProtocolOptions'\]\.auto_config: not supported$",
    ):
        build(document)


def test_use_downstream_protocol_config() -> None:
    document = cluster_dict("web", [1])
    document["typed_extension_protocol_options"] = {
        PROTOCOL_OPTIONS_KEY: {
            "@type": PROTOCOL_OPTIONS_TYPE,
            "use_downstream_protocol_config": {
                "http2_protocol_options": {"max_concurrent_streams": 7}
            },
        }
    }
    config = build(document)
    assert config.protocol is UpstreamProtocol.DOWNSTREAM
    assert config.h2_max_concurrent_streams == 7


LB_POLICY_TYPE = "type.googleapis.com/envoy.extensions.load_balancing_policies."
DNS_CLUSTER_TYPE = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"


def _with_policies(*policies: dict) -> dict:
    document = cluster_dict("web", [1])
    document["load_balancing_policy"] = {
        "policies": [
            {"typed_extension_config": {"name": f"p{i}", "typed_config": policy}}
            for i, policy in enumerate(policies)
        ]
    }
    return document


@pytest.mark.parametrize(
    ("policy", "expected", "choices"),
    [
        ({"@type": LB_POLICY_TYPE + "round_robin.v3.RoundRobin"}, LbPolicy.ROUND_ROBIN, 2),
        ({"@type": LB_POLICY_TYPE + "random.v3.Random"}, LbPolicy.RANDOM, 2),
        ({"@type": LB_POLICY_TYPE + "least_request.v3.LeastRequest"}, LbPolicy.LEAST_REQUEST, 2),
        (
            {"@type": LB_POLICY_TYPE + "least_request.v3.LeastRequest", "choice_count": 5},
            LbPolicy.LEAST_REQUEST,
            5,
        ),
    ],
)
def test_load_balancing_policy_extensions(policy: dict, expected: LbPolicy, choices: int) -> None:
    document = _with_policies(policy, {"@type": LB_POLICY_TYPE + "random.v3.Random"})
    document["lb_policy"] = "LEAST_REQUEST"  # the extension list wins, as in Envoy
    config = build(document)
    assert (config.lb_policy, config.least_request_choices) == (expected, choices)


def test_random_enum_and_empty_common_lb_config() -> None:
    config = build(cluster_dict("web", [1], lb_policy="RANDOM", common_lb_config={}))
    assert config.lb_policy is LbPolicy.RANDOM


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"slow_start_config": {}},
            r"typed_config\.slow_start_config: not supported yet",
        ),
        (
            {"locality_lb_config": {"locality_weighted_lb_config": {}}},
            r"typed_config\.locality_lb_config: not supported yet",
        ),
    ],
)
def test_policy_fields_not_built_are_refused(fields: dict, message: str) -> None:
    document = _with_policies({"@type": LB_POLICY_TYPE + "round_robin.v3.RoundRobin", **fields})
    with pytest.raises(ConfigError, match=message):
        build(document)


def test_an_unknown_policy_is_refused() -> None:
    document = _with_policies({"@type": LB_POLICY_TYPE + "cluster_provided.v3.ClusterProvided"})
    with pytest.raises(ConfigError, match=r"typed_config: @type '.*ClusterProvided' not supported"):
        build(document)


@pytest.mark.parametrize(
    ("fields", "discovery", "family"),
    [
        ({}, DiscoveryType.STRICT_DNS, DnsFamily.AUTO),  # UNSPECIFIED is AUTO, as in Envoy
        (
            {"all_addresses_in_single_endpoint": True, "dns_lookup_family": "V4_ONLY"},
            DiscoveryType.LOGICAL_DNS,
            DnsFamily.V4_ONLY,
        ),
        ({"dns_lookup_family": "ALL"}, DiscoveryType.STRICT_DNS, DnsFamily.ALL),
    ],
)
def test_dns_cluster_type(fields: dict, discovery: DiscoveryType, family: DnsFamily) -> None:
    document = cluster_dict("dns", [80], host="localhost")
    del document["type"]
    document["dns_lookup_family"] = "V6_ONLY"  # the extension's own fields win
    document["cluster_type"] = {
        "name": "envoy.clusters.dns",
        "typed_config": {
            "@type": DNS_CLUSTER_TYPE,
            "dns_refresh_rate": "2s",
            "dns_jitter": "0.5s",
            **fields,
        },
    }
    config = build(document)
    assert (config.discovery, config.dns_family) == (discovery, family)
    assert (config.dns_refresh_s, config.dns_jitter_s) == (2.0, 0.5)


def test_dns_cluster_type_refuses_what_is_not_built() -> None:
    document = cluster_dict("dns", [80], host="localhost")
    del document["type"]
    document["cluster_type"] = {
        "name": "envoy.clusters.dns",
        "typed_config": {
            "@type": DNS_CLUSTER_TYPE,
            "dns_failure_refresh_rate": {"base_interval": "1s"},
        },
    }
    with pytest.raises(
        ConfigError, match=r"typed_config\.dns_failure_refresh_rate: not supported yet$"
    ):
        build(document)
