"""Where private keys rest (REQ-AT-REST, DESIGN "Key custody").

- *Workstation*: an encrypted PKCS#12 file (RFC 7292) with PBES2, AES-256-CBC
  and PBKDF2-HMAC-SHA-256 for the key and certificates, HMAC-SHA-256 for the
  integrity MAC: the strongest scheme ``cryptography`` writes.
- *Vault*: the private key (PKCS#8 DER) sealed with AES-256-GCM under a key
  derived with Argon2id (RFC 9106) from the mailbox passphrase. The KDF
  parameters are stored beside the ciphertext and authenticated as associated
  data, so they can be raised later (:func:`vault_needs_upgrade`) and cannot
  be lowered by someone who edits the stored record. The derivation and the
  sealing are also offered apart (:class:`VaultKey`): the server derives the
  key once at login, hands it to the browser, and opens the record with it on
  later requests without running Argon2id again.
- *Member*: an organisational mailbox's private key wrapped to a member's
  certificate as a CMS EnvelopedData (RFC 5652 §6), opened with the member's
  own key, wherever that key lives (a :class:`~pli.crypto.keys.Decrypter`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from pli.crypto.errors import KeyStoreCorrupted, WeakKey, WrongPassphrase
from pli.crypto.keys import Certificate, Decrypter, PrivateKey, SoftwareKey, check_peer_public_key
from pli.crypto.smime import decrypt_envelope

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


@dataclass(frozen=True, repr=False)
class VaultKey:
    """An AES-256 key derived with Argon2id from a passphrase, with the salt and cost used.

    Every vault record sealed with one :class:`VaultKey` opens with its 32-byte
    :attr:`secret` alone, so a holder of several records derives once.
    """

    secret: bytes
    salt: bytes
    params: VaultParameters

    def __repr__(self) -> str:  # never print the secret (logs, tracebacks)
        return f"VaultKey(params={self.params!r})"


def derive_vault_key(
    passphrase: str,
    params: VaultParameters = DEFAULT_VAULT_PARAMETERS,
    *,
    salt: bytes | None = None,
) -> VaultKey:
    """A new vault key for ``passphrase`` (a fresh 128-bit salt unless one is given)."""
    salt = os.urandom(16) if salt is None else salt
    if len(salt) < 16:
        raise KeyStoreCorrupted("a vault salt has at least 16 bytes")
    return VaultKey(_vault_key(_check_passphrase(passphrase), salt, params), salt, params)


def vault_key_for_record(record: bytes, passphrase: str) -> VaultKey:
    """Run Argon2id with the salt and cost the record names; does not check the passphrase.

    Whether the key is right shows when it opens the record
    (:func:`unwrap_private_key_with`), which costs no second derivation.
    """
    _header, params, salt, _nonce, _ciphertext = _read_vault(record)
    try:
        secret = _vault_key(passphrase.encode(), salt, params)
    except ValueError as error:
        raise KeyStoreCorrupted(f"bad vault parameters: {error}") from None
    return VaultKey(secret, salt, params)


def reuse_vault_key(record: bytes, secret: bytes) -> VaultKey:
    """The :class:`VaultKey` of an existing record, from its secret: to seal more records."""
    unwrap_private_key_with(record, secret)  # proves the secret is the record's
    _header, params, salt, _nonce, _ciphertext = _read_vault(record)
    return VaultKey(secret, salt, params)


def wrap_private_key_with(key: PrivateKey, vault_key: VaultKey) -> bytes:
    """A vault record: JSON header (authenticated) and the AES-256-GCM sealed PKCS#8 key."""
    nonce = os.urandom(12)
    header = _vault_header(vault_key.params, vault_key.salt)
    plaintext = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ciphertext = AESGCM(vault_key.secret).encrypt(nonce, plaintext, header)
    record = {
        "header": header.decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return json.dumps(record, sort_keys=True).encode()


def wrap_private_key(
    key: PrivateKey, passphrase: str, params: VaultParameters = DEFAULT_VAULT_PARAMETERS
) -> bytes:
    """A vault record under a new key derived from ``passphrase``."""
    return wrap_private_key_with(key, derive_vault_key(passphrase, params))


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


def unwrap_private_key_with(record: bytes, secret: bytes) -> PrivateKey:
    """Open a vault record with an already derived key (no Argon2id run)."""
    header, _params, _salt, nonce, ciphertext = _read_vault(record)
    if len(secret) != 32:
        raise WrongPassphrase("a vault key has 32 bytes")
    try:
        plaintext = AESGCM(secret).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        # Wrong passphrase and a tampered record are indistinguishable by design.
        raise WrongPassphrase("the passphrase does not open this vault") from None
    return _load_pkcs8(plaintext)


def unwrap_private_key(record: bytes, passphrase: str) -> PrivateKey:
    return unwrap_private_key_with(record, vault_key_for_record(record, passphrase).secret)


def _load_pkcs8(plaintext: bytes) -> PrivateKey:
    try:
        key = serialization.load_der_private_key(plaintext, password=None)
    except ValueError:
        raise KeyStoreCorrupted("the sealed content is not a private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyStoreCorrupted("the vault holds no RSA private key")
    return key


# --- member: a mailbox key wrapped to a member's certificate (RFC 5652 §6) ----------------------
def wrap_private_key_to(key: PrivateKey, recipients: Certificate | Sequence[Certificate]) -> bytes:
    """The PKCS#8 key in a CMS EnvelopedData (AES-256-CBC, RSA key transport) for ``recipients``.

    The same envelope S/MIME messages use, so a member's key opens it wherever
    it lives (vault, PKCS#12 file, card), and ``openssl cms -decrypt`` too. One
    RecipientInfo per certificate (RFC 5652 §6.2): any of a member's keys opens it.
    """
    everyone = [recipients] if isinstance(recipients, Certificate) else list(recipients)
    if not everyone:
        raise KeyStoreCorrupted("a wrapped key needs at least one recipient")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for certificate in everyone:
        check_peer_public_key(certificate)
        builder = builder.add_recipient(certificate)
    return builder.set_content_encryption_algorithm(algorithms.AES256).encrypt(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]
    )


def unwrap_private_key_from(
    envelope: bytes, member: Decrypter, certificate: Certificate | None = None
) -> PrivateKey:
    """Open a key wrapped by :func:`wrap_private_key_to` with the member's own key.

    CBC content encryption is not authenticated: when the key's ``certificate``
    is given, the opened key must match its public key, so that an edited
    envelope cannot pass off another key.
    """
    content, _cipher = decrypt_envelope(envelope, member)
    key = _load_pkcs8(content)
    if certificate is not None and key.public_key() != certificate.public_key():
        raise KeyStoreCorrupted("the wrapped key does not belong to the mailbox certificate")
    return key
