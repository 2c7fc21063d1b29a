"""xds-proxy's TLS secrets, with real TLS clients: static secrets from the bootstrap, mTLS with a
client CA from SDS merged into a `combined_validation_context`, NACKs of secrets that do not
build, `/config_dump`'s SecretsConfigDump and `/drain_status` while a listener waits for a
secret. (Warming and rotation against Envoy 1.40: tests/interop/test_sds_interop.py.)"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from control_plane_stub.resources import SECRET_TYPE
from tests.helpers.certs import CertificateAuthority
from tests.helpers.envoy import load_bootstrap, with_xds_address
from tests.helpers.http_client import refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.interop.test_stub_eds_sds_interop import (
    DOWNSTREAM_TLS,
    DRAIN_ARGS,
    handshake_serial,
    listener,
    sds_listener,
    subscriptions,
    tls_secret,
    trusted_ca_secret,
)
from tests.interop.test_stub_rds_interop import without_retry_policy

ADS = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
DIRECT = {"direct_response": {"status": 200, "body": {"inline_string": "tls\n"}}}


def start_proxy(stub: StubProcess, node: str, workdir: Path) -> ProxyProcess:
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    proxy = ProxyProcess(without_retry_policy(bootstrap), workdir, extra_args=DRAIN_ARGS)
    proxy.start()
    proxy.wait_ready()
    return proxy


def tls_listener(name: str, port: int, common: dict[str, Any], **context: Any) -> dict:
    transport = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS, "common_tls_context": common, **context},
    }
    return listener(name, port, DIRECT, transport_socket=transport)


def test_static_secrets_serve_a_static_listener_and_are_redacted_in_config_dump(
    tmp_path: Path,
) -> None:
    port = free_port()
    ca = CertificateAuthority("static-ca")
    server = ca.issue("server", dns_names=["server.test"])
    secret = tls_secret("server-cert", server)
    common = {"tls_certificate_sds_secret_configs": [{"name": "server-cert"}]}
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "secrets": [secret],
            "listeners": [tls_listener("static", port, common)],
        },
    }
    proxy = ProxyProcess(bootstrap, tmp_path / "proxy").start()
    try:
        proxy.wait_ready()
        assert handshake_serial(port, ca.cert_pem) == server.serial
        dump = json.loads(proxy.get("/config_dump?resource=static_secrets")[1])
        (static,) = dump["configs"]
        assert static["name"] == "server-cert"
        key = static["secret"]["tls_certificate"]["private_key"]
        assert key == {"inline_string": "[redacted]"}
        full = proxy.get("/config_dump")[1]
        assert server.key_pem.decode().splitlines()[1] not in full
        assert "SecretsConfigDump" in full
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("common", "error"),
    [
        (
            {"tls_certificate_sds_secret_configs": [{"name": "nope"}]},
            "Unknown static secret: nope",
        ),
        (
            {
                "tls_certificate_sds_secret_configs": [{"name": "server-cert"}],
                "validation_context_sds_secret_config": {"name": "server-cert"},
            },
            "Unknown static certificate validation context: server-cert",
        ),
    ],
)
def test_an_unknown_static_secret_fails_start_up(
    common: dict[str, Any], error: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority("static-ca")
    bootstrap = {
        "static_resources": {
            "secrets": [tls_secret("server-cert", ca.issue("server"))],
            "listeners": [tls_listener("static", free_port(), common)],
        },
    }
    proxy = ProxyProcess(bootstrap, tmp_path / "proxy")
    with pytest.raises(Exception, match="exited early"):
        proxy.start(timeout=10)
    assert error in proxy.log()


def test_mtls_with_a_client_ca_from_sds_merged_into_the_default_validation_context(
    tmp_path: Path,
) -> None:
    """combined_validation_context: the default context (here without trusted_ca) merged with
    the client CA bundle from SDS; clients must present a certificate of that CA."""
    node = "sds-mtls"
    port = free_port()
    server_ca, client_ca = CertificateAuthority("server-ca"), CertificateAuthority("client-ca")
    server = server_ca.issue("server", dns_names=["server.test"])
    common = {
        "tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": ADS}],
        "combined_validation_context": {
            "default_validation_context": {},
            "validation_context_sds_secret_config": {"name": "clients", "sds_config": ADS},
        },
    }
    stub = StubProcess(tmp_path / "stub").start()
    proxy = start_proxy(stub, node, tmp_path / "proxy")
    try:
        config = tls_listener("M", port, common, require_client_certificate=True)
        pushed = stub.client.set_resources(listeners=[config], secrets=[tls_secret("cert", server)])
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, SECRET_TYPE) == ["cert", "clients"],
            timeout=5,
            what="SDS [cert, clients]",
        )
        wait_for(lambda: proxy.stat("sds.cert.update_success") == 1, timeout=5, what="cert")
        assert refused(port)  # the client CA has not arrived: still warming
        _, body = proxy.get("/drain_status")
        (warming,) = json.loads(body)["warming"]
        assert warming["waiting_for"] == ["secret:clients"]
        served = stub.client.set_resources(
            secrets=[tls_secret("cert", server), trusted_ca_secret("clients", client_ca)]
        )
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="M accepting")
        client = client_ca.issue("client", client=True)
        client_files = client.write(tmp_path)
        context = ssl.create_default_context(cadata=server_ca.cert_pem.decode())
        context.load_cert_chain(client_files["cert"], client_files["key"])
        assert _get(port, context).startswith(b"HTTP/1.1 200")
        without = ssl.create_default_context(cadata=server_ca.cert_pem.decode())
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(port, without)
        stranger_ca = CertificateAuthority("stranger")
        (tmp_path / "s").mkdir()
        stranger = stranger_ca.issue("client", client=True).write(tmp_path / "s")
        other = ssl.create_default_context(cadata=server_ca.cert_pem.decode())
        other.load_cert_chain(stranger["cert"], stranger["key"])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(port, other)
    finally:
        proxy.stop()
        stub.stop()


def _get(port: int, context: ssl.SSLContext) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="server.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nhost: server.test\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


def test_a_secret_that_does_not_build_is_nacked_and_the_held_one_keeps_serving(
    tmp_path: Path,
) -> None:
    node = "sds-nack"
    port = free_port()
    ca = CertificateAuthority("nack-ca")
    server = ca.issue("server", dns_names=["server.test"])
    stub = StubProcess(tmp_path / "stub").start()
    proxy = start_proxy(stub, node, tmp_path / "proxy")
    try:
        pushed = stub.client.set_resources(
            listeners=[sds_listener("L", port, "cert", {"ads": {}})],
            secrets=[tls_secret("cert", server)],
        )
        stub.client.wait(pushed["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        bad = {
            "name": "cert",
            "tls_certificate": {
                "certificate_chain": {"inline_string": "garbage"},
                "private_key": {"inline_string": server.key_pem.decode()},
            },
        }
        stub.client.set_resources(secrets=[bad])
        wait_for(lambda: stub.nacks(), timeout=10, what="the NACK")
        assert stub.nacks()[0]["message"] == "Failed to load certificate chain from <inline>"
        generic = {"name": "cert", "generic_secret": {"secret": {"inline_string": "x"}}}
        stub.client.set_resources(secrets=[generic])
        wait_for(
            lambda: stub.nacks()[-1]["message"] == "generic_secret: not supported yet",
            timeout=10,
            what="the NACK of a generic secret",
        )
        assert proxy.stat("sds.cert.update_rejected") == 2
        assert handshake_serial(port, ca.cert_pem) == server.serial
    finally:
        proxy.stop()
        stub.stop()


def test_duplicate_static_secrets_fail_start_up_in_envoys_words(tmp_path: Path) -> None:
    ca = CertificateAuthority("dup-ca")
    bootstrap = {
        "static_resources": {
            "secrets": [
                tls_secret("same", ca.issue("a")),
                trusted_ca_secret("same", ca),  # another kind: allowed, as Envoy
                tls_secret("same", ca.issue("b")),
            ],
        },
    }
    proxy = ProxyProcess(bootstrap, tmp_path / "proxy")
    with pytest.raises(Exception, match="exited early"):
        proxy.start(timeout=10)
    assert "static_resources.secrets[2]: Duplicate static TlsCertificate secret name same" in (
        proxy.log()
    )


def test_a_secret_source_we_cannot_subscribe_with_nacks_the_listener(tmp_path: Path) -> None:
    node = "sds-bad-source"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    proxy = start_proxy(stub, node, tmp_path / "proxy")
    try:
        source = {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "nowhere"}}],
            }
        }
        stub.client.set_resources(listeners=[sds_listener("L", port, "cert", source)])
        wait_for(lambda: stub.nacks(), timeout=10, what="the NACK")
        message = stub.nacks()[0]["message"]
        assert message.startswith("Error adding/updating listener(s) L: ")
        assert "tls_certificate_sds_secret_configs[0].sds_config.api_config_source" in message
        assert "nowhere" in message
        assert proxy.listeners() == {}
    finally:
        proxy.stop()
        stub.stop()
