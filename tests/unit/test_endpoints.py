"""The ClusterLoadAssignment builder (config/endpoints.py) and an EDS cluster's config."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from xds_proxy.config.cluster import DiscoveryType, build_cluster_config
from xds_proxy.config.endpoints import (
    DEFAULT_OVERPROVISIONING_FACTOR,
    EndpointAddress,
    Locality,
    build_assignment,
)
from xds_proxy.errors import ConfigError


def lb_endpoint(address: str, port: int, **fields: Any) -> dict[str, Any]:
    endpoint = {"address": {"socket_address": {"address": address, "port_value": port}}}
    return {"endpoint": endpoint, **fields}


def assignment(document: dict[str, Any]) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(document, endpoint_pb2.ClusterLoadAssignment())


def test_every_lb_endpoint_carries_its_locality_priority_weight_and_health() -> None:
    built = build_assignment(
        assignment(
            {
                "cluster_name": "svc",
                "endpoints": [
                    {
                        "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
                        "load_balancing_weight": 5,
                        "lb_endpoints": [
                            lb_endpoint("10.0.0.1", 80, load_balancing_weight=3),
                            lb_endpoint("10.0.0.2", 80, health_status="DEGRADED"),
                        ],
                    },
                    {
                        "priority": 1,
                        "lb_endpoints": [
                            {
                                **lb_endpoint("10.0.0.3", 81, health_status="UNHEALTHY"),
                                "endpoint": {
                                    **lb_endpoint("10.0.0.3", 81)["endpoint"],
                                    "hostname": "three.example",
                                    "health_check_config": {"port_value": 9},
                                },
                            }
                        ],
                    },
                ],
                "policy": {"overprovisioning_factor": 200},
            }
        ),
        "",
    )
    zone = Locality("r", "z", "s")
    assert built.endpoints == (
        EndpointAddress("10.0.0.1", 80, weight=3, locality=zone, locality_weight=5),
        EndpointAddress(
            "10.0.0.2", 80, health=health_check_pb2.DEGRADED, locality=zone, locality_weight=5
        ),
        EndpointAddress(
            "10.0.0.3",
            81,
            hostname="three.example",
            health=health_check_pb2.UNHEALTHY,
            priority=1,
            health_check_port=9,
        ),
    )
    assert built.overprovisioning_factor == 200


def test_an_empty_assignment_has_no_endpoints_and_the_default_factor() -> None:
    built = build_assignment(assignment({"cluster_name": "svc"}), "")
    assert (built.endpoints, built.overprovisioning_factor) == (
        (),
        DEFAULT_OVERPROVISIONING_FACTOR,
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        # Envoy 1.40's NACK text for an EDS resource.
        (
            {"endpoints": [{"lb_endpoints": [lb_endpoint("not-an-ip", 80)]}]},
            "^malformed IP address: not-an-ip. Consider setting resolver_name or setting cluster"
            " type to 'STRICT_DNS' or 'LOGICAL_DNS'$",
        ),
        (
            {"endpoints": [{"lb_endpoints": [lb_endpoint("10.0.0.1", 80)], "priority": 200}]},
            r"^endpoints\[0\]\.priority: must be <= 128, got 200$",
        ),
        (
            {
                "endpoints": [
                    {"lb_endpoints": [lb_endpoint("10.0.0.1", 80, load_balancing_weight=0)]}
                ]
            },
            r"lb_endpoints\[0\]\.load_balancing_weight: must be >= 1, got 0$",
        ),
        (
            {"policy": {"overprovisioning_factor": 0}},
            r"^policy\.overprovisioning_factor: must be > 0, got 0$",
        ),
        ({"policy": {"drop_overloads": [{"category": "x"}]}}, r"drop_overloads: not supported yet"),
        ({"named_endpoints": {"a": {}}}, r"named_endpoints: not supported yet"),
        (
            {
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    **lb_endpoint("10.0.0.1", 80)["endpoint"],
                                    "health_check_config": {"hostname": "h"},
                                }
                            }
                        ]
                    }
                ]
            },
            r"health_check_config\.hostname: not supported yet",
        ),
    ],
)
def test_an_invalid_assignment_is_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_assignment(assignment({"cluster_name": "svc", **document}), "")


def test_envoy_accepts_duplicate_localities_and_addresses_and_so_do_we() -> None:
    group = {"locality": {"zone": "a"}, "lb_endpoints": [lb_endpoint("10.0.0.1", 80)]}
    built = build_assignment(assignment({"cluster_name": "svc", "endpoints": [group, group]}), "")
    assert len(built.endpoints) == 2


def eds_cluster(**eds: Any) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {"name": "web", "type": "EDS", "eds_cluster_config": eds}, cluster_pb2.Cluster()
    )


def test_an_eds_cluster_names_its_service_or_itself() -> None:
    named = build_cluster_config(eds_cluster(eds_config={"ads": {}}, service_name="svc"), "c")
    assert named.discovery is DiscoveryType.EDS and named.endpoints == ()
    assert named.eds is not None and named.eds.service_name == "svc" and named.eds.aggregated
    itself = build_cluster_config(eds_cluster(eds_config={"ads": {}}), "c")
    assert itself.eds is not None and itself.eds.service_name == "web"


def test_an_eds_cluster_needs_a_usable_source() -> None:
    with pytest.raises(
        ConfigError, match=r"^c\.eds_cluster_config\.eds_config: one of path, path_config_source"
    ):
        build_cluster_config(eds_cluster(eds_config={"initial_fetch_timeout": "1s"}), "c")
    with pytest.raises(ConfigError, match="cannot create an EDS cluster without an EDS config"):
        build_cluster_config(
            json_format.ParseDict({"name": "web", "type": "EDS"}, cluster_pb2.Cluster()), "c"
        )


def test_a_static_cluster_reads_its_load_assignment_with_the_same_builder() -> None:
    cluster = json_format.ParseDict(
        {
            "name": "web",
            "type": "STATIC",
            "common_lb_config": {"locality_weighted_lb_config": {}},
            "load_assignment": {
                "cluster_name": "web",
                "endpoints": [
                    {
                        "priority": 1,
                        "lb_endpoints": [lb_endpoint("10.0.0.1", 80, load_balancing_weight=7)],
                    }
                ],
                "policy": {"overprovisioning_factor": 100},
            },
        },
        cluster_pb2.Cluster(),
    )
    config = build_cluster_config(cluster, "c")
    assert config.endpoints == (EndpointAddress("10.0.0.1", 80, weight=7, priority=1),)
    assert config.overprovisioning_factor == 100 and config.locality_weighted
