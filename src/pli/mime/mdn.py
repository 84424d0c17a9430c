"""Read receipts: message disposition notifications (MDN, RFC 8098), built and parsed.

An MDN is an ordinary inner message (signed and sealed like any other, so
that its reader knows who read what) whose body is a ``multipart/report;
report-type=disposition-notification`` (RFC 6522) of two parts: a short text
for people, then the ``message/disposition-notification`` fields for
programs (RFC 8098 §3.1-3.2)::

    Reporting-UA: pli.example.org; Pli web mail
    Final-Recipient: rfc822; dr.durand@clinique-b.pli.test
    Original-Message-ID: <…@hopital-a.pli.test>
    Disposition: manual-action/MDN-sent-automatically; displayed

The MDN's From is the mailbox that read the message (RFC 8098: the
address for whom it is issued), its To the original's sending mailbox; it
carries no ``Disposition-Notification-To`` (RFC 8098: an MDN is never requested
for, nor sent in answer to, an MDN) and In-Reply-To / References name the
original, so that it joins its thread. The original itself is not enclosed
(the third part is optional): the receipt says which message by its id.

Pure: no Django, no cryptography. Parsing is strict (every field once, the
RFC's syntax) and bounded by :class:`pli.mime.MimeLimits`; a malformed
notification is a :class:`pli.mime.MimeError` with a stable code.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid

from pli.mime import (
    _MSGID,
    MimeError,
    MimeLimits,
    _address,
    _clean_header_text,
    parse_inner_message,
)

__all__ = [
    "ACTION_MODES",
    "DISPOSITION_TYPES",
    "REPORT_TYPE",
    "SENDING_MODES",
    "Disposition",
    "DispositionNotification",
    "build_mdn",
    "is_mdn",
    "parse_mdn",
]

#: ``report-type`` of the ``multipart/report`` (RFC 6522) that an MDN is.
REPORT_TYPE = "disposition-notification"
NOTIFICATION_TYPE = "message/disposition-notification"
#: RFC 8098 §3.2.6.1: whether the user (manual) or a rule (automatic) caused the disposition.
ACTION_MODES = ("manual-action", "automatic-action")
#: RFC 8098 §3.2.6.1: whether the user agreed to this very MDN, or it is sent by configuration.
SENDING_MODES = ("MDN-sent-manually", "MDN-sent-automatically")
#: RFC 8098 §3.2.6.2: what happened to the message.
DISPOSITION_TYPES = ("displayed", "deleted", "dispatched", "processed")

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# disposition-field (RFC 8098 §3.2.6): mode "/" mode ";" type ["/" modifier *("," modifier)].
_DISPOSITION = re.compile(
    r"\s*(?P<action>[A-Za-z-]+)\s*/\s*(?P<sending>[A-Za-z-]+)\s*;"
    r"\s*(?P<type>[A-Za-z-]+)\s*(?:/\s*(?P<modifiers>[A-Za-z0-9-]+(?:\s*,\s*[A-Za-z0-9-]+)*))?\s*"
)
_FIELDS = (
    "Reporting-UA",
    "MDN-Gateway",
    "Original-Recipient",
    "Final-Recipient",
    "Original-Message-ID",
    "Disposition",
)
_DONE = {
    "displayed": "a été affiché par son destinataire",
    "processed": "a été traité (sans être affiché)",
    "deleted": "a été supprimé sans être affiché",
    "dispatched": "a été transmis ailleurs sans être affiché",
}
#: The same, for the English paragraph that follows the French one.
_DONE_EN = {
    "displayed": "was displayed by its recipient",
    "processed": "was processed (without being displayed)",
    "deleted": "was deleted without being displayed",
    "dispatched": "was sent on elsewhere without being displayed",
}


def _canonical(value: str, allowed: Sequence[str], what: str) -> str:
    for known in allowed:
        if value.strip().lower() == known.lower():
            return known
    raise MimeError("bad_disposition", f"{what} must be one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Disposition:
    """The ``Disposition`` field: how the recipient's agent handled the message (§3.2.6).

    Pli's default: the reader opened the message (``manual-action``), and the
    receipt left without asking them each time (``MDN-sent-automatically``),
    because it was ``displayed``.
    """

    action_mode: str = "manual-action"
    sending_mode: str = "MDN-sent-automatically"
    disposition_type: str = "displayed"
    #: ``error``, or extension modifiers (RFC 8098 §3.2.6.3); none in a plain read receipt.
    modifiers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Case-insensitive in the RFC; kept in the RFC's spelling.
        object.__setattr__(
            self, "action_mode", _canonical(self.action_mode, ACTION_MODES, "action-mode")
        )
        object.__setattr__(
            self, "sending_mode", _canonical(self.sending_mode, SENDING_MODES, "sending-mode")
        )
        object.__setattr__(
            self,
            "disposition_type",
            _canonical(self.disposition_type, DISPOSITION_TYPES, "disposition-type"),
        )
        modifiers = tuple(m.strip().lower() for m in self.modifiers)
        if not all(_TOKEN.fullmatch(m) for m in modifiers):
            raise MimeError("bad_disposition", "a disposition modifier is not a token")
        object.__setattr__(self, "modifiers", modifiers)

    def __str__(self) -> str:
        text = f"{self.action_mode}/{self.sending_mode}; {self.disposition_type}"
        return text + (f"/{','.join(self.modifiers)}" if self.modifiers else "")

    @classmethod
    def parse(cls, value: str) -> Disposition:
        match = _DISPOSITION.fullmatch(value)
        if match is None:
            raise MimeError("bad_disposition", "the Disposition field does not follow RFC 8098")
        modifiers = match.group("modifiers")
        return cls(
            action_mode=match.group("action"),
            sending_mode=match.group("sending"),
            disposition_type=match.group("type"),
            modifiers=tuple(re.split(r"\s*,\s*", modifiers)) if modifiers else (),
        )


@dataclass(frozen=True)
class DispositionNotification:
    """A parsed MDN: the inner message's headers and the notification's fields."""

    from_address: str
    to: list[str]
    date: dt.datetime
    message_id: str
    subject: str
    #: The address the notification is about (``Final-Recipient``, ``rfc822`` type).
    final_recipient: str
    disposition: Disposition
    #: The Message-ID of the message read; RFC 8098 makes it optional, Pli always sends it.
    original_message_id: str | None
    sender: str | None = None
    in_reply_to: str | None = None
    original_recipient: str | None = None
    reporting_ua: str | None = None
    #: The human-readable first part.
    text: str = ""


_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)


_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _when(sent_at: dt.datetime, zone: dt.tzinfo | None, *, english: bool = False) -> str:
    """``24 novembre 2026 à 00:03 (Europe/Paris)``: the date as the web mail shows its
    dates, in ``zone`` (UTC without one), the zone named (a reader elsewhere knows which);
    ``24 November 2026 at 00:03 (Europe/Paris)`` in English."""
    local = sent_at.astimezone(zone or dt.UTC)
    name = getattr(zone, "key", None) or local.tzname() or "UTC"
    if english:
        return f"{local.day} {_MONTHS_EN[local.month - 1]} {local.year} at {local:%H:%M} ({name})"
    return f"{local.day} {_MONTHS[local.month - 1]} {local.year} à {local:%H:%M} ({name})"


def _default_text(
    disposition: Disposition,
    final_recipient: str,
    subject: str,
    sent_at: dt.datetime | None,
    zone: dt.tzinfo | None = None,
) -> str:
    # French first (DESIGN: the users are French-speaking first), then English: the
    # receipt is written once, by the reader's agent, and read by a sender whose
    # language that agent does not know; the fields of the second part are the
    # machine-readable ones (RFC 8098 §3.1).
    kind = disposition.disposition_type
    what = f"Le message « {subject} »" if subject else "Le message"
    when = f" du {_when(sent_at, zone)}" if sent_at else ""
    what_en = f"The message “{subject}”" if subject else "The message"
    when_en = f" of {_when(sent_at, zone, english=True)}" if sent_at else ""
    return (
        f"{what}{when} adressé à {final_recipient} {_DONE[kind]}.\n"
        "Cet accusé ne garantit pas que le message a été lu ni compris.\n"
        "\n"
        f"{what_en}{when_en} sent to {final_recipient} {_DONE_EN[kind]}.\n"
        "This receipt does not guarantee that the message was read or understood.\n"
    )


def build_mdn(
    *,
    from_address: str,
    to: str,
    original_message_id: str,
    disposition: Disposition | None = None,
    final_recipient: str | None = None,
    sender: str | None = None,
    original_subject: str = "",
    original_date: dt.datetime | None = None,
    original_recipient: str | None = None,
    references: Sequence[str] = (),
    reporting_ua: str | None = None,
    subject: str | None = None,
    text: str | None = None,
    message_id: str | None = None,
    date: dt.datetime | None = None,
    zone: dt.tzinfo | None = None,
) -> bytes:
    """The inner message of a read receipt (canonical CRLF), ready to be signed and sealed.

    ``from_address``: the mailbox that received and read the message;
    ``sender``: the person, when they read an organisational mailbox's copy;
    ``to``: the original's sending mailbox. ``final_recipient`` defaults to
    ``from_address``. ``references``: the original's References (its id is
    appended). ``reporting_ua``: ``"name; product"`` of the agent (§3.2.1).
    ``zone``: the time zone in which the default text gives the original's date
    (named in it; UTC without one). The default text is in French, then in English:
    the reader's agent does not know the sender's language.
    The result is parsed back with :func:`parse_mdn`, so it is always valid.
    """
    disposition = disposition or Disposition()
    reader = _address(from_address, "From")
    recipient = _address(final_recipient or from_address, "Final-Recipient").addr_spec
    original_id = original_message_id.strip()
    if not _MSGID.match(original_id):
        raise MimeError("bad_message_id", "Original-Message-ID must look like <left@right>")
    chain = [*[r for r in references if r != original_id][-19:], original_id]
    if not all(_MSGID.match(r) for r in chain):
        raise MimeError("bad_message_id", "References must look like <left@right>")

    message = EmailMessage(policy=policy.SMTP)
    message["From"] = reader
    if sender:
        message["Sender"] = _address(sender, "Sender")
    message["To"] = _address(to, "To")
    message["Date"] = format_datetime(date or dt.datetime.now(dt.UTC))
    message_id = message_id or make_msgid(domain=reader.domain)
    if not _MSGID.match(message_id) or message_id == original_id:
        raise MimeError("bad_message_id", "the MDN needs a Message-ID of its own (RFC 8098)")
    message["Message-ID"] = message_id
    message["In-Reply-To"] = original_id
    message["References"] = " ".join(chain)
    if subject is None:
        subject = "Accusé de lecture" + (f" : {original_subject}" if original_subject else "")
    message["Subject"] = _clean_header_text(subject, "Subject")
    if disposition.sending_mode == "MDN-sent-automatically":
        message["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5: not written by a person
    if text is None:
        text = _default_text(disposition, recipient, original_subject, original_date, zone)
    message.set_content(text, cte="quoted-printable")
    message.make_mixed()
    message.set_type("multipart/report")
    message.set_param("report-type", REPORT_TYPE)

    fields = EmailMessage(policy=policy.SMTP)
    if reporting_ua:
        fields["Reporting-UA"] = _clean_header_text(reporting_ua, "Reporting-UA").strip()
    if original_recipient:
        address = _address(original_recipient, "Original-Recipient").addr_spec
        fields["Original-Recipient"] = f"rfc822; {address}"
    fields["Final-Recipient"] = f"rfc822; {recipient}"
    fields["Original-Message-ID"] = original_id
    fields["Disposition"] = str(disposition)
    notification = EmailMessage(policy=policy.SMTP)
    notification["Content-Type"] = NOTIFICATION_TYPE
    notification["Content-Disposition"] = "inline"
    notification.set_payload([fields])
    message.attach(notification)

    data = message.as_bytes(policy=policy.SMTP)
    parse_mdn(data)
    return data


def _top_type(data: bytes, limits: MimeLimits) -> Message:
    match = re.search(rb"\r?\n\r?\n", data[: limits.max_headers * limits.max_header_bytes])
    head = data[: match.end()] if match else data
    return BytesParser(policy=policy.default).parsebytes(head, headersonly=True)


def is_mdn(data: bytes, limits: MimeLimits | None = None) -> bool:
    """Whether an inner message is a disposition notification (its top-level type says so).

    A read receipt is never sent in answer to one (RFC 8098): clients ask
    this before sending theirs. Reads the headers only.
    """
    try:
        top = _top_type(data, limits or MimeLimits())
    except (ValueError, TypeError, IndexError):
        return False
    return top.get_content_type() == "multipart/report" and (
        str(top.get_param("report-type") or "").lower() == REPORT_TYPE
    )


def _one(fields: Message, name: str) -> str | None:
    values = fields.get_all(name) or []
    if len(values) > 1:
        raise MimeError("duplicate_header", f"{name} appears more than once")
    return str(values[0]).strip() if values else None


def _required(fields: Message, name: str) -> str:
    value = _one(fields, name)
    if not value:
        raise MimeError("missing_header", f"{name} is missing")
    return value


def _typed_address(value: str, name: str) -> str:
    address_type, separator, address = value.partition(";")
    if not separator or address_type.strip().lower() != "rfc822":
        raise MimeError("bad_address", f"{name} must be of type rfc822")
    return _address(address, name).addr_spec


def _notification_fields(message: Message) -> Message:
    top = message.get_payload()
    if not isinstance(top, list) or len(top) < 2:
        raise MimeError("malformed_notification", "a report has a text then the notification")
    part = top[1]
    if not isinstance(part, Message) or part.get_content_type() != NOTIFICATION_TYPE:
        raise MimeError(
            "malformed_notification", f"the second part of the report is not {NOTIFICATION_TYPE}"
        )
    if sum(1 for p in message.walk() if p.get_content_type() == NOTIFICATION_TYPE) != 1:
        raise MimeError("malformed_notification", "a report holds one notification")
    payload = part.get_payload()
    if not isinstance(payload, list) or len(payload) != 1 or not isinstance(payload[0], Message):
        raise MimeError("malformed_notification", "the notification holds no fields")
    fields = payload[0]
    if fields.get_payload() not in ("", None):
        raise MimeError("malformed_notification", "the notification's fields end with a blank line")
    return fields


def parse_mdn(data: bytes, limits: MimeLimits | None = None) -> DispositionNotification:
    """Parse a decrypted, verified MDN; strict. ``not_a_notification`` for any other message."""
    limits = limits or MimeLimits()
    inner = parse_inner_message(data, limits)  # sizes, structure, From/Sender, Date, Message-ID
    if not is_mdn(data, limits):
        raise MimeError("not_a_notification", "not a multipart/report of disposition-notification")
    message = BytesParser(policy=policy.default).parsebytes(data)
    if message.get_all("Disposition-Notification-To"):
        raise MimeError("malformed_notification", "an MDN never asks for an MDN (RFC 8098)")
    fields = _notification_fields(message)
    try:
        for name in _FIELDS:
            _one(fields, name)  # each field at most once
        final = _required(fields, "Final-Recipient")
        disposition = _required(fields, "Disposition")
        original_id = _one(fields, "Original-Message-ID")
        original_recipient = _one(fields, "Original-Recipient")
        reporting_ua = _one(fields, "Reporting-UA")
    except MimeError:
        raise
    except (ValueError, TypeError, IndexError) as error:
        raise MimeError("malformed_notification", f"cannot read the fields: {error}") from None
    if original_id is not None and not _MSGID.match(original_id):
        raise MimeError("bad_message_id", "Original-Message-ID must look like <left@right>")
    if len(inner.to) != 1 or inner.cc:
        raise MimeError("malformed_notification", "an MDN goes to one address")
    return DispositionNotification(
        from_address=inner.from_address,
        sender=inner.sender,
        to=inner.to,
        date=inner.date,
        message_id=inner.message_id,
        subject=inner.subject,
        in_reply_to=inner.in_reply_to,
        final_recipient=_typed_address(final, "Final-Recipient"),
        original_recipient=(
            _typed_address(original_recipient, "Original-Recipient") if original_recipient else None
        ),
        original_message_id=original_id,
        disposition=Disposition.parse(disposition),
        reporting_ua=reporting_ua,
        text=inner.body_text,
    )
