"""TLS to upstream hosts from a cluster's `transport_socket` (`UpstreamTlsContext`).

The same subset and validation as the xDS cluster's TLS (xds/tls.py), with Envoy's data-plane
semantics: the server certificate is verified against `trusted_ca` when one is given and not
at all otherwise; SNI is sent only when `sni` is set; names are not checked.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from xds_proxy.config.tls_material import load_cert_chain
from xds_proxy.xds.tls import channel_tls


@dataclass(frozen=True)
class UpstreamTls:
    context: ssl.SSLContext
    server_hostname: str  # "" sends no SNI


def upstream_tls(socket: base_pb2.TransportSocket, path: str) -> UpstreamTls:
    """Raises ConfigError (`FIELD_PATH: reason`)."""
    settings = channel_tls(socket, path)
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
