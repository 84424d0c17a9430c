"""The operator's certificate authority as the server uses it (DESIGN: mailboxes, certificates).

The CA is a :class:`~pli.client.castore.CaDirectory` in ``PLI_CA_DIR`` (default
``<data dir>/ca``), the layout ``pli ca init`` makes and ``pli demo`` fills. Its
passphrase comes from ``PLI_CA_PASSPHRASE`` or ``PLI_CA_PASSPHRASE_FILE``
(default ``<CA dir>/passphrase`` when that file exists), read through the one
settings door (:func:`pli.server.config.secret`). Without them, issuing fails
with the stable code ``ca_not_configured`` naming the setting: a server whose
users all keep their keys elsewhere still starts.

Issuing, revoking and publishing the CRL change files, not rows: they are
serialised between worker processes by an exclusive lock on the directory,
because the CA index is read, changed and written back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

from pli.client.castore import CaDirectory
from pli.crypto import (
    Certificate,
    CertificateRevocationList,
    CertificateSigningRequest,
    CryptoError,
    WrongPassphrase,
)
from pli.crypto.errors import UnknownCertificate
from pli.server.accounts.errors import AccountError
from pli.server.config import ConfigurationError, secret

_open_lock = threading.Lock()
#: The opened CA by (directory, file identity, passphrase digest): opening costs a
#: 600 000-round PBKDF2 (the PKCS#12 file), too much for every certificate.
_opened: dict[tuple[str, int, int, str], CaDirectory] = {}


class OperatorCaUnavailable(AccountError):
    """No usable operator CA: the message names the setting to fix."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "ca_not_configured",
            _("L'autorité de certification de l'opérateur n'est pas disponible."),
        )
        #: For the operator's logs and the CLI, never shown to users.
        self.detail = detail


def ca_path() -> Path:
    return Path(settings.PLI_CA_DIR)


def _passphrase(path: Path) -> str:
    try:
        return secret("CA_PASSPHRASE", fallback_file=path / "passphrase")
    except ConfigurationError as error:
        raise OperatorCaUnavailable(str(error)) from None


def operator_ca() -> CaDirectory:
    """The operator CA, opened once per process (and again when its file changes)."""
    path = ca_path()
    try:
        identity = (path / "ca.p12").stat()
    except OSError:
        raise OperatorCaUnavailable(
            f"no operator CA in {path} (PLI_CA_DIR): create it with `pli ca init --ca-dir {path}`"
        ) from None
    passphrase = _passphrase(path)
    key = (
        str(path),
        identity.st_ino,
        identity.st_mtime_ns,
        hashlib.sha256(passphrase.encode()).hexdigest(),
    )
    with _open_lock:
        ca = _opened.get(key)
        if ca is None:
            try:
                ca = CaDirectory.open(path, passphrase)
            except WrongPassphrase:
                raise OperatorCaUnavailable(
                    f"PLI_CA_PASSPHRASE (or PLI_CA_PASSPHRASE_FILE) does not open {path}/ca.p12"
                ) from None
            except CryptoError as error:
                raise OperatorCaUnavailable(f"{path}: {error}") from None
            _opened.clear()
            _opened[key] = ca
    return ca


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One CA operation at a time across the server's processes (flock, released on exit)."""
    with (path / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trust_anchor() -> Certificate:
    """The root certificate relying parties trust for the operator's mailboxes."""
    return operator_ca().certificate


def issue_certificate(csr: CertificateSigningRequest) -> Certificate:
    """A mailbox certificate for a checked CSR (pli.crypto checks it again: RFC 8550 profile)."""
    ca = operator_ca()
    with _exclusive(ca.path):
        return ca.issue(csr, days=settings.PLI_CA_CERTIFICATE_DAYS)


def revoke_serial(serial: str, reason: str) -> bool:
    """Revoke a certificate this CA issued (hexadecimal serial); False if it issued none."""
    ca = operator_ca()
    with _exclusive(ca.path):
        try:
            ca.revoke(int(serial, 16), reason)
        except UnknownCertificate:
            return False  # from another CA the operator trusts: nothing to revoke here
    return True


def publish_crl() -> CertificateRevocationList:
    """Sign and write a new CRL (RFC 5280 §5) listing every revocation so far."""
    ca = operator_ca()
    with _exclusive(ca.path):
        return ca.publish_crl(days=settings.PLI_CA_CRL_DAYS)


def withdraw_certificate(certificate: Certificate) -> None:
    """Revoke a certificate that was issued but never published (its action failed).

    Best effort: the action's own error is what the caller reports.
    """
    with contextlib.suppress(AccountError, CryptoError, OSError):
        revoke_serial(format(certificate.serial_number, "x"), "cessation_of_operation")
        publish_crl()
