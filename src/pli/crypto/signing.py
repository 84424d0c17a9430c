"""Detached Ed25519 signatures for the operator's own records (the audit trail's checkpoints).

Not S/MIME: these signatures never leave the operator. They prove that a
checkpoint of the audit trail (REQ-TRACE) was written by whoever holds the
operator audit key, so that rewriting the trail needs that key and not only
access to the database. Ed25519 (RFC 8032): small keys and signatures, fast,
deterministic, with no parameter to get wrong.

The key is kept as an unencrypted PKCS#8 PEM file readable by its owner only
(like Django's secret key); a verifier needs only the public key
(SubjectPublicKeyInfo PEM), identified by the SHA-256 of its DER encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pli.crypto.errors import CryptoError, SignatureInvalid


class SigningKeyInvalid(CryptoError):
    """A signing or verifying key file is unreadable or is not an Ed25519 key."""

    code = "signing_key_invalid"


def _fingerprint(public: ed25519.Ed25519PublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class VerifyingKey:
    """An Ed25519 public key that checks signatures."""

    key: ed25519.Ed25519PublicKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the SubjectPublicKeyInfo DER, in hex: what signed records name."""
        return _fingerprint(self.key)

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, data: bytes, signature: bytes) -> None:
        """Return if ``signature`` is this key's over ``data``; else :class:`SignatureInvalid`."""
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            raise SignatureInvalid("the signature does not match the data and key") from None


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key in memory."""

    key: ed25519.Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def verifying_key(self) -> VerifyingKey:
        return VerifyingKey(self.key.public_key())

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_signing_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


def load_signing_key(pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyInvalid(f"cannot read the signing key: {error}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyInvalid("the signing key is not an Ed25519 key")
    return SigningKey(key)


def load_verifying_key(pem: bytes) -> VerifyingKey:
    """A public key PEM, or the public half of a private key PEM."""
    if b"PRIVATE KEY" in pem:
        return load_signing_key(pem).verifying_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise SigningKeyInvalid(f"cannot read the public key: {error}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningKeyInvalid("the public key is not an Ed25519 key")
    return VerifyingKey(key)
