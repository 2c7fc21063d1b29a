"""Reading the LDS server from the bootstrap, with one-line `FIELD_PATH: reason` errors."""

from __future__ import annotations

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from xds_proxy.errors import ConfigError
from xds_proxy.xds.client import LdsClient
from xds_proxy.xds.source import lds_server

CLUSTER = """
static_resources:
  clusters:
  - name: other
    load_assignment:
      cluster_name: other
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 1}}}
  - name: xds
    type: %s
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: "%s", port_value: 18000}}}
"""
LDS = """
dynamic_resources:
  lds_config:
    resource_api_version: V3
    api_config_source:
      api_type: %s
      transport_api_version: V3
      grpc_services: [{envoy_grpc: {cluster_name: xds}}]
"""
ADS = """
dynamic_resources:
  lds_config: {resource_api_version: V3, ads: {}}
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {cluster_name: xds, authority: cp.example}
      initial_metadata: [{key: X-Token, value: abc}]
"""


def bootstrap(text: str) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(yaml.safe_load(text), bootstrap_pb2.Bootstrap())


def lds(api_type: str = "GRPC", kind: str = "STATIC", host: str = "127.0.0.1", extra: str = ""):
    return bootstrap(CLUSTER % (kind, host) + LDS % api_type + extra)


def test_plain_lds_on_a_static_cluster() -> None:
    server = lds_server(lds())
    assert server.aggregated is False
    assert server.target == "127.0.0.1:18000"
    assert server.authority == "xds"
    assert server.initial_fetch_timeout_s == 15.0
    assert server.node_on_first_request_only is False
    assert server.initial_metadata == ()


def test_ads() -> None:
    server = lds_server(bootstrap(CLUSTER % ("STRICT_DNS", "localhost") + ADS))
    assert server.aggregated is True
    assert server.target == "localhost:18000"
    assert server.authority == "cp.example"
    assert server.node_on_first_request_only is True
    assert server.initial_metadata == (("x-token", "abc"),)


def test_ipv6_endpoint_is_bracketed() -> None:
    assert lds_server(lds(host="::1")).target == "[::1]:18000"


@pytest.mark.parametrize(("value", "expected"), [("0s", None), ("0.25s", 0.25), ("3s", 3.0)])
def test_initial_fetch_timeout(value: str, expected: float | None) -> None:
    config = lds()
    config.dynamic_resources.lds_config.initial_fetch_timeout.FromJsonString(value)
    assert lds_server(config).initial_fetch_timeout_s == expected


def rest(fields: str):
    source = "{lds_config: {api_config_source: {api_type: REST, " + fields + "}}}"
    return bootstrap(CLUSTER % ("STATIC", "127.0.0.1") + "dynamic_resources: " + source)


def test_rest_polls_the_named_static_cluster() -> None:
    server = lds_server(rest("cluster_names: [xds], refresh_delay: 0.5s"))
    assert (server.aggregated, server.delta) == (False, False)
    assert server.target == "127.0.0.1:18000"
    assert server.authority == "xds"  # the Host header: the cluster's name, as Envoy
    assert server.rest is not None
    assert (server.rest.host, server.rest.port) == ("127.0.0.1", 18000)
    assert server.rest.refresh_delay_s == 0.5
    assert server.rest.request_timeout_s == 1.0  # Envoy's default
    timed = rest("cluster_names: [xds], refresh_delay: 2s, request_timeout: 0.25s")
    assert lds_server(timed).rest.request_timeout_s == 0.25  # type: ignore[union-attr]
    ipv6 = lds_server(
        bootstrap(
            LDS.replace(
                "grpc_services: [{envoy_grpc: {cluster_name: xds}}]",
                "cluster_names: [xds]\n      refresh_delay: 1s",
            )
            % "REST"
            + CLUSTER % ("STATIC", "::1")
        )
    )
    assert ipv6.rest is not None and ipv6.rest.host == "::1"


def test_grpc_sources_do_not_poll() -> None:
    assert lds_server(lds()).rest is None


def test_configured() -> None:
    assert LdsClient.configured(lds())
    assert not LdsClient.configured(bootstrap(CLUSTER % ("STATIC", "127.0.0.1")))


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            lambda: lds("AGGREGATED_GRPC"),
            "dynamic_resources.lds_config.api_config_source.api_type: AGGREGATED_GRPC not "
            "supported (use GRPC, DELTA_GRPC or REST)",
        ),
        (
            lambda: lds("REST"),
            "dynamic_resources.lds_config.api_config_source.grpc_services: must be empty for "
            "api_type REST",
        ),
        (
            lambda: rest("cluster_names: [xds]"),
            "dynamic_resources.lds_config.api_config_source.refresh_delay: required for "
            "api_type REST",
        ),
        (
            lambda: rest("refresh_delay: 1s"),
            "dynamic_resources.lds_config.api_config_source.cluster_names: exactly one "
            "cluster is needed for api_type REST",
        ),
        (
            lambda: rest("cluster_names: [xds, other], refresh_delay: 1s"),
            "dynamic_resources.lds_config.api_config_source.cluster_names: exactly one "
            "cluster is needed for api_type REST",
        ),
        (
            lambda: rest("cluster_names: [nope], refresh_delay: 1s"),
            "dynamic_resources.lds_config.api_config_source.cluster_names[0]: unknown static "
            "cluster 'nope'",
        ),
        (
            lambda: rest("cluster_names: [xds], refresh_delay: 0s"),
            "dynamic_resources.lds_config.api_config_source.refresh_delay: must be greater than 0",
        ),
        (
            lambda: lds(kind="EDS"),
            "static_resources.clusters[1].type: EDS not supported for the xDS cluster",
        ),
        (
            lambda: bootstrap(
                CLUSTER % ("STATIC", "127.0.0.1") + "dynamic_resources: {lds_config: {ads: {}}}"
            ),
            "dynamic_resources.ads_config: required when dynamic_resources.lds_config.ads is set",
        ),
        (
            lambda: bootstrap(LDS % "GRPC"),
            "dynamic_resources.lds_config.api_config_source.grpc_services[0].envoy_grpc"
            ".cluster_name: unknown static cluster 'xds'",
        ),
        (
            lambda: bootstrap(
                CLUSTER % ("STATIC", "127.0.0.1")
                + "dynamic_resources: {lds_config: {path_config_source: {path: /x}}}"
            ),
            "dynamic_resources.lds_config.path_config_source: not supported",
        ),
        (
            lambda: bootstrap(
                CLUSTER % ("STATIC", "127.0.0.1")
                + "dynamic_resources: {lds_config: {api_config_source: {api_type: GRPC}}}"
            ),
            "dynamic_resources.lds_config.api_config_source.grpc_services: exactly one gRPC "
            "service is supported",
        ),
    ],
)
def test_errors_name_the_field(config, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        lds_server(config())
    assert str(caught.value) == error


def test_delta_grpc_is_a_delta_source() -> None:
    assert lds_server(lds("DELTA_GRPC")).delta
    assert not lds_server(lds("GRPC")).delta


def test_tls_transport_socket_without_its_config_is_named() -> None:
    config = lds()
    config.static_resources.clusters[1].transport_socket.name = "envoy.transport_sockets.tls"
    with pytest.raises(ConfigError) as caught:
        lds_server(config)
    assert str(caught.value) == (
        "static_resources.clusters[1].transport_socket.typed_config: required "
        "(envoy.transport_sockets.tls)"
    )


def test_cluster_without_endpoint() -> None:
    config = lds()
    config.static_resources.clusters[1].ClearField("load_assignment")
    with pytest.raises(ConfigError, match=r"clusters\[1\]\.load_assignment: needs one endpoint"):
        lds_server(config)


@pytest.mark.parametrize(
    ("back_off", "expected"),
    [
        (None, (500, 30_000)),  # Envoy's defaults
        ({"base_interval": "0.1s", "max_interval": "1s"}, (100, 1000)),
        ({"base_interval": "0.2s"}, (200, 2000)),  # the cap defaults to ten times the base
    ],
)
def test_retry_back_off_sets_the_reconnect_interval(back_off, expected) -> None:
    config = lds()
    if back_off is not None:
        envoy_grpc = config.dynamic_resources.lds_config.api_config_source.grpc_services[0]
        json_format.ParseDict({"retry_back_off": back_off}, envoy_grpc.envoy_grpc.retry_policy)
    assert lds_server(config).backoff_ms == expected


def test_a_cap_below_the_base_is_refused() -> None:
    config = lds()
    envoy_grpc = config.dynamic_resources.lds_config.api_config_source.grpc_services[0].envoy_grpc
    envoy_grpc.retry_policy.retry_back_off.base_interval.FromJsonString("2s")
    envoy_grpc.retry_policy.retry_back_off.max_interval.FromJsonString("1s")
    with pytest.raises(ConfigError, match=r"retry_back_off\.max_interval: must be greater"):
        lds_server(config)
