"""Downstream TLS: DownstreamTlsContext -> SSLContext, and TLS over an accepted connection after
the listener filters read the ClientHello (real loopback sockets, asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.helpers.certs import CertificateAuthority
from xds_proxy.config.support import require_supported
from xds_proxy.config.tls import downstream_tls
from xds_proxy.errors import ConfigError
from xds_proxy.listener.inspectors import (
    Inspection,
    ListenerFilters,
    TlsInspector,
    hand_over,
)
from xds_proxy.stats import Stats

PATH = "filter_chains[0].transport_socket"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


def transport_socket(
    ca: CertificateAuthority,
    folder: Path | None = None,
    trusted_ca: bool = False,
    require: bool | None = None,
    alpn: tuple[str, ...] = (),
) -> base_pb2.TransportSocket:
    server = ca.issue("server", dns_names=["a.example.com"])
    context = tls_pb2.DownstreamTlsContext()
    certificate = context.common_tls_context.tls_certificates.add()
    if folder is None:
        certificate.certificate_chain.inline_string = server.cert_pem.decode()
        certificate.private_key.inline_string = server.key_pem.decode()
    else:
        paths = server.write(folder)
        certificate.certificate_chain.filename = str(paths["cert"])
        certificate.private_key.filename = str(paths["key"])
    if trusted_ca:
        context.common_tls_context.validation_context.trusted_ca.inline_bytes = ca.cert_pem
    if require is not None:
        context.require_client_certificate.value = require
    context.common_tls_context.alpn_protocols.extend(alpn)
    result = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    result.typed_config.Pack(context)
    return result


def error_of(socket_config: base_pb2.TransportSocket) -> str:
    """The first error of the support table's gate (config/), then of building."""
    with pytest.raises(ConfigError) as error:
        require_supported(socket_config, PATH)
        downstream_tls(socket_config, PATH)
    return str(error.value)


def test_inline_and_file_certificates(ca, tmp_path) -> None:
    for config in (transport_socket(ca), transport_socket(ca, folder=tmp_path)):
        tls = downstream_tls(config, PATH)
        assert tls.context.verify_mode == ssl.CERT_NONE
        assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert not tls.require_client_certificate


def test_validation_context_asks_for_client_certificates(ca) -> None:
    assert downstream_tls(transport_socket(ca, trusted_ca=True), PATH).context.verify_mode == (
        ssl.CERT_OPTIONAL
    )
    required = downstream_tls(transport_socket(ca, trusted_ca=True, require=True), PATH)
    assert required.context.verify_mode == ssl.CERT_REQUIRED
    assert required.require_client_certificate


def test_errors_name_the_field(ca, tmp_path) -> None:
    missing = transport_socket(ca, folder=tmp_path)
    context = tls_pb2.DownstreamTlsContext()
    missing.typed_config.Unpack(context)
    context.common_tls_context.tls_certificates[0].private_key.filename = "/nonexistent/key.pem"
    missing.typed_config.Pack(context)
    assert error_of(missing) == (
        f"{PATH}.typed_config.common_tls_context.tls_certificates[0].private_key.filename:"
        " cannot read '/nonexistent/key.pem': No such file or directory"
    )
    assert error_of(transport_socket(ca, require=True)) == (
        f"{PATH}.typed_config.require_client_certificate: needs"
        " common_tls_context.validation_context.trusted_ca (accepting any client certificate"
        " is not supported)"
    )
    mismatched = transport_socket(ca)
    context = tls_pb2.DownstreamTlsContext()
    mismatched.typed_config.Unpack(context)
    context.common_tls_context.tls_certificates[0].private_key.inline_string = ca.issue(
        "other"
    ).key_pem.decode()
    mismatched.typed_config.Pack(context)
    assert error_of(mismatched).startswith(
        f"{PATH}.typed_config.common_tls_context.tls_certificates[0]: cannot load the"
        " certificate chain and private key"
    )
    unsupported = transport_socket(ca)
    unsupported.typed_config.Unpack(context)
    context.require_sni.value = True
    unsupported.typed_config.Pack(context)
    assert error_of(unsupported) == f"{PATH}.typed_config.require_sni: not supported"
    upstream = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    upstream.typed_config.Pack(tls_pb2.UpstreamTlsContext())
    assert error_of(upstream) == (
        f"{PATH}.typed_config: @type 'type.googleapis.com/envoy.extensions.transport_sockets."
        "tls.v3.UpstreamTlsContext' not supported on a listener"
    )
    none = tls_pb2.DownstreamTlsContext()
    empty = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    empty.typed_config.Pack(none)
    assert error_of(empty) == (
        f"{PATH}.typed_config.common_tls_context.tls_certificates: exactly one certificate is"
        " supported, got 0"
    )


class Echo(asyncio.Protocol):
    """Answers each chunk with `echo:` + chunk + the negotiated ALPN; records what it saw."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def connection_made(self, transport) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self.alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        self.seen.append(("peercert", bool(transport.get_extra_info("peercert"))))

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data + f"|{self.alpn}".encode())

    def eof_received(self):
        self.seen.append("eof")
        return False

    def connection_lost(self, exc) -> None:
        self.seen.append("lost")


def run(loop_kind: str, main) -> None:
    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def client_context(ca, alpn=None, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if alpn:
        context.set_alpn_protocols(alpn)
    if cert is not None:
        context.load_cert_chain(cert["cert"], cert["key"])
    return context


async def serve(
    tls, stats: Stats, seen: list, inspect: bool, detected: list | None = None
) -> asyncio.Server:
    """A listener whose one chain terminates TLS; with `inspect`, the tls_inspector reads the
    ClientHello first (what the proxy does), and the chain gets those bytes."""
    loop = asyncio.get_running_loop()
    detected = [] if detected is None else detected

    def finished(transport, found, already_read) -> None:
        detected.append(found)
        hand_over(transport, already_read, lambda: Echo(seen), tls, stats, "listener.test.")

    class Acceptor(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            if not inspect:
                finished(transport, None, b"")
                return
            config = ListenerFilters((TlsInspector(),), 5.0, False)
            inspection = Inspection(config, stats, "listener.test.", finished)
            transport.set_protocol(inspection)
            inspection.connection_made(transport)

    return await loop.create_server(Acceptor, "127.0.0.1", 0)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("inspect", [True, False])
def test_round_trip_with_sni_and_alpn(ca, loop_kind: str, inspect: bool) -> None:
    tls = downstream_tls(transport_socket(ca, alpn=("h2", "http/1.1")), PATH)
    stats, seen, detected = Stats(), [], []

    async def main() -> None:
        server = await serve(tls, stats, seen, inspect, detected)
        port = server.sockets[0].getsockname()[1]
        context = client_context(ca, alpn=["http/1.1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="a.example.com"
        )
        writer.write(b"hello")
        assert await reader.readexactly(19) == b"echo:hello|http/1.1"
        writer.write(b"x" * 200_000)  # many TLS records, back-pressure on the way back
        expected = 0
        while expected < 200_000:
            chunk = await reader.read(65536)
            assert chunk
            expected += chunk.count(b"x")
        writer.close()
        await writer.wait_closed()
        server.close()
        if inspect:
            found = detected[0]
            assert (found.server_name, found.transport_protocol) == ("a.example.com", "tls")
            assert found.application_protocols == ("http/1.1",)

    run(loop_kind, main)
    assert stats.value("listener.test.ssl.handshake") == 1
    assert seen[0] == ("peercert", False)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_client_certificate_required(ca, tmp_path, loop_kind: str) -> None:
    tls = downstream_tls(transport_socket(ca, trusted_ca=True, require=True), PATH)
    stats, seen = Stats(), []
    client_cert = ca.issue("client", client=True).write(tmp_path)

    async def main() -> None:
        server = await serve(tls, stats, seen, inspect=True)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_context(ca, cert=client_cert),
            server_hostname="a.example.com",
        )
        writer.write(b"hi")
        assert await reader.readexactly(12) == b"echo:hi|None"
        writer.close()
        await writer.wait_closed()
        # Without a certificate: TLS 1.3 finishes the client's side of the handshake, then
        # the server's alert ends the connection before any answer.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca), server_hostname="a.example.com"
        )
        writer.write(b"hi")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()
        server.close()

    run(loop_kind, main)
    assert stats.value("listener.test.ssl.handshake") == 1
    assert stats.value("listener.test.ssl.connection_error") == 1
    assert seen[0] == ("peercert", True)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_plaintext_on_a_tls_chain_is_closed(ca, loop_kind: str) -> None:
    tls = downstream_tls(transport_socket(ca), PATH)
    stats, seen = Stats(), []

    async def main() -> None:
        server = await serve(tls, stats, seen, inspect=True)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # an alert at most, then EOF
        assert b"HTTP" not in data
        writer.close()
        server.close()

    run(loop_kind, main)
    assert stats.value("listener.test.ssl.connection_error") == 1
    assert seen == []


def test_close_sends_close_notify_then_fin(ca) -> None:
    """The chain's protocol closing its TLS transport: the client reads a clean EOF."""
    tls = downstream_tls(transport_socket(ca), PATH)
    stats = Stats()

    class Closer(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.write(b"bye")
            transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Acceptor(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                hand_over(transport, b"", Closer, tls, stats, "listener.test.")

        server = await loop.create_server(Acceptor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> tuple[bytes, bytes]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with client_context(ca).wrap_socket(raw, server_hostname="a.example.com") as secure:
                return secure.recv(10), secure.recv(10)

        first, then = await loop.run_in_executor(None, client)
        assert (first, then) == (b"bye", b"")  # b"" after close_notify (no ragged EOF error)
        server.close()

    uvloop.run(main())
