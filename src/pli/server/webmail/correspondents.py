"""Who is who, for the web mail: directory identities, suggestions, first-time recipients.

REQ-VERIFY-RECIPIENT: a wrong recipient is a breach, so the sender sees, for
every address, whom the directory says it belongs to (name, profession,
identifier, place), and confirms explicitly the first time a mailbox writes to
a recipient. "The first time" is read from the routing metadata the server
keeps anyway: no earlier delivery from this mailbox to that one, and no
message received from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.utils.translation import gettext as _

from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.models import Activity, Mailbox, MailboxType
from pli.server.directory.queries import SearchError, resolve_address, search_directory
from pli.server.messaging.actions import current_certificates
from pli.server.messaging.models import Delivery, MessageCopy

#: How many suggestions the compose page offers at a time.
SUGGESTIONS = 8
#: Separators of the "À" field: commas, semicolons, white space.
_SEPARATORS = re.compile(r"[,;\s]+")
_IDENTIFIER_LABELS = {"8": "RPPS", "0": "ADELI", "N": "INAMI"}


@dataclass(frozen=True)
class Identity:
    """What the directory says about a mailbox, for people to check it is the right one."""

    address: str
    kind: str
    name: str
    profession: str
    identifier: str
    place: str
    #: The national form (8 + RPPS…) a professional's certificate carries; "" otherwise.
    national_id: str = ""

    @property
    def summary(self) -> str:
        return " — ".join(part for part in (self.name, self.profession, self.place) if part)


def split_addresses(text: str) -> list[str]:
    """The addresses typed in one field, in order, without blanks."""
    return [part for part in _SEPARATORS.split(text.strip()) if part]


def _place_of(mailbox: Mailbox) -> str:
    organisation = mailbox.organisation
    if organisation is None and mailbox.professional is not None:
        activity = (
            Activity.objects.filter(
                professional=mailbox.professional, active=True, organisation__isnull=False
            )
            .select_related("organisation")
            .order_by("pk")
            .first()
        )
        organisation = activity.organisation if activity else None
    if organisation is None:
        return ""
    town = " ".join(part for part in (organisation.postcode, organisation.city) if part)
    name = organisation.name or organisation.trade_name
    return ", ".join(part for part in (name, town) if part)


def identity_of(mailbox: Mailbox) -> Identity:
    professional = mailbox.professional
    if mailbox.kind == MailboxType.PERSONAL and professional is not None:
        name = " ".join(
            part
            for part in (professional.civil_title, professional.first_name, professional.last_name)
            if part
        )
        label = _IDENTIFIER_LABELS.get(professional.identifier_type, _("Identifiant"))
        identifier = f"{label} {professional.identifier}"
        profession = professional.profession
    else:
        organisation = mailbox.organisation
        name = mailbox.description or (organisation.name if organisation else "") or mailbox.address
        identifier = (
            f"FINESS {organisation.finess_site}"
            if organisation and organisation.finess_site
            else ""
        )
        profession = mailbox.service or str(MailboxType(mailbox.kind).label)
    return Identity(
        address=mailbox.address,
        kind=mailbox.kind,
        name=name or mailbox.address,
        profession=profession,
        identifier=identifier,
        place=_place_of(mailbox),
        national_id=professional.national_id if professional is not None else "",
    )


def identities(addresses: Iterable[str]) -> dict[str, Identity]:
    """Directory identities by lower-case address (any mailbox, active or not)."""
    wanted = {a.lower() for a in addresses if a}
    if not wanted:
        return {}
    # Addresses are stored in lower case (directory migration 0005): the unique index.
    found = Mailbox.objects.filter(address__in=wanted).select_related(
        "professional", "organisation"
    )
    return {mailbox.address.lower(): identity_of(mailbox) for mailbox in found}


@dataclass(frozen=True)
class RecipientCheck:
    """One address of the "À" field as the sender should see it before sending."""

    given: str
    address: str
    identity: Identity | None
    #: No earlier exchange between the sending mailbox and this one: confirm explicitly.
    first_time: bool
    confirmed: bool
    #: The mailbox has a current certificate: a message can be encrypted to it (a send
    #: to one without is refused, recipient_without_certificate: say so before).
    certified: bool = True


def active_mailbox(address: str) -> Mailbox | None:
    """The active directory mailbox at ``address`` (red-listed ones too: exact address)."""
    try:
        normalised = normalise_address(address)
    except BadAddress:
        return None
    mailbox = resolve_address(normalised)
    if mailbox is None or not mailbox.active:
        return None
    return mailbox


def known_correspondents(sender: Mailbox, targets: Sequence[Mailbox]) -> set[int]:
    """The ids of ``targets`` this mailbox already wrote to or received a message from."""
    ids = [target.pk for target in targets]
    if not ids:
        return set()
    written = Delivery.objects.filter(
        message__sender_mailbox=sender, recipient_mailbox_id__in=ids
    ).values_list("recipient_mailbox_id", flat=True)
    heard = MessageCopy.objects.filter(
        mailbox=sender, delivery__isnull=False, message__sender_mailbox_id__in=ids
    ).values_list("message__sender_mailbox_id", flat=True)
    return {pk for pk in (*written, *heard) if pk is not None}


def check_recipients(
    sender: Mailbox | None, addresses: Sequence[str], confirmed: Iterable[str]
) -> list[RecipientCheck]:
    """Each distinct address with its identity and whether it needs a first-time confirmation."""
    agreed = {a.lower() for a in confirmed}
    seen: set[str] = set()
    rows: list[tuple[str, str, Mailbox | None]] = []
    for given in addresses:
        mailbox = active_mailbox(given)
        key = mailbox.address.lower() if mailbox else given.lower()
        if key in seen:
            continue
        seen.add(key)
        rows.append((given, key, mailbox))
    targets = [mailbox for _given, _key, mailbox in rows if mailbox is not None]
    known = known_correspondents(sender, targets) if sender is not None else set()
    # One query for every recipient, the lookup the send makes (sending._sealed_for).
    certificates = current_certificates(targets)
    checks = []
    for given, key, mailbox in rows:
        first = mailbox is not None and mailbox.pk not in known
        checks.append(
            RecipientCheck(
                given=given,
                address=mailbox.address if mailbox else given,
                identity=identity_of(mailbox) if mailbox else None,
                first_time=first,
                confirmed=first and key in agreed,
                certified=mailbox is None or bool(certificates[mailbox.pk]),
            )
        )
    return checks


@dataclass(frozen=True)
class Suggestion:
    address: str
    name: str
    profession: str
    place: str


def suggestions(query: str) -> list[Suggestion]:
    """Directory matches for the compose page's search: name words, or an exact address.

    Red-listed mailboxes are never suggested from a name (liste rouge); an exact
    address typed in full is resolved, as the directory API resolves it for members.
    """
    text = query.strip()
    if len(text) < 2:
        return []
    if "@" in text:
        mailbox = active_mailbox(text)
        if mailbox is None:
            return []
        found = identity_of(mailbox)
        return [Suggestion(found.address, found.name, found.profession, found.place)]
    try:
        page = search_directory(q=text, page_size=SUGGESTIONS)
    except SearchError:
        return []
    result: list[Suggestion] = []
    for person in page.results:
        name = " ".join(p for p in (person.civil_title, person.first_name, person.last_name) if p)
        place = ""
        if person.organisations:
            organisation = person.organisations[0]
            town = " ".join(p for p in (organisation.postcode, organisation.city) if p)
            place = ", ".join(p for p in (organisation.name, town) if p)
        result.extend(
            Suggestion(mailbox.address, name, person.profession, place)
            for mailbox in person.mailboxes
        )
    result = result[:SUGGESTIONS]
    # A mailbox attached to a structure says where, when the activities do not.
    unplaced = identities(s.address for s in result if not s.place)
    return [
        Suggestion(s.address, s.name, s.profession, unplaced[s.address.lower()].place)
        if not s.place and s.address.lower() in unplaced
        else s
        for s in result
    ]
