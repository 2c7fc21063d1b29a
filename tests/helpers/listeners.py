"""Listener and bootstrap documents for tests, as plain dicts (proto3 JSON form)."""

from __future__ import annotations

from typing import Any

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def hcm(body: str, stat_prefix: str = "ingress_http", **options: Any) -> dict[str, Any]:
    """An HTTP connection manager answering every request with 200 and `body`."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": "local",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": body},
                                },
                            }
                        ],
                    }
                ],
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
            **options,
        },
    }


def chain(body: str, name: str = "", source_prefix: str | None = None, **hcm_options: Any):
    result: dict[str, Any] = {"filters": [hcm(body, **hcm_options)]}
    if name:
        result["name"] = name
    if source_prefix is not None:
        ip, length = source_prefix.split("/")
        result["filter_chain_match"] = {
            "source_prefix_ranges": [{"address_prefix": ip, "prefix_len": int(length)}]
        }
    return result


def http_listener(
    name: str,
    port: int,
    body: str = "hello",
    ip: str = "127.0.0.1",
    chains: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": ip, "port_value": port}},
        "filter_chains": chains if chains is not None else [chain(body)],
        **fields,
    }


def lds_bootstrap(xds_address: str, node_id: str = "test-node", ads: bool = False) -> dict:
    """A bootstrap taking LDS from `xds_address` (plain LDS over gRPC, or ADS)."""
    host, _, port = xds_address.rpartition(":")
    source = {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
    }
    dynamic: dict[str, Any] = {
        "lds_config": {"resource_api_version": "V3", "initial_fetch_timeout": "5s"}
    }
    if ads:
        dynamic["lds_config"]["ads"] = {}
        dynamic["ads_config"] = source
    else:
        dynamic["lds_config"]["api_config_source"] = source
    return {
        "node": {"id": node_id, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": dynamic,
        "static_resources": {
            "clusters": [
                {
                    "name": "xds_cluster",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": PROTOCOL_OPTIONS,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds_cluster",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": host.strip("[]"),
                                                    "port_value": int(port),
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


def bootstrap_for(mode: str, xds_address: str, **kwargs: Any) -> dict:
    """`lds_bootstrap` for "sotw", "ads", "delta" (DELTA_GRPC LDS) or "delta-ads"."""
    bootstrap = lds_bootstrap(xds_address, ads=mode in ("ads", "delta-ads"), **kwargs)
    dynamic = bootstrap["dynamic_resources"]
    if mode == "delta":
        dynamic["lds_config"]["api_config_source"]["api_type"] = "DELTA_GRPC"
    elif mode == "delta-ads":
        dynamic["ads_config"]["api_type"] = "DELTA_GRPC"
    return bootstrap
