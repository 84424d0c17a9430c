"""What each mailbox holds, and its quota.

The daily send limits (:mod:`~pli.server.messaging.allowance`) bound how
fast one account can add to the server's disk; they do not bound what one
mailbox holds. Anyone in the directory may write to anyone in it, so a
mailbox could be filled until retention empties it — many senders at once,
or one misconfigured practice software, each within its own limits. So each
mailbox has a quota, ``PLI_MAILBOX_QUOTA_BYTES`` (20 GiB by default), which
the operator raises or lowers for one mailbox (a laboratory's, a ward's that
receives imaging) with ``pli storage quota``; the change is audited.

What counts is what the mailbox holds, as stored (ciphertext): for each of
its copies — received in any folder, trash included, and its own sent
messages — the message's envelope and streamed attachments. A message sent
to ten mailboxes counts in each of the eleven, as it would in eleven
separate mailboxes.

A send is refused with ``recipient_mailbox_full`` (HTTP 409, the full
recipients named, nothing stored) when the message would take a recipient
past its quota: the recipient frees space by emptying its trash, and the
sender is told to reach them another way meanwhile. The sending mailbox is
not checked: a professional whose own mailbox is full can still send (care
comes first), and the web mail tells them it is full. Read receipts are not
checked either (a few KB, one per message received, written inside the
reader's action, which must not fail for it).

The usage is counted, not summed at each send: each send adds its size to
every mailbox it gives a copy (one row per mailbox and *shard*,
:class:`~pli.server.messaging.models.MailboxStorage`, as the daily limits
count), and each deletion for good takes it off. The daily job
``mailbox_storage`` counts every mailbox again from its copies and corrects
any drift. Checked against what was committed before it: sends to one
mailbox that run at the same moment may each take it past its quota by their
own size, as for the daily limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from django.db import connection, transaction
from django.db.models import Sum
from django.http import HttpRequest
from django.utils.translation import gettext as _

from pli.server.accounts.models import Role, User
from pli.server.audit.actions import do_record_event
from pli.server.config import positive_setting
from pli.server.directory.models import Mailbox
from pli.server.messaging.access import MessagingError
from pli.server.messaging.allowance import shard_sql
from pli.server.messaging.models import (
    MailboxQuota,
    MailboxStorage,
    Message,
    MessageCopy,
)
from pli.server.messaging.uploads import MessageBlob

MAILBOX_QUOTA_BYTES_DEFAULT = 20 * 1024**3
#: The largest quota the column holds (PostgreSQL's bigint).
MOST_BYTES = 2**63 - 1
#: The ``part`` of the routing query's rows that give a recipient's room left.
ROOM = "room"
#: From this share of its quota on, the web mail warns a mailbox's holders.
NEARLY_FULL = 0.9


def quota_default() -> int:
    """``PLI_MAILBOX_QUOTA_BYTES``: what a mailbox may hold, 20 GiB by default."""
    return positive_setting("MAILBOX_QUOTA_BYTES", MAILBOX_QUOTA_BYTES_DEFAULT)


def _tables() -> tuple[str, str, str]:
    quote = connection.ops.quote_name
    return (
        quote(Mailbox._meta.db_table),
        quote(MailboxStorage._meta.db_table),
        quote(MailboxQuota._meta.db_table),
    )


def room_subquery(count: int) -> str:
    """The room left in the mailboxes of ``count`` addresses, in the routing query's row
    shape (:func:`~pli.server.messaging.actions._routing_query`):
    ``(ROOM, mailbox id, NULL, NULL, NULL, NULL, bytes)``; parameters: the default
    quota, then the addresses."""
    mailbox, storage, quota = _tables()
    places = ", ".join(["%s"] * count) or "NULL"
    # CAST: as for the daily usage, so that the UNION keeps whole numbers.
    return (
        f"SELECT '{ROOM}', m.id, NULL, NULL, NULL, NULL,"  # noqa: S608 - our names
        " CAST(COALESCE(MAX(k.bytes), %s) - COALESCE(SUM(s.bytes), 0) AS BIGINT)"
        f" FROM {mailbox} AS m LEFT JOIN {quota} AS k ON k.mailbox_id = m.id"
        f" LEFT JOIN {storage} AS s ON s.mailbox_id = m.id"
        f" WHERE m.address IN ({places}) GROUP BY m.id"
    )


def room_parameters(addresses: Iterable[str]) -> list[int | str]:
    return [quota_default(), *addresses]


def _add_on_conflict(storage: str) -> str:
    return (
        f" ON CONFLICT (mailbox_id, shard) DO UPDATE SET bytes = {storage}.bytes + excluded.bytes"
    )


@cache
def _record_statement(vendor: str, count: int) -> str:
    _mailbox, storage, _quota = _tables()
    row = f"(%s, {shard_sql(vendor)}, %s)"
    return (
        f"INSERT INTO {storage} (mailbox_id, shard, bytes) VALUES "  # noqa: S608 - our names
        + ", ".join([row] * count)
        + _add_on_conflict(storage)
    )


def record_storage(changes: Mapping[int, int]) -> None:
    """Add ``changes`` (mailbox id -> bytes, negative for a deletion) to the mailboxes'
    usage, in the caller's transaction.

    In the mailboxes' order: two transactions that count the same mailboxes on
    the same shard take their rows' locks in one order, never waiting on each other
    in a circle.
    """
    rows = sorted((pk, size) for pk, size in changes.items() if size)
    if not rows:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _record_statement(connection.vendor, len(rows)),
            [value for row in rows for value in row],
        )


def at_once_statement(after: str) -> str:
    """For the send's single statement on PostgreSQL: add ``%s`` bytes to each mailbox of
    the ``%s`` array (parameters: bytes, ids). Run after the data-modifying ``WITH``
    query ``after`` (which must return rows): the send's locks are then taken in the
    order of a send inside a transaction — its daily usage, then its mailboxes."""
    _mailbox, storage, _quota = _tables()
    return (
        f"INSERT INTO {storage} (mailbox_id, shard, bytes)"  # noqa: S608 - our names
        f" SELECT r.mailbox, {shard_sql('postgresql')}, %s FROM unnest(%s::bigint[]) AS r (mailbox)"
        f" WHERE EXISTS (SELECT 1 FROM {after}) ORDER BY r.mailbox" + _add_on_conflict(storage)
    )


def stored_size(message: Message) -> int:
    """What one copy of ``message`` counts: its envelope and streamed attachments."""
    blobs = MessageBlob.objects.filter(message_id=message.pk).aggregate(total=Sum("size"))
    return message.size + (blobs["total"] or 0)


@dataclass(frozen=True)
class Storage:
    """A mailbox's usage and quota, in bytes."""

    used: int
    quota: int
    #: The operator set this mailbox's own quota.
    own: bool = False

    @property
    def full(self) -> bool:
        return self.used >= self.quota

    @property
    def nearly_full(self) -> bool:
        return self.used >= self.quota * NEARLY_FULL

    @property
    def percent(self) -> int:
        """Of the quota, used: a whole number from 0 to 100, for a gauge."""
        return max(0, min(100, int(self.used * 100 / self.quota)))


def storage_of(mailbox_ids: Iterable[int]) -> dict[int, Storage]:
    """The usage and quota of these mailboxes: two queries for any number of them."""
    ids = list(mailbox_ids)
    used: dict[int, int] = dict.fromkeys(ids, 0)
    for pk, total in (
        MailboxStorage.objects.filter(mailbox_id__in=ids)
        .values("mailbox_id")
        .annotate(total=Sum("bytes"))
        .values_list("mailbox_id", "total")
    ):
        used[pk] = max(0, total or 0)
    own = dict(MailboxQuota.objects.filter(mailbox_id__in=ids).values_list("mailbox_id", "bytes"))
    default = quota_default()
    return {pk: Storage(used[pk], own.get(pk, default), pk in own) for pk in ids}


def largest_mailboxes(limit: int) -> list[tuple[str, Storage]]:
    """The ``limit`` mailboxes that hold the most, the largest first (the operator's view)."""
    top = list(
        MailboxStorage.objects.values("mailbox_id")
        .annotate(total=Sum("bytes"))
        .filter(total__gt=0)
        .order_by("-total", "mailbox_id")
        .values_list("mailbox_id", flat=True)[:limit]
    )
    addresses = dict(Mailbox.objects.filter(pk__in=top).values_list("pk", "address"))
    storage = storage_of(top)
    return [(addresses[pk], storage[pk]) for pk in top if pk in addresses]


def mailbox_full(addresses: list[str]) -> MessagingError:
    return MessagingError(
        "recipient_mailbox_full",
        _(
            "La boîte de ces destinataires est pleine : %(addresses)s. Le message n'est pas"
            " envoyé. Ils doivent libérer de la place (vider leur corbeille) avant de le"
            " recevoir ; prévenez-les par un autre moyen."
        )
        % {"addresses": ", ".join(addresses)},
        {"addresses": addresses},
    )


def check_mailbox_room(mailboxes: Iterable[Mailbox], size: int) -> None:
    """``recipient_mailbox_full`` now if a message of ``size`` stored bytes would take one
    of ``mailboxes`` past its quota: for work done before the send that would be wasted
    (the web mail copies a forward's large attachments). The send checks again, in its
    transaction, as always."""
    targets = list(mailboxes)
    storage = storage_of(m.pk for m in targets)
    Rooms({pk: s.quota - s.used for pk, s in storage.items()}).take(targets, size)


# --------------------------------------------------------------------------- the operator


class QuotaError(MessagingError):
    pass


@transaction.atomic
def do_set_mailbox_quota(
    actor: User | None,
    address: str,
    size: int | None,
    *,
    request: HttpRequest | None = None,
) -> Mailbox:
    """Set a mailbox's own quota in bytes; None returns it to ``PLI_MAILBOX_QUOTA_BYTES``.

    Audited (``messaging.mailbox_quota_changed``, the new value only). *actor* is
    None only for the operator's command on the server itself; otherwise an
    operator admin. A quota below what the mailbox holds is allowed: it refuses new
    messages until the mailbox is emptied below it.
    """
    if actor is not None and actor.role != Role.OPERATOR_ADMIN:
        raise QuotaError("not_allowed", _("Seul un administrateur peut modifier les quotas."))
    if size is not None and not 1 <= size <= MOST_BYTES:
        raise QuotaError(
            "bad_quota",
            _("Un quota est un nombre entier d'octets de 1 à %(most)s.") % {"most": MOST_BYTES},
        )
    mailbox = Mailbox.objects.filter(address=address.strip().lower()).first()
    if mailbox is None:
        raise QuotaError("not_found", _("Aucune boîte ne porte cette adresse."))
    if size is None:
        MailboxQuota.objects.filter(mailbox=mailbox).delete()
    else:
        MailboxQuota.objects.update_or_create(mailbox=mailbox, defaults={"bytes": size})
    do_record_event(
        "messaging.mailbox_quota_changed",
        actor=actor,
        request=request,
        target=f"mailbox:{mailbox.pk}",
        detail={"bytes": size or 0},
    )
    return mailbox


@dataclass(frozen=True)
class Recount:
    mailboxes: int
    corrected: int


def _exact_query() -> str:
    quote = connection.ops.quote_name
    copy, message = quote(MessageCopy._meta.db_table), quote(Message._meta.db_table)
    blob = quote(MessageBlob._meta.db_table)
    return (
        "SELECT COALESCE(SUM(m.size), 0) + COALESCE((SELECT SUM(b.size)"  # noqa: S608 - our names
        f" FROM {blob} AS b JOIN {copy} AS o ON o.message_id = b.message_id"
        " WHERE o.mailbox_id = %s), 0)"
        f" FROM {copy} AS c JOIN {message} AS m ON m.id = c.message_id WHERE c.mailbox_id = %s"
    )


def _recount_one(pk: int, *, dry_run: bool) -> bool:
    """Count one mailbox again from its copies; whether its count was wrong."""
    _mailbox, storage, _quota = _tables()
    with transaction.atomic(), connection.cursor() as cursor:
        # Its rows locked first: a send that counts this mailbox now waits for the
        # new count, or is in it.
        rows = list(
            MailboxStorage.objects.select_for_update()
            .filter(mailbox_id=pk)
            .order_by("shard")
            .values_list("shard", "bytes")
        )
        cursor.execute(_exact_query(), [pk, pk])
        fetched = cursor.fetchone()
        exact = int(fetched[0]) if fetched else 0
        if rows == [(0, exact)] or (not rows and not exact):
            return False
        if not dry_run:
            MailboxStorage.objects.filter(mailbox_id=pk).delete()
            if exact:
                cursor.execute(
                    f"INSERT INTO {storage} (mailbox_id, shard, bytes) VALUES (%s, 0, %s)"  # noqa: S608 - our names
                    + _add_on_conflict(storage),
                    [pk, exact],
                )
        return sum(size for _shard, size in rows) != exact


def recount_storage(*, dry_run: bool = False) -> Recount:
    """Every mailbox that holds something, or is counted as holding something, counted
    again from its copies (the daily job ``mailbox_storage``).

    One transaction per mailbox, each under its rows' locks: sends go on meanwhile,
    each waiting at most for one mailbox's count.
    """
    ids = sorted(
        set(MessageCopy.objects.values_list("mailbox_id", flat=True).distinct())
        | set(MailboxStorage.objects.values_list("mailbox_id", flat=True).distinct())
    )
    corrected = sum(_recount_one(pk, dry_run=dry_run) for pk in ids)
    return Recount(len(ids), corrected)


class Rooms:
    """The room left in the recipients' mailboxes, as the send's directory query read it,
    taken message by message: a batch is refused from the first message that would not
    fit, as the same messages sent one by one would be."""

    def __init__(self, left: Mapping[int, int]) -> None:
        self.left = dict(left)

    def take(self, mailboxes: Iterable[Mailbox], size: int) -> None:
        """Count one message of ``size`` stored bytes in each of ``mailboxes``;
        ``recipient_mailbox_full`` naming those it would take past their quota."""
        targets = list(mailboxes)
        full = [m.address for m in targets if self.left.get(m.pk, size) < size]
        if full:
            raise mailbox_full(full)
        for mailbox in targets:
            if mailbox.pk in self.left:
                self.left[mailbox.pk] -= size
