"""Ed25519 signatures of the operator's own records (pli.crypto.signing): no database."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from pli.crypto import (
    SignatureInvalid,
    SigningKeyInvalid,
    generate_private_key,
    generate_signing_key,
    load_signing_key,
    load_verifying_key,
)


def test_a_signature_verifies_with_the_public_key_only() -> None:
    key = generate_signing_key()
    signature = key.sign(b"checkpoint")
    public = load_verifying_key(key.verifying_key().pem())
    public.verify(b"checkpoint", signature)
    assert public.fingerprint == key.verifying_key().fingerprint
    assert len(public.fingerprint) == 64


def test_the_private_key_pem_round_trips_and_gives_its_public_half() -> None:
    key = generate_signing_key()
    again = load_signing_key(key.pem())
    assert again.verifying_key().fingerprint == key.verifying_key().fingerprint
    # A private key file also serves as the verifying key (the public half is derived).
    assert load_verifying_key(key.pem()).fingerprint == key.verifying_key().fingerprint


@pytest.mark.parametrize("change", ["data", "signature", "key"])
def test_a_changed_byte_or_another_key_is_refused(change: str) -> None:
    key = generate_signing_key()
    data, signature = b"pli-audit-checkpoint-1\n7", key.sign(b"pli-audit-checkpoint-1\n7")
    verifier = key.verifying_key()
    if change == "data":
        data = data[:-1] + b"8"
    elif change == "signature":
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    else:
        verifier = generate_signing_key().verifying_key()
    with pytest.raises(SignatureInvalid):
        verifier.verify(data, signature)


def test_keys_that_are_not_ed25519_or_not_keys_are_refused() -> None:
    rsa_pem = generate_private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SigningKeyInvalid, match="not an Ed25519 key"):
        load_signing_key(rsa_pem)
    with pytest.raises(SigningKeyInvalid):
        load_signing_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyInvalid):
        load_verifying_key(b"not a key")
