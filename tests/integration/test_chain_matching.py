"""Filter chain matching end to end: each criterion and their precedence, with clients bound
to chosen source addresses and ports (127.0.0.0/8 gives many), SNI and ALPN from real TLS
clients, HTTP sniffed by http_inspector. Every chain answers its own name with
`direct_response`, so what a client reads says which chain served it; `None` = closed without
a byte (no chain matched).

The scenarios are data: tests/interop/test_chain_matching_interop.py runs the same ones
against a real Envoy 1.40 and checks that it picks the same chains.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import hcm, lds_bootstrap
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

DIRECT_RESPONSE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
HTTP_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
)
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
HTTP11 = b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n"
HTTP11_CLOSE = b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
SERVER_NAMES = ["a.example.com", "*.example.com", "*.b.example.com", "other.org"]


# -- building listeners -----------------------------------------------------------------------


def answering(body: str, match: dict | None = None, tls: Issued | None = None) -> dict:
    """A filter chain named `body` that answers `body`: plaintext ones write it and close
    (direct_response); TLS ones answer an HTTP request with it (Envoy's direct_response
    writes before the handshake ends, which TLS clients never see)."""
    direct = {
        "name": "envoy.filters.network.direct_response",
        "typed_config": {"@type": DIRECT_RESPONSE, "response": {"inline_string": body}},
    }
    result: dict[str, Any] = {"name": body, "filters": [hcm(body) if tls else direct]}
    if match:
        result["filter_chain_match"] = match
    if tls is not None:
        result["transport_socket"] = tls_socket(tls)
    return result


def tls_socket(issued: Issued, **context: Any) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": issued.cert_pem.decode()},
                        "private_key": {"inline_string": issued.key_pem.decode()},
                    }
                ],
                **context.pop("common", {}),
            },
            **context,
        },
    }


def inspector(type_url: str) -> dict:
    return {"name": type_url.rsplit(".", 1)[-1], "typed_config": {"@type": type_url}}


def prefix(cidr: str) -> dict:
    ip, length = cidr.split("/")
    return {"address_prefix": ip, "prefix_len": int(length)}


# -- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """One connection: where from, where to, TLS or not, and the bytes sent first."""

    expected: str | None
    payload: bytes = b""
    source: str = "127.0.0.1"
    source_port: int = 0
    destination: str = "127.0.0.1"
    tls: bool = False
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    client_certificate: bool = False
    refused_by_tls: bool = False  # expected None: the handshake fails, a chain did match

    @property
    def unmatched(self) -> bool:
        return self.expected is None and not self.refused_by_tls


def exchange(client: Client, port: int, ca: CertificateAuthority) -> str | None:
    """What the listener answered, until it closed; None when it sent nothing."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind((client.source, client.source_port))
    raw.connect((client.destination, port))
    sock: socket.socket = raw
    received = b""
    try:
        if client.tls:
            context = ssl.create_default_context(cadata=ca.cert_pem.decode())
            context.check_hostname = False
            if client.alpn:
                context.set_alpn_protocols(list(client.alpn))
            if client.client_certificate:
                files = ca.client_files()
                context.load_cert_chain(files["cert"], files["key"])
            sock = context.wrap_socket(raw, server_hostname=client.sni)
        payload = client.payload or (HTTP11_CLOSE if client.tls else b"")
        if payload:
            with contextlib.suppress(OSError):
                sock.sendall(payload)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (OSError, ssl.SSLError):
        pass  # reset or TLS alert after (or instead of) an answer
    finally:
        sock.close()
    if client.tls and received.startswith(b"HTTP/1.1 200"):
        received = received.partition(b"\r\n\r\n")[2]
    return received.decode() if received else None


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """Source ports chosen once (clients bind them, chains match them)."""

    first: int
    second: int


@dataclass(frozen=True)
class Scenario:
    name: str
    # (listener port, issued server certificate, source ports) -> listener fields
    listener: Callable[[int, Issued, Ports], dict]
    clients: Callable[[Ports], list[Client]]
    additional_address: str | None = None
    tags: tuple[str, ...] = field(default=())


def _destination(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "filter_chains": [
            answering("dst-port-other", {"destination_port": port + 1}),
            answering("dst-ip-2", {"prefix_ranges": [prefix("127.0.0.2/32")]}),
            answering("dst-ip-8", {"prefix_ranges": [prefix("127.0.0.0/8")]}),
            answering("any"),
        ]
    }


def _port_first(port: int, cert: Issued, ports: Ports) -> dict:
    # The destination_port chain wins the first step even though only 127.0.0.5 matches
    # its source: the others do not fall back to the prefix chain (no backtracking).
    return {
        "filter_chains": [
            answering(
                "port-src5",
                {"destination_port": port, "source_prefix_ranges": [prefix("127.0.0.5/32")]},
            ),
            answering("dst-8", {"prefix_ranges": [prefix("127.0.0.0/8")]}),
        ]
    }


def _source(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "filter_chains": [
            answering("src-8", {"source_prefix_ranges": [prefix("127.0.0.0/8")]}),
            answering("src-4", {"source_prefix_ranges": [prefix("127.0.0.4/32")]}),
            answering(
                "src-4-port",
                {"source_prefix_ranges": [prefix("127.0.0.4/32")], "source_ports": [ports.first]},
            ),
            answering("port-only", {"source_ports": [ports.second]}),
        ]
    }


def _source_type(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "filter_chains": [
            answering("external", {"source_type": "EXTERNAL"}),
            answering("local", {"source_type": "SAME_IP_OR_LOOPBACK"}),
            answering("any"),
        ]
    }


def _external_only(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "filter_chains": [
            answering("external", {"source_type": "EXTERNAL"}),
            answering("any", {"source_ports": [ports.first]}),
        ],
    }


def _default_chain(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "filter_chains": [answering("ten", {"source_prefix_ranges": [prefix("10.0.0.0/8")]})],
        "default_filter_chain": answering("default"),
    }


def _http(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "listener_filters": [inspector(HTTP_INSPECTOR)],
        "filter_chains": [
            answering("h11", {"application_protocols": ["http/1.1"]}),
            answering("h10", {"application_protocols": ["http/1.0"]}),
            answering("h2c", {"application_protocols": ["h2c"]}),
            answering("other"),
        ],
    }


def _tls(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "listener_filters": [inspector(TLS_INSPECTOR), inspector(HTTP_INSPECTOR)],
        "filter_chains": [
            answering("sni-a", {"server_names": ["a.example.com"]}, cert),
            answering("sni-wild", {"server_names": ["*.example.com"]}, cert),
            answering("sni-wild-b", {"server_names": ["*.b.example.com"]}, cert),
            answering(
                "alpn-h2", {"transport_protocol": "tls", "application_protocols": ["h2"]}, cert
            ),
            answering(
                "alpn-h1",
                {"transport_protocol": "tls", "application_protocols": ["http/1.1"]},
                cert,
            ),
            answering("tls", {"transport_protocol": "tls"}, cert),
            answering(
                "raw-http",
                {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1"]},
            ),
            answering("raw", {"transport_protocol": "raw_buffer"}),
        ],
    }


def _destination_before_sni(port: int, cert: Issued, ports: Ports) -> dict:
    return {
        "listener_filters": [inspector(TLS_INSPECTOR)],
        "filter_chains": [
            answering("sni", {"server_names": ["a.example.com"]}, cert),
            answering("dst", {"prefix_ranges": [prefix("127.0.0.1/32")]}, cert),
        ],
    }


def _no_inspector(port: int, cert: Issued, ports: Ports) -> dict:
    # Without tls_inspector nothing is detected: server_names cannot match, the transport
    # protocol is raw_buffer, and the TLS chain without criteria terminates TLS.
    return {
        "filter_chains": [
            answering("sni", {"server_names": ["a.example.com"]}, cert),
            answering("raw", {"transport_protocol": "raw_buffer"}, cert),
        ],
    }


def _mutual_tls(port: int, cert: Issued, ports: Ports) -> dict:
    trusted = {"validation_context": {"trusted_ca": {"inline_string": cert.ca_pem.decode()}}}
    required = answering("required", {"server_names": ["a.example.com"]}, cert)
    required["transport_socket"] = tls_socket(cert, require_client_certificate=True, common=trusted)
    optional = answering("optional", None, cert)
    optional["transport_socket"] = tls_socket(cert, common=trusted)
    return {"listener_filters": [inspector(TLS_INSPECTOR)], "filter_chains": [required, optional]}


SCENARIOS: list[Scenario] = [
    Scenario(
        "destination",
        _destination,
        lambda p: [
            Client("dst-ip-2", destination="127.0.0.2"),
            Client("dst-ip-8"),
        ],
        additional_address="127.0.0.2",
    ),
    Scenario(
        "destination_port_first",
        _port_first,
        lambda p: [Client("port-src5", source="127.0.0.5"), Client(None, source="127.0.0.6")],
    ),
    Scenario(
        "source",
        _source,
        lambda p: [
            Client("src-4-port", source="127.0.0.4", source_port=p.first),
            Client("src-4", source="127.0.0.4"),
            Client("src-8", source="127.0.0.9", source_port=p.second),
            Client("src-8", source="127.0.0.9"),
        ],
    ),
    Scenario(
        "source_type",
        _source_type,
        lambda p: [
            Client("local"),
            Client("external", source="127.0.0.7"),  # loopback is 127.0.0.1 only, as in Envoy
            Client("local", source="127.0.0.2", destination="127.0.0.2"),  # same IP
        ],
        additional_address="127.0.0.2",
    ),
    Scenario(
        "source_type_external_only",
        _external_only,
        lambda p: [
            Client("external", source="127.0.0.8", source_port=p.first),
            Client(None, source_port=p.second),
            Client("any", source_port=p.first),
        ],
    ),
    Scenario(
        "default_chain",
        _default_chain,
        lambda p: [Client("default"), Client("default", source="127.0.0.3")],
    ),
    Scenario(
        "http_inspector",
        _http,
        lambda p: [
            Client("h11", payload=HTTP11),
            Client("h10", payload=b"GET / HTTP/1.0\r\n\r\n"),
            Client("h2c", payload=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Client("other", payload=b"HELLO THERE\r\n"),
        ],
    ),
    Scenario(
        "tls_inspector",
        _tls,
        lambda p: [
            Client("sni-a", tls=True, sni="a.example.com"),
            Client("sni-wild", tls=True, sni="c.example.com"),
            Client("sni-wild-b", tls=True, sni="x.b.example.com"),
            Client("sni-wild", tls=True, sni="deep.x.example.com"),
            Client("alpn-h2", tls=True, sni="other.org", alpn=("h2", "http/1.1")),
            Client("alpn-h1", tls=True, sni="other.org", alpn=("http/1.1", "h2")),
            Client("tls", tls=True, sni="other.org"),
            Client("tls", tls=True),
            Client("raw-http", payload=HTTP11),
            Client("raw", payload=b"\x00\x01binary"),
        ],
    ),
    Scenario(
        "destination_before_sni",
        _destination_before_sni,
        lambda p: [
            Client("dst", tls=True, sni="a.example.com"),
            Client("sni", tls=True, sni="a.example.com", destination="127.0.0.2"),
        ],
        additional_address="127.0.0.2",
    ),
    Scenario(
        "mutual_tls",
        _mutual_tls,
        lambda p: [
            Client("required", tls=True, sni="a.example.com", client_certificate=True),
            Client(None, tls=True, sni="a.example.com", refused_by_tls=True),
            Client("optional", tls=True, sni="c.example.com"),
            Client("optional", tls=True, sni="c.example.com", client_certificate=True),
        ],
    ),
    Scenario(
        "no_inspector",
        _no_inspector,
        lambda p: [Client("raw", tls=True, sni="a.example.com")],
    ),
]


def scenario_listener(scenario: Scenario, name: str, port: int, cert: Issued, ports: Ports) -> dict:
    listener = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        **scenario.listener(port, cert, ports),
    }
    if scenario.additional_address:
        listener["additional_addresses"] = [
            {
                "address": {
                    "socket_address": {"address": scenario.additional_address, "port_value": port}
                }
            }
        ]
    return listener


def free_port_on_all(addresses: list[str]) -> int:
    """A port free on every one of `addresses` a moment ago."""
    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as probe:
                    probe.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


@dataclass
class Fixtures:
    ca: CertificateAuthority
    cert: Issued
    ports: Ports


def make_fixtures() -> Fixtures:
    ca = CertificateAuthority()
    return Fixtures(
        ca=ca,
        cert=ca.issue("server", dns_names=["a.example.com", "*.example.com", "*.b.example.com"]),
        ports=Ports(free_port("127.0.0.4"), free_port("127.0.0.9")),
    )


# -- against xds-proxy ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures() -> Fixtures:
    return make_fixtures()


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, stub):
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address),
        tmp_path_factory.mktemp("proxy"),
        extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"],
    )
    process.start()
    process.wait_ready()
    yield process
    process.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_chain_matching(scenario: Scenario, fixtures: Fixtures, stub, proxy) -> None:
    addresses = ["127.0.0.1"] + (
        [scenario.additional_address] if scenario.additional_address else []
    )
    port = free_port_on_all(addresses)
    listener = scenario_listener(scenario, scenario.name, port, fixtures.cert, fixtures.ports)
    version = stub.client.set_resources(listeners=[listener])["listeners"]
    stub.client.wait(version, timeout=10)
    clients = scenario.clients(fixtures.ports)
    answers = [exchange(client, port, fixtures.ca) for client in clients]
    assert answers == [client.expected for client in clients]
    misses = sum(client.unmatched for client in clients)
    assert proxy.stat(f"listener.127.0.0.1_{port}.no_filter_chain_match") == misses


def test_bytes_read_by_http_inspector_reach_the_connection_manager(stub, proxy) -> None:
    """The request line the inspector read is replayed into the HTTP connection manager."""
    port = free_port()
    h11 = {"name": "h11", "filters": [hcm("h11")]}
    h11["filter_chain_match"] = {"application_protocols": ["http/1.1"]}
    listener = {
        "name": "replay",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [inspector(HTTP_INSPECTOR)],
        "filter_chains": [h11, {"name": "other", "filters": [hcm("other")]}],
    }
    version = stub.client.set_resources(listeners=[listener])["listeners"]
    stub.client.wait(version, timeout=10)
    conn = HttpConnection(port)
    conn.sock.sendall(b"GET /first HTTP/1.1\r\n")  # the inspector decides on this line alone
    conn.sock.sendall(b"host: example.com\r\n\r\n")
    first = conn.read_response()
    assert (first.status, first.text) == (200, "h11")
    assert conn.request("/second").text == "h11"  # keep-alive after the replay
    conn.close()
