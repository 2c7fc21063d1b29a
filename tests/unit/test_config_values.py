"""config/values.py (the one DataSource reader) and config/tls_material.py (the one loader of a
certificate and its key, for both directions, keeping the key off disk)."""

from __future__ import annotations

import os
import ssl
import tempfile

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import duration_pb2

from tests.helpers.certs import CertificateAuthority
from xds_proxy.config.tls import upstream_tls
from xds_proxy.config.tls_material import load_cert_chain
from xds_proxy.config.values import data_source, duration_seconds, read_data_source
from xds_proxy.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


def test_each_specifier_is_read(tmp_path, monkeypatch) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"from a file")
    monkeypatch.setenv("XDS_PROXY_TEST_BODY", "from the environment")
    sources = {
        "filename": (base_pb2.DataSource(filename=str(body)), b"from a file"),
        "inline_string": (base_pb2.DataSource(inline_string="text"), b"text"),
        "inline_bytes": (base_pb2.DataSource(inline_bytes=b"\x00\x01"), b"\x00\x01"),
        "environment_variable": (
            base_pb2.DataSource(environment_variable="XDS_PROXY_TEST_BODY"),
            b"from the environment",
        ),
        "unset": (base_pb2.DataSource(), b""),
    }
    for kind, (source, expected) in sources.items():
        assert read_data_source(source, "p") == expected, kind


def test_errors_name_the_field(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("XDS_PROXY_TEST_UNSET", raising=False)
    missing = base_pb2.DataSource(filename=str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as raised:
        read_data_source(missing, "a.body")
    assert str(raised.value) == (
        f"a.body.filename: cannot read '{tmp_path / 'missing'}': No such file or directory"
    )
    unset = base_pb2.DataSource(environment_variable="XDS_PROXY_TEST_UNSET")
    with pytest.raises(ConfigError) as raised:
        read_data_source(unset, "a.body")
    assert str(raised.value) == "a.body.environment_variable: 'XDS_PROXY_TEST_UNSET' is not set"


def test_a_file_is_read_again_on_each_read(tmp_path) -> None:
    """TLS material of the xDS channel is re-read at each reconnect (rotation on disk)."""
    path = tmp_path / "ca.pem"
    path.write_bytes(b"first")
    reference = data_source(base_pb2.DataSource(filename=str(path)), "p")
    assert reference.read() == b"first"
    path.write_bytes(b"rotated")
    assert reference.read() == b"rotated"


def test_duration_seconds() -> None:
    assert duration_seconds(duration_pb2.Duration(seconds=2, nanos=500_000_000)) == 2.5


def test_the_key_never_touches_a_disk(ca, monkeypatch) -> None:
    """Where memfd exists (Linux), no temporary folder or file is made for the key."""
    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd on this system")

    def refuse(*args, **kwargs):
        raise AssertionError("TLS material written to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    issued = ca.issue("server", dns_names=["a.example"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain(context, issued.cert_pem, issued.key_pem, "p")


def test_a_key_that_does_not_match_is_a_config_error(ca) -> None:
    issued, other = ca.issue("server"), ca.issue("other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ConfigError, match=r"^p: cannot load the certificate chain and private key"):
        load_cert_chain(context, issued.cert_pem, other.key_pem, "p")


def _upstream_socket(chain: bytes, key: bytes) -> base_pb2.TransportSocket:
    context = tls_pb2.UpstreamTlsContext(sni="a.example")
    certificate = context.common_tls_context.tls_certificates.add()
    certificate.certificate_chain.inline_bytes = chain
    certificate.private_key.inline_bytes = key
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(context)
    return socket


def test_upstream_client_certificate_loads_through_the_same_loader(ca, monkeypatch) -> None:
    if hasattr(os, "memfd_create"):
        monkeypatch.setattr(tempfile, "TemporaryDirectory", lambda *a, **k: 1 / 0)
    client = ca.issue("client", client=True)
    tls = upstream_tls(
        _upstream_socket(client.cert_pem, client.key_pem), "clusters[0].transport_socket"
    )
    assert tls.server_hostname == "a.example"
    other = ca.issue("other", client=True)
    with pytest.raises(ConfigError) as raised:
        upstream_tls(
            _upstream_socket(client.cert_pem, other.key_pem), "clusters[0].transport_socket"
        )
    assert str(raised.value).startswith(
        "clusters[0].transport_socket.typed_config.common_tls_context.tls_certificates[0]:"
        " cannot load the certificate chain and private key"
    )
