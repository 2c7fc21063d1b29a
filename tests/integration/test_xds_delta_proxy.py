"""Delta LDS and delta ADS against the real processes: control-plane-stub + xds-proxy.

The same sequence of pushes must give the same end state over SotW, Delta and delta ADS:
the same listeners, the same answers to real requests, the same ACK/NACK and the same
listener-manager stats. The proxy runs through `main()` below, which passes the server's
`apply_delta` to the LDS client when server.py does not do it yet (the lead wires it).
"""

from __future__ import annotations

import json
import threading
from concurrent import futures

import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (type pool)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc
from google.protobuf import json_format

from control_plane_stub.client import StubNack
from tests.helpers.http_client import get, refused
from tests.helpers.listeners import bootstrap_for, http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
STATS = [
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "listener_manager.listener_in_place_updated",
    "listener_manager.total_listeners_active",
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
]
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


@pytest.fixture
def stub(tmp_path):
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


def scenario(p1: int, p2: int) -> list[tuple[str, list[dict]]]:
    a1 = http_listener("a", p1, body="a1")
    b1 = http_listener("b", p2, body="b1")
    a2 = http_listener("a", p1, body="a2")
    return [
        ("v1", [a1, b1]),
        ("v2", [a2, b1]),  # in place: only a's chain changed
        ("v3", [a2, b1, http_listener("c", p1, body="c")]),  # duplicate address: NACK
        ("v4", [b1]),  # remove a (and the rejected c is simply gone)
        ("v5", [http_listener("a", p1, body="a3", per_connection_buffer_limit_bytes=9999), b1]),
        ("v6", [http_listener("b", p2, body="b2")]),  # remove a, update b in place
        ("v7", []),
    ]


def run_scenario(mode: str, stub: StubProcess, tmp_path) -> list[dict]:
    p1, p2 = free_port(), free_port()
    names = {p1: "P1", p2: "P2"}
    proxy = ProxyProcess(
        bootstrap_for(mode, stub.xds_address, node_id=f"node-{mode}"),
        tmp_path / mode,
        extra_args=DRAIN_ARGS,
    )
    proxy.start()
    observed = []
    try:
        proxy.wait_ready()
        for version, listeners in scenario(p1, p2):
            stub.client.set_resources(listeners=listeners, version=version)
            try:
                stub.client.wait(version, node=f"node-{mode}", timeout=10)
                nack = None
            except StubNack as error:
                nack = error.detail.replace(f"node-{mode}", "NODE")
                for port, name in names.items():
                    nack = nack.replace(str(port), name)
            active = proxy.listeners()
            ports = {name: int(address.rpartition(":")[2]) for name, address in active.items()}
            idle = [port for port in names if port not in ports.values()]
            wait_for(lambda idle=idle: all(refused(p) for p in idle), timeout=2, what="refused")
            observed.append(
                {
                    "version": version,
                    "nack": nack,
                    "listeners": {name: names[port] for name, port in sorted(ports.items())},
                    "bodies": {name: get(port).text for name, port in sorted(ports.items())},
                    "stats": {name: proxy.stat(name) for name in STATS},
                    "version_text": proxy.stats().get("listener_manager.lds.version_text"),
                }
            )
    finally:
        proxy.stop()
    return observed


EXPECTED_LISTENERS = [
    {"a": "P1", "b": "P2"},
    {"a": "P1", "b": "P2"},
    {"a": "P1", "b": "P2"},
    {"b": "P2"},
    {"a": "P1", "b": "P2"},
    {"b": "P2"},
    {},
]
EXPECTED_BODIES = [
    {"a": "a1", "b": "b1"},
    {"a": "a2", "b": "b1"},
    {"a": "a2", "b": "b1"},
    {"b": "b1"},
    {"a": "a3", "b": "b1"},
    {"b": "b2"},
    {},
]


@pytest.fixture(scope="module")
def sotw_reference(tmp_path_factory) -> list[dict]:
    workdir = tmp_path_factory.mktemp("sotw-reference")
    stub = StubProcess(workdir / "stub").start()
    try:
        return run_scenario("sotw", stub, workdir)
    finally:
        stub.stop()


def test_sotw_reference_is_what_we_expect(sotw_reference) -> None:
    assert [step["listeners"] for step in sotw_reference] == EXPECTED_LISTENERS
    assert [step["bodies"] for step in sotw_reference] == EXPECTED_BODIES
    nacks = [step["nack"] for step in sotw_reference]
    assert nacks[2] is not None and "c" in nacks[2]
    assert nacks[:2] == [None, None] and nacks[3:] == [None] * 4


@pytest.mark.parametrize("mode", ["delta", "delta-ads"])
def test_delta_gives_the_same_end_state_as_sotw(mode, stub, tmp_path, sotw_reference) -> None:
    observed = run_scenario(mode, stub, tmp_path)
    differences = [
        f"{ours['version']} {key}: sotw {theirs[key]!r}, {mode} {ours[key]!r}"
        for theirs, ours in zip(sotw_reference, observed, strict=True)
        for key in theirs
        if theirs[key] != ours[key]
    ]
    assert differences == [], "\n".join(differences)


def test_delta_reconnect_keeps_the_listeners(tmp_path) -> None:
    """The stub restarts (serving the same set from its file): the proxy keeps its listener
    meanwhile, re-subscribes over Delta and nothing changes or drains. (The reconnect's
    `initial_resource_versions` on the wire: test_xds_delta_client.py.)"""
    port = free_port()
    resources = tmp_path / "resources.json"
    resources.write_text(
        json.dumps({"version": "v1", "listeners": [http_listener("a", port, body="one")]})
    )
    stub = StubProcess(tmp_path / "stub", resources=resources, xds=f"127.0.0.1:{free_port()}")
    stub.start()
    proxy = ProxyProcess(
        bootstrap_for("delta", stub.xds_address), tmp_path / "proxy", extra_args=DRAIN_ARGS
    )
    try:
        proxy.start()
        proxy.wait_ready()
        stub.client.wait("v1", timeout=10)
        assert get(port).text == "one"
        stub.stop()
        wait_for(lambda: proxy.stat("listener_manager.lds.update_failure") >= 1, timeout=5)
        assert get(port).text == "one"  # kept while the control plane is away
        stub.start()
        stub.client.wait("v1", timeout=10)
        wait_for(
            lambda: proxy.stat("listener_manager.lds.control_plane.connected_state") == 1,
            timeout=5,
        )
        status = stub.client.status()["nodes"][0]["streams"]
        assert [stream["mode"] for stream in status] == ["delta"]
        assert get(port).text == "one"
        assert proxy.stat("listener_manager.listener_added") == 1
        assert proxy.stat("listener_manager.listener_modified") == 0
        assert proxy.stat("listener_manager.listener_in_place_updated") == 0
        assert proxy.stat("listener_manager.lds.update_success") == 2
    finally:
        proxy.stop()
        stub.stop()


class TtlControlPlane(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    """A one-shot LDS server (threads, SotW or Delta): sends its listeners once, each in a
    `Resource` with its TTL, then holds the stream open until stopped. The stub does not speak
    TTL; this is the smallest thing that does."""

    def __init__(self, listeners: list[tuple[dict, int | None]]) -> None:
        self.resources = []
        for document, ttl_ms in listeners:
            resource = discovery_pb2.Resource(name=document["name"], version="1")
            resource.resource.Pack(json_format.ParseDict(document, listener_pb2.Listener()))
            if ttl_ms is not None:
                resource.ttl.FromMilliseconds(ttl_ms)
            self.resources.append(resource)
        self.stopping = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def DeltaListeners(self, request_iterator, context):
        next(request_iterator)
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info="v1", nonce="n1", type_url=LISTENER_TYPE
        )
        response.resources.extend(self.resources)
        yield response
        next(request_iterator)  # the ACK
        self.stopping.wait(30)

    def StreamListeners(self, request_iterator, context):
        next(request_iterator)
        response = discovery_pb2.DiscoveryResponse(
            version_info="v1", nonce="n1", type_url=LISTENER_TYPE
        )
        for resource in self.resources:
            response.resources.add().Pack(resource)
        yield response
        next(request_iterator)
        self.stopping.wait(30)

    def stop(self) -> None:
        self.stopping.set()
        self.server.stop(0)


TTL_STATS = [
    "listener_manager.listener_added",
    "listener_manager.listener_removed",
    "listener_manager.total_listeners_active",
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_attempt",
    "listener_manager.lds.update_rejected",
]


def run_ttl_scenario(make_process, mode: str, tmp_path) -> dict:
    """One listener with an 800 ms TTL, one without; observed once the first has expired."""
    expiring, staying = free_port(), free_port()
    plane = TtlControlPlane(
        [
            (http_listener("expiring", expiring, body="expiring"), 800),
            (http_listener("staying", staying, body="staying"), None),
        ]
    )
    process = make_process(bootstrap_for(mode, f"127.0.0.1:{plane.port}"), tmp_path)
    try:
        process.start()
        process.wait_ready()
        before = get(expiring).text
        wait_for(lambda: refused(expiring), timeout=3, what="the expired listener to go")
        return {
            "before": before,
            "staying": get(staying).text,
            "listeners": sorted(process.listeners()),
            "stats": {name: process.stat(name) for name in TTL_STATS},
            "version_text": process.stats()["listener_manager.lds.version_text"],
        }
    finally:
        process.stop()
        plane.stop()


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_ttl_expiry_removes_the_listener(mode: str, tmp_path) -> None:
    observed = run_ttl_scenario(
        lambda bootstrap, workdir: ProxyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS),
        mode,
        tmp_path,
    )
    assert observed["before"] == "expiring"
    assert observed["staying"] == "staying"
    assert observed["listeners"] == ["staying"]
    assert observed["stats"]["listener_manager.listener_removed"] == 1
    assert observed["stats"]["listener_manager.lds.update_success"] == 2  # v1, the expiry
    assert observed["version_text"] == '""'
