"""Downstream TLS against the real processes (control-plane-stub + xds-proxy): SNI picks the
chain and so the certificate, mTLS, certificate rotation and in-place updates that drain only
the changed chain, listener filter timeouts. Certificates are made by the tests."""

from __future__ import annotations

import socket
import ssl

import pytest

from control_plane_stub.client import StubNack
from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.integration.test_chain_matching import TLS_INSPECTOR, inspector, tls_socket

DRAIN_ARGS = ["--drain-time-s", "2", "--drain-strategy", "immediate"]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, stub):
    """One proxy for the module: each test uses its own listener and port, and reads
    server-wide counters as differences."""
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address), tmp_path_factory.mktemp("proxy"), extra_args=DRAIN_ARGS
    )
    process.start()
    process.wait_ready()
    yield process
    process.stop()


def count(proxy, name: str) -> int:
    return proxy.stat(name) or 0


def push(stub, listeners) -> None:
    stub.client.wait(stub.client.set_resources(listeners=listeners)["listeners"], timeout=10)


def tls_chain(body: str, cert: Issued, server_names=(), **context) -> dict:
    result = chain(body, name=body)
    result["transport_socket"] = tls_socket(cert, **context)
    if server_names:
        result["filter_chain_match"] = {"server_names": list(server_names)}
    return result


def tls_connection(
    port: int,
    ca: CertificateAuthority,
    server_name: str | None,
    client_cert: dict | None = None,
) -> HttpConnection:
    """A keep-alive HTTP/1.1 connection over TLS; the server certificate is verified."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    context.check_hostname = server_name is not None
    if client_cert is not None:
        context.load_cert_chain(client_cert["cert"], client_cert["key"])
    conn = HttpConnection(port)
    conn.sock = context.wrap_socket(conn.sock, server_hostname=server_name)
    return conn


def peer_serial(conn: HttpConnection) -> int:
    from cryptography import x509

    der = conn.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    return x509.load_der_x509_certificate(der).serial_number


def test_sni_picks_the_chain_and_its_certificate(stub, proxy, ca) -> None:
    port = free_port()
    a, b = ca.issue("a", dns_names=["a.example.com"]), ca.issue("b", dns_names=["*.example.com"])
    fallback = ca.issue("fallback", dns_names=["fallback.test"])
    listener = http_listener(
        "tls",
        port,
        chains=[
            tls_chain("chain-a", a, ["a.example.com"]),
            tls_chain("chain-b", b, ["*.example.com"]),
            tls_chain("fallback", fallback),
        ],
        listener_filters=[inspector(TLS_INSPECTOR)],
    )
    push(stub, [listener])
    sni_found = count(proxy, "tls_inspector.sni_found")
    for name, body, cert in (
        ("a.example.com", "chain-a", a),
        ("b.example.com", "chain-b", b),
        ("fallback.test", "fallback", fallback),
    ):
        conn = tls_connection(port, ca, name)
        assert conn.request().text == body
        assert peer_serial(conn) == cert.serial
        conn.close()
    assert count(proxy, "tls_inspector.sni_found") - sni_found == 3
    assert proxy.stat(f"listener.127.0.0.1_{port}.ssl.handshake") == 3


def test_client_certificate_required(stub, proxy, ca, tmp_path) -> None:
    port = free_port()
    server = ca.issue("server", dns_names=["mtls.example.com"])
    listener = http_listener(
        "mtls",
        port,
        chains=[
            tls_chain(
                "mtls",
                server,
                require_client_certificate=True,
                common={
                    "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}
                },
            )
        ],
    )
    push(stub, [listener])
    client_cert = ca.issue("client", client=True).write(tmp_path)
    assert tls_connection(port, ca, "mtls.example.com", client_cert).request().text == "mtls"
    stranger = CertificateAuthority("stranger").issue("intruder", client=True).write(tmp_path)
    for cert in (None, stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_connection(port, ca, "mtls.example.com", cert).request()
    assert proxy.stat(f"listener.127.0.0.1_{port}.ssl.connection_error") == 2


def test_certificate_rotation_drains_only_its_chain(stub, proxy, ca) -> None:
    port = free_port()
    old_a, b = (
        ca.issue("a", dns_names=["a.example.com"]),
        ca.issue("b", dns_names=["b.example.com"]),
    )
    chains = [
        tls_chain("chain-a", old_a, ["a.example.com"]),
        tls_chain("chain-b", b, ["b.example.com"]),
    ]
    fields = {"listener_filters": [inspector(TLS_INSPECTOR)]}
    push(stub, [http_listener("tls", port, chains=chains, **fields)])
    on_a, on_b = (
        tls_connection(port, ca, "a.example.com"),
        tls_connection(port, ca, "b.example.com"),
    )
    busy_a = tls_connection(port, ca, "a.example.com")
    assert on_a.request().text == "chain-a" and on_b.request().text == "chain-b"
    assert busy_a.request().text == "chain-a"
    busy_a.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a request half sent: not idle

    updated = count(proxy, "listener_manager.listener_in_place_updated")
    new_a = ca.issue("a", dns_names=["a.example.com"])
    chains[0] = tls_chain("chain-a", new_a, ["a.example.com"])
    push(stub, [http_listener("tls", port, chains=chains, **fields)])

    assert on_a.closed_by_peer()  # idle on the rotated chain: told to leave at drain start
    busy_a.sock.sendall(b"\r\n")
    answer = busy_a.read_response()
    assert answer.text == "chain-a" and answer.closes
    unchanged = on_b.request()
    assert unchanged.text == "chain-b" and not unchanged.closes
    fresh = tls_connection(port, ca, "a.example.com")
    assert fresh.request().text == "chain-a"
    assert peer_serial(fresh) == new_a.serial != old_a.serial
    assert count(proxy, "listener_manager.listener_in_place_updated") - updated == 1
    wait_for(lambda: proxy.stat("listener_manager.total_filter_chains_draining") == 0, timeout=5)
    assert not on_b.request().closes


def test_in_place_update_with_three_chains_drains_only_the_changed_one(stub, proxy) -> None:
    port = free_port()
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    chains = [
        chain(f"c{i}-v1", name=f"c{i}", source_prefix=f"{ip}/32") for i, ip in enumerate(sources)
    ]
    push(stub, [http_listener("three", port, chains=chains)])
    conns = [HttpConnection(port, source=ip) for ip in sources]
    assert [c.request().text for c in conns] == ["c0-v1", "c1-v1", "c2-v1"]
    updated = count(proxy, "listener_manager.listener_in_place_updated")
    chains[1] = chain("c1-v2", name="c1", source_prefix="127.0.0.2/32")
    push(stub, [http_listener("three", port, chains=chains)])
    assert conns[1].closed_by_peer()
    for index in (0, 2):
        answer = conns[index].request()
        assert answer.text == f"c{index}-v1" and not answer.closes
    assert HttpConnection(port, source="127.0.0.2").request().text == "c1-v2"
    assert count(proxy, "listener_manager.listener_in_place_updated") - updated == 1
    wait_for(lambda: proxy.stat("listener_manager.total_filter_chains_draining") == 0, timeout=5)
    assert not conns[0].request().closes and not conns[2].request().closes


def test_listener_filter_timeout_closes_or_continues(stub, proxy) -> None:
    closing, continuing = free_port(), free_port()
    fields = {"listener_filters": [inspector(TLS_INSPECTOR)], "listener_filters_timeout": "0.3s"}
    push(
        stub,
        [
            http_listener("closing", closing, body="never", **fields),
            http_listener(
                "continuing",
                continuing,
                body="served",
                continue_on_listener_filters_timeout=True,
                **fields,
            ),
        ],
    )
    silent = socket.create_connection(("127.0.0.1", closing), timeout=5)
    assert silent.recv(1) == b""  # closed by the proxy after the timeout, nothing served
    silent.close()
    assert proxy.stat(f"listener.127.0.0.1_{closing}.downstream_pre_cx_timeout") == 1
    assert proxy.stat(f"listener.127.0.0.1_{closing}.downstream_cx_total") == 0
    waiting = HttpConnection(continuing)
    wait_for(
        lambda: proxy.stat(f"listener.127.0.0.1_{continuing}.downstream_pre_cx_timeout") == 1,
        timeout=5,
    )
    assert waiting.request().text == "served"  # matched on what was known: raw_buffer


def test_unreadable_certificate_is_a_nack_naming_the_field(stub, proxy, ca) -> None:
    port = free_port()
    broken = tls_chain("broken", ca.issue("x"))
    certificate = broken["transport_socket"]["typed_config"]["common_tls_context"][
        "tls_certificates"
    ][0]
    certificate["certificate_chain"] = {"filename": "/nonexistent/cert.pem"}
    version = stub.client.set_resources(listeners=[http_listener("broken", port, chains=[broken])])[
        "listeners"
    ]
    with pytest.raises(StubNack) as nack:
        stub.client.wait(version, timeout=10)
    assert (
        "broken: filter_chains[0].transport_socket.typed_config.common_tls_context"
        ".tls_certificates[0].certificate_chain.filename: cannot read '/nonexistent/cert.pem':"
        " No such file or directory"
    ) in str(nack.value)
    assert proxy.listeners() == {}
