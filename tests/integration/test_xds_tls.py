"""The xDS channel over TLS and mTLS: control-plane-stub `serve --tls-cert --tls-key [--tls-ca]`
and xds-proxy with the xDS cluster's `transport_socket`, certificates made by the test."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc
from google.protobuf import json_format

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get
from tests.helpers.listeners import bootstrap_for, http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess, run_cli
from xds_proxy.config.support import require_supported
from xds_proxy.errors import ConfigError
from xds_proxy.xds.tls import channel_tls

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SERVER_NAME = "xds.test"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


# -- certificates ------------------------------------------------------------------------------


@dataclass
class Issued:
    cert: Path
    key: Path


def _write(directory: Path, name: str, cert: x509.Certificate, key) -> Issued:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


class Authority:
    """A throw-away CA that issues server and client certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.issued = _write(directory, name, self.cert, self.key)
        self.directory = directory

    def issue(self, name: str, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return _write(self.directory, name, builder.sign(self.key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "test-ca")
    other = Authority(directory, "other-ca")
    return Pki(
        ca=ca,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        stranger=other.issue("stranger", server=False),
    )


def tls_socket(
    trusted_ca: dict | None, client: Issued | None = None, sni: str = SERVER_NAME
) -> dict:
    common: dict = {}
    if trusted_ca is not None:
        common["validation_context"] = {"trusted_ca": trusted_ca}
    if client is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(client.cert)},
                "private_key": {"filename": str(client.key)},
            }
        ]
    config: dict = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if sni:
        config["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": config}


def tls_bootstrap(mode: str, address: str, socket: dict, node_id: str = "tls-node") -> dict:
    bootstrap = bootstrap_for(mode, address, node_id=node_id)
    bootstrap["static_resources"]["clusters"][0]["transport_socket"] = socket
    return bootstrap


def tls_stub(tmp_path: Path, pki: Pki, mutual: bool) -> StubProcess:
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if mutual:
        args += ["--tls-ca", str(pki.ca.issued.cert)]
    return StubProcess(tmp_path / "stub", extra_args=args).start()


def serve_one_listener(stub: StubProcess, proxy: EnvoyProcess, version: str) -> None:
    port = free_port()
    stub.client.set_resources(
        listeners=[http_listener("web", port, body="over tls")], version=version
    )
    stub.client.wait(version, timeout=10)
    assert get(port).text == "over tls"
    assert proxy.listeners() == {"web": f"127.0.0.1:{port}"}


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sotw", "delta-ads"])
def test_proxy_over_mtls(mode: str, pki: Pki, tmp_path: Path) -> None:
    stub = tls_stub(tmp_path, pki, mutual=True)
    socket = tls_socket({"filename": str(pki.ca.issued.cert)}, client=pki.client)
    proxy = ProxyProcess(tls_bootstrap(mode, stub.xds_address, socket), tmp_path / "proxy")
    try:
        proxy.start()
        proxy.wait_ready()
        serve_one_listener(stub, proxy, "v1")
        assert proxy.stat("listener_manager.lds.update_failure") == 0
    finally:
        proxy.stop()
        stub.stop()


def test_proxy_over_tls_with_an_inline_ca_and_no_sni(pki: Pki, tmp_path: Path) -> None:
    """Without `sni` the server's certificate must name the target host (127.0.0.1)."""
    stub = tls_stub(tmp_path, pki, mutual=False)
    socket = tls_socket({"inline_string": pki.ca.issued.cert.read_text()}, sni="")
    proxy = ProxyProcess(tls_bootstrap("delta", stub.xds_address, socket), tmp_path / "proxy")
    try:
        proxy.start()
        proxy.wait_ready()
        serve_one_listener(stub, proxy, "v1")
    finally:
        proxy.stop()
        stub.stop()


@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-certificate", "other-ca"])
def test_mtls_stub_refuses_a_proxy_without_a_good_certificate(
    client: str | None, pki: Pki, tmp_path: Path
) -> None:
    stub = tls_stub(tmp_path, pki, mutual=True)
    issued = pki.stranger if client else None
    socket = tls_socket({"filename": str(pki.ca.issued.cert)}, client=issued)
    proxy = ProxyProcess(
        tls_bootstrap("sotw", stub.xds_address, socket, node_id="refused"), tmp_path / "proxy"
    )
    try:
        proxy.start()
        wait_for(
            lambda: proxy.stat("listener_manager.lds.update_failure") >= 2,
            timeout=10,
            what="failed stream attempts",
        )
        # Each new attempt sets connected_state 1 as its stream starts (as Envoy's
        # establishNewStream does) until the refused handshake closes it: read it between
        # attempts, where it must be 0 (one read could land inside an attempt).
        wait_for(
            lambda: proxy.stat("listener_manager.lds.control_plane.connected_state") == 0,
            timeout=5,
            what="connected_state 0 between refused attempts",
        )
        assert proxy.stat("listener_manager.lds.update_success") == 0
        assert stub.client.status()["nodes"] == []  # the stub never saw a request
    finally:
        proxy.stop()
        stub.stop()


def _first_response(channel: grpc.Channel) -> discovery_pb2.DiscoveryResponse:
    stub = lds_pb2_grpc.ListenerDiscoveryServiceStub(channel)
    request = discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE)
    request.node.id = "probe"
    return next(stub.StreamListeners(iter([request]), timeout=5))


def test_mtls_stub_answers_a_certified_client_and_refuses_others(pki: Pki, tmp_path) -> None:
    stub = tls_stub(tmp_path, pki, mutual=True)
    ca = pki.ca.issued.cert.read_bytes()
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    try:
        good = grpc.ssl_channel_credentials(
            ca, pki.client.key.read_bytes(), pki.client.cert.read_bytes()
        )
        with grpc.secure_channel(stub.xds_address, good, options=options) as channel:
            assert _first_response(channel).type_url == LISTENER_TYPE
        for credentials in (
            grpc.ssl_channel_credentials(ca),
            grpc.ssl_channel_credentials(
                ca, pki.stranger.key.read_bytes(), pki.stranger.cert.read_bytes()
            ),
        ):
            with grpc.secure_channel(stub.xds_address, credentials, options=options) as channel:
                with pytest.raises(grpc.RpcError) as caught:
                    _first_response(channel)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(stub.xds_address) as channel, pytest.raises(grpc.RpcError):
            _first_response(channel)
    finally:
        stub.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
            "--tls-cert /nonexistent/c.pem: cannot read: No such file or directory",
        ),
    ],
)
def test_stub_tls_flag_errors(args: list[str], message: str) -> None:
    result = run_cli("serve", "--xds", "127.0.0.1:0", "--control", "127.0.0.1:0", *args)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(message)


def test_missing_client_key_file_is_a_startup_error(pki: Pki, tmp_path: Path) -> None:
    missing = Issued(cert=pki.client.cert, key=tmp_path / "missing.key")
    socket = tls_socket({"filename": str(pki.ca.issued.cert)}, client=missing)
    proxy = ProxyProcess(tls_bootstrap("sotw", "127.0.0.1:1", socket), tmp_path / "proxy")
    try:
        with contextlib.suppress(Exception):  # it may exit before or after its admin is up
            proxy.start(timeout=10)
        wait_for(lambda: not proxy.alive(), timeout=10, what="the proxy to exit")
    finally:
        assert proxy.stop() == 1
    assert (
        "error: static_resources.clusters[0].transport_socket.typed_config.common_tls_context"
        ".tls_certificates[0].private_key.filename: cannot read" in proxy.log()
    )


@pytest.mark.envoy
def test_envoy_takes_the_same_bootstrap_over_mtls(pki: Pki, tmp_path: Path) -> None:
    """The bootstrap shape is Envoy's own: a real Envoy 1.40 subscribes with it too."""
    stub = tls_stub(tmp_path, pki, mutual=True)
    socket = tls_socket({"filename": str(pki.ca.issued.cert)}, client=pki.client)
    envoy = EnvoyProcess(tls_bootstrap("delta-ads", stub.xds_address, socket), tmp_path / "envoy")
    try:
        envoy.start()
        envoy.wait_ready()
        serve_one_listener(stub, envoy, "v1")
    finally:
        envoy.stop()
        stub.stop()


# -- the channel's TLS settings from the bootstrap (pure) --------------------------------------


def transport_socket(config: dict) -> base_pb2.TransportSocket:
    return json_format.ParseDict(
        {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM_TLS, **config}},
        base_pb2.TransportSocket(),
    )


def test_channel_tls_reads_inline_and_files(pki: Pki) -> None:
    tls = channel_tls(
        transport_socket(
            {
                "sni": "xds.test",
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(pki.client.cert)},
                            "private_key": {"inline_string": pki.client.key.read_text()},
                        }
                    ],
                    "validation_context": {"trusted_ca": {"filename": str(pki.ca.issued.cert)}},
                    "alpn_protocols": ["h2"],
                },
            }
        ),
        "c",
    )
    assert tls.mutual
    assert tls.certificate_chain.read() == pki.client.cert.read_bytes()
    assert tls.private_key.read() == pki.client.key.read_bytes()
    assert tls.channel_options("127.0.0.1:5") == [("grpc.ssl_target_name_override", "xds.test")]
    assert tls.credentials() is not None


def test_channel_tls_without_sni_checks_the_target_host() -> None:
    tls = channel_tls(transport_socket({}), "c")
    assert not tls.mutual and tls.trusted_ca is None
    assert tls.channel_options("[::1]:5") == [("grpc.ssl_target_name_override", "::1")]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"allow_renegotiation": True},
            "c.typed_config.allow_renegotiation: not supported",
        ),
        (
            {"common_tls_context": {"alpn_protocols": ["http/1.1"]}},
            "c.typed_config.common_tls_context.alpn_protocols[0]: only h2 (gRPC)",
        ),
        (
            {"common_tls_context": {"tls_certificates": [{"private_key": {"inline_string": "k"}}]}},
            "c.typed_config.common_tls_context.tls_certificates[0]: certificate_chain and "
            "private_key required",
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"environment_variable": "CA"}}
                }
            },
            "c.typed_config.common_tls_context.validation_context.trusted_ca"
            ".environment_variable: not supported",
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": "/nonexistent/ca.pem"}}
                }
            },
            "c.typed_config.common_tls_context.validation_context.trusted_ca.filename: "
            "cannot read '/nonexistent/ca.pem': No such file or directory",
        ),
    ],
)
def test_channel_tls_errors_name_the_field(config: dict, error: str) -> None:
    """The support table's gate (config/) first, as for a bootstrap or CDS cluster."""
    socket = transport_socket(config)
    with pytest.raises(ConfigError) as caught:
        require_supported(socket, "c")
        channel_tls(socket, "c")
    assert str(caught.value) == error


def test_channel_tls_refuses_other_socket_types() -> None:
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.raw_buffer")
    with pytest.raises(ConfigError, match=r"c\.typed_config: required"):
        channel_tls(socket, "c")
