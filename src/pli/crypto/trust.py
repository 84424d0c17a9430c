"""Trust anchors, certificate paths and revocation for S/MIME signers.

Path building and validation use ``cryptography.x509.verification`` with an
end-entity policy that requires emailProtection (RFC 8550 §4.4.4) instead of
the TLS client default (clientAuth). Revocation is checked against CRLs
(RFC 5280 §6.3) whose signature was verified against the issuing certificate.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from pli.crypto.errors import (
    InvalidCertificate,
    RevocationUnknown,
    SignerExpired,
    SignerRevoked,
    SignerUntrusted,
    SignerUsageInvalid,
)
from pli.crypto.keys import Certificate, CertificateRevocationList, check_peer_public_key


class RevocationPolicy(StrEnum):
    #: Every certificate below the anchor must be covered by a current CRL (fail closed).
    REQUIRE = "require"
    #: Check where a CRL is known; a certificate without one passes, reported as unchecked.
    IF_AVAILABLE = "if_available"


@dataclass(frozen=True)
class ChainResult:
    chain: list[Certificate]
    revocation_checked: bool

    @functools.cached_property
    def chain_names(self) -> list[str]:
        """Subjects of the path, end entity first (RFC 4514 strings)."""
        return [certificate.subject.rfc4514_string() for certificate in self.chain]


#: How many validated paths a trust store remembers (one per recent signer).
_CACHE_SIZE = 1024


def _require_email_protection(
    policy: verification.Policy, certificate: Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is None or ExtendedKeyUsageOID.EMAIL_PROTECTION not in list(eku):
        raise ValueError("extendedKeyUsage must contain emailProtection")


def _require_digital_signature(
    policy: verification.Policy, certificate: Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is not None and not usage.digital_signature:
        raise ValueError("keyUsage must allow digitalSignature")


def _allow_anything(
    policy: verification.Policy, certificate: Certificate, value: x509.ExtensionType | None
) -> None:
    return None


def _crl_number(crl: CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _is_complete_crl(crl: CertificateRevocationList) -> bool:
    """Only full CRLs for every reason count: no delta CRL, no partitioned one (RFC 5280 §5.2)."""
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            return False
        if isinstance(extension.value, x509.IssuingDistributionPoint) and extension.critical:
            return False
    return True


@dataclass
class TrustStore:
    """What a relying party trusts: anchors, and the CRLs of their issuers."""

    anchors: Sequence[Certificate]
    crls: Sequence[CertificateRevocationList] = ()
    revocation: RevocationPolicy = RevocationPolicy.REQUIRE
    _store: verification.Store = field(init=False, repr=False)
    _usable_crls: list[CertificateRevocationList] = field(init=False, repr=False)
    _builder: verification.PolicyBuilder = field(init=False, repr=False)
    # A validated path stays valid while the time is inside its window: the
    # anchors and CRLs of a store never change (a new CRL makes a new store).
    _cache: dict[tuple[bytes, ...], tuple[ChainResult, dt.datetime, dt.datetime]] = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not self.anchors:
            raise InvalidCertificate("at least one trust anchor is needed")
        self._store = verification.Store(list(self.anchors))
        self._cache = {}
        ee_policy = (
            verification.ExtensionPolicy.permit_all()
            .require_present(
                x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _require_email_protection
            )
            .may_be_present(
                x509.KeyUsage, verification.Criticality.AGNOSTIC, _require_digital_signature
            )
        )
        self._builder = (
            verification.PolicyBuilder()
            .store(self._store)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
            )
        )
        self._usable_crls = []
        for crl in self.crls:
            issuer = self._find_anchor(crl.issuer)
            # A CRL whose signature we cannot check against an anchor is ignored,
            # which under REQUIRE makes the chain fail: never trust it blindly.
            if (
                issuer is not None
                and _is_complete_crl(crl)
                and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            ):
                self._usable_crls.append(crl)

    def _find_anchor(self, name: x509.Name) -> Certificate | None:
        for anchor in self.anchors:
            if anchor.subject == name:
                return anchor
        return None

    def _crl_for(self, issuer: Certificate, at: dt.datetime) -> CertificateRevocationList | None:
        """The newest current CRL of ``issuer``: an older one must not hide a revocation."""
        current = [
            crl
            for crl in self._usable_crls
            if crl.issuer == issuer.subject
            # stale: as good as none (RFC 5280 §6.3.3 (a))
            and (crl.next_update_utc is None or crl.next_update_utc >= at)
            and crl.last_update_utc <= at
        ]
        if not current:
            return None
        return max(current, key=lambda crl: (_crl_number(crl), crl.last_update_utc))

    def verify_signer(
        self,
        certificate: Certificate,
        intermediates: Sequence[Certificate] = (),
        *,
        at: dt.datetime | None = None,
    ) -> ChainResult:
        """Validate the S/MIME signer's path to an anchor at ``at``, then its revocation."""
        at = at or dt.datetime.now(dt.UTC)
        check_peer_public_key(certificate)
        if at > certificate.not_valid_after_utc:
            raise SignerExpired(
                f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        if at < certificate.not_valid_before_utc:
            raise SignerExpired("the certificate is not valid yet")
        key = tuple(c.public_bytes(Encoding.DER) for c in (certificate, *intermediates))
        cached = self._cache.get(key)
        if cached is not None and cached[1] <= at <= cached[2]:
            return cached[0]
        chain = self._path(certificate, intermediates, at)
        checked, crl_until, listed = self._check_revocation(chain, at)
        result = ChainResult(chain=chain, revocation_checked=checked)
        if not listed:
            since = max(c.not_valid_before_utc for c in chain)
            until = min([c.not_valid_after_utc for c in chain] + crl_until)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = (result, since, until)
        return result

    def verify_issued(
        self, certificate: Certificate, intermediates: Sequence[Certificate] = ()
    ) -> list[Certificate]:
        """The path of ``certificate`` to an anchor as it was when it was issued; its
        revocation not checked.

        For a key kept only to open what was sealed for it before, such as an
        organisational mailbox's keys before a rotation, which revokes their
        certificates: the question is whether the operator issued it, not whether
        it may still be used. :meth:`verify_signer` answers the latter.
        """
        check_peer_public_key(certificate)
        return self._path(certificate, intermediates, certificate.not_valid_before_utc)

    def _path(
        self, certificate: Certificate, intermediates: Sequence[Certificate], at: dt.datetime
    ) -> list[Certificate]:
        """The certificate's path to an anchor at ``at``, its usages checked."""
        verifier = self._builder.time(at).build_client_verifier()
        try:
            verified = verifier.verify(certificate, list(intermediates))
        except verification.VerificationError as error:
            message = str(error)
            if "emailProtection" in message or "digitalSignature" in message:
                raise SignerUsageInvalid(message) from None
            raise SignerUntrusted(f"no valid path to a trust anchor: {message}") from None
        return list(verified.chain)

    def _check_revocation(
        self, chain: list[Certificate], at: dt.datetime
    ) -> tuple[bool, list[dt.datetime], bool]:
        """Whether every link was checked, until when the CRLs hold, whether any lists a link."""
        all_checked = True
        until: list[dt.datetime] = []
        listed = False
        # The last certificate is the anchor: trusted by configuration, not by CRL.
        for child, issuer in itertools.pairwise(chain):
            crl = self._crl_for(issuer, at)
            if crl is None:
                if self.revocation is RevocationPolicy.REQUIRE:
                    raise RevocationUnknown(
                        "no current CRL from the issuer of the certificate"
                        f" serial {child.serial_number:x}"
                    )
                all_checked = False
                continue
            if crl.next_update_utc is not None:
                until.append(crl.next_update_utc)
            entry = crl.get_revoked_certificate_by_serial_number(child.serial_number)
            if entry is not None:
                listed = True
                if entry.revocation_date_utc <= at:
                    raise SignerRevoked(
                        f"certificate serial {child.serial_number:x} revoked on"
                        f" {entry.revocation_date_utc:%Y-%m-%d}"
                    )
        return all_checked, until, listed
