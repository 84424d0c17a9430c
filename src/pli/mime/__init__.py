"""The inner message (what is signed and encrypted) and the outer one (what relays see).

The real subject and every header that says something about the patient or
the exchange travel only inside the sealed part (header protection, RFC 8551
§3.1 and draft-ietf-lamps-header-protection); the outer message carries the
routing addresses and a neutral subject.

Parsing is strict and bounded: total size, header count and size, part
count and nesting depth are limited, and malformed input gives a
:class:`MimeError` with a stable code, never a partial result.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.errors import HeaderParseError, MessageDefect
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid, parsedate_to_datetime

from pli.identifiers import IdentifierError, IdentifierKind, parse_nir, parse_niss

__all__ = [
    "NEUTRAL_SUBJECT",
    "PATIENT_HEADER",
    "Attachment",
    "Draft",
    "ExternalPart",
    "InnerMessage",
    "MimeError",
    "MimeLimits",
    "build_inner_message",
    "build_outer_message",
    "complete_message",
    "originators",
    "parse_inner_message",
    "parse_outer_message",
]

#: The only subject a relay, a server or a log ever sees (REQ-SUBJECT, header protection).
NEUTRAL_SUBJECT = "Message sécurisé"
#: The patient the message is about: ``nir:<15 characters>`` or ``niss:<11 digits>``.
PATIENT_HEADER = "X-MSS-Patient-Id"
EXTERNAL_ACCESS_TYPE = "x-pli-blob"


class MimeError(ValueError):
    """A message cannot be built or parsed; ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class MimeLimits:
    max_bytes: int = 32 * 1024 * 1024
    max_headers: int = 100
    max_header_bytes: int = 8 * 1024
    max_parts: int = 100
    max_depth: int = 5


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ExternalPart:
    """A large part stored outside the CMS, encrypted as a stream (see pli.crypto.stream)."""

    filename: str
    content_type: str
    blob_id: str  # SHA-256 of the ciphertext, hex: names the blob and checks it
    key: bytes
    size: int  # ciphertext bytes
    plaintext_size: int
    record_size: int


@dataclass(frozen=True)
class Draft:
    from_address: str
    to: list[str]
    subject: str
    body_text: str
    from_name: str | None = None
    cc: list[str] = field(default_factory=list)
    sender: str | None = None  # the person writing for an organisational mailbox
    body_html: str | None = None
    patient_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    external_parts: list[ExternalPart] = field(default_factory=list)


@dataclass(frozen=True)
class InnerMessage:
    from_address: str
    to: list[str]
    cc: list[str]
    subject: str
    date: dt.datetime
    message_id: str
    body_text: str
    sender: str | None = None
    body_html: str | None = None
    patient_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    external_parts: list[ExternalPart] = field(default_factory=list)

    def addressed_to(self, mailbox: str) -> bool:
        """Whether the signed To and Cc name ``mailbox``: a genuine message re-encrypted
        for someone it was not addressed to reads as such (surreptitious forwarding,
        RFC 8551 §3.7 discussion). A group send from Pli names only its sending mailbox
        in ``To`` (REQ-FEW-RECIPIENTS): that counts as addressed."""
        named = {a.lower() for a in (*self.to, *self.cc)}
        return mailbox.lower() in named or named <= {self.from_address.lower()}


_MSGID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")


def _address(value: str, what: str) -> Address:
    try:
        address = Address(addr_spec=value.strip())
    except (ValueError, IndexError, HeaderParseError):
        raise MimeError("bad_address", f"{what}: not an e-mail address") from None
    if not address.username or not address.domain or "." not in address.domain:
        raise MimeError("bad_address", f"{what}: not an e-mail address")
    return address


def normalise_patient_id(value: str) -> str:
    """``nir:...`` / ``niss:...`` from a typed value or an already tagged one."""
    text = value.split(":", 1)[1] if ":" in value else value
    for parser in (parse_nir, parse_niss):
        try:
            identifier = parser(text)
        except IdentifierError:
            continue
        return f"{identifier.kind.value}:{identifier.value}"
    raise MimeError("bad_patient_id", "the patient identifier is not a valid NIR/INS or NISS")


def _clean_header_text(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise MimeError("bad_header", f"{what}: line breaks are not allowed")
    return value


def build_inner_message(
    draft: Draft, *, message_id: str | None = None, date: dt.datetime | None = None
) -> bytes:
    """The inner message, canonical (CRLF), ready to be sealed."""
    message = EmailMessage(policy=policy.SMTP)
    sender = _address(draft.from_address, "From")
    display = _clean_header_text(draft.from_name or "", "From name")
    message["From"] = Address(display_name=display, addr_spec=sender.addr_spec)
    if draft.sender:
        message["Sender"] = _address(draft.sender, "Sender")
    if not draft.to:
        raise MimeError("no_recipient", "a message needs at least one recipient")
    message["To"] = [_address(a, "To") for a in draft.to]
    if draft.cc:
        message["Cc"] = [_address(a, "Cc") for a in draft.cc]
    message["Date"] = format_datetime(date or dt.datetime.now(dt.UTC))
    message_id = message_id or make_msgid(domain=sender.domain)
    if not _MSGID.match(message_id):
        raise MimeError("bad_message_id", "Message-ID must look like <left@right>")
    message["Message-ID"] = message_id
    if draft.in_reply_to:
        if not _MSGID.match(draft.in_reply_to):
            raise MimeError("bad_message_id", "In-Reply-To must look like <left@right>")
        message["In-Reply-To"] = draft.in_reply_to
    if draft.references:
        if not all(_MSGID.match(r) for r in draft.references):
            raise MimeError("bad_message_id", "References must look like <left@right>")
        message["References"] = " ".join(draft.references)
    message["Subject"] = _clean_header_text(draft.subject, "Subject")
    if draft.patient_id:
        message[PATIENT_HEADER] = normalise_patient_id(draft.patient_id)
    message.set_content(draft.body_text, cte="quoted-printable")
    if draft.body_html is not None:
        message.add_alternative(draft.body_html, subtype="html", cte="quoted-printable")
    for attachment in draft.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=_clean_header_text(attachment.filename, "file name"),
        )
    for external in draft.external_parts:
        if message.get_content_type() != "multipart/mixed":
            message.make_mixed()
        message.attach(_external_part(external))
    return message.as_bytes(policy=policy.SMTP)


def _external_part(external: ExternalPart) -> EmailMessage:
    # RFC 2046 §5.2.3: the body of message/external-body holds the headers
    # of the content that lives elsewhere.
    part = EmailMessage(policy=policy.SMTP)
    part["Content-Type"] = "message/external-body"
    part.set_param("access-type", EXTERNAL_ACCESS_TYPE)
    part.set_param("blob-id", external.blob_id)
    part.set_param("size", str(external.size))
    phantom = EmailMessage(policy=policy.SMTP)
    phantom["Content-Type"] = external.content_type
    phantom["Content-Disposition"] = "attachment"
    phantom.set_param(
        "filename", _clean_header_text(external.filename, "file name"), header="Content-Disposition"
    )
    phantom["X-Pli-Blob-Key"] = base64.urlsafe_b64encode(external.key).decode()
    phantom["X-Pli-Blob-Record-Size"] = str(external.record_size)
    phantom["X-Pli-Blob-Plaintext-Size"] = str(external.plaintext_size)
    phantom.set_payload("")
    part.set_payload([phantom])
    return part


# --- parsing ----------------------------------------------------------------------------------
_FATAL_DEFECTS = (
    "StartBoundaryNotFoundDefect",
    "CloseBoundaryNotFoundDefect",
    "MissingHeaderBodySeparatorDefect",
    "FirstHeaderLineIsContinuationDefect",
    "MultipartInvariantViolationDefect",
    "InvalidBase64PaddingDefect",
    "InvalidBase64CharactersDefect",
    "InvalidBase64LengthDefect",
    "NoBoundaryInMultipartDefect",
)


def _check_defects(part: Message) -> None:
    for defect in part.defects:
        if isinstance(defect, MessageDefect) and type(defect).__name__ in _FATAL_DEFECTS:
            raise MimeError("malformed_message", type(defect).__name__)


def _check_structure(message: Message, limits: MimeLimits) -> None:
    count = 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        count += 1
        if count > limits.max_parts:
            raise MimeError("too_many_parts", f"more than {limits.max_parts} parts")
        if depth > limits.max_depth:
            raise MimeError("too_deep", f"parts nested deeper than {limits.max_depth}")
        headers = part.raw_items() if hasattr(part, "raw_items") else part.items()
        items = list(headers)
        if len(items) > limits.max_headers:
            raise MimeError("too_many_headers", f"more than {limits.max_headers} headers")
        for name, value in items:
            if len(name) + len(str(value)) > limits.max_header_bytes:
                raise MimeError("header_too_long", f"header {name} is too long")
        _check_defects(part)
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((child, depth + 1) for child in payload if isinstance(child, Message))


def _header(message: Message, name: str, *, required: bool = True) -> str | None:
    values = message.get_all(name)
    if not values:
        if required:
            raise MimeError("missing_header", f"{name} is missing")
        return None
    if len(values) > 1:
        raise MimeError("duplicate_header", f"{name} appears more than once")
    try:
        return str(values[0])
    except (HeaderParseError, ValueError, IndexError):
        raise MimeError("bad_header", f"{name} cannot be read") from None


def _addresses(message: Message, name: str, *, required: bool = False) -> list[str]:
    """The addresses of an address header, read by the header registry (RFC 5322 §3.4).

    A header the registry reads only with defects (stray addresses after the
    first, unbalanced brackets, obsolete syntax) is refused, so that no two
    readers of the same bytes can see different addresses.
    """
    values = message.get_all(name)
    if not values:
        if required:
            raise MimeError("missing_header", f"{name} is missing")
        return []
    if len(values) > 1:
        raise MimeError("duplicate_header", f"{name} appears more than once")
    header = values[0]
    defects: tuple[object, ...] = tuple(getattr(header, "defects", ()))
    if not hasattr(header, "addresses") or defects:
        raise MimeError("bad_address", f"{name} cannot be read unambiguously")
    result = [_address(address.addr_spec, name).addr_spec for address in header.addresses]
    if required and not result:
        raise MimeError("missing_header", f"{name} holds no address")
    return result


# RFC 5322 §2.2: "name:" with no space before the colon, folded lines start with
# white space; no control characters (a bare CR ends headers for some readers).
_STRICT_HEADER_LINE = re.compile(rb"(?:[!-9;-~]+:|[ \t])[^\x00-\x08\x0a-\x1f\x7f]*")


def _header_block(data: bytes, limits: MimeLimits) -> bytes:
    match = re.search(rb"\r?\n\r?\n", data[: limits.max_headers * limits.max_header_bytes])
    if match is None:
        raise MimeError("malformed_message", "no end of headers within the limits")
    block = data[: match.start()]
    for line in re.split(rb"\r?\n", block):
        if not _STRICT_HEADER_LINE.fullmatch(line):
            raise MimeError("malformed_message", "a header line is not well formed")
    return block


def _address_field(name: str, values: list[str], *, required: bool) -> list[str]:
    if not values:
        if required:
            raise MimeError("missing_header", f"{name} is missing")
        return []
    if len(values) > 1:
        raise MimeError("duplicate_header", f"{name} appears more than once")
    return list(_parsed_addresses(name, values[0]))


@functools.lru_cache(maxsize=4096)
def _parsed_addresses(name: str, value: str) -> tuple[str, ...]:
    """The addresses of one field value; cached, since the header registry is slow
    (most of a 10 KB message's sender check) and a correspondent's From recurs.
    A value that does not parse raises, and failures are not cached."""
    try:
        header = policy.default.header_factory(name, value)
    except (HeaderParseError, ValueError, IndexError):
        raise MimeError("bad_address", f"{name} cannot be read unambiguously") from None
    addresses = getattr(header, "addresses", None)
    if addresses is None or header.defects:
        raise MimeError("bad_address", f"{name} cannot be read unambiguously")
    return tuple(_address(address.addr_spec, name).addr_spec for address in addresses)


def originators(data: bytes, limits: MimeLimits | None = None) -> tuple[str, str | None]:
    """From (exactly one mailbox) and Sender (at most one) of a message, read strictly.

    The signature check (``pli.crypto``) and the display (``parse_inner_message``)
    both use this reading, so a signer cannot be matched on one address while
    another is shown. Every header line is checked first (:func:`_header_block`),
    then only the two fields are read, with the same header registry as the parser.
    """
    limits = limits or MimeLimits()
    block = _header_block(data, limits)
    fields: dict[str, list[str]] = {"from": [], "sender": []}
    current: list[str] | None = None
    for line in re.split(rb"\r?\n", block):
        text = line.decode("utf-8", "replace")  # RFC 6532 allows UTF-8 in headers
        if text[:1] in (" ", "\t"):
            if current is not None:
                current[-1] += text
            continue
        name, _, value = text.partition(":")
        current = fields.get(name.lower())
        if current is not None:
            current.append(value.strip())
    from_addresses = _address_field("From", fields["from"], required=True)
    if len(from_addresses) != 1:
        raise MimeError("bad_address", "From must hold exactly one address")
    sender = _address_field("Sender", fields["sender"], required=False)
    if len(sender) > 1:
        raise MimeError("bad_address", "Sender must hold exactly one address")
    return from_addresses[0], (sender[0] if sender else None)


def _decode_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise MimeError("malformed_message", "a text part has no content")
    charset = part.get_content_charset() or "us-ascii"
    try:
        # Canonical CRLF is a transport form (RFC 2046 §4.1.1); text is given back with LF.
        return payload.decode(charset).replace("\r\n", "\n")
    except (LookupError, UnicodeDecodeError):
        raise MimeError("bad_charset", f"text part is not valid {charset}") from None


def _read_external(part: Message) -> ExternalPart:
    if str(part.get_param("access-type") or "").lower() != EXTERNAL_ACCESS_TYPE:
        raise MimeError("unsupported_external_body", "unknown access-type")
    payload = part.get_payload()
    if not isinstance(payload, list) or len(payload) != 1:
        raise MimeError("malformed_message", "message/external-body without its headers")
    phantom = payload[0]
    if not isinstance(phantom, Message):
        raise MimeError("malformed_message", "message/external-body without its headers")
    try:
        blob_id = str(part.get_param("blob-id"))
        if not re.fullmatch(r"[0-9a-f]{64}", blob_id):
            raise ValueError("blob-id")
        key = base64.urlsafe_b64decode(str(phantom["X-Pli-Blob-Key"]))
        if len(key) != 32:
            raise ValueError("key length")
        return ExternalPart(
            filename=str(phantom.get_filename() or "attachment"),
            content_type=phantom.get_content_type(),
            blob_id=blob_id,
            key=key,
            size=int(str(part.get_param("size"))),
            plaintext_size=int(str(phantom["X-Pli-Blob-Plaintext-Size"])),
            record_size=int(str(phantom["X-Pli-Blob-Record-Size"])),
        )
    except (ValueError, TypeError) as error:
        raise MimeError("malformed_message", f"bad external part: {error}") from None


def _collect_parts(
    message: Message,
) -> tuple[str | None, str | None, list[Attachment], list[ExternalPart]]:
    """The first text and HTML bodies, the attachments and the external parts."""
    body_text: str | None = None
    body_html: str | None = None
    attachments: list[Attachment] = []
    external_parts: list[ExternalPart] = []
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/external-body":
            external_parts.append(_read_external(part))
            continue
        if part.is_multipart() or (part.get_content_maintype() == "message"):
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            if _inside_external(message, part):
                continue
            data_bytes = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    filename=str(part.get_filename() or "attachment"),
                    content_type=content_type,
                    data=data_bytes if isinstance(data_bytes, bytes) else b"",
                )
            )
        elif content_type == "text/plain" and body_text is None:
            body_text = _decode_text(part)
        elif content_type == "text/html" and body_html is None:
            body_html = _decode_text(part)
    return body_text, body_html, attachments, external_parts


def parse_inner_message(data: bytes, limits: MimeLimits | None = None) -> InnerMessage:
    """Parse a decrypted, verified inner message; strict and bounded."""
    limits = limits or MimeLimits()
    if len(data) > limits.max_bytes:
        raise MimeError("message_too_large", f"more than {limits.max_bytes} bytes")
    try:
        message = BytesParser(policy=policy.default).parsebytes(data)
        _check_structure(message, limits)
        from_address, sender_address = originators(data, limits)
        to = _addresses(message, "To")
        cc = _addresses(message, "Cc")
        if not to and not cc:
            raise MimeError("no_recipient", "neither To nor Cc holds an address")
        date_text = _header(message, "Date")
        try:
            date = parsedate_to_datetime(str(date_text))
        except (TypeError, ValueError):
            raise MimeError("bad_header", "Date cannot be read") from None
        message_id = str(_header(message, "Message-ID")).strip()
        if not _MSGID.match(message_id):
            raise MimeError("bad_message_id", "Message-ID must look like <left@right>")
        subject = _header(message, "Subject", required=False) or ""
        in_reply_to = _header(message, "In-Reply-To", required=False)
        references = (_header(message, "References", required=False) or "").split()
        patient = _header(message, PATIENT_HEADER, required=False)
        patient_id = normalise_patient_id(patient) if patient else None
        body_text, body_html, attachments, external_parts = _collect_parts(message)
    except MimeError:
        raise
    except (ValueError, TypeError, IndexError, AttributeError, HeaderParseError) as error:
        raise MimeError("malformed_message", f"cannot parse the message: {error}") from None
    return InnerMessage(
        from_address=from_address,
        sender=sender_address,
        to=to,
        cc=cc,
        subject=subject,
        date=date,
        message_id=message_id,
        in_reply_to=in_reply_to.strip() if in_reply_to else None,
        references=references,
        patient_id=patient_id,
        body_text=body_text or "",
        body_html=body_html,
        attachments=attachments,
        external_parts=external_parts,
    )


def _inside_external(root: Message, target: Message) -> bool:
    for part in root.walk():
        if part.get_content_type() == "message/external-body":
            payload = part.get_payload()
            if isinstance(payload, list) and any(p is target for p in payload):
                return True
    return False


def patient_kind(patient_id: str) -> IdentifierKind:
    return IdentifierKind(patient_id.split(":", 1)[0])


# --- outer message ------------------------------------------------------------------------------
def build_outer_message(
    envelope_smime: bytes,
    *,
    from_address: str,
    to: list[str],
    message_id: str | None = None,
    date: dt.datetime | None = None,
) -> bytes:
    """What SMTP carries: routing addresses, a neutral subject, the S/MIME entity."""
    sender = _address(from_address, "From")
    recipients = [_address(a, "To").addr_spec for a in to]
    if not recipients:
        raise MimeError("no_recipient", "a message needs at least one recipient")
    header = EmailMessage(policy=policy.SMTP)
    header["From"] = sender.addr_spec
    header["To"] = ", ".join(recipients)
    header["Subject"] = NEUTRAL_SUBJECT
    header["Date"] = format_datetime(date or dt.datetime.now(dt.UTC))
    header["Message-ID"] = message_id or make_msgid(domain=sender.domain)
    head = header.as_bytes(policy=policy.SMTP)
    head = head.rstrip(b"\r\n") + b"\r\n"
    return head + envelope_smime


def parse_outer_message(data: bytes) -> tuple[Message, bytes]:
    """The outer headers and the S/MIME entity they carry (headers from MIME-Version on)."""
    match = re.search(rb"\r?\n\r?\n", data[: 256 * 1024])
    if match is None:
        raise MimeError("malformed_message", "no end of headers")
    message = BytesParser(policy=policy.default).parsebytes(data[: match.end()], headersonly=True)
    if message.get_content_type() not in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        raise MimeError("not_sealed", "the message is not an S/MIME envelope")
    return message, data


# --- preparing a message given as a file ----------------------------------------------------------
def complete_message(
    data: bytes,
    *,
    attachments: list[Attachment] | None = None,
    external_parts: list[ExternalPart] | None = None,
    externalise: Callable[[Attachment], ExternalPart] | None = None,
    threshold: int | None = None,
    limits: MimeLimits | None = None,
) -> bytes:
    """An inner message from a user's ``.eml``: checked, completed, with extra parts.

    Adds a Date and a Message-ID when missing, appends ``attachments`` and
    ``external_parts``, and hands every attachment above ``threshold`` to
    ``externalise`` so that it travels outside the CMS. The result is
    parsed again with :func:`parse_inner_message`, so it is always valid.
    """
    limits = limits or MimeLimits()
    if len(data) > limits.max_bytes:
        raise MimeError("message_too_large", f"more than {limits.max_bytes} bytes")
    message = BytesParser(policy=policy.SMTP).parsebytes(data)
    if not isinstance(message, EmailMessage):  # pragma: no cover - policy.SMTP makes one
        raise MimeError("malformed_message", "cannot parse the message")
    _check_structure(message, limits)
    if message["Date"] is None:
        message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    if message["Message-ID"] is None:
        from_addresses = _addresses(message, "From", required=True)
        message["Message-ID"] = make_msgid(domain=from_addresses[0].rpartition("@")[2])
    if externalise is not None and threshold is not None:
        _externalise_parts(message, externalise, threshold)
    for attachment in attachments or []:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=_clean_header_text(attachment.filename, "file name"),
        )
    for external in external_parts or []:
        if message.get_content_type() != "multipart/mixed":
            message.make_mixed()
        message.attach(_external_part(external))
    result = message.as_bytes(policy=policy.SMTP)
    parse_inner_message(result, limits)
    return result


def _externalise_parts(
    message: EmailMessage, externalise: Callable[[Attachment], ExternalPart], threshold: int
) -> None:
    for part in list(message.walk()):
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for index, child in enumerate(payload):
            if child.is_multipart() or child.get_content_maintype() == "message":
                continue
            if child.get_content_disposition() != "attachment" and not child.get_filename():
                continue
            data = child.get_payload(decode=True)
            if isinstance(data, bytes) and len(data) > threshold:
                attachment = Attachment(
                    filename=str(child.get_filename() or "attachment"),
                    content_type=child.get_content_type(),
                    data=data,
                )
                payload[index] = _external_part(externalise(attachment))


# --- read receipts (RFC 8098), in their own module; imported last: it uses the names above ------
from pli.mime.mdn import (  # noqa: E402
    Disposition,
    DispositionNotification,
    build_mdn,
    is_mdn,
    parse_mdn,
)

__all__ += ["Disposition", "DispositionNotification", "build_mdn", "is_mdn", "parse_mdn"]
