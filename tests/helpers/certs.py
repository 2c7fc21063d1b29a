"""Certificates for TLS tests, made on the fly with the `cryptography` package.

ca = CertificateAuthority("test-ca")
server = ca.issue("server", dns_names=["a.example.com"])
paths = server.write(tmp_path)          # {"cert": Path, "key": Path}
ca.write(tmp_path)                      # the CA certificate, for trusted_ca
"""

from __future__ import annotations

import datetime
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    name: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes = b""  # the issuer's certificate

    def write(self, folder: Path) -> dict[str, Path]:
        cert, key = folder / f"{self.name}.crt", folder / f"{self.name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return {"cert": cert, "key": key}

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number


class CertificateAuthority:
    def __init__(self, name: str = "xds-proxy-test-ca") -> None:
        self.name = name
        self._key = _key()
        self._client_files: dict[str, Path] | None = None
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        name: str,
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        client: bool = False,
        uris: list[str] | None = None,
        organization: str | None = None,
    ) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        alternative: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names or []]
        alternative += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
        alternative += [x509.UniformResourceIdentifier(uri) for uri in uris or []]
        subject = _name(name)
        if organization is not None:
            subject = x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization), *subject]
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if alternative:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        return Issued(
            name, certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key), self.cert_pem
        )

    def client_files(self) -> dict[str, Path]:
        """A client certificate of this CA in a private temp folder (made once)."""
        if self._client_files is None:
            folder = Path(tempfile.mkdtemp(prefix="xds-proxy-test-client-"))
            self._client_files = self.issue("client", client=True).write(folder)
        return self._client_files
