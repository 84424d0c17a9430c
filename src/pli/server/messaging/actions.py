"""State changes of messaging: each is one ``do_<verb>_<noun>()`` in one transaction.

Sending (:func:`do_send_message`) is the workstation path of DESIGN "Key
custody": the client signed and sealed the message; the server checks who
sends, to whom, and that every mailbox involved can open what it stores
(REQ-E2E), then stores the envelope as received (REQ-AT-REST) and delivers
it locally. It never decrypts anything.

Every refusal raises :class:`~pli.server.messaging.access.MessagingError`
with a stable code (docs/api/messaging.md) and leaves nothing behind: a
small envelope is written with the message's rows (decision 0013); a larger
one goes to the blob store before the transaction (slow I/O outside the
audit chain's lock) and is removed if the transaction fails. A refused send
only appends its audit event (outcome ``failure``, the code).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache, partial

from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import Count, Model
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _

from pli.crypto import (
    Certificate,
    EnvelopeInfo,
    MalformedEnvelope,
    NotARecipient,
    UnsupportedAlgorithm,
    inspect_envelope,
    load_certificate,
    sealed_for_all,
)
from pli.server.accounts.models import User
from pli.server.audit.actions import (
    EventFields,
    defers_events,
    do_record_event,
    do_record_events,
    event_fields,
    pending_insert_query,
    sequence_after_commit,
)
from pli.server.audit.models import AuditAction
from pli.server.blobs import BlobStore, StoredBlob, blob_store
from pli.server.compliance.actions import (
    check_not_opposed,
    opposed_among,
    opposed_among_query,
    patient_opposed,
)
from pli.server.compliance.actions import patient_key as compliance_patient_key
from pli.server.compliance.errors import ComplianceError
from pli.server.config import ConfigurationError, positive_setting, setting
from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.models import Mailbox, MailboxCertificate
from pli.server.directory.queries import owners_active_sql
from pli.server.messaging.access import (
    MessagingError,
    choose_sending_mailbox,
    not_found,
    reachable_parameters,
    reachable_subquery,
    sending_mailbox,
    visible_copies,
)
from pli.server.messaging.allowance import (
    Allowance,
    Usage,
    limits_for,
    record_parameters,
    record_statement,
    record_usage,
    usage_parameters,
    usage_subquery,
)
from pli.server.messaging.models import (
    Delivery,
    DeliveryState,
    Folder,
    MailboxStorage,
    Message,
    MessageCopy,
    MessageEnvelope,
)
from pli.server.messaging.storage import (
    ROOM,
    Rooms,
    at_once_statement,
    record_storage,
    room_parameters,
    room_subquery,
    stored_size,
)
from pli.server.messaging.uploads import attach_uploads, blob_ids_of, check_uploads

logger = logging.getLogger(__name__)

MAX_RECIPIENTS_DEFAULT = 20
#: Inline envelopes (in the JSON body); larger content goes out of the CMS (decision 0003).
MAX_ENVELOPE_BYTES_DEFAULT = 10 * 1024 * 1024
#: Envelopes up to this size are kept in the database, beside their message (decision 0013).
ENVELOPE_IN_DATABASE_BYTES_DEFAULT = 64 * 1024
#: The most messages in one batch (do_send_messages).
MAX_BATCH_MESSAGES_DEFAULT = 100
#: The largest read receipt: a signed notification of a few KB, sealed for two or three
#: certificates. Receipts are outside the daily limits: their size is bounded here.
RECEIPT_MAX_BYTES = 64 * 1024
#: The HTTP status of each refusal code (the API's table; codes are stable).
STATUS = {
    "not_found": 404,
    "not_allowed_sender": 403,
    "patient_opposed": 403,
    "mailbox_ambiguous": 409,
    "envelope_too_large": 413,
    "receipt_too_large": 413,
    "envelope_unavailable": 503,
    "daily_limit_reached": 429,
    "recipient_mailbox_full": 409,
}


# --------------------------------------------------------------------------- settings


def envelope_in_database_bytes() -> int:
    """``PLI_ENVELOPE_IN_DATABASE_BYTES``: envelopes up to this size are kept in the database
    (64 KiB by default; 0 puts every envelope in the blob store). Decision 0013."""
    raw = setting("ENVELOPE_IN_DATABASE_BYTES") or str(ENVELOPE_IN_DATABASE_BYTES_DEFAULT)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"PLI_ENVELOPE_IN_DATABASE_BYTES must be a whole number, not {raw!r}"
        ) from None
    if value < 0:
        raise ConfigurationError(f"PLI_ENVELOPE_IN_DATABASE_BYTES must not be negative: {value}")
    return value


def max_recipients() -> int:
    """``PLI_MAX_RECIPIENTS``: recipients of one send (REQ-FEW-RECIPIENTS), 20 by default."""
    return positive_setting("MAX_RECIPIENTS", MAX_RECIPIENTS_DEFAULT)


def max_envelope_bytes() -> int:
    """``PLI_MAX_ENVELOPE_BYTES``: the largest envelope sent inline, 10 MiB by default."""
    return positive_setting("MAX_ENVELOPE_BYTES", MAX_ENVELOPE_BYTES_DEFAULT)


# --------------------------------------------------------------------------- identifiers


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(16)


def new_thread_id() -> str:
    return "thr_" + secrets.token_hex(16)


def _error(code: str, message: str, **details: object) -> MessagingError:
    return MessagingError(code, message, details or None)


# --------------------------------------------------------------------------- the patient


def patient_key(patient_id: str | None) -> str:
    """The keyed hash stored for the declared patient, after the opposition check; "" if none.

    REQ-OPPOSITION / DESIGN "What the server sees": the identifier itself is
    never stored, only the opposition register's key for it (HMAC-SHA-256
    under a key derived from the server secret), so that the messages about a
    patient can be found when an opposition is recorded, while a database
    alone does not give the identifier back.
    """
    if patient_id is None or not patient_id.strip():
        return ""
    # The one call site of the opposition register (pli.server.compliance):
    # bad_patient_id for anything but a valid NIR/INS or NISS, patient_opposed
    # while an opposition is active.
    try:
        return check_not_opposed(patient_id.strip())
    except ComplianceError as refusal:
        raise _error(refusal.code, refusal.message) from None


# --------------------------------------------------------------------------- sending


def _normalised_recipients(recipients: Sequence[str]) -> list[tuple[str, str | None]]:
    """(as given, normalised or None when it is not an address), in order, without duplicates."""
    seen: dict[str, tuple[str, str | None]] = {}
    for raw in recipients:
        given = raw.strip()[:254]
        try:
            normalised: str | None = normalise_address(raw)
        except BadAddress:
            normalised = None
        if given or normalised:
            seen.setdefault(normalised or f"invalid:{given}", (given, normalised))
    return list(seen.values())


def current_certificates(mailboxes: Iterable[Mailbox]) -> dict[int, list[MailboxCertificate]]:
    """The valid certificates of each mailbox, as ``/api/directory/certificates`` lists them."""
    now = timezone.now()
    ids = [m.pk for m in mailboxes]
    result: dict[int, list[MailboxCertificate]] = {pk: [] for pk in ids}
    rows = MailboxCertificate.objects.filter(
        mailbox_id__in=ids, revoked_at__isnull=True, not_before__lte=now, not_after__gte=now
    ).order_by("-not_after", "pk")
    for row in rows:
        result[row.mailbox_id].append(row)
    return result


#: Valid certificates' PEM by mailbox id.
_Certificates = dict[int, list[str]]


#: The ``part`` of :func:`_routing_query`'s rows that name an opposed patient key.
_OPPOSED = "opposed"


#: The ``part`` of :func:`_routing_query`'s row that gives the person's usage of the day.
_USAGE = "usage"


@cache
def _routing_query(count: int, patients: int = 0, *, usage: bool = False) -> str:
    """The mailboxes the person reaches (to choose the sending one), the active mailboxes
    of ``count`` addresses (the recipients), each with its valid certificates, and which
    of ``patients`` patient keys an active opposition names (REQ-OPPOSITION): one query.

    Rows ``(part, id, address, active, pem, certificate id)``: ``part`` is
    how the person reaches a mailbox of theirs (:func:`reachable_subquery`), NULL for
    a recipient; the certificates of each mailbox in :func:`current_certificates`'s order.
    An opposed key comes as ``(_OPPOSED, NULL, key, NULL, NULL, NULL)``; with ``usage``,
    the person's sends of the day as ``(_USAGE, messages, NULL, NULL, NULL, bytes)``
    (:mod:`~pli.server.messaging.allowance`), and the room left in each recipient's
    mailbox as ``(ROOM, mailbox id, NULL, NULL, NULL, bytes)``
    (:mod:`~pli.server.messaging.storage`).
    """
    quote = connection.ops.quote_name
    mailbox, certificate = quote(Mailbox._meta.db_table), quote(MailboxCertificate._meta.db_table)
    valid = "c.revoked_at IS NULL AND c.not_before <= %s AND c.not_after >= %s"
    # No address at all (every one given was malformed): "IN (NULL)" matches nothing,
    # where "IN ()" is a syntax error on PostgreSQL.
    places = ", ".join(["%s"] * count) or "NULL"
    return (
        # The outer SELECT orders by the certificates' dates without returning them.
        "SELECT u.part, u.id, u.address, u.active, u.pem, u.certificate FROM ("  # noqa: S608 - our names
        "SELECT s.part, s.id, s.address, s.active, c.pem, c.not_after, c.id AS certificate"
        f" FROM ({reachable_subquery()}) AS s"
        f" LEFT JOIN {certificate} AS c ON c.mailbox_id = s.id AND {valid}"
        " UNION ALL SELECT NULL, m.id, m.address, m.active, c.pem, c.not_after, c.id"
        f" FROM {mailbox} AS m LEFT JOIN {certificate} AS c ON c.mailbox_id = m.id AND {valid}"
        f" WHERE m.active = %s AND m.address IN ({places}) AND {owners_active_sql('m')}"
        + (
            f" UNION ALL SELECT '{_OPPOSED}', NULL, o.patient_key, NULL, NULL, NULL, NULL"  # noqa: S608 - our names
            f" FROM ({opposed_among_query(patients)}) AS o"
            if patients
            else ""
        )
        + (f" UNION ALL {usage_subquery()} UNION ALL {room_subquery(count)}" if usage else "")
        + ") AS u ORDER BY u.id, u.not_after DESC, u.certificate"
    )


@dataclass(frozen=True)
class _Routing:
    sender: Mailbox
    #: The active directory mailboxes of the recipients' addresses, by address.
    recipients: dict[str, Mailbox]
    #: Their valid certificates (PEM), and the sender's, by mailbox id.
    certificates: _Certificates
    #: What the person may still send today; None for a send that is not counted.
    allowance: Allowance | None = None
    #: The room left in the recipients' mailboxes; None for a send that is not checked.
    rooms: Rooms | None = None


@dataclass(frozen=True)
class _RoutingRows:
    """What :func:`_routing_query` read: enough to route any send of these addresses."""

    #: The mailboxes the person reaches, as :func:`choose_sending_mailbox` reads them.
    reachable: list[tuple[int, str, bool, str]]
    #: The active directory mailboxes of the addresses asked, by lower-case address.
    recipients: dict[str, Mailbox]
    #: Mailbox id -> certificate id -> PEM, the newest first.
    pems: dict[int, dict[int, str]]
    #: Of the patient keys asked, those an active opposition names.
    opposed: set[str]
    #: The person's sends of the day, when asked (daily limits).
    usage: Usage | None = None
    #: The room left in the recipients' mailboxes, by mailbox id, when the usage is asked.
    rooms: dict[int, int] | None = None


def _routing_rows(
    user: User, addresses: Sequence[str], patient_keys: Iterable[str] = (), *, usage: bool = False
) -> _RoutingRows:
    """The mailboxes the person reaches (to choose a sending one), the recipients' active
    directory mailboxes (REQ-DIRECTORY), the certificates of all of them, and which of
    ``patient_keys`` are opposed (REQ-OPPOSITION).

    One query for all three (:func:`_routing_query`): a send's round trips are
    most of its cost (``benchmarks/README.md``); a batch of sends asks it once
    for every address of the batch. Addresses are stored in lower case
    (directory migration 0005): each is found by the unique index.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    keys = sorted(set(patient_keys))
    with connection.cursor() as cursor:
        cursor.execute(
            _routing_query(len(addresses), len(keys), usage=usage),
            [
                *reachable_parameters(user),
                *(now, now, now, now, True),
                *addresses,
                *keys,
                *((*usage_parameters(user), *room_parameters(addresses)) if usage else ()),
            ],
        )
        rows = cursor.fetchall()
    reachable: dict[tuple[int, str], tuple[int, str, bool, str]] = {}
    recipients: dict[str, Mailbox] = {}
    opposed: set[str] = set()
    # A mailbox both reached and named as a recipient comes in both halves of the
    # query: its certificates are kept once.
    pems: dict[int, dict[int, str]] = {}
    used: Usage | None = None
    rooms: dict[int, int] | None = {} if usage else None
    for part, pk, address, active, pem, certificate_id in rows:
        if part == _USAGE:
            used = Usage(int(pk), int(certificate_id))
            continue
        if part == ROOM and rooms is not None:
            rooms[pk] = int(certificate_id)
            continue
        if part == _OPPOSED:
            opposed.add(address)
        elif part is not None:
            reachable[pk, part] = (pk, address, bool(active), part)
        elif address.lower() not in recipients:
            # Only what a send uses; any other field is loaded if ever read.
            recipients[address.lower()] = Mailbox.from_db(
                DEFAULT_DB_ALIAS, ["id", "address", "active"], [pk, address, True]
            )
        if pem is not None:
            pems.setdefault(pk, {}).setdefault(certificate_id, pem)
    return _RoutingRows(list(reachable.values()), recipients, pems, opposed, used, rooms)


def _route(
    rows: _RoutingRows,
    from_address: str,
    addresses: Sequence[str],
    *,
    allowance: Allowance | None = None,
    rooms: Rooms | None = None,
) -> _Routing:
    """The sending mailbox (REQ-CITY-HOSPITAL: owner, member or substitute), chosen as
    :func:`~pli.server.messaging.access.sending_mailbox` chooses it, and who can
    open what, for one send of ``addresses``."""
    sender_pk = choose_sending_mailbox(rows.reachable, from_address)
    sender_address = next(row[1] for row in rows.reachable if row[0] == sender_pk)
    sender = Mailbox.from_db(
        DEFAULT_DB_ALIAS, ["id", "address", "active"], [sender_pk, sender_address, True]
    )
    recipients = {a: rows.recipients[a] for a in addresses if a in rows.recipients}
    certificates: _Certificates = {
        pk: list(rows.pems.get(pk, {}).values())
        for pk in (sender_pk, *(mailbox.pk for mailbox in recipients.values()))
    }
    return _Routing(sender, recipients, certificates, allowance, rooms)


@lru_cache(maxsize=1024)
def _certificate(pem: str) -> Certificate:
    """A directory certificate, parsed once per worker (a PEM never changes)."""
    return load_certificate(pem.encode())


def _check_envelope(
    envelope_der: bytes, mailboxes: Sequence[Mailbox], certificates: _Certificates
) -> None:
    """A readable EnvelopedData, sealed for every current certificate of ``mailboxes``."""
    everyone = [_certificate(pem) for m in mailboxes for pem in certificates.get(m.pk, ())]
    if all(certificates.get(m.pk) for m in mailboxes) and sealed_for_all(envelope_der, everyone):
        return  # the usual shape, read directly from the DER (a tenth of the full parse)
    # Anything else: the full inspection, which names what is wrong.
    try:
        info = inspect_envelope(envelope_der)
    except MalformedEnvelope:
        raise _error(
            "envelope_malformed",
            _("L'enveloppe n'est pas une structure CMS EnvelopedData lisible (ou est tronquée)."),
        ) from None
    _check_sealed_for(info, mailboxes, certificates)


def _check_sealed_for(
    info: EnvelopeInfo, mailboxes: Sequence[Mailbox], certificates: _Certificates
) -> None:
    """Every current certificate of every mailbox has its RecipientInfo (REQ-E2E).

    The recipients must be able to open the message and the sender's copy in
    "sent" must stay readable (DESIGN "Security model"). Every certificate the
    directory lists for a mailbox, as the client was told to seal to all of
    them (``/api/directory/certificates``): whichever key the mailbox's holder
    uses opens the message.
    """
    without = [m.address for m in mailboxes if not certificates.get(m.pk)]
    if without:
        raise _error(
            "recipient_without_certificate",
            _("Ces boîtes n'ont pas de certificat valide : le message ne peut leur être chiffré."),
            addresses=without,
        )
    missing: list[str] = []
    for mailbox in mailboxes:
        for pem in certificates[mailbox.pk]:
            try:
                info.require_recipient(_certificate(pem))
            except NotARecipient:
                if mailbox.address not in missing:
                    missing.append(mailbox.address)
            except UnsupportedAlgorithm as error:
                raise _error(
                    "unsupported_algorithm",
                    _("L'enveloppe utilise un algorithme que Pli ne sait pas ouvrir."),
                    reason=error.detail,
                ) from None
    if missing:
        raise _error(
            "not_encrypted_to_recipient",
            _("L'enveloppe n'est pas chiffrée pour ces boîtes (certificats actuels)."),
            addresses=missing,
        )


def _parent(user: User, in_reply_to: str | None) -> Message | None:
    if not in_reply_to:
        return None
    copy = (
        visible_copies(user)
        .filter(message__public_id=in_reply_to)
        .select_related("message")
        .first()
    )
    if copy is None:  # missing or not the caller's: the same answer
        raise _error("in_reply_to_not_found", _("Le message auquel vous répondez est introuvable."))
    return copy.message


def record_refused_send(user: User, request: HttpRequest | None, code: str) -> None:
    """Trace a refused send (REQ-TRACE): its code only, in a transaction of its own."""
    try:
        with transaction.atomic():
            do_record_event(
                AuditAction.MESSAGES_SENT,
                actor=user,
                request=request,
                outcome="failure",
                detail={"code": code},
            )
    except Exception:  # the refusal itself must reach the caller
        logger.exception("messaging: the refused send could not be audited")


def do_send_message(
    user: User,
    from_address: str,
    recipients: Sequence[str],
    envelope_der: bytes,
    *,
    patient_id: str | None = None,
    in_reply_to: str | None = None,
    request: HttpRequest | None = None,
    blobs: Sequence[str] = (),
    store: BlobStore | None = None,
    within_transaction: bool = False,
    receipt: bool = False,
) -> Message:
    """Store a message sealed by the client and deliver it to local mailboxes.

    ``within_transaction``: called inside the caller's transaction (a read
    receipt, :func:`do_mark_read`); the envelope is then kept in the database
    whatever its size, so that it goes with everything else if that
    transaction rolls back (a file written before it would stay behind).
    ``receipt``: a read receipt (:func:`do_mark_read`): stored as one (never
    acknowledged in turn), and not counted against the person's daily limits
    (:mod:`~pli.server.messaging.allowance`); its size is bounded instead.

    Checks, in this order (docs/api/messaging.md): ``envelope_too_large``,
    ``not_allowed_sender``, ``no_recipient``, ``too_many_recipients``,
    ``recipient_is_sender``, ``recipient_not_in_directory``, ``bad_patient_id``,
    ``patient_opposed``, ``in_reply_to_not_found``, ``blob_not_found``,
    ``envelope_malformed``, ``recipient_without_certificate``,
    ``unsupported_algorithm``, ``not_encrypted_to_recipient``, ``daily_limit_reached``.
    """
    try:
        return _send(
            _SendRequest(
                user,
                from_address,
                recipients,
                envelope_der,
                patient_id,
                in_reply_to,
                blobs,
                within_transaction,
                receipt,
            ),
            request,
            store or blob_store(),
        )
    except MessagingError as error:
        record_refused_send(user, request, error.code)
        raise


@dataclass(frozen=True)
class _SendRequest:
    user: User
    from_address: str
    recipients: Sequence[str]
    envelope_der: bytes
    patient_id: str | None
    in_reply_to: str | None
    blobs: Sequence[str]
    within_transaction: bool = False
    receipt: bool = False


def _send(asked: _SendRequest, request: HttpRequest | None, store: BlobStore) -> Message:
    patients = _Patients([asked.patient_id])

    def routing(from_address: str, addresses: Sequence[str]) -> _Routing:
        # The opposition register is asked in the directory's query (one round trip).
        rows = _routing_rows(asked.user, addresses, patients.keys.values(), usage=not asked.receipt)
        patients.opposed = rows.opposed
        allowance = (
            Allowance(limits_for(asked.user), rows.usage) if rows.usage is not None else None
        )
        rooms = Rooms(rows.rooms) if rows.rooms is not None else None
        return _route(rows, from_address, addresses, allowance=allowance, rooms=rooms)

    checked = _check_send(asked, routing, patients.check)
    (message,) = _store_checked(
        asked.user, [checked], request, store, within_transaction=asked.within_transaction
    )
    return message


@dataclass(frozen=True)
class _Checked:
    """A send that passed every check: what storing it needs."""

    sender: Mailbox
    targets: list[Mailbox]
    envelope_der: bytes
    hashed_patient: str
    parent: Message | None
    #: Complete uploads of the sender, to claim in the send's transaction (decision 0003).
    blobs: list[str]
    #: The bytes it adds to the person's usage of the day; None: not counted (a receipt).
    counted: int | None = None
    receipt: bool = False
    #: The bytes each of its copies adds to its mailbox's storage (storage.stored_size).
    size: int = 0


def _check_send(
    asked: _SendRequest,
    routing: Callable[[str, Sequence[str]], _Routing],
    patient: Callable[[str | None], str],
) -> _Checked:
    """Every check of a send, in the order of :func:`do_send_message`'s list; nothing written.

    ``routing(from_address, addresses)`` routes it (:func:`_routing`, or a batch's
    shared rows); ``patient(patient_id)`` gives the patient's key after the
    opposition check (:func:`patient_key`, or a batch's shared answer).
    """
    user, envelope_der = asked.user, asked.envelope_der
    limit = max_envelope_bytes()
    if len(envelope_der) > limit:
        raise _error(
            "envelope_too_large",
            _("Le message chiffré dépasse la taille admise (%(limit)s octets).") % {"limit": limit},
            limit=limit,
        )
    listed = _normalised_recipients(asked.recipients)
    most = max_recipients()
    if not listed or len(listed) > most:
        # Refused before the directory is asked; a sender the person may not use is
        # named first, as it is for every other refusal.
        sending_mailbox(user, asked.from_address)
        if not listed:
            raise _error("no_recipient", _("Indiquez au moins un destinataire."))
        raise _error(
            "too_many_recipients",
            _("Trop de destinataires : %(most)s au plus (évitez les envois groupés inutiles).")
            % {"most": most},
            limit=most,
        )
    addresses = [normalised for _given, normalised in listed if normalised]
    routed = routing(asked.from_address, addresses)
    sender, found, certificates = routed.sender, routed.recipients, routed.certificates
    if sender.address.lower() in addresses:
        raise _error(
            "recipient_is_sender",
            _("La boîte d'envoi ne peut pas être destinataire : sa copie est dans « Envoyés »."),
        )
    unknown = [normalised or given for given, normalised in listed if normalised not in found]
    if unknown:
        raise _error(
            "recipient_not_in_directory",
            _("Ces destinataires ne sont pas dans l'annuaire : %(addresses)s.")
            % {"addresses": ", ".join(unknown)},
            addresses=unknown,
        )
    targets = [found[a] for a in addresses]

    hashed_patient = patient(asked.patient_id)
    parent = _parent(user, asked.in_reply_to)
    # Streamed attachments (decision 0003): complete uploads of this person, claimed
    # under a lock in the transaction that stores the send (uploads.attach_uploads).
    blobs = check_uploads(user, asked.blobs) if asked.blobs else {}
    _check_envelope(envelope_der, [sender, *targets], certificates)
    # Last: a send that is wrong is told so first, whatever the recipients' room and
    # the day's usage.
    size = len(envelope_der) + sum(blobs.values())
    if routed.rooms is not None:
        routed.rooms.take(targets, size)
    if routed.allowance is not None:
        routed.allowance.take(size)
    return _Checked(
        sender,
        targets,
        envelope_der,
        hashed_patient,
        parent,
        list(blobs),
        size if routed.allowance is not None else None,
        asked.receipt,
        size,
    )


def _store_checked(
    user: User,
    sends: Sequence[_Checked],
    request: HttpRequest | None,
    store: BlobStore,
    *,
    within_transaction: bool = False,
) -> list[Message]:
    """Store checked sends, all or none (one transaction), in their order."""
    limit = max_envelope_bytes()
    # A small envelope is written by the send's own statement and made durable by its
    # commit (one WAL flush shared by concurrent sends); a larger one goes to the blob
    # store first, with its own fsyncs (decision 0013).
    kept: list[tuple[StoredBlob, bytes | None]] = []
    try:
        for checked in sends:
            envelope_der = checked.envelope_der
            small = len(envelope_der) <= envelope_in_database_bytes()
            in_database = envelope_der if small or within_transaction else None
            if in_database is not None:
                stored = StoredBlob("", len(envelope_der), hashlib.sha256(envelope_der).hexdigest())
            else:
                stored = store.write(envelope_der, max_bytes=limit)
            kept.append((stored, in_database))
        # PostgreSQL, no attachment to claim under a lock: one statement writes each send,
        # its events to the audit journal (decision 0010); a single send outside any
        # transaction is then its own transaction.
        at_once = not any(checked.blobs for checked in sends) and defers_events()
        if at_once and len(sends) == 1:
            # Counted by the send's own statement; a receipt in its reader's transaction.
            messages = [_store_one(user, sends[0], kept[0], request, at_once=True, count=True)]
            if sends[0].receipt:
                record_storage(_storage_changes(sends))
        else:
            with transaction.atomic():
                messages = [
                    _store_one(user, checked, stored, request, at_once=at_once)
                    for checked, stored in zip(sends, kept, strict=True)
                ]
                # The daily usage first, then the mailboxes: the order of the locks of the
                # send's single statement (storage.at_once_statement).
                counted = [checked.counted for checked in sends if checked.counted is not None]
                if counted:
                    record_usage(user, len(counted), sum(counted))
                record_storage(_storage_changes(sends))
    except BaseException:
        # No half-stored state: the blobs go with the rows that would have named them.
        for stored, _in_database in kept:
            if stored.blob_id:
                store.delete(stored.blob_id)
        raise
    if at_once:
        # Committed: the events take their place in the chain within the sequencer's
        # window, with the other sends of that window (decision 0010).
        sequence_after_commit()
    return messages


def _storage_changes(sends: Sequence[_Checked]) -> dict[int, int]:
    """What the sends add to each mailbox they give a copy (storage.record_storage)."""
    changes: dict[int, int] = {}
    for checked in sends:
        for mailbox in (checked.sender, *checked.targets):
            changes[mailbox.pk] = changes.get(mailbox.pk, 0) + checked.size
    return changes


def _store_one(
    user: User,
    checked: _Checked,
    kept: tuple[StoredBlob, bytes | None],
    request: HttpRequest | None,
    *,
    at_once: bool,
    count: bool = False,
) -> Message:
    stored, in_database = kept
    # Streamed attachments are claimed under a lock in the transaction (never at once).
    # A receipt is written inside its reader's transaction (never at once), and marked.
    write = (
        partial(
            _store_message_at_once,
            counted=checked.counted if count else None,
            size=checked.size,
        )
        if at_once and not checked.receipt
        else partial(_store_message, blobs=checked.blobs, receipt=checked.receipt)
    )
    return write(
        user,
        checked.sender,
        checked.targets,
        stored=stored,
        in_database=in_database,
        hashed_patient=checked.hashed_patient,
        parent=checked.parent,
        request=request,
    )


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class OutgoingMessage:
    """One message of a batch (:func:`do_send_messages`), as the client sealed it."""

    from_address: str
    recipients: Sequence[str]
    envelope_der: bytes
    patient_id: str | None = None
    in_reply_to: str | None = None


class BatchRefused(MessagingError):
    """Some messages of a batch were refused: none was stored.

    ``details["refused"]`` lists each refused message: its ``index`` in the
    batch and its refusal (``code``, ``message``, ``details``), as a single send
    would have been refused.
    """

    def __init__(self, refusals: Sequence[tuple[int, MessagingError]]) -> None:
        super().__init__(
            "batch_refused",
            _("Aucun message du lot n'a été envoyé : %(count)s sont refusés.")
            % {"count": len(refusals)},
            {
                "refused": [
                    {
                        "index": index,
                        "code": error.code,
                        "message": error.message,
                        "details": dict(error.details),
                    }
                    for index, error in refusals
                ]
            },
        )
        self.refusals = list(refusals)


def max_batch_messages() -> int:
    """``PLI_MAX_BATCH_MESSAGES``: the most messages in one batch, 100 by default."""
    return positive_setting("MAX_BATCH_MESSAGES", MAX_BATCH_MESSAGES_DEFAULT)


def check_batch_size(count: int) -> None:
    """``too_many_messages`` past ``PLI_MAX_BATCH_MESSAGES``.

    Also asked by the API before the batch's messages are validated one by one,
    so that a body of many tiny messages costs no more than its parse.
    """
    most = max_batch_messages()
    if count > most:
        raise _error(
            "too_many_messages",
            _("Trop de messages dans le lot : %(most)s au plus.") % {"most": most},
            limit=most,
        )


def do_send_messages(
    user: User,
    messages: Sequence[OutgoingMessage],
    *,
    request: HttpRequest | None = None,
    store: BlobStore | None = None,
) -> list[Message]:
    """Store a batch of messages sealed by the client: all of them, or none.

    For practice software that sends many messages at once (a laboratory's
    results, a practice's letters: REQ-LPS). Each message is checked exactly as
    :func:`do_send_message` checks one, and is stored and audited as one send;
    the batch shares one directory query, one opposition query and one
    transaction. If any message is refused, none is stored:
    :class:`BatchRefused` names every refused message with its own code, and
    each refusal is audited as a refused send. The envelopes together may not
    exceed ``PLI_MAX_ENVELOPE_BYTES`` (the memory of one request stays that of a
    single send), nor the batch ``PLI_MAX_BATCH_MESSAGES`` messages. Streamed
    attachments are not taken in a batch: such a message is sent on its own.
    """
    try:
        if not messages:
            raise _error("no_message", _("Le lot ne contient aucun message."))
        check_batch_size(len(messages))
        limit = max_envelope_bytes()
        if sum(len(outgoing.envelope_der) for outgoing in messages) > limit:
            raise _error(
                "envelope_too_large",
                _(
                    "Les messages chiffrés du lot dépassent ensemble la taille admise"
                    " (%(limit)s octets)."
                )
                % {"limit": limit},
                limit=limit,
            )
    except MessagingError as error:
        record_refused_send(user, request, error.code)
        raise
    # A message with more recipients is refused by its own check: its others need no lookup.
    most_recipients = max_recipients()
    addresses = sorted(
        {
            normalised
            for outgoing in messages
            for _given, normalised in _normalised_recipients(outgoing.recipients)[:most_recipients]
            if normalised
        }
    )
    patients = _Patients(outgoing.patient_id for outgoing in messages)
    rows = _routing_rows(user, addresses, patients.keys.values(), usage=True)
    patients.opposed = rows.opposed
    # One allowance for the batch: each message is taken in turn.
    allowance = Allowance(limits_for(user), rows.usage or Usage())
    rooms = Rooms(rows.rooms or {})
    checked: list[_Checked] = []
    refusals: list[tuple[int, MessagingError]] = []
    for index, outgoing in enumerate(messages):
        asked = _SendRequest(
            user,
            outgoing.from_address,
            outgoing.recipients,
            outgoing.envelope_der,
            outgoing.patient_id,
            outgoing.in_reply_to,
            (),
        )
        try:
            checked.append(
                _check_send(
                    asked, partial(_route, rows, allowance=allowance, rooms=rooms), patients.check
                )
            )
        except MessagingError as error:
            refusals.append((index, error))
    if refusals:
        for _index, refusal in refusals:
            record_refused_send(user, request, refusal.code)
        raise BatchRefused(refusals)
    return _store_checked(user, checked, request, store or blob_store())


class _Patients:
    """:func:`patient_key` for the patients of one or more sends, the register asked once.

    ``keys``: each valid identifier's key (an invalid one is refused by its own
    send's check, in that check's order). ``opposed``: the keys an active
    opposition names, read by the caller's routing query; asked here if not.
    """

    def __init__(self, patient_ids: Iterable[str | None]) -> None:
        self.keys: dict[str, str] = {}
        self.opposed: set[str] | None = None
        for patient_id in patient_ids:
            text = (patient_id or "").strip()
            if text and text not in self.keys:
                try:
                    self.keys[text] = compliance_patient_key(text)
                except ComplianceError:
                    continue  # refused with its message's own check

    def check(self, patient_id: str | None) -> str:
        text = (patient_id or "").strip()
        if not text:
            return ""
        if text not in self.keys:
            return patient_key(text)  # bad_patient_id, as a single send says it
        if self.opposed is None:
            self.opposed = opposed_among(self.keys.values())
        if self.keys[text] in self.opposed:
            refusal = patient_opposed()
            raise _error(refusal.code, refusal.message)
        return self.keys[text]


def _with_deliveries(message: Message, deliveries: list[Delivery]) -> Message:
    """The message with its deliveries known, as a prefetch leaves them: no read-back."""
    cached = message.deliveries.get_queryset()
    # What prefetch_related_objects leaves (Django's own attributes, not typed).
    cached._result_cache = deliveries
    vars(cached)["_prefetch_done"] = True
    vars(message)["_prefetched_objects_cache"] = {"deliveries": cached}
    return message


def _send_events(
    user: User,
    request: HttpRequest | None,
    target: str,
    sent: dict[str, str | int],
    deliveries: int,
) -> list[EventFields]:
    return [
        event_fields(
            AuditAction.MESSAGES_SENT, actor=user, request=request, target=target, detail=sent
        ),
        event_fields(
            AuditAction.MESSAGES_DELIVERED,
            actor=user,
            request=request,
            target=target,
            detail={"deliveries": deliveries, "local": deliveries},
        ),
    ]


def _new_message(
    user: User,
    sender: Mailbox,
    stored: StoredBlob,
    hashed_patient: str,
    parent: Message | None,
    *,
    receipt: bool = False,
) -> Message:
    """The message's row as a send stores it (not saved yet): routing metadata only."""
    return Message(
        public_id=new_message_id(),
        sender_mailbox=sender,
        sender_address=sender.address,
        sender_user=user,
        sender_person=user.get_username(),
        created_at=timezone.now(),
        size=stored.size,
        envelope_blob=stored.blob_id,
        envelope_sha256=stored.sha256,
        thread_id=parent.thread_id if parent else new_thread_id(),
        in_reply_to=parent,
        patient_key=hashed_patient,
        receipt=receipt,
    )


def _sent_detail(
    message: Message, sender: Mailbox, targets: Sequence[Mailbox], *, blobs: int
) -> dict[str, str | int]:
    """The ``messages.sent`` event's detail: codes and counts, never content (REQ-TRACE)."""
    return {
        "mailbox": sender.pk,
        "recipients": len(targets),
        "size": message.size,
        "reply": int(message.in_reply_to_id is not None),
        "opposition_check": int(bool(message.patient_key)),
        "blobs": blobs,
    }


def _stored(instance: Model, pk: int) -> None:
    """An instance written by our own ``INSERT … RETURNING``, marked as ``save()`` marks it."""
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS


@cache
def _delivery_columns() -> list[str]:
    return [field.attname for field in Delivery._meta.concrete_fields]


def _delivered(message: Message, mailbox: Mailbox, pk: int) -> Delivery:
    """A local delivery, stored under ``pk``: delivered when the message was sent.

    Built as the ORM builds a row it read (``Model.from_db``, positional), its
    message and mailbox attached as ``select_related`` attaches them: a send
    to ten mailboxes builds ten, and the keyword path of ``Model.__init__``
    (each relation through its descriptor) cost about a twentieth of such a send.
    """
    row = {
        "id": pk,
        "message_id": message.pk,
        "recipient_mailbox_id": mailbox.pk,
        "recipient_address": mailbox.address,
        "state": DeliveryState.DELIVERED,
        "delivered_at": message.created_at,
        "read_at": None,
    }
    columns = _delivery_columns()
    delivery = Delivery.from_db(DEFAULT_DB_ALIAS, columns, [row[name] for name in columns])
    Delivery.message.field.set_cached_value(delivery, message)
    Delivery.recipient_mailbox.field.set_cached_value(delivery, mailbox)
    return delivery


@cache
def _store_at_once_query(*, with_envelope: bool, counted: bool = False) -> str:
    """The message, its deliveries, the copies, the journal's two events, when it is
    kept in the database the envelope, and when ``counted`` the person's usage of the day
    (:mod:`~pli.server.messaging.allowance`): one statement.

    PostgreSQL only (data-modifying ``WITH``): outside any transaction, one
    statement is one transaction, so the send is still all or nothing, in one
    round trip instead of a ``BEGIN``, three inserts, two appends under the
    chain's lock and a ``COMMIT``.
    """
    quote = connection.ops.quote_name
    message, delivery = quote(Message._meta.db_table), quote(Delivery._meta.db_table)
    copy = quote(MessageCopy._meta.db_table)
    events = pending_insert_query(2)
    envelope = (
        f" e AS (INSERT INTO {quote(MessageEnvelope._meta.db_table)} (message_id, data)"  # noqa: S608 - our names
        " SELECT m.id, %s FROM m),"
        if with_envelope
        else ""
    )
    # The person's usage of the day, then (after it: the locks' order of a send in a
    # transaction) the storage of every mailbox the message goes to.
    usage = (
        f" q AS ({record_statement()} RETURNING 1), s AS ({at_once_statement('q')}),"
        if counted
        else ""
    )
    return (
        f"WITH m AS (INSERT INTO {message} (public_id, sender_mailbox_id, sender_address,"  # noqa: S608 - our names
        " sender_user_id, sender_person, created_at, size, envelope_blob, envelope_sha256,"
        " thread_id, in_reply_to_id, patient_key)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id),"
        f" d AS (INSERT INTO {delivery} (message_id, recipient_mailbox_id, recipient_address,"
        " state, delivered_at)"
        " SELECT m.id, r.mailbox, r.address, %s, %s FROM m,"
        " unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS r (mailbox, address, n)"
        " ORDER BY r.n RETURNING id, recipient_mailbox_id),"
        f" c AS (INSERT INTO {copy} (message_id, mailbox_id, delivery_id, folder, read, flagged,"
        " created_at)"
        " SELECT m.id, %s, NULL, %s, true, false, %s FROM m"
        " UNION ALL SELECT m.id, d.recipient_mailbox_id, d.id, %s, false, false, %s FROM m, d),"
        f"{envelope}{usage} a AS ({events})"
        " SELECT m.id, d.id, d.recipient_mailbox_id FROM m, d ORDER BY d.id"
    )


def _store_message_at_once(
    user: User,
    sender: Mailbox,
    targets: Sequence[Mailbox],
    *,
    stored: StoredBlob,
    in_database: bytes | None,
    hashed_patient: str,
    parent: Message | None,
    request: HttpRequest | None,
    counted: int | None = None,
    size: int = 0,
) -> Message:
    message = _new_message(user, sender, stored, hashed_patient, parent)
    now = message.created_at
    events = _send_events(
        user,
        request,
        f"message:{message.public_id}",
        _sent_detail(message, sender, targets, blobs=0),
        len(targets),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _store_at_once_query(
                with_envelope=in_database is not None, counted=counted is not None
            ),
            [
                message.public_id,
                sender.pk,
                message.sender_address,
                user.pk,
                message.sender_person,
                now,
                stored.size,
                stored.blob_id,
                stored.sha256,
                message.thread_id,
                parent.pk if parent else None,
                hashed_patient,
                DeliveryState.DELIVERED,
                now,
                [mailbox.pk for mailbox in targets],
                [mailbox.address for mailbox in targets],
                sender.pk,
                Folder.SENT,
                now,
                Folder.INBOX,
                now,
                *([] if in_database is None else [in_database]),
                *(
                    []
                    if counted is None
                    else [
                        *record_parameters(user, 1, counted),
                        size,
                        sorted([sender.pk, *(mailbox.pk for mailbox in targets)]),
                    ]
                ),
                *(value for fields in events for value in (now, *fields)),
            ],
        )
        rows = cursor.fetchall()
    _stored(message, rows[0][0])
    by_pk = {mailbox.pk: mailbox for mailbox in targets}
    deliveries = [_delivered(message, by_pk[mailbox_pk], pk) for _m, pk, mailbox_pk in rows]
    return _with_deliveries(message, deliveries)


def _insert_rows(
    message: Message, sender: Mailbox, targets: Sequence[Mailbox], in_database: bytes | None
) -> list[Delivery]:
    """The message, its deliveries (local: delivered at once), its copies and, when it is
    kept in the database, its envelope: ``INSERT`` statements in the caller's
    transaction, without the ORM's per-object work.

    On SQLite the send's transaction holds the database's writers' queue
    (decision 0012): every millisecond spent in it is one every other writer
    waits. The rows are those the ORM would write; the instances come back
    with their keys, as ``bulk_create`` leaves them.
    """
    quote = connection.ops.quote_name
    at = connection.ops.adapt_datetimefield_value(message.created_at)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(Message._meta.db_table)} (public_id, sender_mailbox_id,"  # noqa: S608 - our names
            " sender_address, sender_user_id, sender_person, created_at, size, envelope_blob,"
            " envelope_sha256, thread_id, in_reply_to_id, patient_key, receipt)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            [
                message.public_id,
                sender.pk,
                message.sender_address,
                message.sender_user_id,
                message.sender_person,
                at,
                message.size,
                message.envelope_blob,
                message.envelope_sha256,
                message.thread_id,
                message.in_reply_to_id,
                message.patient_key,
                message.receipt,
            ],
        )
        row = cursor.fetchone()
        assert row is not None  # noqa: S101 - an INSERT … RETURNING returns its row
        _stored(message, row[0])
        if in_database is not None:
            cursor.execute(
                f"INSERT INTO {quote(MessageEnvelope._meta.db_table)} (message_id, data)"  # noqa: S608 - our names
                " VALUES (%s, %s)",
                [message.pk, in_database],
            )
        cursor.execute(
            f"INSERT INTO {quote(Delivery._meta.db_table)} (message_id,"  # noqa: S608 - our names
            " recipient_mailbox_id, recipient_address, state, delivered_at) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(targets))
            + " RETURNING id, recipient_mailbox_id",
            [
                value
                for mailbox in targets
                for value in (message.pk, mailbox.pk, mailbox.address, DeliveryState.DELIVERED, at)
            ],
        )
        # RETURNING's order is not promised: matched by mailbox (one delivery each).
        delivery_pks = {mailbox_pk: pk for pk, mailbox_pk in cursor.fetchall()}
        deliveries = [_delivered(message, m, delivery_pks[m.pk]) for m in targets]
        copies = [(sender.pk, None, Folder.SENT, True)] + [
            (d.recipient_mailbox_id, d.pk, Folder.INBOX, False) for d in deliveries
        ]
        cursor.execute(
            f"INSERT INTO {quote(MessageCopy._meta.db_table)} (message_id, mailbox_id,"  # noqa: S608 - our names
            " delivery_id, folder, read, flagged, created_at) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(copies)),
            [
                value
                for mailbox_pk, delivery_pk, folder, read in copies
                for value in (message.pk, mailbox_pk, delivery_pk, folder, read, False, at)
            ],
        )
    return deliveries


def _store_message(
    user: User,
    sender: Mailbox,
    targets: Sequence[Mailbox],
    *,
    stored: StoredBlob,
    in_database: bytes | None,
    hashed_patient: str,
    parent: Message | None,
    request: HttpRequest | None,
    blobs: Sequence[str] = (),
    receipt: bool = False,
) -> Message:
    message = _new_message(user, sender, stored, hashed_patient, parent, receipt=receipt)
    deliveries = _insert_rows(message, sender, targets, in_database)
    attached = attach_uploads(user, message, blobs)
    do_record_events(
        _send_events(
            user,
            request,
            f"message:{message.public_id}",
            _sent_detail(message, sender, targets, blobs=len(attached)),
            len(deliveries),
        )
    )
    return _with_deliveries(message, deliveries)


# --------------------------------------------------------------------------- reading


def envelopes_in_database(messages: Iterable[Message]) -> dict[int, bytes]:
    """The envelopes of these messages that are kept in the database, by message key:
    one query for a page of them (decision 0013), for :func:`read_envelope`."""
    wanted = [message.pk for message in messages if not message.envelope_blob]
    if not wanted:
        return {}
    rows = MessageEnvelope.objects.filter(message_id__in=wanted).values_list("message_id", "data")
    return {pk: bytes(data) for pk, data in rows}


def read_envelope(
    copy: MessageCopy,
    store: BlobStore | None = None,
    *,
    loaded: Mapping[int, bytes] | None = None,
) -> bytes:
    """The envelope's bytes, checked against the digest recorded at send (REQ-AT-REST).

    ``loaded``: what :func:`envelopes_in_database` read for a page of messages.
    """
    message = copy.message
    if message.envelope_blob:
        data = b"".join((store or blob_store()).read_chunks(message.envelope_blob))
    elif loaded is not None and message.pk in loaded:
        data = loaded[message.pk]
    else:  # kept in the database (decision 0013); missing reads as a failed digest
        kept = (
            MessageEnvelope.objects.filter(message_id=message.pk)
            .values_list("data", flat=True)
            .first()
        )
        data = b"" if kept is None else bytes(kept)
    if not envelope_intact(message, data):
        raise _error("envelope_unavailable", _("Ce message est momentanément illisible."))
    return data


def envelope_intact(message: Message, data: bytes) -> bool:
    """Whether ``data`` has the SHA-256 recorded at send (REQ-AT-REST); logged when not."""
    if hashlib.sha256(data).hexdigest() == message.envelope_sha256:
        return True
    logger.error("messaging: envelope of %s fails its digest", message.public_id)
    return False


def do_open_envelope(user: User, copy: MessageCopy, request: HttpRequest | None = None) -> bytes:
    """The envelope for the client to open; traced as ``messages.opened``."""
    data = read_envelope(copy)
    do_record_opened(user, [copy], request)
    return data


def do_record_opened(
    user: User, copies: Sequence[MessageCopy], request: HttpRequest | None = None
) -> None:
    """REQ-TRACE: ``messages.opened`` for each of these copies, in one transaction: an
    envelope handed to a client, or opened by the web mail to show it (a folder page, a
    thread)."""
    if not copies:
        return
    with transaction.atomic():
        for copy in copies:
            do_record_event(
                AuditAction.MESSAGES_OPENED,
                actor=user,
                request=request,
                target=f"message:{copy.message.public_id}",
                detail={"mailbox": copy.mailbox_id},
            )


@dataclass(frozen=True)
class ReadResult:
    copy: MessageCopy
    changed: bool
    receipt: Message | None


def do_mark_read(
    user: User,
    copy: MessageCopy,
    *,
    receipt: bytes | None = None,
    request: HttpRequest | None = None,
) -> ReadResult:
    """Mark the mailbox's copy read; its delivery becomes ``read`` for the sender. Idempotent.

    ``receipt``: a signed read notification (RFC 8098 MDN) sealed by the
    client to the sender and to the reader's mailbox, stored as a message from
    the reader's mailbox to the sending mailbox (a reply in the same thread),
    with the same checks as any message. Only with the first read: later
    calls change nothing. A refused receipt refuses the whole call (nothing is
    marked read), and is traced as any refused send, once the rollback is over.
    """
    try:
        return _mark_read(user, copy, receipt, request)
    except _ReceiptRefused as refused:
        # The send traced its refusal inside this transaction, which rolled it back.
        record_refused_send(user, request, refused.error.code)
        raise refused.error from None


class _ReceiptRefused(Exception):
    def __init__(self, error: MessagingError) -> None:
        super().__init__(error.code)
        self.error = error


def _mark_read(
    user: User, copy: MessageCopy, receipt: bytes | None, request: HttpRequest | None
) -> ReadResult:
    with transaction.atomic():
        locked = (
            MessageCopy.objects.select_for_update(of=("self",))
            .select_related("message", "mailbox", "delivery")
            .filter(pk=copy.pk)
            .first()
        )
        if locked is None:  # deleted for good since it was found: as if never there
            raise not_found()
        if locked.read:
            return ReadResult(locked, changed=False, receipt=None)
        now = timezone.now()
        receipt_message = None
        # A receipt is not acknowledged in turn: one for a receipt is ignored, as one
        # after the first read is (two mailboxes would otherwise answer each other's
        # receipts without end, outside the daily limits).
        if receipt is not None and locked.delivery_id is not None and not locked.message.receipt:
            if len(receipt) > RECEIPT_MAX_BYTES:
                raise _ReceiptRefused(
                    _error(
                        "receipt_too_large",
                        _("L'accusé de lecture dépasse la taille admise (%(limit)s octets).")
                        % {"limit": RECEIPT_MAX_BYTES},
                        limit=RECEIPT_MAX_BYTES,
                    )
                )
            try:
                receipt_message = do_send_message(
                    user,
                    locked.mailbox.address,
                    [locked.message.sender_address],
                    receipt,
                    in_reply_to=locked.message.public_id,
                    request=request,
                    within_transaction=True,
                    receipt=True,
                )
            except MessagingError as error:
                raise _ReceiptRefused(error) from None
        locked.read = True
        locked.save(update_fields=["read"])
        if locked.delivery_id is not None:
            Delivery.objects.filter(pk=locked.delivery_id).exclude(state=DeliveryState.READ).update(
                state=DeliveryState.READ, read_at=now
            )
        do_record_event(
            AuditAction.MESSAGES_READ,
            actor=user,
            request=request,
            target=f"message:{locked.message.public_id}",
            detail={"mailbox": locked.mailbox_id, "receipt": int(receipt_message is not None)},
        )
    return ReadResult(locked, changed=True, receipt=receipt_message)


# --------------------------------------------------------------------------- folders


def home_folder(copy: MessageCopy) -> str:
    return Folder.SENT if copy.is_sender_copy else Folder.INBOX


def do_move_message(
    user: User, copy: MessageCopy, folder: str, request: HttpRequest | None = None
) -> MessageCopy:
    """Move the copy to archive, trash, or back to its own folder (inbox, or sent)."""
    allowed = {home_folder(copy), Folder.ARCHIVE, Folder.TRASH}
    if folder not in allowed:
        raise _error(
            "bad_folder",
            _("Ce message ne peut pas aller dans ce dossier."),
            allowed=sorted(str(f) for f in allowed),
        )
    with transaction.atomic():
        moved = MessageCopy.objects.filter(pk=copy.pk).exclude(folder=folder).update(folder=folder)
        if not moved and not MessageCopy.objects.filter(pk=copy.pk).exists():
            raise not_found()  # deleted for good since it was found
        if moved:
            do_record_event(
                AuditAction.MESSAGES_MOVED,
                actor=user,
                request=request,
                target=f"message:{copy.message.public_id}",
                detail={"mailbox": copy.mailbox_id, "folder": folder},
            )
    copy.folder = folder
    return copy


def do_flag_message(
    user: User, copy: MessageCopy, flagged: bool, request: HttpRequest | None = None
) -> MessageCopy:
    with transaction.atomic():
        changed = (
            MessageCopy.objects.filter(pk=copy.pk).exclude(flagged=flagged).update(flagged=flagged)
        )
        if not changed and not MessageCopy.objects.filter(pk=copy.pk).exists():
            raise not_found()  # deleted for good since it was found
        if changed:
            do_record_event(
                AuditAction.MESSAGES_FLAGGED,
                actor=user,
                request=request,
                target=f"message:{copy.message.public_id}",
                detail={"mailbox": copy.mailbox_id, "flagged": int(flagged)},
            )
    copy.flagged = flagged
    return copy


def _remove_unreferenced(message_ids: Iterable[int], store: BlobStore | None = None) -> int:
    """Delete the messages no mailbox holds any more, and their blobs once committed.

    Inside the caller's transaction; the files go ``on_commit``, never before
    the rows (a rollback must not leave rows naming a missing blob).
    """
    orphans = list(
        Message.objects.filter(pk__in=list(message_ids))
        .annotate(holders=Count("copies"))
        .filter(holders=0)
        .values_list("pk", "envelope_blob")
    )
    if not orphans:
        return 0
    orphan_ids = [pk for pk, _blob in orphans]
    # The envelopes and the streamed attachments (uploads.MessageBlob) go with the rows;
    # an envelope kept in the database (no blob id) goes with its message (CASCADE).
    blob_ids = [blob for _pk, blob in orphans if blob] + blob_ids_of(orphan_ids)
    Message.objects.filter(pk__in=orphan_ids).delete()
    target = store or blob_store()

    def remove_files() -> None:
        for blob_id in blob_ids:
            try:
                target.delete(blob_id)
            except OSError:
                logger.exception("messaging: blob %s not removed", blob_id)

    transaction.on_commit(remove_files)
    return len(orphans)


@dataclass(frozen=True)
class DeleteResult:
    permanent: bool
    copy: MessageCopy


def do_delete_message(
    user: User,
    copy: MessageCopy,
    request: HttpRequest | None = None,
    *,
    for_good: bool = False,
) -> DeleteResult:
    """To the trash; with ``for_good``, a copy in the trash is deleted for good.

    The caller says which it means, and the folder is read under the row's lock:
    a request repeated (a double click, a retried ``DELETE`` whose answer was lost)
    or two members of a shared mailbox deleting at once never turn "to the trash"
    into a deletion nobody confirmed (found by a review). A copy already in the
    trash without ``for_good`` stays there; one outside it goes to the trash, even
    with ``for_good`` (restored meanwhile by another member).
    """
    with transaction.atomic():
        # The folder as committed, under the row's lock: in a shared mailbox another
        # member may have restored the copy since it was read, and a restored copy
        # goes to the trash, never away for good.
        folder = (
            MessageCopy.objects.select_for_update()
            .filter(pk=copy.pk)
            .values_list("folder", flat=True)
            .first()
        )
        if folder is None:  # deleted for good meanwhile
            raise not_found()
        copy.folder = folder
        if copy.folder == Folder.TRASH and not for_good:
            return DeleteResult(False, copy)  # already there: nothing to do, nothing traced
        if copy.folder != Folder.TRASH:
            MessageCopy.objects.filter(pk=copy.pk).update(folder=Folder.TRASH)
            copy.folder = Folder.TRASH
            permanent = False
        else:
            # What the copy counted in its mailbox's quota, read before the message's
            # rows may go with it.
            freed = stored_size(copy.message)
            MessageCopy.objects.filter(pk=copy.pk).delete()
            record_storage({copy.mailbox_id: -freed})
            _remove_unreferenced([copy.message_id])
            permanent = True
        do_record_event(
            AuditAction.MESSAGES_DELETED,
            actor=user,
            request=request,
            target=f"message:{copy.message.public_id}",
            detail={"mailbox": copy.mailbox_id, "permanent": int(permanent)},
        )
    return DeleteResult(permanent, copy)


def delete_mailbox_content(mailbox: Mailbox) -> int:
    """Every copy of ``mailbox`` and every delivery to it; the messages nobody holds any more.

    REQ-INACTIVE-DELETE, called by the account lifecycle inside its deletion's
    transaction. The blobs of messages left without any copy are removed once
    that transaction commits. Messages the mailbox sent that recipients still
    hold stay for them. Returns how many copies (the mailbox's messages) went.
    """
    with transaction.atomic():
        copies = MessageCopy.objects.filter(mailbox=mailbox)
        touched = set(copies.values_list("message_id", flat=True))
        deliveries = Delivery.objects.filter(recipient_mailbox=mailbox)
        touched |= set(deliveries.values_list("message_id", flat=True))
        removed = copies.delete()[1].get(MessageCopy._meta.label, 0)
        deliveries.delete()
        MailboxStorage.objects.filter(mailbox=mailbox).delete()
        _remove_unreferenced(touched)
    return removed
