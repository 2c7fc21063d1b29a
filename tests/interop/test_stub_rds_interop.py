"""A real Envoy 1.40 takes its routes from control-plane-stub over RDS, and warms on them.

For RDS over ADS (SotW and Delta) and over the plain RouteDiscoveryService (GRPC and
DELTA_GRPC): a listener whose HCM names route config R is ACKed and warms (its port refuses
connections, `total_listeners_warming 1`, the stub shows Envoy subscribed to R; over Delta the
stub's "R does not exist" counts as an RDS update_success on Envoy, L keeps warming); the stub
pushes R and Envoy serves it; a route-only push changes the answer on the same HTTP/1.1 and
HTTP/2 connections, with no `connection: close`, no GOAWAY and no listener change; a listener
pushed together with the new route config it names warms and serves (the push reaches the
stream as listeners, then routes, and the stub answers Envoy's new subscription); removed
listeners' route configs are unsubscribed once drained, and nothing is NACKed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control_plane_stub.cache import resource_version
from control_plane_stub.resources import ROUTE_TYPE, encode_resources
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.h2_client import H2Client
from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# mode -> (the bootstrap that carries LDS, the HCM's rds.config_source)
DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
GRPC_SOURCE = {"grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}
MODES = {
    "ads-sotw": ("ads-sotw", {"ads": {}}),
    "ads-delta": ("ads-delta", {"ads": {}}),
    "rds-grpc": (
        "lds-grpc",
        {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", **GRPC_SOURCE}},
    ),
    "rds-delta": (
        "lds-delta",
        {
            "api_config_source": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                **GRPC_SOURCE,
            }
        },
    ),
}


def rds_listener(name: str, port: int, route_name: str, source: dict) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "rds": {
                                "route_config_name": route_name,
                                # 0s: no initial_fetch_timeout, the listener warms until R.
                                "config_source": {
                                    **source,
                                    "resource_api_version": "V3",
                                    "initial_fetch_timeout": "0s",
                                },
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def route_config(name: str, body: str) -> dict:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": body}},
                    }
                ],
            }
        ],
    }


def without_retry_policy(bootstrap: dict) -> dict:
    """The examples' bootstraps set an xDS retry_policy, which xds-proxy does not take (its
    own back-off is Envoy's default)."""
    services = bootstrap["dynamic_resources"].get("ads_config", {}).get("grpc_services", [])
    for sources in [services] + [
        bootstrap["dynamic_resources"]
        .get(key, {})
        .get("api_config_source", {})
        .get("grpc_services", [])
        for key in ("lds_config", "cds_config")
    ]:
        for service in sources:
            service.get("envoy_grpc", {}).pop("retry_policy", None)
    return bootstrap


def rds_subscriptions(stub: StubProcess, node: str) -> list[list[str]]:
    return stub.subscriptions(node, ROUTE_TYPE)


def h2_get(client: H2Client) -> tuple[int, str]:
    response = client.response(client.request("/"))
    return response.status, response.body.decode()


PROCESSES = {"envoy": EnvoyProcess, "xds-proxy": ProxyProcess}


@pytest.mark.parametrize("target", sorted(PROCESSES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_envoy_warms_on_rds_and_takes_route_updates_live(
    mode: str, target: str, tmp_path: Path
) -> None:
    """The same scenario against Envoy 1.40 and against xds-proxy."""
    bootstrap_mode, source = MODES[mode]
    node = f"envoy-rds-{mode}"
    port, port2 = free_port(), free_port()
    stub = StubProcess(tmp_path / "stub").start()
    envoy = None
    try:
        bootstrap = with_xds_address(load_bootstrap(bootstrap_mode), stub.xds_address, node_id=node)
        if target == "xds-proxy":
            bootstrap = without_retry_policy(bootstrap)
        envoy = PROCESSES[target](bootstrap, tmp_path / target, extra_args=DRAIN_ARGS).start()
        envoy.wait_ready()

        # 1. A listener whose routes come from RDS, R not served yet: ACKed, and warming.
        listener = rds_listener("L", port, "R", source)
        pushed = stub.client.set_resources(listeners=[listener], routes=[])
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: envoy.stat("listener_manager.total_listeners_warming") == 1,
            timeout=5,
            what="L warming",
        )
        wait_for(lambda: rds_subscriptions(stub, node) == [["R"]], timeout=5, what="RDS [R]")
        assert envoy.stat("listener_manager.total_listeners_active") == 0
        assert envoy.listeners() == {}  # warming listeners are not listed
        assert refused(port)
        # Delta tells "R does not exist" (removed_resources): Envoy counts that as a
        # successful RDS update and keeps L warming. SotW sends an empty response: nothing.
        absent_notice = 1 if mode.endswith("delta") else 0
        wait_for(
            lambda: envoy.stat("http.L.rds.R.update_success") == absent_notice,
            timeout=5,
            what=f"http.L.rds.R.update_success == {absent_notice}",
        )

        # 2. The stub serves R (and a route config nobody asked for): L warms and serves.
        routes = stub.client.set_resources(
            routes=[route_config("R", "R-v1"), route_config("unused", "never")]
        )
        assert routes["listeners"] == pushed["listeners"]
        stub.client.wait(routes["routes"], node=node, timeout=10, section="routes")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        first = get(port)
        assert (first.status, first.text) == (200, "R-v1")
        assert envoy.stat("listener_manager.total_listeners_warming") == 0
        assert envoy.stat("listener_manager.total_listeners_active") == 1
        assert envoy.stat("http.L.rds.R.update_success") == absent_notice + 1
        assert rds_subscriptions(stub, node) == [["R"]]

        # 3. A route-only update: the next request on the same connections gets the new
        #    body; no connection: close, no GOAWAY, no listener change.
        h1 = HttpConnection(port)
        h2 = H2Client(port)
        try:
            assert h1.request().text == "R-v1"
            assert h2_get(h2) == (200, "R-v1")
            listener_stats = envoy.stats("^listener_manager\\.")
            updated = stub.client.set_resources(
                routes=[route_config("R", "R-v2"), route_config("unused", "never")]
            )
            assert updated["listeners"] == pushed["listeners"]
            stub.client.wait(updated["routes"], node=node, timeout=10, section="routes")
            seen = []

            def new_body_on_h1() -> bool:
                response = h1.request()
                seen.append(response)
                return response.text == "R-v2"

            wait_for(new_body_on_h1, timeout=5, what="R-v2 on the kept connection")
            assert all(r.status == 200 and not r.closes for r in seen)
            assert {r.text for r in seen} <= {"R-v1", "R-v2"}
            assert h2_get(h2) == (200, "R-v2")
            assert h2.goaways() == []
            assert envoy.stats("^listener_manager\\.") == listener_stats
            assert envoy.stat("http.L.rds.R.update_success") == absent_notice + 2
            assert not h1.closed_by_peer(timeout=0.2)
        finally:
            h1.close()
            h2.close()

        # 4. A new listener and the route config it names, in one push: Envoy gets the
        #    listener first, subscribes to R2, and the stub answers with R2.
        both = stub.client.set_resources(
            listeners=[listener, rds_listener("L2", port2, "R2", source)],
            routes=[route_config("R", "R-v2"), route_config("R2", "R2-v1")],
        )
        stub.client.wait(both["listeners"], node=node, timeout=10)
        wait_for(lambda: not refused(port2), timeout=5, what="L2 accepting")
        second = get(port2)
        assert (second.status, second.text) == (200, "R2-v1")
        assert get(port).text == "R-v2"
        stub.client.wait(both["routes"], node=node, timeout=10, section="routes")
        subscribed = sorted(name for names in rds_subscriptions(stub, node) for name in names)
        assert subscribed == ["R", "R2"]
        _, dump = envoy.get("/config_dump?resource=dynamic_route_configs")
        held = {
            entry["route_config"]["name"]: entry["version_info"]
            for entry in json.loads(dump)["configs"]
        }
        if mode.endswith("delta"):
            # Delta: each route config carries its own version (the stub's content hash).
            encoded = encode_resources(
                [route_config("R", "R-v2"), route_config("R2", "R2-v1")], ROUTE_TYPE, "routes"
            )
            assert held == {r.name: resource_version(r) for r in encoded}
        else:
            # SotW: the type's version; R did not change in this push (it was re-sent
            # unchanged), so Envoy keeps the version R last changed with.
            assert held == {"R": updated["routes"], "R2": both["routes"]}

        # 5. Listeners removed: once a drained listener is gone, Envoy unsubscribes its
        #    route config (over ADS, an RDS request without the name; the plain service's
        #    stream for it ends). Nothing is NACKed on the way: the stub never sends a
        #    route config that is no longer named.
        stub.client.set_resources(listeners=[listener])
        ads = mode.startswith("ads")
        wait_for(
            lambda: rds_subscriptions(stub, node) == [["R"]], timeout=10, what="R2 unsubscribed"
        )
        stub.client.set_resources(listeners=[])
        wait_for(
            lambda: rds_subscriptions(stub, node) == ([[]] if ads else []),
            timeout=10,
            what="R unsubscribed",
        )
        rows = [
            row
            for entry in stub.client.status()["nodes"]
            for row in entry["streams"]
            if row["type_url"] == ROUTE_TYPE
        ]
        assert all(row["nack"] is None for row in rows)
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()
