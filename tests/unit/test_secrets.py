"""Secrets without a control plane: the Secret builder's checks and Envoy's NACK texts, the
redaction `/config_dump` applies, and the secret store: holders rebuilt on rotation (the next
handshake's context; the old context object untouched), NACKs that keep the held copy, the
events the listener manager hears, and the SDS stats."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest
from cryptography import x509
from envoy.admin.v3 import config_dump_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import json_format

from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.secrets import placeholder_secrets
from tests.interop.test_stub_eds_sds_interop import sds_listener, upstream_tls_cluster
from tests.unit.test_route_registry import BOOTSTRAP
from xds_proxy.config.redact import redact_sensitive
from xds_proxy.config.secrets import (
    CertificateMaterial,
    ValidationMaterial,
    build_secret,
    merged_validation,
    redacted,
)
from xds_proxy.config.tls import downstream_tls, upstream_tls
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import RouteState, SecretsFailed, SecretsReady
from xds_proxy.secrets.store import SecretStore
from xds_proxy.stats import Stats

CA = CertificateAuthority("secrets-unit-ca")
FIRST = CA.issue("first", dns_names=["server.test"])
SECOND = CA.issue("second", dns_names=["server.test"])


def certificate_secret(name: str, issued: Issued, key: bytes | None = None) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_string = issued.cert_pem.decode()
    secret.tls_certificate.private_key.inline_string = (key or issued.key_pem).decode()
    return secret


def ca_secret(name: str, authority: CertificateAuthority) -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name=name)
    secret.validation_context.trusted_ca.inline_string = authority.cert_pem.decode()
    return secret


def sds_socket(cert: str, ca: str | None = None) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.tls_certificate_sds_secret_configs.add(name=cert).sds_config.ads.SetInParent()
    if ca is not None:
        validation = common.validation_context_sds_secret_config
        validation.name = ca
        validation.sds_config.ads.SetInParent()
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(context)
    return socket


# -- the builder -------------------------------------------------------------------------------


def test_a_secret_builds_to_its_material() -> None:
    material = build_secret(certificate_secret("s", FIRST))
    assert material == CertificateMaterial(FIRST.cert_pem, FIRST.key_pem)
    assert build_secret(ca_secret("c", CA)) == ValidationMaterial(CA.cert_pem)


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        (
            certificate_secret("s", FIRST, key=SECOND.key_pem),
            "Failed to load private key from <inline>, Cause: ",
        ),
        (
            json_format.ParseDict(
                {
                    "name": "s",
                    "tls_certificate": {
                        "certificate_chain": {"inline_string": "garbage"},
                        "private_key": {"inline_string": "x"},
                    },
                },
                secret_pb2.Secret(),
            ),
            "Failed to load certificate chain from <inline>",
        ),
        (
            json_format.ParseDict(
                {"name": "c", "validation_context": {"trusted_ca": {"inline_string": "x"}}},
                secret_pb2.Secret(),
            ),
            "Failed to load trusted CA certificates from <inline>",
        ),
        (
            json_format.ParseDict(
                {"name": "g", "generic_secret": {"secret": {"inline_string": "x"}}},
                secret_pb2.Secret(),
            ),
            "generic_secret: not supported yet",
        ),
        (secret_pb2.Secret(name="empty"), "Secret empty: one of tls_certificate or"),
    ],
)
def test_a_secret_that_does_not_build_says_why_in_envoys_words(
    secret: secret_pb2.Secret, error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build_secret(secret)
    assert str(raised.value).lstrip(".").startswith(error)


def test_private_keys_are_redacted_wherever_they_are() -> None:
    secret = certificate_secret("s", FIRST)
    shown = redacted(secret)
    assert shown.tls_certificate.private_key.inline_string == "[redacted]"
    assert shown.tls_certificate.certificate_chain.inline_string == FIRST.cert_pem.decode()
    assert secret.tls_certificate.private_key.inline_string == FIRST.key_pem.decode()
    on_disk = secret_pb2.Secret(name="f")
    on_disk.tls_certificate.private_key.filename = "/keys/k.pem"
    assert redacted(on_disk).tls_certificate.private_key.filename == "[redacted]"
    # inside Anys: a listener's inline TLS context in a bootstrap dump
    bootstrap = bootstrap_pb2.Bootstrap()
    chain = bootstrap.static_resources.listeners.add(name="l").filter_chains.add()
    context = tls_pb2.DownstreamTlsContext()
    certificate = context.common_tls_context.tls_certificates.add()
    certificate.private_key.inline_bytes = b"KEY"
    chain.transport_socket.typed_config.Pack(context)
    dump = config_dump_pb2.ConfigDump()
    dump.configs.add().Pack(config_dump_pb2.BootstrapConfigDump(bootstrap=bootstrap))
    redact_sensitive(dump)
    unpacked = config_dump_pb2.BootstrapConfigDump()
    dump.configs[0].Unpack(unpacked)
    shown_context = tls_pb2.DownstreamTlsContext()
    typed = unpacked.bootstrap.static_resources.listeners[0].filter_chains[0]
    typed.transport_socket.typed_config.Unpack(shown_context)
    shown_key = shown_context.common_tls_context.tls_certificates[0].private_key
    assert shown_key.inline_bytes == b"[redacted]"


def test_a_combined_validation_context_takes_the_dynamic_fields_over_the_default() -> None:
    default, dynamic = ValidationMaterial(b"default"), ValidationMaterial(b"dynamic")
    assert merged_validation(default, dynamic) == dynamic
    assert merged_validation(default, ValidationMaterial(None)) == default
    assert merged_validation(default, None) == default
    assert merged_validation(None, dynamic) == dynamic


# -- the store -------------------------------------------------------------------------------


def make(events: list, stats: Stats | None = None) -> SecretStore:
    bootstrap = json_format.ParseDict(BOOTSTRAP, bootstrap_pb2.Bootstrap())
    return SecretStore(stats or Stats(), bootstrap, events.append, ads_coming=lambda: True)


def serial(context: ssl.SSLContext | None) -> int:
    """The serial of the certificate `context` serves, by a handshake in memory."""
    assert context is not None
    client = ssl.create_default_context(cadata=CA.cert_pem.decode())
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname="server.test")
    server_side = context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (client_side, server_side):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_rotation_rebuilds_the_holders_context_and_a_nack_keeps_the_held_copy() -> None:
    async def scenario() -> None:
        events: list = []
        stats = Stats()
        store = make(events, stats)
        tls = downstream_tls(sds_socket("cert"), "chain", store)
        updates: list[int] = []
        tls.on_update = lambda: updates.append(1)
        assert tls.context is None  # not held yet: handshakes are refused
        store.watch(1, ("cert",))
        client = object()
        store.subscriptions.by_name["cert"].client = client  # type: ignore[assignment]
        first_copy = [(certificate_secret("cert", FIRST), "v1")]
        assert store.apply_named(client, "v1", first_copy, []) is None  # type: ignore[arg-type]
        assert events == [SecretsReady("cert")] and store.state("cert") is RouteState.READY
        first = tls.context
        assert serial(first) == FIRST.serial and updates == [1]

        assert (
            store.apply_named(client, "v2", [(certificate_secret("cert", SECOND), "v2")], [])
            is None
        )  # type: ignore[arg-type]
        assert serial(tls.context) == SECOND.serial and updates == [1, 1]
        assert serial(first) == FIRST.serial  # a connection's context is never changed

        bad = certificate_secret("cert", FIRST, key=SECOND.key_pem)
        text = store.apply_named(client, "v3", [(bad, "v3")], [])  # type: ignore[arg-type]
        assert text is not None and text.startswith("Failed to load private key from <inline>")
        assert serial(tls.context) == SECOND.serial and updates == [1, 1]
        assert stats.value("sds.cert.update_success") == 2
        assert stats.value("sds.cert.update_rejected") == 1
        assert stats.value("sds.cert.update_attempt") == 4  # the subscription's start too
        assert stats.text_readout("sds.cert.version_text").value == "v2"
        dump = store.config_dump()
        assert [(s.name, s.version_info) for s in dump.dynamic_active_secrets] == [("cert", "v2")]

    asyncio.run(scenario())


def test_a_nack_or_delta_absence_before_any_copy_fails_the_name() -> None:
    async def scenario() -> None:
        events: list = []
        store = make(events)
        store.watch(1, ("a", "b"))
        client = object()
        for name in ("a", "b"):
            store.subscriptions.by_name[name].client = client  # type: ignore[assignment]
        dump = store.config_dump()
        assert [(s.name, s.version_info) for s in dump.dynamic_warming_secrets] == [
            ("a", "uninitialized"),
            ("b", "uninitialized"),
        ]
        assert store.apply_named(client, "v1", [], ["a"]) is None  # type: ignore[arg-type]
        assert events == [SecretsFailed("a")]
        bad = certificate_secret("b", FIRST, key=SECOND.key_pem)
        assert store.apply_named(client, "v2", [(bad, "v2")], []) is not None  # type: ignore[arg-type]
        assert events == [SecretsFailed("a"), SecretsFailed("b")]
        assert store.state("b") is RouteState.FAILED

    asyncio.run(scenario())


def test_an_upstream_context_waits_for_its_ca_then_settles() -> None:
    async def scenario() -> None:
        store = make([])
        context = tls_pb2.UpstreamTlsContext()
        validation = context.common_tls_context.validation_context_sds_secret_config
        validation.name = "ca"
        validation.sds_config.ads.SetInParent()
        socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
        socket.typed_config.Pack(context)
        tls = upstream_tls(socket, "cluster.transport_socket")
        settled: list[int] = []
        tls.on_settled = lambda: settled.append(1)
        tls.bind(store)
        assert tls.context is None
        store.watch(("cluster", "U"), ("ca",))
        client = object()
        store.subscriptions.by_name["ca"].client = client  # type: ignore[assignment]
        store.apply_named(client, "v1", [(ca_secret("ca", CA), "v1")], [])  # type: ignore[arg-type]
        assert tls.context is not None and tls.context.verify_mode == ssl.CERT_REQUIRED
        assert settled == [1]

    asyncio.run(scenario())


def test_placeholder_secrets_cover_every_name_a_corpus_references_and_build() -> None:
    listeners = [sds_listener("L", 8001, "cert", {"ads": {}})]
    clusters = [upstream_tls_cluster("U", 8002, "up-ca")]
    secrets = placeholder_secrets(listeners, clusters)
    assert [secret["name"] for secret in secrets] == ["cert", "up-ca"]
    built = [build_secret(json_format.ParseDict(s, secret_pb2.Secret())) for s in secrets]
    assert isinstance(built[0], CertificateMaterial)
    assert isinstance(built[1], ValidationMaterial)
    assert placeholder_secrets(listeners, clusters, held=["cert"]) == secrets[1:]
