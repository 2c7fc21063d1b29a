"""x-forwarded-client-cert's pieces: the names read from certificates, the RFC 2253 subject,
and what each forward_client_cert_details mode does to the header without a client
certificate (tests/interop/test_hcm_fields2_interop.py compares the whole header with Envoy's
over mTLS)."""

from __future__ import annotations

import ssl

import pytest

from tests.helpers.certs import CertificateAuthority
from xds_proxy.config.hcm import ClientCertMode, ClientCertPolicy
from xds_proxy.config.x509_names import dns_sans, leaf_uri_sans, rfc2253, uri_sans
from xds_proxy.upstream.client_cert import XFCC, apply_client_cert

_CA = CertificateAuthority("names")


def test_subject_alternative_names_in_order() -> None:
    issued = _CA.issue("a", dns_names=["x.example", "y.example"], uris=["spiffe://t/a", "urn:b"])
    der = ssl.PEM_cert_to_DER_cert(issued.cert_pem.decode())
    assert uri_sans(der) == ("spiffe://t/a", "urn:b")
    assert dns_sans(der) == ("x.example", "y.example")
    assert leaf_uri_sans(issued.cert_pem + _CA.cert_pem) == ("spiffe://t/a", "urn:b")
    assert uri_sans(ssl.PEM_cert_to_DER_cert(_CA.cert_pem.decode())) == ()
    assert leaf_uri_sans(b"no certificate") == ()


def test_rfc2253_subject() -> None:
    subject = ((("organizationName", 'O, "I"'),), (("commonName", " c+d "),))
    assert rfc2253(subject) == 'CN=\\ c\\+d\\ ,O=O\\, \\"I\\"'
    assert rfc2253(((("commonName", "a"), ("userId", "b")),)) == "CN=a+UID=b"
    assert rfc2253(((("commonName", "é"),),)) == "CN=\\C3\\A9"


_SENT = [(b"a", b"1"), (XFCC, b"By=x"), (b"b", b"2"), (XFCC, b"By=y")]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (ClientCertMode.SANITIZE, [(b"a", b"1"), (b"b", b"2")]),
        (ClientCertMode.FORWARD_ONLY, [(b"a", b"1"), (b"b", b"2")]),
        (ClientCertMode.APPEND_FORWARD, [(b"a", b"1"), (b"b", b"2")]),
        (ClientCertMode.SANITIZE_SET, [(b"a", b"1"), (b"b", b"2")]),
        (ClientCertMode.ALWAYS_FORWARD_ONLY, [(b"a", b"1"), (XFCC, b"By=x,By=y"), (b"b", b"2")]),
    ],
)
def test_without_a_client_certificate(mode: ClientCertMode, expected) -> None:
    headers = list(_SENT)
    apply_client_cert(headers, None, ClientCertPolicy(mode, ()))
    assert headers == expected
