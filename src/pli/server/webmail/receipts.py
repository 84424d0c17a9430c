"""Read receipts from the web mail: a signed MDN (RFC 8098) when a message is first read.

When a recipient first displays a message in the web mail, the copy is
marked read (the sender sees its delivery become ``read``) and, with it, a
read receipt goes to the sending mailbox: an MDN (:func:`pli.mime.build_mdn`,
``manual-action/MDN-sent-automatically; displayed``: the reader opened the
message, the receipt left without a question) signed with the reader's own
vault key and sealed, as any message of the web mail, to every current
certificate of the sending mailbox and of the reader's mailbox. It is handed
to :func:`pli.server.messaging.actions.do_mark_read`, which stores it as a
message from the reader's mailbox to the sending one, in the same thread,
with every check of a send (docs/api/messaging.md, ``POST …/read``): the web
mail and the workstation client (``pli.client.Client.read``) send the same
receipts.

Its text for people is :func:`pli.mime.build_mdn`'s, in French whatever the
reader's language (the receipt is written once, by the reader's side, for a
sender whose language it does not know), with the original's date in the
server's time zone (``settings.TIME_ZONE``, named), as the web mail shows dates.

No receipt answers a receipt (RFC 8098), nor goes from a Sent copy. A
receipt that cannot go (the sending mailbox left the directory or has no
certificate, the vault cannot sign) never keeps a message unread: the copy
is then marked read without one, and the reason is logged by its code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.http import HttpRequest
from django.utils import timezone

from pli import __version__
from pli.crypto import (
    CryptoError,
    NotARecipient,
    SoftwareKey,
    load_certificate,
    open_envelope,
    seal,
)
from pli.mime import MimeError, build_mdn, is_mdn
from pli.server.accounts.custody import CustodyError, personal_mailbox, vault_key_for
from pli.server.accounts.models import User
from pli.server.messaging.access import MessagingError
from pli.server.messaging.actions import current_certificates, do_mark_read, read_envelope
from pli.server.messaging.models import Message, MessageCopy
from pli.server.webmail.opening import OpenedCopy, TrustUnavailable, trust_store

logger = logging.getLogger(__name__)


def mark_read_with_receipt(
    request: HttpRequest, user: User, opened: OpenedCopy, keys: Sequence[SoftwareKey]
) -> Message | None:
    """Mark the displayed copy read, with a signed read receipt; returns the receipt stored."""
    copy = opened.copy
    try:
        receipt = _sealed_receipt(request, user, opened, keys)
    except (CustodyError, CryptoError, MimeError, TrustUnavailable, MessagingError) as error:
        logger.warning(
            "webmail: no read receipt for %s (%s)",
            copy.message.public_id,
            getattr(error, "code", type(error).__name__),
        )
        receipt = None
    if receipt is not None:
        try:
            return do_mark_read(user, copy, receipt=receipt, request=request).receipt
        except MessagingError as error:
            if error.code == "not_found":
                return None  # deleted for good meanwhile (another member): nothing to mark
            # Refused as a send (its audit event says why): the reading stands all the same.
            logger.warning(
                "webmail: read receipt for %s refused (%s)", copy.message.public_id, error.code
            )
    try:
        do_mark_read(user, copy, request=request)
    except MessagingError as error:
        if error.code != "not_found":
            raise
    return None


def _opened_mime(copy: MessageCopy, keys: Sequence[SoftwareKey]) -> bytes | None:
    """The verified inner message's bytes (:class:`OpenedCopy` keeps only its parsed form)."""
    envelope = read_envelope(copy)
    for key in keys:
        try:
            return open_envelope(envelope, key, trust_store()).mime
        except NotARecipient:
            continue
    return None


def _sealed_receipt(
    request: HttpRequest, user: User, opened: OpenedCopy, keys: Sequence[SoftwareKey]
) -> bytes | None:
    """The sealed MDN for ``opened``'s first reading, or None when no receipt is due."""
    copy, inner = opened.copy, opened.message
    original = copy.message
    origin = original.sender_mailbox
    own = personal_mailbox(user)
    if inner is None or copy.is_sender_copy or copy.read or own is None:
        return None
    if origin is None or not origin.active:
        return None  # the sending mailbox left the directory: nobody to tell
    mime = _opened_mime(copy, keys)
    if mime is None or is_mdn(mime):
        return None
    reader = copy.mailbox
    certificates = current_certificates([origin, reader])
    if not all(certificates.values()):
        return None  # nothing to seal to: do_send_message would refuse it
    notification = build_mdn(
        from_address=reader.address,
        to=origin.address,
        # An organisational mailbox's copy: its member signs, as Sender.
        sender=own.address if own.pk != reader.pk else None,
        original_message_id=inner.message_id,
        original_subject=inner.subject,
        original_date=inner.date,
        references=inner.references,
        reporting_ua=f"{request.get_host()}; Pli web mail {__version__}",
        # The original's date as the web mail shows dates: the server's zone, named.
        zone=timezone.get_default_timezone(),
    )
    return seal(
        notification,
        vault_key_for(request, own),
        [load_certificate(row.pem.encode()) for rows in certificates.values() for row in rows],
    )
