"""What an envelope says on its outside: its recipients and its content cipher, without a key.

The server never decrypts (DESIGN "What the server sees"), yet it must refuse a
message that a recipient could not open, or whose Sent copy the sender could
not read (REQ-E2E). The facts it needs are in clear in the CMS structure
(RFC 5652 §6.1): each ``RecipientInfo`` names the certificate it is for
(issuer and serial number, or subject key identifier, §6.2.1) and the
``EncryptedContentInfo`` names the content-encryption algorithm.

:func:`inspect_envelope` parses the whole structure, so that a truncated,
padded or internally inconsistent input is refused here, with
:class:`~pli.crypto.errors.MalformedEnvelope`, and never stored. Matching a
recipient to a certificate uses the same rule as :func:`pli.crypto.open_envelope`,
so "the server accepted it for you" and "your key opens it" cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509

from pli.crypto import cms_fast
from pli.crypto.errors import MalformedEnvelope, NotARecipient, UnsupportedAlgorithm
from pli.crypto.keys import Certificate, certificate_der
from pli.crypto.smime import _ACCEPTED_CONTENT_CIPHERS, _check_versions, _matches

#: Content ciphers Pli's clients open (AES-CBC; cryptography has no AuthEnvelopedData).
ACCEPTED_CONTENT_ENCRYPTION = frozenset(_ACCEPTED_CONTENT_CIPHERS)
#: Key transport Pli's clients open: RSAES-PKCS1-v1_5 (RFC 5652 §6.2.1; no RSA-OAEP yet).
ACCEPTED_KEY_TRANSPORT = frozenset({"rsaes_pkcs1v15"})
_ENVELOPE_TYPES = ("enveloped_data", "authenticated_enveloped_data")


@dataclass(frozen=True)
class EnvelopeRecipient:
    """One ``RecipientInfo``: whom it is for, as far as the structure says.

    ``kind`` is the CMS choice (``ktri``, ``kari``, ``kekri``, ``pwri``, ``ori``).
    Only key transport (``ktri``) names a certificate by issuer and serial or
    subject key identifier; the other kinds have ``None`` there.
    """

    kind: str
    issuer: str | None
    serial: int | None
    subject_key_id: bytes | None
    key_encryption: str | None
    _rid: asn1_cms.RecipientIdentifier | None = field(default=None, repr=False, compare=False)

    def matches(self, certificate: Certificate) -> bool:
        if self._rid is None:
            return False
        return _matches(self._rid, asn1_x509.Certificate.load(certificate_der(certificate)))


@dataclass(frozen=True)
class EnvelopeInfo:
    """The outside of an EnvelopedData (or AuthEnvelopedData, RFC 5083)."""

    content_type: str
    version: str
    content_encryption: str
    recipients: tuple[EnvelopeRecipient, ...]
    encrypted_size: int

    def recipient_for(self, certificate: Certificate) -> EnvelopeRecipient | None:
        """The ``RecipientInfo`` sealed for ``certificate``, or None."""
        subject = asn1_x509.Certificate.load(certificate_der(certificate))
        for recipient in self.recipients:
            if recipient._rid is not None and _matches(recipient._rid, subject):
                return recipient
        return None

    def require_recipient(self, certificate: Certificate) -> EnvelopeRecipient:
        """The recipient for ``certificate``, in a form Pli's clients can open.

        Raises :class:`UnsupportedAlgorithm` (AuthEnvelopedData, a content
        cipher or key transport Pli cannot process) or :class:`NotARecipient`.
        """
        if self.content_type != "enveloped_data":
            raise UnsupportedAlgorithm("AuthEnvelopedData (AES-GCM, RFC 5083) is not supported")
        if self.content_encryption not in ACCEPTED_CONTENT_ENCRYPTION:
            raise UnsupportedAlgorithm(f"content encryption {self.content_encryption}")
        recipient = self.recipient_for(certificate)
        if recipient is None:
            raise NotARecipient("the envelope holds no key for this certificate")
        if recipient.key_encryption not in ACCEPTED_KEY_TRANSPORT:
            raise UnsupportedAlgorithm(f"key transport {recipient.key_encryption}")
        return recipient


def _recipient(info: asn1_cms.RecipientInfo) -> EnvelopeRecipient:
    if info.name != "ktri":
        return EnvelopeRecipient(info.name, None, None, None, None)
    ktri = info.chosen
    rid = ktri["rid"]
    # RFC 5652 §6.2.1: version 0 with issuerAndSerialNumber, 2 with subjectKeyIdentifier.
    expected = "v0" if rid.name == "issuer_and_serial_number" else "v2"
    if ktri["version"].native != expected:
        raise MalformedEnvelope("KeyTransRecipientInfo version does not match its rid")
    algorithm = str(ktri["key_encryption_algorithm"]["algorithm"].native)
    if rid.name == "issuer_and_serial_number":
        chosen = rid.chosen
        return EnvelopeRecipient(
            "ktri",
            chosen["issuer"].human_friendly,
            int(chosen["serial_number"].native),
            None,
            algorithm,
            rid,
        )
    return EnvelopeRecipient("ktri", None, None, bytes(rid.chosen.native), algorithm, rid)


def inspect_envelope(der: bytes) -> EnvelopeInfo:
    """Parse a DER (or BER) CMS ContentInfo holding an EnvelopedData; nothing is decrypted.

    Every malformed input (not CMS, another content type, truncated, trailing
    bytes, inconsistent versions, no encrypted content) raises
    :class:`MalformedEnvelope`; the caller decides which algorithms it accepts
    (:meth:`EnvelopeInfo.require_recipient`).
    """
    if not der or der[:1] != b"\x30":
        raise MalformedEnvelope("not a DER CMS structure")
    try:
        # strict: trailing bytes after the structure are refused, not ignored.
        info = asn1_cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"].native
        if content_type not in _ENVELOPE_TYPES:
            raise MalformedEnvelope(f"expected enveloped data, found {content_type}")
        envelope = info["content"]
        # Parse every field now (asn1crypto is lazy): a structure broken deep inside
        # must fail here, before anything is stored.
        envelope.native  # noqa: B018 - evaluated for its parsing side effect
        if content_type == "enveloped_data":
            _check_versions(envelope)  # RFC 5652 §6.1
            content_info = envelope["encrypted_content_info"]
        else:
            if envelope["version"].native != "v0":  # RFC 5083 §2.1
                raise MalformedEnvelope("AuthEnvelopedData version must be 0")
            content_info = envelope["auth_encrypted_content_info"]
        if content_info["content_type"].native != "data":
            raise MalformedEnvelope("S/MIME content must be of type data")
        encrypted = content_info["encrypted_content"]
        if encrypted.native is None:
            raise MalformedEnvelope("the encrypted content is missing (detached)")
        recipients = tuple(_recipient(r) for r in envelope["recipient_infos"])
        if not recipients:
            raise MalformedEnvelope("an envelope needs at least one recipient")
        return EnvelopeInfo(
            content_type=str(content_type),
            version=str(envelope["version"].native),
            content_encryption=str(
                content_info["content_encryption_algorithm"]["algorithm"].native
            ),
            recipients=recipients,
            encrypted_size=len(encrypted.native),
        )
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError) as error:
        raise MalformedEnvelope(f"unreadable CMS structure: {error}") from None


def sealed_for_all(der: bytes, certificates: Sequence[Certificate]) -> bool:
    """Whether the envelope is well formed and holds a RecipientInfo Pli's clients open
    for *every* one of ``certificates``, read directly from its DER.

    The common case of the server's check before accepting a send, without
    asn1crypto (a tenth of the cost; :mod:`pli.crypto.cms_fast`). It only ever
    accepts: False means "not in the usual shape, or not for everyone", and the
    caller then runs :func:`inspect_envelope` and
    :meth:`EnvelopeInfo.require_recipient`, which name what is wrong.
    """
    return cms_fast.sealed_for(der, certificates) is not None


__all__ = [
    "ACCEPTED_CONTENT_ENCRYPTION",
    "ACCEPTED_KEY_TRANSPORT",
    "EnvelopeInfo",
    "EnvelopeRecipient",
    "inspect_envelope",
    "sealed_for_all",
]
