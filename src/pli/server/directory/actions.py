"""State changes of the directory: each is one ``do_<verb>_<noun>()`` in one transaction.

Errors carry a stable ``code`` (CONVENTIONS, habit 5) and a French message; the
API layer turns them into responses, the CLI into messages.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import ClassVar

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from pli.crypto import (
    CryptoError,
    certificate_emails,
    certificate_fingerprint,
    certificate_pem,
    load_certificates,
)
from pli.server.directory.models import Mailbox, MailboxCertificate

# RFC 5321 §4.5.3.1: at most 64 octets of local part and 254 of path (less the brackets).
_MAX_LOCAL_PART = 64
_MAX_ADDRESS = 254
#: What :func:`normalise_address` looks at: an address and room for spaces around it.
_MAX_INPUT = 2 * _MAX_ADDRESS
# RFC 5322 §3.4.1 addr-spec, restricted to its dot-atom form: MSSanté addresses are plain
# ASCII ``prenom.nom@domaine`` (no quoted local parts, no domain literals, no IDN).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})+")


class DirectoryError(Exception):
    """A directory action refused its input and changed nothing; ``code`` is stable."""

    code: ClassVar[str] = "directory_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadAddress(DirectoryError):
    code = "bad_address"


class BadCertificate(DirectoryError):
    code = "bad_certificate"


class CertificateAddressMismatch(DirectoryError):
    code = "certificate_address_mismatch"


class CertificateExpired(DirectoryError):
    code = "certificate_expired"


class CertificateAlreadyPublished(DirectoryError):
    code = "certificate_already_published"


def normalise_address(value: str) -> str:
    """The mailbox address as stored and compared: trimmed, lower-case; or :class:`BadAddress`.

    Lower-casing the local part goes beyond RFC 5321 §2.4 (which leaves its case
    to the receiving host) on purpose: MSSanté addresses are case-insensitive and
    a directory must not hold two mailboxes that differ only by case.
    """
    # Only a text that could be an address reaches the cache, which keeps what it is
    # given: thousands of megabyte-long strings would otherwise stay in memory.
    normalised = _normalised_address(value) if len(value) <= _MAX_INPUT else None
    if normalised is None:
        raise BadAddress(_("Adresse de messagerie invalide."))
    return normalised


@lru_cache(maxsize=4096)
def _normalised_address(value: str) -> str | None:
    # A pure function of the text, asked for every recipient of every send (twice in a
    # batch): the answers are kept, the refusal is raised (translated) by the caller.
    address = value.strip()
    local = address.partition("@")[0]
    if (
        len(address) > _MAX_ADDRESS
        or len(local) > _MAX_LOCAL_PART
        or _ADDRESS.fullmatch(address) is None
    ):
        return None
    return address.lower()


def do_publish_mailbox_certificate(
    mailbox: Mailbox, pem: str | bytes, *, now: dt.datetime | None = None
) -> MailboxCertificate:
    """Publish the certificate that lets others seal messages for ``mailbox``.

    The certificate must bind the mailbox address (its subjectAltName rfc822Name,
    RFC 8550 §3) and must not have expired. Publishing the same certificate again
    for the same mailbox returns the row already there (idempotent).

    Not checked here yet: the chain and key usage against the operator's trust store
    (no trust store is configured on the server so far) and the audit event (the
    audit app of issue 4 does not exist yet): both belong in this transaction.
    """
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        certificates = load_certificates(data)
    except CryptoError:
        raise BadCertificate(_("Le certificat est illisible (PEM ou DER attendu).")) from None
    if len(certificates) != 1:
        raise BadCertificate(_("Un seul certificat est attendu, pas une chaîne."))
    certificate = certificates[0]

    # RFC 8550 §3: the address an S/MIME agent encrypts to is the certificate's rfc822Name.
    # A mailbox certificate binds that one address and no other (MSSanté: one per mailbox).
    if set(certificate_emails(certificate)) != {mailbox.address.lower()}:
        raise CertificateAddressMismatch(
            _("Le certificat n'est pas émis pour la seule adresse %(address)s.")
            % {"address": mailbox.address}
        )
    now = now or timezone.now()
    if certificate.not_valid_after_utc <= now:
        raise CertificateExpired(_("Le certificat a expiré."))

    fingerprint = certificate_fingerprint(certificate)
    with transaction.atomic():
        existing = MailboxCertificate.objects.filter(fingerprint=fingerprint).first()
        if existing is None:
            try:
                with transaction.atomic():  # a savepoint: the race below must not spoil the rest
                    return MailboxCertificate.objects.create(
                        mailbox=mailbox,
                        pem=certificate_pem(certificate).decode("ascii"),
                        serial=format(certificate.serial_number, "x"),
                        fingerprint=fingerprint,
                        not_before=certificate.not_valid_before_utc,
                        not_after=certificate.not_valid_after_utc,
                    )
            except IntegrityError:  # the same certificate published concurrently
                existing = MailboxCertificate.objects.get(fingerprint=fingerprint)
        if existing.mailbox_id != mailbox.pk:
            raise CertificateAlreadyPublished(
                _("Ce certificat est déjà publié pour une autre boîte aux lettres.")
            )
        return existing
