"""TLS settings from a transport socket's config, for both directions.

- `downstream_tls`: a filter chain's `DownstreamTlsContext` as a server `ssl.SSLContext`: one
  certificate (chain and key), `validation_context.trusted_ca` (client certificates are then
  asked for and verified when sent), `require_client_certificate`, `alpn_protocols`, and
  `tls_params` protocol versions.
- `upstream_tls_settings`: a cluster's `UpstreamTlsContext` (`common_tls_context {
  tls_certificates[0] {certificate_chain, private_key}, validation_context {trusted_ca},
  alpn_protocols: [h2]}, sni`) as DataSource references, read when needed (the xDS channel
  reads them again at each reconnect: certificates rotated on disk are picked up);
  `upstream_tls` makes a client `ssl.SSLContext` of them with Envoy's data-plane semantics:
  the server certificate is verified against `trusted_ca` when one is given and not at all
  otherwise; SNI is sent only when `sni` is set; names are not checked. A client certificate
  makes it mTLS. xds/tls.py makes gRPC channel credentials of the same settings.

Certificates and validation contexts can come from SDS (`tls_certificate_sds_secret_configs`,
`validation_context_sds_secret_config`, `combined_validation_context`) or from the bootstrap's
`static_resources.secrets`: `DownstreamTls` and `UpstreamTls` are holders whose `context` the
secret store (the `TlsSecrets` port) has rebuilt when a secret they use changes; None while a
secret has not arrived. See docs/secrets.md.

Certificates and keys are loaded by config/tls_material.py (the key never touches a disk).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import message

from xds_proxy.config.secrets import (
    CertificateMaterial,
    SecretMaterial,
    SecretRef,
    ValidationMaterial,
    merged_validation,
    secret_ref,
)
from xds_proxy.config.values import DataSourceRef, data_source, read_data_source
from xds_proxy.config.x509_names import leaf_uri_sans
from xds_proxy.errors import ConfigError
from xds_proxy.lazy import lazy_import

if TYPE_CHECKING:
    from xds_proxy.config import tls_material
else:  # loaded with the first certificate (xds_proxy/lazy.py)
    tls_material = lazy_import("xds_proxy.config.tls_material")

TLS_SOCKET_NAME = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name


# -- where a TLS context's secrets come from ----------------------------------------------------


class TlsSecrets(Protocol):
    """The secret store as TLS contexts see it (xds_proxy/secrets/store.py)."""

    def material(self, ref: SecretRef) -> SecretMaterial | None:
        """The secret's material now (None: not received yet); raises ConfigError for a
        static secret the bootstrap does not have."""
        ...

    def follow(self, ref: SecretRef, holder: SecretUser) -> None:
        """Call `holder.secret_updated()` whenever the secret changes (held weakly)."""
        ...


class SecretUser(Protocol):
    def secret_updated(self) -> None:
        """A secret it uses has a new copy."""
        ...

    def secret_failed(self) -> None:
        """A secret it uses, never received, failed (NACK, timeout, does not exist)."""
        ...


class SecretWatches(TlsSecrets, Protocol):
    """The secret store as the cluster manager uses it: clusters subscribe by name."""

    def watch(self, user: Hashable, names: tuple[str, ...]) -> None: ...

    def unwatch(self, user: Hashable) -> None: ...

    def flush(self) -> None: ...


class NoSecrets:
    """No secret store (tests, and where SDS is not wired): every static secret is unknown."""

    def material(self, ref: SecretRef) -> SecretMaterial | None:
        if ref.dynamic:
            return None
        raise ref.unknown_static()

    def follow(self, ref: SecretRef, holder: SecretUser) -> None:
        pass


NO_SECRETS = NoSecrets()


@dataclass(frozen=True)
class CommonTls:
    """A `common_tls_context`'s certificate and validation, as material or secret references."""

    certificate: CertificateMaterial | None
    certificate_ref: SecretRef | None
    validation: ValidationMaterial | None  # validation_context, or combined's default
    validation_ref: SecretRef | None  # validation_context_sds_secret_config (combined or not)

    @property
    def refs(self) -> tuple[SecretRef, ...]:
        return tuple(ref for ref in (self.certificate_ref, self.validation_ref) if ref is not None)

    def resolve(
        self, secrets: TlsSecrets
    ) -> tuple[CertificateMaterial | None, ValidationMaterial | None, bool]:
        """(certificate, validation, every secret held) from the store now."""
        certificate, validation, ready = self.certificate, self.validation, True
        if self.certificate_ref is not None:
            held = secrets.material(self.certificate_ref)
            certificate = held if isinstance(held, CertificateMaterial) else None
            ready = certificate is not None
        if self.validation_ref is not None:
            held = secrets.material(self.validation_ref)
            dynamic = held if isinstance(held, ValidationMaterial) else None
            validation = merged_validation(self.validation, dynamic)
            ready = ready and dynamic is not None
        return certificate, validation, ready


def _common_tls(
    common: common_pb2.CommonTlsContext, common_path: str, certificate_required: bool
) -> CommonTls:
    """The certificate (exactly one when `certificate_required`, at most one otherwise) and
    the validation context, static or from SDS. Raises ConfigError."""
    static_count = len(common.tls_certificates)
    sds_count = len(common.tls_certificate_sds_secret_configs)
    certificate: CertificateMaterial | None = None
    certificate_ref: SecretRef | None = None
    if certificate_required and static_count + sds_count != 1:
        field = "tls_certificate_sds_secret_configs" if sds_count else "tls_certificates"
        raise ConfigError(
            f"{common_path}.{field}: exactly one certificate is supported,"
            f" got {static_count + sds_count}"
        )
    if not certificate_required and static_count + sds_count > 1:
        field = "tls_certificate_sds_secret_configs" if sds_count else "tls_certificates"
        raise ConfigError(f"{common_path}.{field}: at most one certificate")
    if static_count:
        certificate_path = f"{common_path}.tls_certificates[0]"
        certificate = _static_certificate(common.tls_certificates[0], certificate_path)
    if sds_count:
        ref_path = f"{common_path}.tls_certificate_sds_secret_configs[0]"
        certificate_ref = secret_ref(common.tls_certificate_sds_secret_configs[0], ref_path)
    validation: ValidationMaterial | None = None
    validation_ref: SecretRef | None = None
    if common.HasField("validation_context"):
        validation = _static_validation(
            common.validation_context, f"{common_path}.validation_context"
        )
    elif common.HasField("validation_context_sds_secret_config"):
        validation_ref = secret_ref(
            common.validation_context_sds_secret_config,
            f"{common_path}.validation_context_sds_secret_config",
            validation=True,
        )
    elif common.HasField("combined_validation_context"):
        combined = common.combined_validation_context
        combined_path = f"{common_path}.combined_validation_context"
        validation = _static_validation(
            combined.default_validation_context, f"{combined_path}.default_validation_context"
        )
        validation_ref = secret_ref(
            combined.validation_context_sds_secret_config,
            f"{combined_path}.validation_context_sds_secret_config",
            validation=True,
        )
    return CommonTls(certificate, certificate_ref, validation, validation_ref)


def _static_certificate(certificate: common_pb2.TlsCertificate, path: str) -> CertificateMaterial:
    for name in ("certificate_chain", "private_key"):
        if not certificate.HasField(name):
            raise ConfigError(f"{path}.{name}: is required")
    chain = read_data_source(certificate.certificate_chain, f"{path}.certificate_chain")
    key = read_data_source(certificate.private_key, f"{path}.private_key")
    tls_material.load_cert_chain(
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain, key, path
    )  # loads?
    return CertificateMaterial(chain, key)


def _static_validation(
    context: common_pb2.CertificateValidationContext, path: str
) -> ValidationMaterial | None:
    if not context.HasField("trusted_ca"):
        return None
    trusted_ca = data_source(context.trusted_ca, f"{path}.trusted_ca").read()
    return ValidationMaterial(trusted_ca)


# -- downstream (a filter chain's transport socket) ----------------------------------------------

DOWNSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name

_Protocol = common_pb2.TlsParameters.TlsProtocol
_VERSIONS = {
    _Protocol.TLSv1_0: ssl.TLSVersion.TLSv1,
    _Protocol.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    _Protocol.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    _Protocol.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class DownstreamTlsSpec:
    """A filter chain's `DownstreamTlsContext`, checked; its secrets as material or refs."""

    path: str  # of common_tls_context
    common: CommonTls
    require_client_certificate: bool
    alpn_protocols: tuple[str, ...]
    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion


class DownstreamTls:
    """What a filter chain needs to terminate TLS: the server context *now*. A holder: when a
    secret it uses changes, the secret store has it rebuild `context`, which the next
    handshake uses (open connections keep theirs; nothing drains). `context` is None while a
    secret from SDS has not arrived (a handshake is then refused, as Envoy's)."""

    def __init__(self, spec: DownstreamTlsSpec, secrets: TlsSecrets = NO_SECRETS) -> None:
        self.spec = spec
        self.alpn_protocols = spec.alpn_protocols
        self.require_client_certificate = spec.require_client_certificate
        self.context: ssl.SSLContext | None = None
        self.on_update: Callable[[], None] = _nothing  # ssl_context_update_by_sds
        self._secrets = secrets
        self._build()
        for ref in spec.common.refs:
            if ref.dynamic:
                secrets.follow(ref, self)

    @property
    def sds_names(self) -> frozenset[str]:
        return frozenset(ref.name for ref in self.spec.common.refs if ref.dynamic)

    def secret_updated(self) -> None:
        if self._build():
            self.on_update()

    def secret_failed(self) -> None:
        pass  # the listener manager hears it from the store (SecretsFailed)

    def _build(self) -> bool:
        certificate, validation, ready = self.spec.common.resolve(self._secrets)
        if certificate is None or not ready:
            return False
        if self.require_client_certificate and (validation is None or not validation.trusted_ca):
            return False  # a validation secret without trusted_ca: never accept any client
        self.context = _server_context(self.spec, certificate, validation)
        return True


def downstream_tls_spec(socket: base_pb2.TransportSocket, path: str) -> DownstreamTlsSpec:
    """A filter chain's transport socket, checked; raises ConfigError (`FIELD_PATH: reason`),
    also when a certificate file cannot be read or loaded."""
    typed_path = f"{path}.typed_config"
    if not socket.HasField("typed_config"):
        raise ConfigError(f"{typed_path}: is required (envoy.transport_sockets.tls)")
    if socket.typed_config.type_url != DOWNSTREAM_TLS_TYPE:
        raise ConfigError(
            f"{typed_path}: @type '{socket.typed_config.type_url}' not supported on a listener"
        )
    tls_context = tls_pb2.DownstreamTlsContext()
    try:
        socket.typed_config.Unpack(tls_context)
    except message.DecodeError:
        raise ConfigError(f"{typed_path}: cannot decode DownstreamTlsContext") from None
    common = tls_context.common_tls_context
    common_path = f"{typed_path}.common_tls_context"
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.minimum_version = ssl.TLSVersion.TLSv1_2  # Envoy's server default
    probe.maximum_version = ssl.TLSVersion.TLSv1_3
    if common.HasField("tls_params"):
        _protocol_versions(probe, common.tls_params, f"{common_path}.tls_params")
    tls = _common_tls(common, common_path, certificate_required=True)
    require = tls_context.require_client_certificate.value
    if tls.validation is not None and tls.validation.trusted_ca is not None:
        try:
            probe.load_verify_locations(cadata=tls.validation.trusted_ca.decode("latin-1"))
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"{common_path}.validation_context.trusted_ca: not a PEM certificate ({error})"
            ) from None
    elif require and tls.validation_ref is None:
        raise ConfigError(
            f"{typed_path}.require_client_certificate: needs"
            " common_tls_context.validation_context.trusted_ca (accepting any client"
            " certificate is not supported)"
        )
    return DownstreamTlsSpec(
        path=common_path,
        common=tls,
        require_client_certificate=require,
        alpn_protocols=tuple(common.alpn_protocols),
        minimum_version=probe.minimum_version,
        maximum_version=probe.maximum_version,
    )


def downstream_tls(
    socket: base_pb2.TransportSocket, path: str, secrets: TlsSecrets = NO_SECRETS
) -> DownstreamTls:
    """A filter chain's transport socket as a server context holder; raises ConfigError."""
    return DownstreamTls(downstream_tls_spec(socket, path), secrets)


class ServerContext(ssl.SSLContext):
    """A filter chain's server context, with the URI SANs of its own certificate
    (`x-forwarded-client-cert`'s `By=`)."""

    uri_sans: tuple[str, ...] = ()


def _server_context(
    spec: DownstreamTlsSpec,
    certificate: CertificateMaterial,
    validation: ValidationMaterial | None,
) -> ssl.SSLContext:
    context = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.uri_sans = leaf_uri_sans(certificate.chain)
    context.minimum_version = spec.minimum_version
    context.maximum_version = spec.maximum_version
    certificate_path = f"{spec.path}.tls_certificates[0]"
    tls_material.load_cert_chain(context, certificate.chain, certificate.key, certificate_path)
    if validation is not None and validation.trusted_ca is not None:
        context.load_verify_locations(cadata=validation.trusted_ca.decode("latin-1"))
        required = spec.require_client_certificate
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    if spec.alpn_protocols:
        context.set_alpn_protocols(list(spec.alpn_protocols))
    return context


def _nothing() -> None:
    pass


def _protocol_versions(
    context: ssl.SSLContext, params: common_pb2.TlsParameters, path: str
) -> None:
    low, high = params.tls_minimum_protocol_version, params.tls_maximum_protocol_version
    if low != _Protocol.TLS_AUTO:
        context.minimum_version = _VERSIONS[low]
    if high != _Protocol.TLS_AUTO:
        context.maximum_version = _VERSIONS[high]
    if context.minimum_version > context.maximum_version:
        raise ConfigError(
            f"{path}: tls_minimum_protocol_version is above tls_maximum_protocol_version"
        )


def _trusted_ca(common: common_pb2.CommonTlsContext, common_path: str) -> DataSourceRef | None:
    """`validation_context.trusted_ca`, the CA certificates the peer's must chain to."""
    if not common.validation_context.HasField("trusted_ca"):
        return None
    path = f"{common_path}.validation_context.trusted_ca"
    return data_source(common.validation_context.trusted_ca, path)


# -- upstream (a cluster's transport socket) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamTlsSettings:
    """A cluster's TLS settings, its certificates as references read when needed."""

    trusted_ca: DataSourceRef | None
    certificate_chain: DataSourceRef | None
    private_key: DataSourceRef | None
    sni: str

    @property
    def mutual(self) -> bool:
        return self.certificate_chain is not None


def upstream_tls_settings(socket: base_pb2.TransportSocket, path: str) -> UpstreamTlsSettings:
    """The xDS server's transport socket as TLS settings (no SDS: the channel exists before
    any secret could arrive); its files are read once now, so a missing file is a start-up
    error (as Envoy's). Raises ConfigError."""
    context = _upstream_context(socket, path)
    common = context.common_tls_context
    common_path = f"{path}.typed_config.common_tls_context"
    _check_alpn(common, common_path)
    for field, _ in common.ListFields():
        if field.name in _SDS_FIELDS:
            raise ConfigError(f"{common_path}.{field.name}: not supported for the xDS server")
    chain = key = None
    if len(common.tls_certificates) > 1:
        raise ConfigError(f"{common_path}.tls_certificates: at most one certificate")
    if common.tls_certificates:
        certificate = common.tls_certificates[0]
        certificate_path = f"{common_path}.tls_certificates[0]"
        if not certificate.HasField("certificate_chain") or not certificate.HasField("private_key"):
            raise ConfigError(f"{certificate_path}: certificate_chain and private_key required")
        chain = data_source(certificate.certificate_chain, f"{certificate_path}.certificate_chain")
        key = data_source(certificate.private_key, f"{certificate_path}.private_key")
    trusted_ca = _trusted_ca(common, common_path)
    tls = UpstreamTlsSettings(
        trusted_ca=trusted_ca, certificate_chain=chain, private_key=key, sni=context.sni
    )
    for source in (trusted_ca, chain, key):
        if source is not None:
            source.read()  # a missing file fails at start-up, as in Envoy
    return tls


_SDS_FIELDS = (
    "tls_certificate_sds_secret_configs",
    "validation_context_sds_secret_config",
    "combined_validation_context",
)


def _upstream_context(socket: base_pb2.TransportSocket, path: str) -> tls_pb2.UpstreamTlsContext:
    typed = socket.typed_config
    if not socket.HasField("typed_config"):
        raise ConfigError(f"{path}.typed_config: required ({TLS_SOCKET_NAME})")
    if typed.type_url != UPSTREAM_TLS_TYPE:
        raise ConfigError(f"{path}.typed_config: @type '{typed.type_url}' not supported")
    context = tls_pb2.UpstreamTlsContext()
    try:
        typed.Unpack(context)
    except message.DecodeError:
        raise ConfigError(f"{path}.typed_config: cannot decode UpstreamTlsContext") from None
    return context


def _check_alpn(common: common_pb2.CommonTlsContext, common_path: str) -> None:
    for index, protocol in enumerate(common.alpn_protocols):
        if protocol != "h2":
            raise ConfigError(f"{common_path}.alpn_protocols[{index}]: only h2 (gRPC)")


class UpstreamTls:
    """What a cluster's connections need for TLS: the client context *now* (a holder, as
    `DownstreamTls`: a changed secret rebuilds it for the next connection; pooled connections
    keep theirs). `context` is None while a secret from SDS has not arrived."""

    def __init__(
        self, common: CommonTls, server_hostname: str, secrets: TlsSecrets = NO_SECRETS
    ) -> None:
        self.common = common
        self.server_hostname = server_hostname  # "" sends no SNI
        self.context: ssl.SSLContext | None = None
        self.on_update: Callable[[], None] = _nothing  # ssl_context_update_by_sds
        self.on_not_ready: Callable[[], None] = _nothing  # upstream_context_secrets_not_ready
        self.on_settled: Callable[[], None] = _nothing  # its secrets arrived or failed
        self._secrets = secrets
        if not common.refs:
            self._build()

    def bind(self, secrets: TlsSecrets) -> None:
        """Take the secrets from `secrets` from now on (the cluster manager's secret store);
        raises ConfigError for an unknown static secret."""
        self._secrets = secrets
        self._build()
        for ref in self.common.refs:
            if ref.dynamic:
                secrets.follow(ref, self)

    @property
    def sds_names(self) -> frozenset[str]:
        return frozenset(ref.name for ref in self.common.refs if ref.dynamic)

    def secret_updated(self) -> None:
        if self._build():
            self.on_update()
            self.on_settled()

    def secret_failed(self) -> None:
        self.on_settled()  # as Envoy: the cluster warms no longer; its connections fail

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UpstreamTls)
            and self.common == other.common
            and self.server_hostname == other.server_hostname
        )

    def __hash__(self) -> int:
        return hash(self.server_hostname)

    def _build(self) -> bool:
        certificate, validation, ready = self.common.resolve(self._secrets)
        if not ready:
            return False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        if validation is not None and validation.trusted_ca is not None:
            context.load_verify_locations(cadata=validation.trusted_ca.decode("latin-1"))
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_NONE
        if certificate is not None:
            tls_material.load_cert_chain(
                context, certificate.chain, certificate.key, "tls_certificates[0]"
            )
        self.context = context
        return True


def upstream_tls(
    socket: base_pb2.TransportSocket, path: str, secrets: TlsSecrets = NO_SECRETS
) -> UpstreamTls:
    """Raises ConfigError (`FIELD_PATH: reason`)."""
    context = _upstream_context(socket, path)
    common_path = f"{path}.typed_config.common_tls_context"
    _check_alpn(context.common_tls_context, common_path)
    common = _common_tls(context.common_tls_context, common_path, certificate_required=False)
    if common.validation is not None and common.validation.trusted_ca is not None:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.load_verify_locations(cadata=common.validation.trusted_ca.decode("latin-1"))
    return UpstreamTls(common, context.sni, secrets)
