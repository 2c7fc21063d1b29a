"""SDS secrets: a `Secret` (from SDS or the bootstrap's `static_resources.secrets`) as the TLS
material it carries, and a TLS context's references to secrets.

`build_secret` checks a `Secret` (PGV, then the support table: `tls_certificate` with
`certificate_chain` and `private_key`, or `validation_context` with `trusted_ca`;
`generic_secret`, `session_ticket_keys` and private key providers are refused) and loads its
material once, so that a secret that does not build is refused (the NACK text is Envoy's:
`Failed to load certificate chain from <inline>`, `Failed to load private key from <inline>,
Cause: ...`) and the one held before keeps serving. `redacted` is the copy `/config_dump`
shows: private keys read `[redacted]`, as Envoy's.

`SecretRef` is one `SdsSecretConfig` of a TLS context: a name and where it comes from (no
`sds_config`: the bootstrap's static secret of that name).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf.message import DecodeError

from xds_proxy.config.redact import redact_sensitive
from xds_proxy.config.support import require_valid
from xds_proxy.config.values import duration_seconds, read_data_source
from xds_proxy.errors import ConfigError
from xds_proxy.lazy import lazy_import

if TYPE_CHECKING:
    from xds_proxy.config import tls_material
else:  # loaded with the first certificate (xds_proxy/lazy.py)
    tls_material = lazy_import("xds_proxy.config.tls_material")

SECRET_TYPE_URL = "type.googleapis.com/" + secret_pb2.Secret.DESCRIPTOR.full_name
_DOWNSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name


@dataclass(frozen=True)
class CertificateMaterial:
    """A certificate chain and its private key (PEM)."""

    chain: bytes
    key: bytes


@dataclass(frozen=True)
class ValidationMaterial:
    """What the peer's certificate is checked against: CA certificates (PEM)."""

    trusted_ca: bytes | None


SecretMaterial = CertificateMaterial | ValidationMaterial


@dataclass(frozen=True)
class SecretRef:
    """One `SdsSecretConfig`: the secret `name`, from its `sds_config` (None: a static
    secret). Refs compare by name and by what their subscription depends on (`origin`)."""

    name: str
    source: config_source_pb2.ConfigSource | None = field(compare=False)
    path: str = field(compare=False)  # of the SdsSecretConfig, for errors
    # (over ADS?, api_type, gRPC services, REST polling, initial_fetch_timeout_s); () for a
    # static secret
    origin: tuple = ()
    validation: bool = False  # a validation context's (else a certificate's)

    @property
    def dynamic(self) -> bool:
        return self.source is not None

    def unknown_static(self) -> ConfigError:
        """Envoy's words for a static secret the bootstrap does not have (of that kind)."""
        if self.validation:
            return ConfigError(f"Unknown static certificate validation context: {self.name}")
        return ConfigError(f"Unknown static secret: {self.name}")


def secret_ref(
    config: secret_pb2.SdsSecretConfig, path: str, validation: bool = False
) -> SecretRef:
    """Raises ConfigError for a source we cannot subscribe with."""
    if not config.name:
        raise ConfigError(f"{path}.name: value length must be at least 1 characters")
    if not config.HasField("sds_config"):
        return SecretRef(config.name, None, path, validation=validation)
    source = config.sds_config
    kind = source.WhichOneof("config_source_specifier")
    if kind not in ("ads", "api_config_source"):
        raise ConfigError(f"{path}.sds_config: one of ads or api_config_source is required")
    api = source.api_config_source
    services = tuple(
        (
            service.envoy_grpc.cluster_name,
            service.envoy_grpc.retry_policy.retry_back_off.base_interval.ToMilliseconds(),
            service.envoy_grpc.retry_policy.retry_back_off.max_interval.ToMilliseconds(),
        )
        for service in api.grpc_services
    )
    rest = (
        tuple(api.cluster_names),
        api.refresh_delay.ToMilliseconds(),
        api.request_timeout.ToMilliseconds(),
    )
    timeout_s: float | None = 15.0  # Envoy's default
    if source.HasField("initial_fetch_timeout"):
        timeout_s = duration_seconds(source.initial_fetch_timeout) or None
    origin = (kind == "ads", api.api_type, services, rest, timeout_s)
    return SecretRef(config.name, source, path, origin, validation)


def build_secret(secret: secret_pb2.Secret, path: str = "") -> SecretMaterial:
    """The material of a checked and loadable `Secret`; raises ConfigError (the NACK text)."""
    require_valid(secret, path)
    kind = secret.WhichOneof("type")
    if kind == "tls_certificate":
        return certificate_material(secret.tls_certificate, f"{path}.tls_certificate".lstrip("."))
    if kind == "validation_context":
        return validation_material(
            secret.validation_context, f"{path}.validation_context".lstrip(".")
        )
    raise ConfigError(
        f"Secret {secret.name}: one of tls_certificate or validation_context is required"
    )


def certificate_material(certificate: common_pb2.TlsCertificate, path: str) -> CertificateMaterial:
    """A `TlsCertificate` read and checked (the chain parses, the key matches it)."""
    for name in ("certificate_chain", "private_key"):
        if not certificate.HasField(name):
            raise ConfigError(f"{path}.{name}: is required")
    chain = read_data_source(certificate.certificate_chain, f"{path}.certificate_chain")
    key = read_data_source(certificate.private_key, f"{path}.private_key")
    chain_from = _where(certificate.certificate_chain)
    if not _parses_as_certificates(chain):
        raise ConfigError(f"Failed to load certificate chain from {chain_from}")
    cause = tls_material.try_load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain, key)
    if cause is not None:
        raise ConfigError(
            f"Failed to load private key from {_where(certificate.private_key)}, Cause: {cause}"
        )
    return CertificateMaterial(chain, key)


def validation_material(
    context: common_pb2.CertificateValidationContext, path: str
) -> ValidationMaterial:
    if not context.HasField("trusted_ca"):
        return ValidationMaterial(None)
    trusted_ca = read_data_source(context.trusted_ca, f"{path}.trusted_ca")
    if not _parses_as_certificates(trusted_ca):
        where = _where(context.trusted_ca)
        raise ConfigError(f"Failed to load trusted CA certificates from {where}")
    return ValidationMaterial(trusted_ca)


def merged_validation(
    default: ValidationMaterial | None, dynamic: ValidationMaterial | None
) -> ValidationMaterial | None:
    """`combined_validation_context`: the dynamic context's fields over the default's (as
    Envoy merges the two messages)."""
    if dynamic is None:
        return default
    if default is None or dynamic.trusted_ca is not None:
        return dynamic
    return default


def redacted(secret: secret_pb2.Secret) -> secret_pb2.Secret:
    """The copy `/config_dump` shows: the private key reads `[redacted]` (Envoy's)."""
    copy = secret_pb2.Secret()
    copy.CopyFrom(secret)
    redact_sensitive(copy)
    return copy


def listener_secret_names(listener: listener_pb2.Listener) -> frozenset[str]:
    """The SDS secrets (with an `sds_config`) the listener's TLS filter chains use."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    names: set[str] = set()
    for chain in chains:
        typed = chain.transport_socket.typed_config
        if typed.type_url != _DOWNSTREAM_TLS_TYPE:
            continue
        context = tls_pb2.DownstreamTlsContext()
        try:
            context.ParseFromString(typed.value)
        except DecodeError:
            continue  # the compile step reports it
        names |= common_secret_names(context.common_tls_context)
    return frozenset(names)


def common_secret_names(common: tls_pb2.CommonTlsContext) -> set[str]:
    configs = [
        *common.tls_certificate_sds_secret_configs,
        common.validation_context_sds_secret_config,
        common.combined_validation_context.validation_context_sds_secret_config,
    ]
    return {config.name for config in configs if config.HasField("sds_config")}


def _where(source: base_pb2.DataSource) -> str:
    """How Envoy names a DataSource in its errors."""
    return source.filename if source.WhichOneof("specifier") == "filename" else "<inline>"


def _parses_as_certificates(pem: bytes) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("latin-1"))
    except (ssl.SSLError, ValueError):
        return False
    return True
