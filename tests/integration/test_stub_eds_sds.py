"""control-plane-stub serving ClusterLoadAssignments and Secrets to real gRPC clients (XdsProbe).

Over ADS (SotW and Delta) and the plain EndpointDiscoveryService and SecretDiscoveryService:
only the names a client subscribes to are sent, a push of every type reaches one ADS stream
as secrets, clusters, endpoints, listeners, routes; the CLI's `push`, `status` and
`wait --type endpoints|secrets` know both sections, and neither `status` nor the stub's log
ever shows a secret's private key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import json_format

from control_plane_stub.client import StubError
from control_plane_stub.probe import XdsProbe
from control_plane_stub.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from tests.helpers.certs import CertificateAuthority
from tests.helpers.procs import wait_for
from tests.helpers.stub import StubProcess

# Every type an ADS stream can subscribe to, with the names subscribed in these tests.
ADS_SUBSCRIPTIONS = {
    SECRET_TYPE: ("cert",),
    CLUSTER_TYPE: (),
    ENDPOINT_TYPE: ("svc",),
    LISTENER_TYPE: (),
    ROUTE_TYPE: ("R",),
}


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


def assignment(name: str, *ports: int) -> dict:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "127.0.0.1", "port_value": port}
                            }
                        }
                    }
                    for port in ports
                ]
            }
        ],
    }


def secret(name: str, chain: str, key: str = "not a key") -> dict:
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": chain},
            "private_key": {"inline_string": key},
        },
    }


def eds_cluster(name: str, service_name: str) -> dict:
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {
            "service_name": service_name,
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
        },
    }


def contents(response) -> dict[str, list[int] | str]:
    """Name -> ports (an assignment) or certificate chain (a secret), SotW or Delta."""
    if hasattr(response, "system_version_info"):
        anys = [resource.resource for resource in response.resources]
    else:
        anys = list(response.resources)
    found: dict[str, list[int] | str] = {}
    for body in anys:
        if body.type_url == ENDPOINT_TYPE:
            message = endpoint_pb2.ClusterLoadAssignment()
            assert body.Unpack(message)
            found[message.cluster_name] = [
                lb.endpoint.address.socket_address.port_value
                for locality in message.endpoints
                for lb in locality.lb_endpoints
            ]
        else:
            secret_message = secret_pb2.Secret()
            assert body.Unpack(secret_message)
            found[secret_message.name] = (
                secret_message.tls_certificate.certificate_chain.inline_string
            )
    return found


async def push(stub: StubProcess, **kwargs) -> dict[str, str]:
    return await asyncio.to_thread(stub.client.set_resources, **kwargs)


def rows(stub: StubProcess, node: str, type_url: str) -> list[dict]:
    for entry in stub.client.status()["nodes"]:
        if entry["node"] == node:
            return [s for s in entry["streams"] if s["type_url"] == type_url]
    return []


async def test_ads_sotw_order_named_subscriptions_and_wait(stub: StubProcess) -> None:
    await push(
        stub,
        endpoints=[assignment("svc", 1), assignment("other", 2)],
        secrets=[secret("cert", "chain-1"), secret("unasked", "never")],
    )
    probe = await XdsProbe(stub.xds_address, "ads-eds-sds", ads=True).start()
    try:
        for type_url, names in ADS_SUBSCRIPTIONS.items():
            probe.subscribe(type_url, names=names)
        first = {}
        for _ in ADS_SUBSCRIPTIONS:
            response = await probe.next()
            first[response.type_url] = response
            probe.ack(response)
        assert contents(first[ENDPOINT_TYPE]) == {"svc": [1]}  # not "other"
        assert contents(first[SECRET_TYPE]) == {"cert": "chain-1"}  # not "unasked"
        # One push of every type reaches the stream as secrets, clusters, endpoints,
        # listeners, routes.
        versions = await push(
            stub,
            secrets=[secret("cert", "chain-2"), secret("unasked", "never")],
            clusters=[eds_cluster("C", "svc")],
            endpoints=[assignment("svc", 3), assignment("other", 2)],
            listeners=[{"name": "L"}],
            routes=[{"name": "R"}],
        )
        arrived = [await probe.next() for _ in ADS_SUBSCRIPTIONS]
        assert [r.type_url for r in arrived] == [
            SECRET_TYPE,
            CLUSTER_TYPE,
            ENDPOINT_TYPE,
            LISTENER_TYPE,
            ROUTE_TYPE,
        ]
        assert contents(arrived[0]) == {"cert": "chain-2"}
        assert contents(arrived[2]) == {"svc": [3]}
        for response in arrived:
            probe.ack(response)
        for section in ("endpoints", "secrets"):
            waited = await asyncio.to_thread(
                stub.cli, "wait", "--type", section, "--version", versions[section]
            )
            assert waited.returncode == 0, waited.stderr
            assert waited.stdout == (
                f"{section} version {versions[section]} ACKed by every connected node\n"
            )
        # An endpoints-only push reaches only the EDS subscription; a change to an
        # assignment nobody subscribes to sends the new version and nothing else.
        moved = await push(stub, endpoints=[assignment("svc", 4), assignment("other", 5)])
        update = await probe.next()
        assert (update.type_url, contents(update)) == (ENDPOINT_TYPE, {"svc": [4]})
        assert update.version_info == moved["endpoints"] and probe.pending() == 0
        probe.ack(update)
        # Subscribing to a second name (ACK-shaped, as Envoy): what exists is sent.
        probe.update_subscription(ENDPOINT_TYPE, ("svc", "other"))
        widened = await probe.next()
        assert contents(widened) == {"svc": [4], "other": [5]}
        probe.ack(widened)
        await asyncio.to_thread(
            wait_for,
            lambda: rows(stub, "ads-eds-sds", ENDPOINT_TYPE)[0]["subscribed"] == ["other", "svc"],
            5,
            0.02,
            "subscription shown",
        )
        table = stub.cli("status").stdout
        assert "ClusterLoadAssignment" in table and "other,svc" in table
        assert "Secret" in table and "cert" in table
    finally:
        await probe.close()


@pytest.mark.parametrize(
    ("type_url", "section"), [(ENDPOINT_TYPE, "endpoints"), (SECRET_TYPE, "secrets")]
)
@pytest.mark.parametrize("ads", [False, True], ids=["plain-service", "ads"])
async def test_delta_subscribe_unsubscribe_removal_and_nack(
    stub: StubProcess, ads: bool, type_url: str, section: str
) -> None:
    def resources(*items: tuple[str, int]) -> list[dict]:
        if type_url == ENDPOINT_TYPE:
            return [assignment(name, port) for name, port in items]
        return [secret(name, f"chain-{port}") for name, port in items]

    def expected(**items: int) -> dict:
        if type_url == ENDPOINT_TYPE:
            return {name: [port] for name, port in items.items()}
        return {name: f"chain-{port}" for name, port in items.items()}

    node = f"delta-{section}"
    await push(stub, **{section: resources(("a", 1), ("b", 1))})
    probe = await XdsProbe(
        stub.xds_address, node, mode="delta", ads=ads, service_type=type_url
    ).start()
    try:
        probe.subscribe(type_url, names=("a", "later"))
        first = await probe.next()
        assert contents(first) == expected(a=1)
        assert list(first.removed_resources) == ["later"]  # Delta's "does not exist"
        probe.ack(first)
        probe.update_subscription(type_url, ("b", "later"))  # unsubscribe a, add b
        second = await probe.next()
        assert contents(second) == expected(b=1) and list(second.removed_resources) == []
        probe.ack(second)
        versions = await push(stub, **{section: resources(("a", 2), ("later", 3))})
        update = await probe.next()
        # a changed but is not subscribed; "later" appeared; b (subscribed) was removed.
        assert contents(update) == expected(later=3)
        assert list(update.removed_resources) == ["b"]
        assert update.system_version_info == versions[section]
        probe.ack(update)
        await asyncio.to_thread(stub.client.wait, versions[section], timeout=5, section=section)
        [row] = rows(stub, node, type_url)
        assert (row["mode"], row["subscribed"]) == ("delta", ["b", "later"])
        # A NACK: `wait` exits 2 with the client's message; nothing is resent.
        bad = await push(stub, **{section: resources(("later", 4))})
        refused = await probe.next()
        probe.nack(refused, "bad thing", code=13)
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--type", section, "--version", bad[section], "--timeout", "5"
        )
        assert waited.returncode == 2
        assert waited.stderr == (
            f"control-plane-stub: node '{node}' NACKed {section} version {bad[section]}: "
            "bad thing\n"
        )
        await asyncio.sleep(0.2)
        assert probe.pending() == 0
    finally:
        await probe.close()


async def test_plain_services_sotw_push_file_and_status_without_private_keys(
    stub: StubProcess, tmp_path: Path
) -> None:
    issued = CertificateAuthority("status-ca").issue("server", dns_names=["server.test"])
    key_pem = issued.key_pem.decode()
    resources = tmp_path / "eds-sds.yaml"
    resources.write_text(
        yaml.safe_dump(
            {
                "version": "f1",
                "clusters": [eds_cluster("C", "svc")],
                "endpoints": [assignment("svc", 8080)],
                "secrets": [secret("cert", issued.cert_pem.decode(), key_pem)],
            }
        )
    )
    pushed = stub.cli("push", str(resources))
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout == "listeners f1\nclusters f1\nroutes f1\nendpoints f1\nsecrets f1\n"
    eds = await XdsProbe(
        stub.xds_address, "plain", service_type=ENDPOINT_TYPE, auto_ack=True
    ).start()
    sds = await XdsProbe(stub.xds_address, "plain", service_type=SECRET_TYPE, auto_ack=True).start()
    try:
        eds.subscribe(ENDPOINT_TYPE, names=("svc",))
        sds.subscribe(SECRET_TYPE, names=("cert",))
        endpoints = await eds.next()
        assert (endpoints.type_url, endpoints.version_info) == (ENDPOINT_TYPE, "f1")
        assert contents(endpoints) == {"svc": [8080]}
        secrets = await sds.next()
        assert (secrets.type_url, secrets.version_info) == (SECRET_TYPE, "f1")
        served = secret_pb2.Secret()
        assert secrets.resources[0].Unpack(served)
        assert served.tls_certificate.private_key.inline_string == key_pem
        for section in ("endpoints", "secrets"):
            waited = await asyncio.to_thread(
                stub.cli, "wait", "--type", section, "--version", "f1", "--timeout", "5"
            )
            assert waited.returncode == 0, waited.stderr
        table = stub.cli("status").stdout
        document = json.loads(stub.cli("status", "--json").stdout)
        subscribed = {row["type_url"]: row["subscribed"] for row in document["nodes"][0]["streams"]}
        assert subscribed == {ENDPOINT_TYPE: ["svc"], SECRET_TYPE: ["cert"]}
        key_body = "".join(key_pem.splitlines()[1:-1])
        for text in (table, json.dumps(document), stub.log()):
            assert "PRIVATE KEY" not in text
            assert key_body[:40] not in text
        # A file whose endpoints section is invalid is refused whole, with its position.
        bad = tmp_path / "bad.yaml"
        bad.write_text("endpoints:\n  - cluster_name: svc\n    endpoints: 3\n")
        refused = stub.cli("push", str(bad))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"control-plane-stub: {bad}:2:5: endpoints[0]: ")
    finally:
        await eds.close()
        await sds.close()


async def test_client_authors_endpoints_and_secrets_as_messages_dataclasses_and_dicts(
    stub: StubProcess,
) -> None:
    from envoy_data_plane.envoy.config.core.v3 import Address, DataSource, SocketAddress
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret, TlsCertificate

    as_message = json_format.ParseDict(
        assignment("message", 1), endpoint_pb2.ClusterLoadAssignment()
    )
    as_dataclass = ClusterLoadAssignment(
        cluster_name="dataclass",
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(
                                socket_address=SocketAddress(address="127.0.0.1", port_value=2)
                            )
                        )
                    )
                ]
            )
        ],
    )
    secret_message = json_format.ParseDict(secret("message", "m"), secret_pb2.Secret())
    secret_dataclass = Secret(
        name="dataclass",
        tls_certificate=TlsCertificate(certificate_chain=DataSource(inline_string="d")),
    )
    versions = await push(
        stub,
        endpoints=[as_message, as_dataclass, assignment("dict", 3)],
        secrets=[secret_message, secret_dataclass, secret("dict", "x")],
    )
    probe = await XdsProbe(stub.xds_address, "author", ads=True, auto_ack=True).start()
    try:
        probe.subscribe(ENDPOINT_TYPE, names=("message", "dataclass", "dict"))
        probe.subscribe(SECRET_TYPE, names=("message", "dataclass", "dict"))
        got = {}
        for _ in range(2):
            response = await probe.next()
            got[response.type_url] = response
        assert got[ENDPOINT_TYPE].version_info == versions["endpoints"]
        assert contents(got[ENDPOINT_TYPE]) == {"message": [1], "dataclass": [2], "dict": [3]}
        assert contents(got[SECRET_TYPE]) == {"message": "m", "dataclass": "d", "dict": "x"}
    finally:
        await probe.close()
    # A secret where an assignment belongs is refused, and so is an assignment without
    # its cluster_name.
    with pytest.raises(StubError, match=r"^endpoints\[0\]: expected envoy\.config\.endpoint"):
        await push(stub, endpoints=[secret_message])
    with pytest.raises(StubError, match=r"^endpoints\[0\]\.cluster_name: required"):
        await push(stub, endpoints=[{"endpoints": []}])
