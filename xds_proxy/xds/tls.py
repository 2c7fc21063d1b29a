"""TLS and mTLS to the xDS server, from the xDS cluster's `transport_socket`: the settings
config/tls.py reads from its `UpstreamTlsContext`, as gRPC channel credentials.

Files are read again for every stream (each stream opens a fresh channel), so certificates
rotated on disk are picked up at the next reconnect; they are read once up front as well, so
a missing file is a start-up error like Envoy's.

Where gRPC is stricter than Envoy (it cannot be told otherwise): the server's certificate is
always verified -- against `trusted_ca`, or the system roots when there is none (Envoy then
verifies nothing) -- and its name must match `sni` when set, else the target host (Envoy
checks names only with `match_typed_subject_alt_names`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import grpc
from envoy.config.core.v3 import base_pb2

from xds_proxy.config.tls import UpstreamTlsSettings, upstream_tls_settings


@dataclass(frozen=True, slots=True)
class ChannelTls(UpstreamTlsSettings):
    """What the gRPC channel needs for TLS; `credentials()` reads the sources afresh."""

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
    settings = upstream_tls_settings(socket, path)
    return ChannelTls(**{field.name: getattr(settings, field.name) for field in fields(settings)})
