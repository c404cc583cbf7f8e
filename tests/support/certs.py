"""A throw-away test CA: root + intermediate, and leaf PEMs in the server's format (key + cert + chain).

Reusable by any test that needs real TLS::

    ca = make_ca()
    make_cert(ca, ["example.com", "*.example.com"], "certs/example.com.pem")
    client = optionsForClientTLS("example.com", trustRoot=ca.trust_root())
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import Certificate

_ONE_DAY = datetime.timedelta(days=1)


@dataclass
class TestCA:
    """A root (the trust anchor) and the intermediate that signs leaves (sent as the chain)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def trust_root(self) -> Certificate:
        """The root as a Twisted trust root for ``optionsForClientTLS(..., trustRoot=...)``."""
        return Certificate.loadPEM(self.root_pem())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_cert(subject: str, key, issuer: str, issuer_key, path_length: int | None) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def make_ca(name: str = "xmppcluster test CA") -> TestCA:
    """A fresh root and intermediate (EC P-256, valid for 30 days)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert(f"{name} root", root_key, f"{name} root", root_key, 1)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_cert(f"{name} intermediate", key, f"{name} root", root_key, 0)
    return TestCA(root_key, root, key, cert, [cert])


def make_cert(
    ca: TestCA,
    names: list[str],
    path: str | None = None,
    *,
    expired: bool = False,
    not_yet_valid: bool = False,
    key_mismatch: bool = False,
) -> tuple[x509.Certificate, bytes]:
    """Issue a leaf for ``names`` (SANs; CN = first name); write key + leaf + chain to ``path`` if given.

    ``key_mismatch`` writes a private key that does not belong to the certificate.  Returns (leaf, pem bytes).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    if expired:
        start, end = now - 10 * _ONE_DAY, now - _ONE_DAY
    elif not_yet_valid:
        start, end = now + _ONE_DAY, now + 10 * _ONE_DAY
    else:
        start, end = now - _ONE_DAY, now + 30 * _ONE_DAY
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    written_key = ec.generate_private_key(ec.SECP256R1()) if key_mismatch else key
    pem = written_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem += leaf.public_bytes(serialization.Encoding.PEM)
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca.chain)
    if path is not None:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "wb") as f:
            f.write(pem)
    return leaf, pem
