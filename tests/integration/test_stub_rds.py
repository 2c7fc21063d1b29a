"""control-plane-stub serving RouteConfigurations to real gRPC clients (XdsProbe).

Over ADS (SotW and Delta) and the plain RouteDiscoveryService: only the route configs a
client names are sent, a push reaches one ADS stream as clusters, listeners, routes, and the
CLI's `push`, `status` and `wait --type routes` know the routes section.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from control_plane_stub.client import StubError
from control_plane_stub.probe import XdsProbe
from control_plane_stub.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from tests.helpers.procs import wait_for
from tests.helpers.stub import StubProcess

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


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


def rds_listener(name: str, route_name: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "rds": {
                                "route_config_name": route_name,
                                "config_source": {"ads": {}, "resource_api_version": "V3"},
                            },
                        },
                    }
                ]
            }
        ],
    }


def bodies(response) -> dict[str, str]:
    """Route config name -> its direct_response body, from a SotW or Delta response."""
    if hasattr(response, "system_version_info"):
        anys = [resource.resource for resource in response.resources]
    else:
        anys = list(response.resources)
    found = {}
    for body in anys:
        message = route_pb2.RouteConfiguration()
        assert body.Unpack(message)
        found[message.name] = message.virtual_hosts[0].routes[0].direct_response.body.inline_string
    return found


async def push(stub: StubProcess, **kwargs) -> dict[str, str]:
    return await asyncio.to_thread(stub.client.set_resources, **kwargs)


def rds_rows(stub: StubProcess, node: str) -> list[dict]:
    for entry in stub.client.status()["nodes"]:
        if entry["node"] == node:
            return [s for s in entry["streams"] if s["type_url"] == ROUTE_TYPE]
    return []


async def test_ads_sotw_push_order_and_named_route_configs(stub: StubProcess) -> None:
    await push(stub, routes=[route_config("R", "R-v1"), route_config("other", "no")])
    probe = await XdsProbe(stub.xds_address, "ads-rds", ads=True).start()
    try:
        probe.subscribe(CLUSTER_TYPE)
        probe.subscribe(LISTENER_TYPE)
        probe.subscribe(ROUTE_TYPE, names=("R",))
        first = {}
        for _ in range(3):
            response = await probe.next()
            first[response.type_url] = response
            probe.ack(response)
        assert bodies(first[ROUTE_TYPE]) == {"R": "R-v1"}  # not "other"
        # One push of all three types reaches the stream as clusters, listeners, routes.
        versions = await push(
            stub,
            clusters=[{"name": "backend", "connect_timeout": "1s"}],
            listeners=[rds_listener("L", "R")],
            routes=[route_config("R", "R-v2"), route_config("other", "no")],
        )
        arrived = [await probe.next() for _ in range(3)]
        assert [r.type_url for r in arrived] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
        assert bodies(arrived[2]) == {"R": "R-v2"}
        assert arrived[2].version_info == versions["routes"]
        for response in arrived:
            probe.ack(response)
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--type", "routes", "--version", versions["routes"], "--timeout", "5"
        )
        assert waited.returncode == 0, waited.stderr
        assert (
            waited.stdout == f"routes version {versions['routes']} ACKed by every connected node\n"
        )
        # A route-only push reaches only the RDS subscription.
        route_only = await push(
            stub, routes=[route_config("R", "R-v3"), route_config("other", "no")]
        )
        update = await probe.next()
        assert (update.type_url, bodies(update)) == (ROUTE_TYPE, {"R": "R-v3"})
        assert route_only["listeners"] == versions["listeners"]
        probe.ack(update)
        # Subscribing to a second name (ACK-shaped, as Envoy): what exists is sent.
        probe.update_subscription(ROUTE_TYPE, ("R", "other"))
        widened = await probe.next()
        assert bodies(widened) == {"R": "R-v3", "other": "no"}
        probe.ack(widened)
        await asyncio.to_thread(
            wait_for,
            lambda: rds_rows(stub, "ads-rds")[0]["subscribed"] == ["R", "other"],
            5,
            0.02,
            "subscription shown",
        )
        table = stub.cli("status").stdout
        assert "RouteConfiguration" in table and "R,other" in table
    finally:
        await probe.close()


async def test_ads_sotw_rds_nack_and_wait_exit_2(stub: StubProcess) -> None:
    good = await push(stub, routes=[route_config("R", "ok")])
    probe = await XdsProbe(stub.xds_address, "nacker", ads=True).start()
    try:
        probe.subscribe(ROUTE_TYPE, names=("R",))
        probe.ack(await probe.next())
        await asyncio.to_thread(stub.client.wait, good["routes"], timeout=5, section="routes")
        bad = await push(stub, routes=[route_config("R", "bad")])
        refused = await probe.next()
        probe.nack(refused, "missing ): (abc", code=13)
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--type", "routes", "--version", bad["routes"], "--timeout", "5"
        )
        assert waited.returncode == 2
        assert waited.stderr == (
            f"control-plane-stub: node 'nacker' NACKed routes version {bad['routes']}: "
            "missing ): (abc\n"
        )
        [row] = rds_rows(stub, "nacker")
        assert row["acked_version"] == good["routes"]
        assert row["nack"]["nonce"] == refused.nonce
        # Waiting for the listeners' version is another ledger entry: nobody subscribed.
        with pytest.raises(TimeoutError, match="listeners version"):
            await asyncio.to_thread(stub.client.wait, bad["listeners"], timeout=0.5)
    finally:
        await probe.close()


@pytest.mark.parametrize("ads", [False, True], ids=["rds-service", "ads"])
async def test_delta_rds_subscribe_unsubscribe_and_removal(stub: StubProcess, ads: bool) -> None:
    await push(stub, routes=[route_config("R", "R-v1"), route_config("R2", "R2-v1")])
    probe = await XdsProbe(
        stub.xds_address, "delta-rds", mode="delta", ads=ads, service_type=ROUTE_TYPE
    ).start()
    try:
        probe.subscribe(ROUTE_TYPE, names=("R", "later"))
        first = await probe.next()
        assert bodies(first) == {"R": "R-v1"}
        assert list(first.removed_resources) == ["later"]
        probe.ack(first)
        probe.update_subscription(ROUTE_TYPE, ("R2", "later"))  # unsubscribe R, add R2
        second = await probe.next()
        assert bodies(second) == {"R2": "R2-v1"} and list(second.removed_resources) == []
        probe.ack(second)
        versions = await push(
            stub, routes=[route_config("R", "R-v2"), route_config("later", "here")]
        )
        update = await probe.next()
        # R changed but is not subscribed; "later" appeared; R2 (subscribed) was removed.
        assert bodies(update) == {"later": "here"}
        assert list(update.removed_resources) == ["R2"]
        assert update.system_version_info == versions["routes"]
        probe.ack(update)
        await asyncio.to_thread(stub.client.wait, versions["routes"], timeout=5, section="routes")
        [row] = rds_rows(stub, "delta-rds")
        assert (row["mode"], row["subscribed"]) == ("delta", ["R2", "later"])
    finally:
        await probe.close()


async def test_sotw_rds_service_and_push_file_with_routes(
    stub: StubProcess, tmp_path: Path
) -> None:
    resources = tmp_path / "routes.yaml"
    resources.write_text(
        yaml.safe_dump(
            {
                "version": "r1",
                "listeners": [rds_listener("L", "R")],
                "routes": [route_config("R", "from the file")],
            }
        )
    )
    pushed = stub.cli("push", str(resources))
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout == "listeners r1\nclusters r1\nroutes r1\nendpoints r1\nsecrets r1\n"
    probe = await XdsProbe(
        stub.xds_address, "plain-rds", service_type=ROUTE_TYPE, auto_ack=True
    ).start()
    try:
        probe.subscribe(ROUTE_TYPE, names=("R",))
        response = await probe.next()
        assert (response.type_url, response.version_info) == (ROUTE_TYPE, "r1")
        assert bodies(response) == {"R": "from the file"}
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--type", "routes", "--version", "r1", "--timeout", "5"
        )
        assert waited.returncode == 0, waited.stderr
        document = json.loads(stub.cli("status", "--json").stdout)
        [row] = document["nodes"][0]["streams"]
        assert row["type_url"] == ROUTE_TYPE and row["subscribed"] == ["R"]
        # A file whose routes section is invalid is refused whole, with its position.
        bad = tmp_path / "bad.yaml"
        bad.write_text("routes:\n  - name: R\n    virtual_hosts: 3\n")
        refused = stub.cli("push", str(bad))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"control-plane-stub: {bad}:2:5: routes[0]: ")
    finally:
        await probe.close()


async def test_client_authors_routes_as_messages_dataclasses_and_dicts(stub: StubProcess) -> None:
    from envoy_data_plane.envoy.config.core.v3 import DataSource
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        Route,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )

    as_message = route_pb2.RouteConfiguration()
    json_format.ParseDict(route_config("message", "from xds-protos"), as_message)
    as_dataclass = RouteConfiguration(
        name="dataclass",
        virtual_hosts=[
            VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    Route(
                        match=RouteMatch(prefix="/"),
                        direct_response=DirectResponseAction(
                            status=200, body=DataSource(inline_string="from envoy-data-plane")
                        ),
                    )
                ],
            )
        ],
    )
    as_dict = route_config("dict", "from a dict")
    versions = await push(stub, routes=[as_message, as_dataclass, as_dict])
    probe = await XdsProbe(stub.xds_address, "author", ads=True, auto_ack=True).start()
    try:
        probe.subscribe(ROUTE_TYPE, names=("message", "dataclass", "dict"))
        response = await probe.next()
        assert response.version_info == versions["routes"]
        assert bodies(response) == {
            "message": "from xds-protos",
            "dataclass": "from envoy-data-plane",
            "dict": "from a dict",
        }
    finally:
        await probe.close()
    # A route config where a listener belongs is refused with its position.
    with pytest.raises(StubError, match=r"^routes\[0\]: expected envoy\.config\.route\.v3"):
        await push(stub, routes=[listener_pb2.Listener(name="L")])
