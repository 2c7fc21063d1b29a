"""The route registry without a control plane: handles per name, users, route tables swapped
in place, the NACK texts, and handles forgotten once no listener version uses a name."""

from __future__ import annotations

import asyncio

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from xds_proxy.listener.actions import RoutesFailed, RoutesReady, RouteState
from xds_proxy.routes.registry import RouteRegistry
from xds_proxy.stats import Stats

BOOTSTRAP = {
    "dynamic_resources": {
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
        }
    },
    "static_resources": {
        "clusters": [
            {
                "name": "xds",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": 1,
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


def rds(name: str) -> hcm_pb2.Rds:
    message = hcm_pb2.Rds(route_config_name=name)
    message.config_source.ads.SetInParent()
    message.config_source.initial_fetch_timeout.FromJsonString("0s")
    return message


def config(name: str, body: str, regex: str | None = None) -> route_pb2.RouteConfiguration:
    match = {"safe_regex": {"regex": regex}} if regex else {"prefix": "/"}
    document = {
        "name": name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": match,
                        "direct_response": {"status": 200, "body": {"inline_string": body}},
                    }
                ],
            }
        ],
    }
    return json_format.ParseDict(document, route_pb2.RouteConfiguration())


def make(in_use: set[str], events: list) -> RouteRegistry:
    bootstrap = json_format.ParseDict(BOOTSTRAP, bootstrap_pb2.Bootstrap())
    return RouteRegistry(
        Stats(),
        bootstrap,
        None,
        events.append,
        ads_coming=lambda: True,  # no stream in a unit test
        names_in_use=lambda: in_use,
    )


def test_a_route_config_swaps_every_handle_of_its_name_and_nacks_in_envoys_words() -> None:
    async def scenario() -> None:
        events: list = []
        registry = make(set(), events)
        handle = registry.handle(rds("R"), "L", "envoy", False, "hcm")
        assert registry.handle(rds("R"), "L2", "envoy", False, "hcm") is handle
        assert handle.current.virtual_host("x") is None  # empty: 404 until R arrives
        registry.watch(1, ("R",))
        client = object()
        registry.subscriptions.by_name["R"].client = client  # type: ignore[assignment]
        assert registry.apply_named(client, "r1", [(config("R", "v1"), "r1")], []) is None  # type: ignore[arg-type]
        assert events == [RoutesReady("R")] and registry.state("R") is RouteState.READY
        assert handle.current.virtual_host("x") is not None
        bad = config("R", "x", regex="(abc")
        assert registry.apply_named(client, "r2", [(bad, "r2")], []) == "missing ): (abc"  # type: ignore[arg-type]
        assert [name for name, *_ in registry.held()] == ["R"]

    asyncio.run(scenario())


def test_a_nack_before_any_copy_fails_the_name() -> None:
    async def scenario() -> None:
        events: list = []
        registry = make(set(), events)
        registry.handle(rds("R"), "L", "envoy", False, "hcm")
        registry.watch(1, ("R",))
        client = object()
        registry.subscriptions.by_name["R"].client = client  # type: ignore[assignment]
        bad = config("R", "x", regex="(abc")
        assert registry.apply_named(client, "r1", [(bad, "r1")], []) is not None  # type: ignore[arg-type]
        assert events == [RoutesFailed("R")] and registry.state("R") is RouteState.FAILED

    asyncio.run(scenario())


def test_handles_of_a_name_nobody_uses_are_forgotten() -> None:
    async def scenario() -> None:
        in_use = {"R"}
        registry = make(in_use, [])
        first = registry.handle(rds("R"), "L", "envoy", False, "hcm")
        registry.watch(1, ("R",))
        registry.unwatch(1)
        registry.flush()  # still used by a version the manager holds: kept
        assert registry.handle(rds("R"), "L", "envoy", False, "hcm") is first
        registry.watch(2, ("R",))
        registry.unwatch(2)
        in_use.clear()
        registry.flush()
        assert registry.handle(rds("R"), "L", "envoy", False, "hcm") is not first

    asyncio.run(scenario())


def test_a_name_handed_from_one_version_to_another_in_one_batch_keeps_its_routes() -> None:
    async def scenario() -> None:
        registry = make(set(), [])
        handle = registry.handle(rds("R"), "L", "envoy", False, "hcm")
        registry.watch(1, ("R",))
        client = object()
        registry.subscriptions.by_name["R"].client = client  # type: ignore[assignment]
        registry.apply_named(client, "r1", [(config("R", "v1"), "r1")], [])  # type: ignore[arg-type]
        registry.unwatch(1)  # e.g. a discarded warming version ...
        registry.watch(2, ("R",))  # ... and the listener that takes R over, same batch
        registry.flush()
        assert registry.state("R") is RouteState.READY
        assert handle.current.virtual_host("x") is not None
        registry.unwatch(2)
        registry.flush()
        assert registry.state("R") is RouteState.PENDING  # let go: unsubscribed
        assert handle.current.virtual_host("x") is None

    asyncio.run(scenario())
