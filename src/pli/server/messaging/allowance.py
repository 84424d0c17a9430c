"""Daily send limits per person: how many messages, how many bytes.

Anyone in the directory may send to anyone in it, and every message sent is
kept (its envelope, its streamed attachments) until retention removes it. The
pending uploads are bounded (``PLI_MAX_PENDING_UPLOADS``), the size of each
message too (``PLI_MAX_ENVELOPE_BYTES``, ``PLI_MAX_UPLOAD_BYTES``); without a
limit over time, one account — a stolen one, or a misconfigured practice
software in a loop — could still fill the server's disk and deny the service
to every health professional on it. So each account may send, per day (the
server's local date, ``TIME_ZONE``), at most:

* ``PLI_DAILY_SEND_MESSAGES`` messages (5,000 by default; recipients per
  message are bounded apart, REQ-FEW-RECIPIENTS);
* ``PLI_DAILY_SEND_BYTES`` bytes as stored (5 GiB by default): the envelope
  and the streamed attachments, ciphertext.

The operator raises or lowers them for one account (a laboratory's system
sending its results) with ``pli accounts send-limits``; the change is
audited. Past a limit a send is refused with ``daily_limit_reached`` (HTTP
429), nothing stored, and the refusal audited as every refused send is.

Read receipts are not counted: the reader's software writes them when a
message is opened. They are bounded otherwise (``do_mark_read``): one per
message received, at most ``RECEIPT_MAX_BYTES`` each, and none for a receipt,
which would let two mailboxes answer each other's receipts without end.

Counted by the send's own statement, checked against what was committed
before it: the sends of one person that are in flight at the same moment (at
most one per server thread) may each pass the limit by their own size. An
exact count would make every send of a person wait on one row's lock until
the previous one commits — the rate of a laboratory's system would become
that of the disk's flushes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache

from django.db import connection
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import ngettext

from pli.server.accounts.models import User
from pli.server.config import positive_setting
from pli.server.messaging.access import MessagingError
from pli.server.messaging.models import SendUsage

DAILY_SEND_MESSAGES_DEFAULT = 5_000
DAILY_SEND_BYTES_DEFAULT = 5 * 1024**3
#: A person's usage of a day is spread over this many rows on PostgreSQL (SendUsage).
SHARDS = 8


@dataclass(frozen=True)
class Limits:
    messages: int
    bytes: int


def limits_for(user: User) -> Limits:
    """The account's own limits where the operator set them, else ``PLI_DAILY_SEND_*``."""
    return Limits(
        user.daily_send_messages
        or positive_setting("DAILY_SEND_MESSAGES", DAILY_SEND_MESSAGES_DEFAULT),
        user.daily_send_bytes or positive_setting("DAILY_SEND_BYTES", DAILY_SEND_BYTES_DEFAULT),
    )


def today() -> dt.date:
    return timezone.localdate()


def next_midnight() -> dt.datetime:
    """When today's usage stops counting: the next local midnight."""
    tomorrow = today() + dt.timedelta(days=1)
    return timezone.make_aware(dt.datetime.combine(tomorrow, dt.time()))


@dataclass(frozen=True)
class Usage:
    messages: int = 0
    bytes: int = 0


def usage_subquery() -> str:
    """A person's usage of a day, in :func:`~pli.server.messaging.actions._routing_query`'s
    row shape (the two sums in its two whole-number columns); parameters: user, day."""
    table = connection.ops.quote_name(SendUsage._meta.db_table)
    # CAST: SUM of a bigint is a numeric on PostgreSQL, which the UNION would impose
    # on the mailbox ids of the other rows.
    return (
        "SELECT 'usage', CAST(COALESCE(SUM(q.messages), 0) AS BIGINT), NULL, NULL, NULL,"  # noqa: S608 - our names
        f" NULL, CAST(COALESCE(SUM(q.bytes), 0) AS BIGINT) FROM {table} AS q"
        " WHERE q.user_id = %s AND q.day = %s"
    )


def usage_parameters(user: User) -> list[int | str | None]:
    return [user.pk, connection.ops.adapt_datefield_value(today())]


def shard_sql(vendor: str) -> str:
    """The shard of the connection's own counter rows (SendUsage, MailboxStorage): on
    PostgreSQL its backend's, so that no two connections wait on each other's lock;
    SQLite has one writer at a time anyway (decision 0012)."""
    return f"pg_backend_pid() %% {SHARDS}" if vendor == "postgresql" else "0"


@cache
def _record_statement(vendor: str) -> str:
    table = connection.ops.quote_name(SendUsage._meta.db_table)
    shard = shard_sql(vendor)
    return (
        f"INSERT INTO {table} (user_id, day, shard, messages, bytes)"  # noqa: S608 - our names
        f" VALUES (%s, %s, {shard}, %s, %s)"
        " ON CONFLICT (user_id, day, shard) DO UPDATE SET"
        f" messages = {table}.messages + excluded.messages,"
        f" bytes = {table}.bytes + excluded.bytes"
    )


def record_statement() -> str:
    """Add to a person's usage of a day; parameters: user, day, messages, bytes."""
    return _record_statement(connection.vendor)


def record_parameters(user: User, messages: int, size: int) -> list[int | str | None]:
    return [user.pk, connection.ops.adapt_datefield_value(today()), messages, size]


def record_usage(user: User, messages: int, size: int) -> None:
    """Count sends in the caller's transaction (the batch's, or a transactional send's)."""
    with connection.cursor() as cursor:
        cursor.execute(record_statement(), record_parameters(user, messages, size))


def usage_of(user: User, day: dt.date | None = None) -> Usage:
    """A person's usage of a day (today by default), for the operator's command."""
    rows = SendUsage.objects.filter(user=user, day=day or today())
    return Usage(
        sum(row.messages for row in rows),
        sum(row.bytes for row in rows),
    )


class Allowance:
    """What one person may still send today, taken message by message.

    Built from the usage the send's directory query read; a batch takes each of
    its messages in turn, so that it is refused from the first message past the
    limit, as the same messages sent one by one would be.
    """

    def __init__(self, limits: Limits, used: Usage) -> None:
        self.limits = limits
        self.messages = used.messages
        self.bytes = used.bytes

    def take(self, size: int) -> None:
        """Count one message of ``size`` stored bytes; ``daily_limit_reached`` past a limit."""
        if self.messages + 1 > self.limits.messages or self.bytes + size > self.limits.bytes:
            raise daily_limit_reached(self.limits, Usage(self.messages, self.bytes))
        self.messages += 1
        self.bytes += size


def check_room(user: User, size: int) -> None:
    """``daily_limit_reached`` now if one more message of ``size`` bytes would pass the
    account's limits: for work done before the send that would be wasted (the web
    mail copies a forward's large attachments). The send checks again, as always."""
    Allowance(limits_for(user), usage_of(user)).take(size)


def daily_limit_reached(limits: Limits, used: Usage) -> MessagingError:
    resets_at = next_midnight()
    return MessagingError(
        "daily_limit_reached",
        ngettext(
            "Limite d'envoi du jour atteinte pour ce compte : %(messages)s message et"
            " %(size)s par jour au plus. Les envois reprennent à minuit ; si votre"
            " activité l'exige, demandez à l'administrateur de la messagerie de relever"
            " cette limite.",
            "Limite d'envoi du jour atteinte pour ce compte : %(messages)s messages et"
            " %(size)s par jour au plus. Les envois reprennent à minuit ; si votre"
            " activité l'exige, demandez à l'administrateur de la messagerie de relever"
            " cette limite.",
            limits.messages,
        )
        % {"messages": limits.messages, "size": filesizeformat(limits.bytes)},
        {
            "limit_messages": limits.messages,
            "limit_bytes": limits.bytes,
            "sent_messages": used.messages,
            "sent_bytes": used.bytes,
            "resets_at": resets_at.isoformat(),
        },
    )
