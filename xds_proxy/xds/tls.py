"""TLS and mTLS to the xDS server, from the xDS cluster's `transport_socket`.

Envoy's shape: `transport_socket {name: envoy.transport_sockets.tls, typed_config:
UpstreamTlsContext {common_tls_context {tls_certificates[0] {certificate_chain, private_key},
validation_context {trusted_ca}}, sni}}`, each certificate as a `DataSource`
(`filename`, `inline_string` or `inline_bytes`). A client certificate makes it mTLS.

Files are read again for every stream (each stream opens a fresh channel), so certificates
rotated on disk are picked up at the next reconnect; they are read once up front as well, so
a missing file is a start-up error like Envoy's.

Where gRPC is stricter than Envoy (it cannot be told otherwise): the server's certificate is
always verified -- against `trusted_ca`, or the system roots when there is none (Envoy then
verifies nothing) -- and its name must match `sni` when set, else the target host (Envoy
checks names only with `match_typed_subject_alt_names`).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import message

from xds_proxy.config.values import DataSourceRef, data_source
from xds_proxy.errors import ConfigError

TLS_SOCKET_NAME = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/" + tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name


@dataclass(frozen=True, slots=True)
class ChannelTls:
    """What the gRPC channel needs for TLS; `credentials()` reads the sources afresh."""

    trusted_ca: DataSourceRef | None
    certificate_chain: DataSourceRef | None
    private_key: DataSourceRef | None
    sni: str

    @property
    def mutual(self) -> bool:
        return self.certificate_chain is not None

    def credentials(self) -> grpc.ChannelCredentials:
        """Raises ConfigError (`FIELD_PATH: reason`) if a file cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.trusted_ca.read() if self.trusted_ca else None,
            private_key=self.private_key.read() if self.private_key else None,
            certificate_chain=self.certificate_chain.read() if self.certificate_chain else None,
        )

    def channel_options(self, target: str) -> list[tuple[str, str]]:
        """The name the server's certificate must carry (and the SNI gRPC sends): `sni`, else
        the target's host (gRPC would check the `:authority`, the cluster name)."""
        host = target.rpartition(":")[0].strip("[]")
        return [("grpc.ssl_target_name_override", self.sni or host)]


def channel_tls(socket: base_pb2.TransportSocket, path: str) -> ChannelTls:
    """The xDS cluster's transport socket as channel TLS settings; raises ConfigError."""
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
    trusted_ca = None
    if common.HasField("validation_context"):
        validation_path = f"{common_path}.validation_context"
        if common.validation_context.HasField("trusted_ca"):
            trusted_ca = data_source(
                common.validation_context.trusted_ca, f"{validation_path}.trusted_ca"
            )
    tls = ChannelTls(
        trusted_ca=trusted_ca, certificate_chain=chain, private_key=key, sni=context.sni
    )
    for source in (trusted_ca, chain, key):
        if source is not None:
            source.read()  # a missing file fails at start-up, as in Envoy
    return tls
