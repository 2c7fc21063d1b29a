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

Certificates and keys are loaded by config/tls_material.py (the key never touches a disk).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import message

from xds_proxy.config.tls_material import load_cert_chain
from xds_proxy.config.values import DataSourceRef, data_source, read_data_source
from xds_proxy.errors import ConfigError

TLS_SOCKET_NAME = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name


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
class DownstreamTls:
    """What a filter chain needs to terminate TLS on its connections."""

    context: ssl.SSLContext
    alpn_protocols: tuple[str, ...]
    require_client_certificate: bool


def downstream_tls(socket: base_pb2.TransportSocket, path: str) -> DownstreamTls:
    """A filter chain's transport socket as a server SSLContext; raises ConfigError
    (`FIELD_PATH: reason`), also when a certificate file cannot be read or loaded."""
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

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Envoy's server default
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    if common.HasField("tls_params"):
        _protocol_versions(context, common.tls_params, f"{common_path}.tls_params")

    if len(common.tls_certificates) != 1:
        raise ConfigError(
            f"{common_path}.tls_certificates: exactly one certificate is supported,"
            f" got {len(common.tls_certificates)}"
        )
    certificate = common.tls_certificates[0]
    certificate_path = f"{common_path}.tls_certificates[0]"
    for name in ("certificate_chain", "private_key"):
        if not certificate.HasField(name):
            raise ConfigError(f"{certificate_path}.{name}: is required")
    chain = read_data_source(certificate.certificate_chain, f"{certificate_path}.certificate_chain")
    key = read_data_source(certificate.private_key, f"{certificate_path}.private_key")
    load_cert_chain(context, chain, key, certificate_path)

    require = tls_context.require_client_certificate.value
    ca_source = _trusted_ca(common, common_path)
    trusted_ca = ca_source.read() if ca_source is not None else None
    if trusted_ca is not None:
        try:
            context.load_verify_locations(cadata=trusted_ca.decode("latin-1"))
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"{common_path}.validation_context.trusted_ca: not a PEM certificate ({error})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    elif require:
        raise ConfigError(
            f"{typed_path}.require_client_certificate: needs"
            " common_tls_context.validation_context.trusted_ca (accepting any client"
            " certificate is not supported)"
        )

    alpn = tuple(common.alpn_protocols)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return DownstreamTls(context=context, alpn_protocols=alpn, require_client_certificate=require)


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
    """A cluster's transport socket as TLS settings; its files are read once now, so a missing
    file is a start-up error (as Envoy's). Raises ConfigError."""
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
    path = f"{path}.typed_config"
    common = context.common_tls_context
    common_path = f"{path}.common_tls_context"
    for index, protocol in enumerate(common.alpn_protocols):
        if protocol != "h2":
            raise ConfigError(f"{common_path}.alpn_protocols[{index}]: only h2 (gRPC)")
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


@dataclass(frozen=True)
class UpstreamTls:
    """What a cluster's connections need for TLS."""

    context: ssl.SSLContext
    server_hostname: str  # "" sends no SNI


def upstream_tls(socket: base_pb2.TransportSocket, path: str) -> UpstreamTls:
    """Raises ConfigError (`FIELD_PATH: reason`)."""
    settings = upstream_tls_settings(socket, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if settings.trusted_ca is not None:
        context.load_verify_locations(cadata=settings.trusted_ca.read().decode())
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    if settings.certificate_chain is not None and settings.private_key is not None:
        chain = settings.certificate_chain.read()
        key = settings.private_key.read()
        certificate_path = f"{path}.typed_config.common_tls_context.tls_certificates[0]"
        load_cert_chain(context, chain, key, certificate_path)
    return UpstreamTls(context, settings.sni)
