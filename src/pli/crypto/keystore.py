"""Where private keys rest (REQ-AT-REST, DESIGN "Key custody").

- *Workstation*: an encrypted PKCS#12 file (RFC 7292) with PBES2, AES-256-CBC
  and PBKDF2-HMAC-SHA-256 for the key and certificates, HMAC-SHA-256 for the
  integrity MAC: the strongest scheme ``cryptography`` writes.
- *Vault*: the private key (PKCS#8 DER) sealed with AES-256-GCM under a key
  derived with Argon2id (RFC 9106) from the mailbox passphrase. The KDF
  parameters are stored beside the ciphertext and authenticated as associated
  data, so they can be raised later (:func:`vault_needs_upgrade`) and cannot
  be lowered by someone who edits the stored record.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import pkcs12

from pli.crypto.errors import KeyStoreCorrupted, WeakKey, WrongPassphrase
from pli.crypto.keys import Certificate, PrivateKey, SoftwareKey

#: PBKDF2 iterations for PKCS#12 files (OWASP 2023 guidance for PBKDF2-HMAC-SHA256: 600 000).
PKCS12_ITERATIONS = 600_000
#: The PKCS#12 MAC is computed with only 2048 iterations by cryptography (see
#: docs/decisions/0004-key-stores.md): a long passphrase is the defence.
MIN_PASSPHRASE_LENGTH = 12


def _check_passphrase(passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise WeakKey(f"a passphrase needs at least {MIN_PASSPHRASE_LENGTH} characters")
    return passphrase.encode()


# --- workstation: PKCS#12 ------------------------------------------------------------------------
def dump_pkcs12(
    key: PrivateKey,
    certificate: Certificate | None,
    passphrase: str,
    *,
    chain: list[Certificate] | None = None,
    name: str = "pli",
    iterations: int = PKCS12_ITERATIONS,
) -> bytes:
    """An encrypted PKCS#12 holding the key, its certificate (if any) and chain."""
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(iterations)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(_check_passphrase(passphrase))
    )
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, certificate, chain or None, encryption
    )


@dataclass(frozen=True)
class Pkcs12Contents:
    key: PrivateKey
    certificate: Certificate | None
    chain: list[Certificate]

    def software_key(self, certificate: Certificate | None = None) -> SoftwareKey:
        chosen = certificate or self.certificate
        if chosen is None:
            raise KeyStoreCorrupted("the identity file holds no certificate; give one")
        if chosen.public_key() != self.key.public_key():
            raise KeyStoreCorrupted("the certificate does not belong to this key")
        return SoftwareKey(self.key, chosen)


def load_pkcs12(data: bytes, passphrase: str) -> Pkcs12Contents:
    try:
        key, certificate, chain = pkcs12.load_key_and_certificates(data, passphrase.encode())
    except ValueError as error:
        # cryptography reports a bad MAC (wrong passphrase) and bad structure alike.
        if "password" in str(error).lower() or "mac" in str(error).lower():
            raise WrongPassphrase("the passphrase does not open this identity") from None
        raise KeyStoreCorrupted(f"cannot read the identity file: {error}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyStoreCorrupted("the identity file holds no RSA private key")
    return Pkcs12Contents(key, certificate, list(chain))


# --- vault: Argon2id + AES-256-GCM ----------------------------------------------------------------
@dataclass(frozen=True)
class VaultParameters:
    """Argon2id cost (RFC 9106 §4, second recommended option: 64 MiB, t=3, p=4)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def weaker_than(self, other: VaultParameters) -> bool:
        return (
            self.memory_kib < other.memory_kib
            or self.iterations < other.iterations
            or self.lanes < other.lanes
        )


DEFAULT_VAULT_PARAMETERS = VaultParameters()
#: Upper bounds accepted when reading a record (RFC 9106 §4 costs are far below).
MAX_VAULT_MEMORY_KIB = 1024 * 1024
MAX_VAULT_ITERATIONS = 16
MAX_VAULT_LANES = 16
_VAULT_FORMAT = "pli-vault-1"


def _vault_key(passphrase: bytes, salt: bytes, params: VaultParameters) -> bytes:
    return Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(passphrase)


def _vault_header(params: VaultParameters, salt: bytes) -> bytes:
    header = {"format": _VAULT_FORMAT, "kdf": "argon2id", **asdict(params)}
    header["salt"] = base64.b64encode(salt).decode()
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def wrap_private_key(
    key: PrivateKey, passphrase: str, params: VaultParameters = DEFAULT_VAULT_PARAMETERS
) -> bytes:
    """A vault record: JSON header (authenticated) and the AES-256-GCM sealed PKCS#8 key."""
    salt = os.urandom(16)
    nonce = os.urandom(12)
    header = _vault_header(params, salt)
    plaintext = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ciphertext = AESGCM(_vault_key(_check_passphrase(passphrase), salt, params)).encrypt(
        nonce, plaintext, header
    )
    record = {
        "header": header.decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return json.dumps(record, sort_keys=True).encode()


def _read_vault(record: bytes) -> tuple[bytes, VaultParameters, bytes, bytes, bytes]:
    try:
        outer = json.loads(record)
        header_bytes = outer["header"].encode()
        header = json.loads(header_bytes)
        if header.get("format") != _VAULT_FORMAT or header.get("kdf") != "argon2id":
            raise KeyStoreCorrupted("unknown vault format")
        params = VaultParameters(
            memory_kib=int(header["memory_kib"]),
            iterations=int(header["iterations"]),
            lanes=int(header["lanes"]),
        )
        salt = base64.b64decode(header["salt"], validate=True)
        nonce = base64.b64decode(outer["nonce"], validate=True)
        ciphertext = base64.b64decode(outer["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise KeyStoreCorrupted(f"unreadable vault record: {error}") from None
    # The header is authenticated only after the key is derived from it: bound
    # the costs first, so that an edited record cannot exhaust memory or time.
    if not (
        8 * params.lanes <= params.memory_kib <= MAX_VAULT_MEMORY_KIB
        and 1 <= params.iterations <= MAX_VAULT_ITERATIONS
        and 1 <= params.lanes <= MAX_VAULT_LANES
        and len(salt) >= 16
        and len(nonce) == 12
    ):
        raise KeyStoreCorrupted("vault parameters out of bounds")
    return header_bytes, params, salt, nonce, ciphertext


def vault_parameters(record: bytes) -> VaultParameters:
    return _read_vault(record)[1]


def vault_needs_upgrade(record: bytes, wanted: VaultParameters = DEFAULT_VAULT_PARAMETERS) -> bool:
    """True when the record was sealed with weaker Argon2id costs than ``wanted``."""
    return vault_parameters(record).weaker_than(wanted)


def unwrap_private_key(record: bytes, passphrase: str) -> PrivateKey:
    header, params, salt, nonce, ciphertext = _read_vault(record)
    try:
        derived = _vault_key(passphrase.encode(), salt, params)
    except ValueError as error:
        raise KeyStoreCorrupted(f"bad vault parameters: {error}") from None
    try:
        plaintext = AESGCM(derived).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        # Wrong passphrase and a tampered record are indistinguishable by design.
        raise WrongPassphrase("the passphrase does not open this vault") from None
    key = serialization.load_der_private_key(plaintext, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyStoreCorrupted("the vault holds no RSA private key")
    return key
