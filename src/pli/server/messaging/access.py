"""Who may see and use which mailbox and which message: the one place that decides.

A person reaches a mailbox as its owner (their personal mailbox, the one the
account was enrolled for) or through a :class:`~pli.server.accounts.models.Membership`
(member, manager or substitute of an organisational mailbox, or substitute of
a colleague's personal one; REQ-CITY-HOSPITAL). A message is reached through
a copy held by such a mailbox. Anything else answers exactly like something
that does not exist (CONVENTIONS, habit 8): :class:`NotFound`, one code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from django.db import connection
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from pli.server.accounts.models import Membership, User
from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.models import Mailbox, MailboxType
from pli.server.directory.queries import owners_active_sql, takes_mail
from pli.server.messaging.models import MessageCopy

#: How the caller reaches a mailbox: "owner", or a membership role.
OWNER = "owner"
#: A message's public id (``actions.new_message_id``): ``msg_`` + 32 hexadecimal digits.
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")


class MessagingError(Exception):
    """A messaging action refused; ``code`` is stable, ``message`` translated, ``details`` data."""

    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.details = details or {}


def not_found() -> MessagingError:
    return MessagingError("not_found", _("Introuvable."))


@dataclass(frozen=True)
class ReachableMailbox:
    mailbox: Mailbox
    part: str


def _owned(user: User) -> QuerySet[Mailbox]:
    """The personal mailbox the account was enrolled for, active or not (mail stays readable)."""
    if user.professional_id is None:
        return Mailbox.objects.none()
    return Mailbox.objects.filter(
        address=user.username, kind=MailboxType.PERSONAL, professional_id=user.professional_id
    )


def _reachable_union(columns: str) -> str:
    """The owned mailbox and the memberships' mailboxes, ``columns`` of each (``m.``),
    then how the person reaches it, named ``part``: the one text of that rule.

    Its parameters are :func:`reachable_parameters`.
    """
    quote = connection.ops.quote_name
    mailbox, membership = quote(Mailbox._meta.db_table), quote(Membership._meta.db_table)
    return (
        f"SELECT {columns}, %s AS part FROM {mailbox} AS m"  # noqa: S608 - our names
        " WHERE m.address = %s AND m.kind = %s AND m.professional_id = %s"
        f" UNION ALL SELECT {columns}, ms.role FROM {membership} AS ms"
        f" JOIN {mailbox} AS m ON m.id = ms.mailbox_id WHERE ms.user_id = %s"
    )


@cache
def _reachable_query() -> tuple[str, tuple[str, ...]]:
    """The owned mailbox and the memberships' mailboxes in one query (one round trip).

    Every request that sends or reads asks this: one ``UNION ALL`` of two index
    lookups (the owned mailbox by its unique address, the memberships by user)
    instead of two queries. The same rows as :func:`_owned` and the memberships.
    """
    quote = connection.ops.quote_name
    attnames = tuple(field.attname for field in Mailbox._meta.concrete_fields)
    columns = ", ".join(f"m.{quote(field.column)}" for field in Mailbox._meta.concrete_fields)
    return _reachable_union(columns), attnames


def reachable_mailboxes(user: User) -> list[ReachableMailbox]:
    """Every mailbox the person may read: their own first, then by address."""
    query, attnames = _reachable_query()
    with connection.cursor() as cursor:
        cursor.execute(query, reachable_parameters(user))
        rows = cursor.fetchall()
    owned = [row for row in rows if row[-1] == OWNER]
    members = sorted((row for row in rows if row[-1] != OWNER), key=lambda row: row[1])
    found: dict[int, ReachableMailbox] = {}
    for row in owned + members:
        mailbox = Mailbox.from_db(connection.alias, attnames, row[:-1])
        found.setdefault(mailbox.pk, ReachableMailbox(mailbox, row[-1]))
    return sorted(found.values(), key=lambda r: (r.part != OWNER, r.mailbox.address))


def reachable_mailbox_ids(user: User) -> list[int]:
    return [r.mailbox.pk for r in reachable_mailboxes(user)]


def access_mailbox_by_address(user: User, address: str) -> Mailbox:
    """A mailbox the caller may read, by its address; :func:`not_found` otherwise."""
    try:
        normalised = normalise_address(address)
    except BadAddress:
        raise not_found() from None
    for reachable in reachable_mailboxes(user):
        if reachable.mailbox.address.lower() == normalised:
            return reachable.mailbox
    raise not_found()


def _refused_sender() -> MessagingError:
    return MessagingError(
        "not_allowed_sender",
        _("Vous ne pouvez pas envoyer de message depuis cette adresse."),
    )


def sending_mailbox(user: User, from_address: str) -> Mailbox:
    """The active mailbox ``user`` may send from (owner, member, manager or substitute).

    The same refusal whether the mailbox does not exist, is not the caller's
    or is no longer active: ``not_allowed_sender``.
    """
    try:
        mailbox = access_mailbox_by_address(user, from_address)
    except MessagingError:
        raise _refused_sender() from None
    if not takes_mail(mailbox):  # REQ-DIRECTORY: nor if its owner left the directory
        raise _refused_sender()
    return mailbox


@cache
def reachable_subquery() -> str:
    """The mailboxes a person reaches as rows ``(id, address, active, part)``, for a
    caller that asks them within a larger statement (a send asks them with its
    recipients, in one round trip); its parameters: :func:`reachable_parameters`.

    The same rows as :func:`reachable_mailboxes`, from the same rule.
    """
    # "active": whether it may send (REQ-DIRECTORY), as sending_mailbox decides.
    return _reachable_union(f"m.id, m.address, (m.active AND {owners_active_sql('m')}) AS active")


def reachable_parameters(user: User) -> list[str | int | None]:
    # No professional: "professional_id = NULL" matches nothing, as _owned's none().
    return [OWNER, user.username, MailboxType.PERSONAL, user.professional_id, user.pk]


def choose_sending_mailbox(
    reachable: Iterable[tuple[int, str, bool, str]], from_address: str
) -> int:
    """Of the rows of :func:`reachable_subquery`, the id of the mailbox to send from.

    The decision of :func:`sending_mailbox`, made on rows already read:
    ``not_allowed_sender`` unless ``from_address`` names a mailbox the person
    reaches (their own first) and that mailbox is active.
    """
    try:
        normalised = normalise_address(from_address)
    except BadAddress:
        raise _refused_sender() from None
    named = sorted(
        (part != OWNER, pk, active)
        for pk, address, active, part in reachable
        if address.lower() == normalised
    )
    if not named or not named[0][2]:
        raise _refused_sender()
    return named[0][1]


def access_copy_by_message_id(
    user: User, public_id: str, mailbox_address: str | None = None
) -> MessageCopy:
    """The caller's copy of message ``public_id``, through one of their mailboxes.

    A person reaching several mailboxes that hold the message (their own and a
    ward's) names the one whose copy they act on; without it, the choice would
    be a guess: ``mailbox_ambiguous`` lists their mailboxes that hold it (their
    own mailboxes only: nothing is revealed).

    An id of another shape is not looked up: it names nothing, and a NUL in it
    (from the URL) is a server error on PostgreSQL, whose text cannot hold one.
    """
    if not MESSAGE_ID.fullmatch(public_id):
        raise not_found()
    if mailbox_address:
        mailboxes = [access_mailbox_by_address(user, mailbox_address).pk]
    else:
        mailboxes = reachable_mailbox_ids(user)
    copies = list(
        MessageCopy.objects.filter(message__public_id=public_id, mailbox_id__in=mailboxes)
        .select_related("message", "mailbox", "delivery")
        .order_by("mailbox__address")
    )
    if not copies:
        raise not_found()
    if len(copies) > 1:
        raise MessagingError(
            "mailbox_ambiguous",
            _("Ce message est dans plusieurs de vos boîtes : précisez laquelle."),
            {"mailboxes": [copy.mailbox.address for copy in copies]},
        )
    return copies[0]


def visible_copies(user: User) -> QuerySet[MessageCopy]:
    """Copies the caller may see (for checks such as a reply's ``in_reply_to``)."""
    return MessageCopy.objects.filter(mailbox_id__in=reachable_mailbox_ids(user))
