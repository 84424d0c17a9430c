"""Small server-side secrets sealed under a key derived from the server secret.

Used for values the server must read back (TOTP seeds, RFC 6238), unlike
passphrases and codes, which are only ever hashed. AES-256-GCM with a random
96-bit nonce; the *context* (e.g. ``b"totp:42"``) is authenticated, so a
sealed value copied to another row does not open there.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pli.crypto.errors import BlobCorrupted

_VERSION = b"\x01"
_NONCE_BYTES = 12


def derive_key(master: bytes, purpose: str) -> bytes:
    """A 256-bit key for one *purpose*, from a high-entropy master secret (HKDF, RFC 5869)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pli:" + purpose.encode()
    ).derive(master)


def seal_secret(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, _VERSION + context)


def open_secret(key: bytes, record: bytes, context: bytes) -> bytes:
    if len(record) < 1 + _NONCE_BYTES + 16 or record[:1] != _VERSION:
        raise BlobCorrupted("sealed secret has an unknown format")
    nonce = record[1 : 1 + _NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, record[1 + _NONCE_BYTES :], _VERSION + context)
    except InvalidTag:
        raise BlobCorrupted("sealed secret does not open with this key and context") from None
