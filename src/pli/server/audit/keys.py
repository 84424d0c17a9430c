"""The operator audit key, which signs the checkpoints of the trail (REQ-TRACE).

``PLI_AUDIT_KEY_FILE`` names its PEM file; by default it is
``<data dir>/audit-signing-key.pem``, made (owner-only, 0600) the first time a
checkpoint is written, the way ``pli init`` makes the secret key. A file named
by the setting is never made: if it is missing, that is a configuration error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path

from django.conf import settings

from pli.crypto import (
    CryptoError,
    SigningKey,
    VerifyingKey,
    generate_signing_key,
    load_signing_key,
    load_verifying_key,
)
from pli.server.audit.errors import AuditKeyUnavailable
from pli.server.config import setting

DEFAULT_KEY_NAME = "audit-signing-key.pem"

_lock = threading.Lock()
#: Loaded keys by (path, inode, mtime): a worker reads its key file once, not per checkpoint.
_cache: dict[tuple[str, int, int], SigningKey] = {}


def key_path() -> tuple[Path, bool]:
    """The key file, and whether it was configured (rather than the default)."""
    configured = setting("AUDIT_KEY_FILE")
    if configured:
        return Path(configured), True
    return Path(settings.DATA_DIR) / DEFAULT_KEY_NAME, False


def _create(path: Path) -> None:
    """Write a new key so that no reader ever sees half a file, and never replace one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(generate_signing_key().pem())
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker made it first: keep theirs
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def operator_signing_key() -> SigningKey:
    """The key that signs checkpoints, made on first use at the default place."""
    path, configured = key_path()
    with _lock:
        try:
            status = path.stat()
        except FileNotFoundError:
            if configured:
                raise AuditKeyUnavailable(f"PLI_AUDIT_KEY_FILE: {path} does not exist") from None
            try:
                _create(path)
                status = path.stat()
            except OSError as error:
                raise AuditKeyUnavailable(
                    f"cannot create the audit key {path}: {error.strerror or error}"
                ) from None
        cache_key = (str(path), status.st_ino, status.st_mtime_ns)
        key = _cache.get(cache_key)
        if key is None:
            try:
                key = load_signing_key(path.read_bytes())
            except (OSError, CryptoError) as error:
                raise AuditKeyUnavailable(f"cannot read the audit key {path}: {error}") from None
            _cache.clear()
            _cache[cache_key] = key
        return key


def operator_verifying_key() -> VerifyingKey:
    """The public half of the operator audit key, read from its file (never made here)."""
    path, _ = key_path()
    try:
        return load_verifying_key(path.read_bytes())
    except FileNotFoundError:
        raise AuditKeyUnavailable(
            f"the audit key {path} does not exist: give the public key with --public-key"
        ) from None
    except (OSError, CryptoError) as error:
        raise AuditKeyUnavailable(f"cannot read the audit key {path}: {error}") from None


def verifying_key_from_file(path: Path) -> VerifyingKey:
    try:
        return load_verifying_key(path.read_bytes())
    except (OSError, CryptoError) as error:
        raise AuditKeyUnavailable(f"cannot read the public key {path}: {error}") from None
