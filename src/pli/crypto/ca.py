"""The operator's certificate authority: root, end-entity S/MIME certificates, CRLs.

Pure functions over keys and certificates; where they are stored is the
caller's business (a CA directory for the CLI, the database for the server).
The end-entity profile follows RFC 8550 §4.4 (S/MIME certificates) and the
MSSanté practice: one mailbox address per certificate, the holder's national
identifier in the subject.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pli.crypto.errors import InvalidCertificateRequest, WeakKey
from pli.crypto.keys import (
    MIN_PEER_KEY_BITS,
    Certificate,
    CertificateRevocationList,
    CertificateSigningRequest,
    PrivateKey,
    csr_emails,
)
from pli.identifiers import IdentifierError, parse_national_id

DEFAULT_ROOT_DAYS = 3650
DEFAULT_END_ENTITY_DAYS = 3 * 365
DEFAULT_CRL_DAYS = 7
#: Backdating absorbs small clock differences between the CA and relying parties.
_BACKDATE = dt.timedelta(minutes=5)
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_root(
    key: PrivateKey,
    name: str,
    *,
    days: int = DEFAULT_ROOT_DAYS,
    now: dt.datetime | None = None,
) -> Certificate:
    """A self-signed root for the operator (RFC 5280 §4.2.1.9: CA, no intermediates)."""
    now = now or _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class CertificateProfile:
    """What an end-entity certificate says, taken from a checked CSR."""

    email: str
    common_name: str
    national_id: str | None


def check_certificate_request(csr: CertificateSigningRequest) -> CertificateProfile:
    """Refuse a CSR that is unsigned, weak, or does not name exactly one mailbox."""
    if not csr.is_signature_valid:
        raise InvalidCertificateRequest("the request's self-signature does not verify")
    key = csr.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidCertificateRequest("only RSA keys are supported")
    if key.key_size < MIN_PEER_KEY_BITS:
        raise WeakKey(f"RSA key of {key.key_size} bits, at least {MIN_PEER_KEY_BITS} required")
    emails = csr_emails(csr)
    if len(emails) != 1 or not _EMAIL.match(emails[0]):
        raise InvalidCertificateRequest("the request must name exactly one mailbox address")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise InvalidCertificateRequest("the request has no common name")
    common_name = str(names[0].value)
    serials = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    national_id = None
    if serials:
        try:
            national_id = parse_national_id(str(serials[0].value)).national_id
        except IdentifierError as error:
            raise InvalidCertificateRequest(f"national identifier: {error}") from None
    return CertificateProfile(email=emails[0], common_name=common_name, national_id=national_id)


def issue_certificate(
    ca_key: PrivateKey,
    ca_certificate: Certificate,
    csr: CertificateSigningRequest,
    *,
    days: int = DEFAULT_END_ENTITY_DAYS,
    crl_url: str | None = None,
    now: dt.datetime | None = None,
) -> Certificate:
    """An end-entity S/MIME certificate for the mailbox the CSR names."""
    profile = check_certificate_request(csr)
    now = now or _now()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, profile.common_name)]
    if profile.national_id:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, profile.national_id))
    not_after = min(now + dt.timedelta(days=days), ca_certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_certificate.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 8550 §4.4.2: signing and key transport with the same RSA key.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(profile.email)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Revocation:
    serial_number: int
    revoked_at: dt.datetime
    reason: str = "unspecified"


def build_crl(
    ca_key: PrivateKey,
    ca_certificate: Certificate,
    revocations: Iterable[Revocation],
    *,
    number: int,
    days: int = DEFAULT_CRL_DAYS,
    now: dt.datetime | None = None,
) -> CertificateRevocationList:
    """A CRL (RFC 5280 §5) listing ``revocations``, valid ``days`` days."""
    now = now or _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for revocation in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial_number)
            .revocation_date(revocation.revoked_at)
            .add_extension(
                x509.CRLReason(
                    REVOCATION_REASONS.get(revocation.reason, x509.ReasonFlags.unspecified)
                ),
                critical=False,
            )
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256())
