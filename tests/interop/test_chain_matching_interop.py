"""The chain-matching scenarios of tests/integration/test_chain_matching.py against a real
Envoy 1.40 and xds-proxy side by side, both fed by one control-plane-stub (each node gets its
own listener port): every client must be served by the same chain (or refused by both)."""

from __future__ import annotations

import socket

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.integration.test_chain_matching import (
    HTTP11,
    SCENARIOS,
    Client,
    Fixtures,
    Scenario,
    answering,
    exchange,
    free_port_on_all,
    make_fixtures,
    scenario_listener,
)

NODES = {"envoy": "interop-envoy", "proxy": "interop-proxy"}


@pytest.fixture(scope="module")
def fixtures() -> Fixtures:
    return make_fixtures()


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, stub):
    started = {}
    try:
        for kind, cls in (("envoy", EnvoyProcess), ("proxy", ProxyProcess)):
            process = cls(
                lds_bootstrap(stub.xds_address, node_id=NODES[kind]),
                tmp_path_factory.mktemp(kind),
                extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"],
            )
            started[kind] = process.start()
        for process in started.values():
            process.wait_ready()
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.mark.timeout(120)  # tls_inspector's scenario: ~8 s on two proxies
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_chains_as_envoy(scenario: Scenario, fixtures: Fixtures, stub, servers) -> None:
    addresses = ["127.0.0.1"] + (
        [scenario.additional_address] if scenario.additional_address else []
    )
    ports = {}
    for kind, node in NODES.items():
        port = ports[kind] = free_port_on_all(addresses)
        listener = scenario_listener(scenario, scenario.name, port, fixtures.cert, fixtures.ports)
        version = stub.client.set_resources(listeners=[listener], node=node)["listeners"]
        stub.client.wait(version, node=node, timeout=10)
    clients = scenario.clients(fixtures.ports)
    seen = {
        kind: [exchange(client, ports[kind], fixtures.ca) for client in clients] for kind in NODES
    }
    assert seen["proxy"] == seen["envoy"]
    assert seen["envoy"] == [client.expected for client in clients]
    for kind, process in servers.items():
        misses = process.stat(f"listener.127.0.0.1_{ports[kind]}.no_filter_chain_match")
        assert (misses or 0) == sum(client.unmatched for client in clients), kind


def test_inspector_and_tls_stats_match_envoy(fixtures: Fixtures, stub, servers) -> None:
    """The same connections leave the same tls_inspector, http_inspector, ssl and listener
    filter timeout counts (Envoy's certificate expiry and curve stats aside)."""
    scenario = next(s for s in SCENARIOS if s.name == "tls_inspector")
    clients = [
        Client("sni-a", tls=True, sni="a.example.com", alpn=("h2",)),
        Client("tls", tls=True),
        Client("raw-http", payload=HTTP11),
        Client("h2c", payload=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Client(None),  # sends nothing: the listener filters time out
    ]
    seen = {}
    for kind, node in NODES.items():
        port = free_port_on_all(["127.0.0.1"])
        listener = scenario_listener(scenario, "stats", port, fixtures.cert, fixtures.ports)
        listener["listener_filters_timeout"] = "0.2s"
        version = stub.client.set_resources(listeners=[listener], node=node)["listeners"]
        stub.client.wait(version, node=node, timeout=10)
        before = _counts(servers[kind])
        for client in clients:
            exchange(client, port, fixtures.ca)
        after = _counts(servers[kind])
        seen[kind] = {
            name.replace(f"127.0.0.1_{port}", "ADDR"): value - before.get(name, 0)
            for name, value in after.items()
            if value != before.get(name, 0)
            and (name.startswith(("tls_inspector.", "http_inspector.")) or f"_{port}." in name)
        }
    assert seen["proxy"] == seen["envoy"]
    assert seen["envoy"]["listener.ADDR.ssl.handshake"] == 2


def _counts(process) -> dict[str, int]:
    pattern = (
        r"^(tls_inspector|http_inspector)\.|\.(ssl\.(handshake|no_certificate|connection_error"
        r"|ciphers|versions)|downstream_pre_cx_timeout)"
    )
    return {
        name: int(value)
        for name, value in process.stats(pattern).items()
        if value.strip().isdigit()
    }


def test_handshake_failures_count_like_envoy(fixtures: Fixtures, stub, servers) -> None:
    """A client that closes at once (not counted), one that speaks plaintext to a TLS chain
    (`ssl.connection_error`) and one that stays silent past `transport_socket_connect_timeout`
    (`downstream_cx_transport_socket_connect_timeout`); each is closed by both."""
    counted = ("ssl.connection_error", "downstream_cx_transport_socket_connect_timeout")
    seen = {}
    for kind, node in NODES.items():
        port = free_port_on_all(["127.0.0.1"])
        tls_chain = answering("tls", None, fixtures.cert)
        tls_chain["transport_socket_connect_timeout"] = "0.2s"
        listener = {
            "name": "handshakes",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [tls_chain],
        }
        version = stub.client.set_resources(listeners=[listener], node=node)["listeners"]
        stub.client.wait(version, node=node, timeout=10)
        socket.create_connection(("127.0.0.1", port)).close()
        for payload in (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b""):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(payload)
                while client.recv(4096):  # an alert at most, then the close
                    pass
        process, prefix = servers[kind], f"listener.127.0.0.1_{port}."
        seen[kind] = {
            name: wait_for(lambda p=process, n=prefix + name: _stat_or_none(p, n), timeout=3)
            for name in counted
        }
    assert seen["proxy"] == seen["envoy"] == dict.fromkeys(counted, 1)


def _stat_or_none(process, name: str) -> int | None:
    value = process.stat(name)
    return value if value else None
