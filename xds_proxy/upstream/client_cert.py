"""`x-forwarded-client-cert` as Envoy 1.40's connection manager writes it
(`forward_client_cert_details`, `set_current_client_cert_details`).

This hop's element is `By=<our URI SAN>` (one per URI SAN of our certificate), `Hash=<SHA-256
of the client's DER certificate>`, then the chosen details: `Subject="<RFC 2253>"`,
`URI=<URI SAN>` (one per SAN; `URI=` with none), `Cert="<PEM, URL-encoded>"`, `DNS=<DNS SAN>`
(one per SAN), joined with `;` and nothing escaped, as Envoy. The client's certificate is the
TLS connection's (`DownstreamRequest.ssl`); what is read from it is kept per connection."""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
import weakref

from xds_proxy.config.hcm import CertDetail, ClientCertMode, ClientCertPolicy
from xds_proxy.config.x509_names import dns_sans, rfc2253, uri_sans
from xds_proxy.upstream.stream import Header

XFCC = b"x-forwarded-client-cert"

# The details of each connection's client certificate, read once per connection.
_read: weakref.WeakKeyDictionary[ssl.SSLObject, dict[CertDetail | str, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def apply_client_cert(
    headers: list[Header], ssl_object: ssl.SSLObject | None, policy: ClientCertPolicy
) -> None:
    """Change `headers` (the request going upstream) as the policy says. Repeated
    `x-forwarded-client-cert` headers are one, joined with `,` (Envoy's header map)."""
    mode = policy.mode
    peer = None
    if mode is not ClientCertMode.ALWAYS_FORWARD_ONLY:
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if mode is ClientCertMode.SANITIZE or peer is None:
            headers[:] = [(name, value) for name, value in headers if name != XFCC]
            return
    found = [index for index, (name, _) in enumerate(headers) if name == XFCC]
    present = b",".join(headers[index][1] for index in found) if found else None
    if peer is None or mode is ClientCertMode.FORWARD_ONLY:
        value = present
    else:
        value = _element(ssl_object, peer, policy.details).encode("latin-1")  # type: ignore[arg-type]
        if mode is ClientCertMode.APPEND_FORWARD and present:
            value = present + b"," + value
    if found:
        headers[found[0]] = (XFCC, value)  # type: ignore[assignment]
        for index in reversed(found[1:]):
            del headers[index]
    elif value is not None:
        headers.append((XFCC, value))


def _element(ssl_object: ssl.SSLObject, peer: bytes, details: tuple[CertDetail, ...]) -> str:
    known = _read.get(ssl_object)
    if known is None:
        known = _read[ssl_object] = _details(ssl_object, peer)
    parts = [f"By={uri}" for uri in known["by"]]
    parts.append(f"Hash={known['hash'][0]}")
    for detail in details:
        if detail is CertDetail.SUBJECT:
            parts.append(f'Subject="{known[detail][0]}"')
        elif detail is CertDetail.URI:
            parts.extend(f"URI={uri}" for uri in known[detail] or ("",))
        elif detail is CertDetail.CERT:
            parts.append(f'Cert="{known[detail][0]}"')
        else:
            parts.extend(f"DNS={name}" for name in known[detail])
    return ";".join(parts)


def _details(ssl_object: ssl.SSLObject, peer: bytes) -> dict[CertDetail | str, tuple[str, ...]]:
    decoded = ssl_object.getpeercert() or {}
    pem = ssl.DER_cert_to_PEM_cert(peer)
    return {
        "by": getattr(ssl_object.context, "uri_sans", ()),
        "hash": (hashlib.sha256(peer).hexdigest(),),
        CertDetail.SUBJECT: (rfc2253(decoded.get("subject", ())),),
        CertDetail.URI: uri_sans(peer),
        CertDetail.CERT: (urllib.parse.quote(pem, safe=""),),
        CertDetail.DNS: dns_sans(peer),
    }
