"""A real test PKI: an operator root, professionals, and deliberately bad certificates.

Good certificates come from Pli's own CA code. The bad ones (no
emailProtection, foreign root) are made with ``cryptography`` directly, as
an attacker or a misconfigured CA would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pli.crypto import (
    Certificate,
    PrivateKey,
    SoftwareKey,
    build_certificate_request,
    create_root,
    generate_private_key,
    issue_certificate,
)

UTC = dt.UTC


@dataclass(frozen=True)
class Authority:
    key: PrivateKey
    certificate: Certificate

    def issue(
        self,
        key: PrivateKey,
        email: str,
        name: str,
        *,
        national_id: str | None = None,
        now: dt.datetime | None = None,
        days: int = 365,
    ) -> SoftwareKey:
        csr = build_certificate_request(key, email=email, common_name=name, national_id=national_id)
        certificate = issue_certificate(self.key, self.certificate, csr, days=days, now=now)
        return SoftwareKey(key, certificate)


def make_authority(name: str, key: PrivateKey | None = None) -> Authority:
    key = key or generate_private_key()
    return Authority(key, create_root(key, name))


def issue_without_email_protection(
    authority: Authority, key: PrivateKey, email: str
) -> SoftwareKey:
    """A certificate for TLS clients only: must never be accepted for S/MIME."""
    now = dt.datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TLS only")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return SoftwareKey(key, certificate)
