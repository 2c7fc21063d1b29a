"""The names in an X.509 certificate that `x-forwarded-client-cert` carries, read from its DER
bytes without a crypto library: the subject alternative names (URI, DNS), and a subject
(as `ssl.getpeercert()` gives it) rendered as OpenSSL's RFC 2253 form, as Envoy prints it."""

from __future__ import annotations

import re
import ssl

_SAN_OID = b"\x55\x1d\x11"  # 2.5.29.17
_URI_TAG, _DNS_TAG = 0x86, 0x82  # GeneralName [6] IA5String, [2] IA5String
_EXTENSIONS_TAG = 0xA3  # tbsCertificate's [3] EXPLICIT Extensions
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

# OpenSSL's short names for the long ones `getpeercert()` uses.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "street",
    "domainComponent": "DC",
    "userId": "UID",
    "surname": "SN",
    "givenName": "GN",
}


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `offset`."""
    tag, length = der[offset], der[offset + 1]
    offset += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[offset : offset + size], "big")
        offset += size
    return tag, offset, offset + length


def _children(der: bytes, start: int, end: int):
    while start < end:
        element = _element(der, start)
        yield element
        start = element[2]


def subject_alt_names(der: bytes, tag: int) -> tuple[str, ...]:
    """The subject alternative names of one kind (`URI_TAG`, `DNS_TAG`), in order."""
    _, start, _ = _element(der, 0)
    _, tbs_start, tbs_end = _element(der, start)
    for field_tag, field_start, _ in _children(der, tbs_start, tbs_end):
        if field_tag != _EXTENSIONS_TAG:
            continue
        _, list_start, list_end = _element(der, field_start)
        for _, ext_start, ext_end in _children(der, list_start, list_end):
            parts = list(_children(der, ext_start, ext_end))
            if der[parts[0][1] : parts[0][2]] != _SAN_OID:
                continue
            _, value_start, _ = parts[-1]  # the OCTET STRING (after `critical`, if any)
            _, names_start, names_end = _element(der, value_start)
            return tuple(
                der[name_start:name_end].decode("latin-1")
                for name_tag, name_start, name_end in _children(der, names_start, names_end)
                if name_tag == tag
            )
    return ()


def uri_sans(der: bytes) -> tuple[str, ...]:
    return subject_alt_names(der, _URI_TAG)


def dns_sans(der: bytes) -> tuple[str, ...]:
    return subject_alt_names(der, _DNS_TAG)


def leaf_uri_sans(chain_pem: bytes) -> tuple[str, ...]:
    """The URI SANs of the first certificate of a PEM chain (our own, for `By=`)."""
    found = _PEM.search(chain_pem)
    if found is None:
        return ()
    try:
        return uri_sans(ssl.PEM_cert_to_DER_cert(found.group().decode("latin-1")))
    except (ValueError, IndexError):
        return ()


def rfc2253(subject: tuple) -> str:
    """A subject from `getpeercert()` as OpenSSL's `X509_NAME_print_ex(XN_FLAG_RFC2253)`:
    last RDN first, `,` between RDNs, `+` inside one, short attribute names, values escaped."""
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(name, name)}={_escaped(value)}" for name, value in rdn)
        for rdn in reversed(subject)
    )


def _escaped(value: str) -> str:
    out = []
    last = len(value) - 1
    for index, char in enumerate(value):
        if char in ',+"\\<>;' or (index == 0 and char in "# ") or (index == last and char == " "):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) >= 0x7F:
            out.append("".join(f"\\{byte:02X}" for byte in char.encode()))
        else:
            out.append(char)
    return "".join(out)
