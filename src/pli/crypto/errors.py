"""Typed errors of the cryptographic core: each has a stable ``code``.

The codes are part of Pli's interface (CLI exit messages, API errors,
translations): never change one, add new ones.
"""

from __future__ import annotations

from typing import ClassVar


class CryptoError(Exception):
    """Base of every error raised by :mod:`pli.crypto`."""

    code: ClassVar[str] = "crypto_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.code)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


# --- envelopes -----------------------------------------------------------------------------------
class MalformedEnvelope(CryptoError):
    """The input is not a CMS / S/MIME structure we can read."""

    code = "malformed_envelope"


class UnsupportedAlgorithm(CryptoError):
    """A well-formed structure uses an algorithm Pli does not accept or cannot process."""

    code = "unsupported_algorithm"


class NotARecipient(CryptoError):
    """The envelope holds no key for the decrypting certificate."""

    code = "not_a_recipient"


class EnvelopeCorrupted(CryptoError):
    """Decryption failed or gave something unreadable.

    One code for every failure after the key transport (padding, structure),
    so that the answer does not act as a padding oracle.
    """

    code = "envelope_corrupted"


# --- signatures ----------------------------------------------------------------------------------
class SignatureError(CryptoError):
    """Base of every reason why a message is not shown as genuine (REQ-SIGNATURE)."""

    code = "signature_error"


class SignatureMissing(SignatureError):
    code = "signature_missing"


class SignatureInvalid(SignatureError):
    """The signature or the message digest does not match the content."""

    code = "signature_invalid"


class SignerCertificateMismatch(SignatureError):
    """No embedded certificate matches the SignerInfo's signer identifier."""

    code = "signer_certificate_mismatch"


class SignerUntrusted(SignatureError):
    code = "signer_untrusted"


class SignerExpired(SignatureError):
    code = "signer_expired"


class SignerRevoked(SignatureError):
    code = "signer_revoked"


class RevocationUnknown(SignatureError):
    """No current revocation information covers a certificate of the chain."""

    code = "revocation_unknown"


class SignerUsageInvalid(SignatureError):
    """The signer certificate is not for e-mail signatures (keyUsage / extendedKeyUsage)."""

    code = "signer_usage_invalid"


class SenderMismatch(SignatureError):
    """The signer certificate's address is neither the message's From nor its Sender."""

    code = "sender_mismatch"


# --- keys, certificates, stores ------------------------------------------------------------------
class WrongPassphrase(CryptoError):
    code = "wrong_passphrase"


class KeyStoreCorrupted(CryptoError):
    code = "keystore_corrupted"


class WeakKey(CryptoError):
    code = "weak_key"


class InvalidCertificateRequest(CryptoError):
    code = "invalid_certificate_request"


class InvalidCertificate(CryptoError):
    code = "invalid_certificate"


class CertificateAuthorityError(CryptoError):
    code = "ca_error"


class UnknownCertificate(CertificateAuthorityError):
    code = "unknown_certificate"


# --- streamed content ----------------------------------------------------------------------------
class BlobCorrupted(CryptoError):
    """An externally stored encrypted part fails its digest, its tags or its framing."""

    code = "blob_corrupted"
