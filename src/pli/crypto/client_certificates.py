"""TLS client certificates of professionals: path, validity, usage, revocation (REQ-AUTH-CARD).

A professional card (CPS) or an equivalent soft token proves possession of
its key during the TLS handshake; whoever terminated TLS (Pli's own server or
a reverse proxy) hands the certificate over, and Pli checks it again here,
whatever the terminator already checked:

* a path to one of the configured anchors (RFC 5280 §6.1), built and verified
  with ``cryptography.x509.verification``; every certificate of the
  operator's bundle is an anchor, as in nginx's ``ssl_client_certificate``;
* the validity period of the end entity, reported as its own error;
* keyUsage present with digitalSignature and extendedKeyUsage with clientAuth
  (RFC 5280 §4.2.1.3 and §4.2.1.12: the key signs the TLS handshake);
* revocation against the configured CRLs (RFC 5280 §6.3), each CRL's
  signature checked against the issuer found in the validated path, so that
  CRLs of intermediate authorities count as well as the root's.

:class:`pli.crypto.trust.TrustStore` does the same for S/MIME signers but
requires emailProtection and looks for CRL issuers among the anchors only.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from pli.crypto.errors import CryptoError, InvalidCertificate
from pli.crypto.keys import (
    MIN_PEER_KEY_BITS,
    Certificate,
    CertificateRevocationList,
    certificate_fingerprint,
    certificate_national_id,
    load_certificates,
)

#: Curves a client certificate key may use (ANSSI RGS B1: P-256 and above).
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class ClientCertificateError(CryptoError):
    """Base of every reason why a client certificate does not log anybody in."""

    code = "client_certificate_error"


class ClientCertificateUntrusted(ClientCertificateError):
    """No valid path to a configured anchor (unknown issuer, bad signature, bad CA)."""

    code = "client_certificate_untrusted"


class ClientCertificateExpired(ClientCertificateError):
    code = "client_certificate_expired"


class ClientCertificateRevoked(ClientCertificateError):
    code = "client_certificate_revoked"


class ClientCertificateRevocationUnknown(ClientCertificateError):
    """CRLs are required and no current, verifiable one covers a certificate of the path."""

    code = "client_certificate_revocation_unknown"


class ClientCertificateUsageInvalid(ClientCertificateError):
    """Not a certificate for TLS client authentication (keyUsage, extendedKeyUsage, key)."""

    code = "client_certificate_usage_invalid"


class ClientRevocationPolicy(StrEnum):
    #: Every certificate below the anchor must be covered by a current CRL (fail closed).
    REQUIRE = "require"
    #: Nothing to check against: no CRL is configured.
    NONE = "none"


@dataclass(frozen=True)
class VerifiedClientCertificate:
    certificate: Certificate
    chain: list[Certificate]
    #: SHA-256 of the DER certificate, hexadecimal (as :func:`certificate_fingerprint`).
    fingerprint: str
    #: The subject's serialNumber: the ANS national identifier on IGC-Santé cards (8 + RPPS).
    national_id: str | None
    subject: str
    revocation_checked: bool


def _require_client_auth(
    policy: verification.Policy, certificate: Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in list(eku):
        raise ValueError("extendedKeyUsage must contain clientAuth")


def _require_digital_signature(
    policy: verification.Policy, certificate: Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is None or not usage.digital_signature:
        raise ValueError("keyUsage must be present and allow digitalSignature")


def _is_complete_crl(crl: CertificateRevocationList) -> bool:
    """Only full CRLs for every reason count: no delta CRL, no partitioned one (RFC 5280 §5.2)."""
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            return False
        if isinstance(extension.value, x509.IssuingDistributionPoint) and extension.critical:
            return False
    return True


def _crl_number(crl: CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _check_key(certificate: Certificate) -> None:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_PEER_KEY_BITS:
            raise ClientCertificateUsageInvalid(
                f"RSA key of {key.key_size} bits, at least {MIN_PEER_KEY_BITS} required"
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return
    raise ClientCertificateUsageInvalid("only RSA and NIST P-256/384/521 keys are accepted")


class ClientCertificateTrust:
    """What a relying party trusts for client certificates: anchors, and CRLs.

    Immutable once built: new anchors or a new CRL make a new object.
    """

    def __init__(
        self,
        anchors: Sequence[Certificate],
        crls: Sequence[CertificateRevocationList] = (),
    ) -> None:
        if not anchors:
            raise InvalidCertificate("at least one trust anchor is needed")
        self.anchors = list(anchors)
        self.crls = list(crls)
        self.revocation = ClientRevocationPolicy.REQUIRE if crls else ClientRevocationPolicy.NONE
        ee_policy = (
            verification.ExtensionPolicy.permit_all()
            .require_present(
                x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _require_client_auth
            )
            .require_present(
                x509.KeyUsage, verification.Criticality.AGNOSTIC, _require_digital_signature
            )
        )
        self._builder = (
            verification.PolicyBuilder()
            .store(verification.Store(self.anchors))
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
            )
        )
        # Incomplete CRLs never count (a delta CRL alone could hide a revocation).
        self._complete_crls = [crl for crl in self.crls if _is_complete_crl(crl)]

    def verify(
        self,
        certificate: Certificate,
        intermediates: Sequence[Certificate] = (),
        *,
        at: dt.datetime | None = None,
    ) -> VerifiedClientCertificate:
        """Validate ``certificate`` for client authentication at ``at`` (default: now)."""
        at = at or dt.datetime.now(dt.UTC)
        _check_key(certificate)
        if at > certificate.not_valid_after_utc:
            raise ClientCertificateExpired(
                f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        if at < certificate.not_valid_before_utc:
            raise ClientCertificateExpired("the certificate is not valid yet")
        verifier = self._builder.time(at).build_client_verifier()
        try:
            verified = verifier.verify(certificate, list(intermediates))
        except verification.VerificationError as error:
            message = str(error)
            if "clientAuth" in message or "digitalSignature" in message:
                raise ClientCertificateUsageInvalid(message) from None
            raise ClientCertificateUntrusted(
                f"no valid path to a trust anchor: {message}"
            ) from None
        chain = list(verified.chain)
        checked = self._check_revocation(chain, at)
        return VerifiedClientCertificate(
            certificate=certificate,
            chain=chain,
            fingerprint=certificate_fingerprint(certificate),
            national_id=certificate_national_id(certificate),
            subject=certificate.subject.rfc4514_string(),
            revocation_checked=checked,
        )

    def _crl_for(self, issuer: Certificate, at: dt.datetime) -> CertificateRevocationList | None:
        """The newest current CRL signed by ``issuer``: an older one must not hide a revocation."""
        current = [
            crl
            for crl in self._complete_crls
            if crl.issuer == issuer.subject
            # stale: as good as none (RFC 5280 §6.3.3 (a))
            and (crl.next_update_utc is None or crl.next_update_utc >= at)
            and crl.last_update_utc <= at
            and _signed_by(crl, issuer)
        ]
        if not current:
            return None
        return max(current, key=lambda crl: (_crl_number(crl), crl.last_update_utc))

    def _check_revocation(self, chain: list[Certificate], at: dt.datetime) -> bool:
        """Whether revocation was checked; raises when a link is revoked or cannot be checked."""
        if self.revocation is ClientRevocationPolicy.NONE:
            return False
        # The last certificate is the anchor: trusted by configuration, not by CRL.
        for child, issuer in itertools.pairwise(chain):
            crl = self._crl_for(issuer, at)
            if crl is None:
                raise ClientCertificateRevocationUnknown(
                    "no current CRL from the issuer of the certificate"
                    f" serial {child.serial_number:x}"
                )
            entry = crl.get_revoked_certificate_by_serial_number(child.serial_number)
            if entry is not None and entry.revocation_date_utc <= at:
                raise ClientCertificateRevoked(
                    f"certificate serial {child.serial_number:x} revoked on"
                    f" {entry.revocation_date_utc:%Y-%m-%d}"
                )
        return True


def _signed_by(crl: CertificateRevocationList, issuer: Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    return crl.is_signature_valid(key)


def load_client_certificate(data: bytes) -> tuple[Certificate, list[Certificate]]:
    """The end entity and any intermediates of a PEM text (or one DER certificate).

    What a TLS terminator passes on: nginx's ``$ssl_client_escaped_cert``
    (once URL-unescaped) is the PEM of the end entity alone.
    """
    certificates = load_certificates(data)
    if not certificates:
        raise InvalidCertificate("no certificate")
    return certificates[0], certificates[1:]
