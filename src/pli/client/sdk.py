"""``pli.client.Client``: the messaging API for practice software (REQ-LPS), keys kept here.

Workstation custody (DESIGN "Key custody"): the private key stays in the
professional's PKCS#12 file on this machine. The client does every piece of
cryptography itself: before sending it runs the pre-send checks of
:mod:`pli.policy` (REQ-SUBJECT, REQ-FEW-RECIPIENTS), builds the inner message
with :mod:`pli.mime` (real subject and patient only inside), signs it and
encrypts it (:func:`pli.crypto.seal`) to every current certificate of every
recipient mailbox and of the sending one (REQ-E2E, REQ-SIGNATURE); the server
receives and stores the envelope only. Reading fetches the envelope, opens it
with :func:`pli.crypto.open_envelope` (signature, signer's path to the trust
anchors given here, revocation) and checks the signer against the routing
sender the server reports (docs/api/messaging.md, "One message").

Only the standard library speaks HTTP (``urllib``): no new dependency for
practice software that embeds the SDK. Large attachments (decision 0003) are
encrypted here as a stream (:func:`pli.crypto.encrypt_stream`), uploaded in
chunks that resume after an interruption, and downloaded the same way and
decrypted as they arrive: memory does not grow with their size. The session (the ``pli_session``
cookie and the CSRF token) is kept in a JSON file readable by its owner only
(``0600``, default ``~/.config/pli/session.json``), so that successive ``pli``
commands share one login. See docs/sdk.md.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import io
import ipaddress
import json
import mimetypes
import os
import re
import shutil
import ssl
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message as EmailHeaders
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, BinaryIO, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pli import __version__
from pli.client.castore import write_atomically
from pli.client.i18n import N_, translate
from pli.client.reasons import reason
from pli.client.sealing import _claim_path, _safe_filename
from pli.crypto import (
    Certificate,
    CertificateRevocationList,
    CryptoError,
    NotARecipient,
    OpenedMessage,
    RevocationPolicy,
    SenderMismatch,
    SoftwareKey,
    TrustStore,
    certificate_emails,
    decrypt_stream,
    encrypt_stream,
    load_certificate,
    load_certificates,
    load_crl,
    load_pkcs12,
    open_envelope,
    seal,
    unwrap_private_key_from,
)
from pli.mime import (
    Attachment,
    Disposition,
    DispositionNotification,
    Draft,
    ExternalPart,
    InnerMessage,
    MimeError,
    build_inner_message,
    build_mdn,
    is_mdn,
    parse_inner_message,
    parse_mdn,
)
from pli.mime import normalise_patient_id as _tagged_patient_id
from pli.mime.types import (
    DEFAULT_ATTACHMENT_TYPES,
    AttachmentRefused,
    attachment_type,
    media_type,
)
from pli.policy import Finding, Severity, check_recipients, check_subject, fold_recipients

__all__ = [
    "DEFAULT_ATTACHMENT_TYPES",
    "DEFAULT_MAX_RECIPIENTS",
    "ApiError",
    "AttachmentLimits",
    "AuthenticationRequired",
    "Client",
    "ClientError",
    "Delivery",
    "DirectoryEntry",
    "LoginResult",
    "Mailbox",
    "MessagePage",
    "MessageSummary",
    "OutgoingLetter",
    "PendingUpload",
    "PolicyRefused",
    "ReadMessage",
    "RefusedAttachment",
    "RefusedMessage",
    "SendResult",
    "SignatureStatus",
    "UploadInterrupted",
    "check_attachment_type",
    "default_session_file",
]

#: The server's default ``PLI_MAX_RECIPIENTS``; the server stays the authority.
DEFAULT_MAX_RECIPIENTS = 20
#: How long a CRL fetched from the server is used before it is fetched again (seconds).
CRL_REFRESH_SECONDS = 300.0
#: How the server names message ids: checked before they go into a URL path.
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SESSION_FORMAT = 1
#: The server's defaults (``GET /api/uploads/limits`` gives its actual values).
DEFAULT_MAX_ENVELOPE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_ATTACHMENT_BYTES = 1024 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
#: Room in an envelope for what is not attachments, and how attachments grow in it
#: (base64 in the MIME entity, then the signed entity base64 again: about 1.85x).
_ENVELOPE_ROOM = 256 * 1024
_ENVELOPE_GROWTH_PERCENT = 190
_COPY_BYTES = 1024 * 1024


def default_session_file() -> Path:
    """``$XDG_CONFIG_HOME/pli/session.json``, else ``~/.config/pli/session.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pli" / "session.json"


# --- errors --------------------------------------------------------------------------------------
class ClientError(Exception):
    """Base of the SDK's errors: ``code`` is stable (act on it), ``detail`` is for people.

    Raised as such for local problems (``server_unreachable``, ``bad_server_url``,
    ``attachment_unreadable``, ``attachment_too_large``, ``attachment_type_not_allowed``,
    ``bad_response``…). Keys and signatures raise :class:`pli.crypto.CryptoError`
    (``wrong_passphrase``, ``signer_untrusted``…) and a message that cannot be built
    :class:`pli.mime.MimeError` (``bad_patient_id``, ``bad_header``…): both carry a
    ``code`` and a ``detail`` too (docs/sdk.md, "Errors").

    ``index``: in :meth:`Client.send_batch`, the position in the batch of the
    message that was being checked or sealed when the error arose (``None``
    otherwise, and for a whole batch's refusal: see :attr:`ApiError.refused`).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.index: int | None = None


class ApiError(ClientError):
    """The server refused: its stable ``code``, translated ``message``, HTTP status, ``details``."""

    def __init__(
        self, code: str, message: str, status: int, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(code, message)
        self.message = message
        self.status = status
        self.details: dict[str, Any] = dict(details or {})

    @property
    def refused(self) -> list[RefusedMessage]:
        """For ``batch_refused``: each refused message of the batch, in the batch's order.

        Read from ``details["refused"]``; empty for any other refusal (and for
        items of another shape, which a server of this contract never sends).
        """
        if self.code != "batch_refused":
            return []
        items = self.details.get("refused")
        if not isinstance(items, list):
            return []
        return [RefusedMessage.from_json(item) for item in items if _is_refusal(item)]


class AuthenticationRequired(ApiError):
    """No session, or it ended (idle, expired, revoked): log in again (``not_logged_in``…)."""


class PolicyRefused(ClientError):
    """The pre-send checks refused the message; nothing was sealed nor sent.

    ``code`` is the first refusing finding's code (``subject_contains_patient_id``…);
    ``findings`` holds every finding, warnings included, each with its stable code.
    ``index`` is the refused message's position in :meth:`Client.send_batch`'s
    batch (the first refused one), ``None`` for :meth:`Client.send`.
    """

    def __init__(self, findings: Sequence[Finding], language: str) -> None:
        refusing = [f for f in findings if f.severity is Severity.REFUSE]
        super().__init__(refusing[0].code.value, "; ".join(f.message(language) for f in refusing))
        self.findings = list(findings)

    @property
    def codes(self) -> list[str]:
        """The codes of every refusing finding, in order."""
        return [f.code.value for f in self.findings if f.severity is Severity.REFUSE]


class UploadInterrupted(ClientError):
    """A large attachment's upload stopped (network, server) after its retries.

    ``pending`` holds what resumes it: :meth:`Client.resume_upload`, then give
    it to :meth:`Client.send` among the attachments. Its ciphertext file stays
    on disk until :meth:`PendingUpload.discard`.
    """

    def __init__(self, pending: PendingUpload, cause: ClientError, language: str = "fr") -> None:
        super().__init__(
            "upload_interrupted",
            translate(
                language,
                "le téléversement {upload} s'est arrêté ({code}) : reprenez-le",
                upload=pending.upload_id,
                code=cause.code,
            ),
        )
        self.pending = pending
        self.cause = cause
        #: Other large attachments of the same send, already uploaded (give them too).
        self.completed: list[PendingUpload] = []


# --- results -------------------------------------------------------------------------------------
def _is_refusal(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("index"), int)


@dataclass(frozen=True)
class RefusedMessage:
    """One message of a refused batch (:attr:`ApiError.refused`): its position, and the
    ``code``, ``message`` and ``details`` a single send of it would have been refused with."""

    index: int
    code: str
    message: str
    details: dict[str, Any]

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> RefusedMessage:
        details = data.get("details")
        return RefusedMessage(
            index=int(data["index"]),
            code=str(data.get("code") or ""),
            message=_single_line(str(data.get("message") or "")),
            details=dict(details) if isinstance(details, dict) else {},
        )


@dataclass(frozen=True)
class Mailbox:
    """A mailbox the caller reaches: ``kind`` (``PER``, ``ORG``, ``APP``, ``CAB``), ``part``
    (``owner``, ``member``, ``manager``, ``substitute``), ``unread`` messages in its inbox;
    ``used_bytes`` what it holds (as stored, encrypted) and ``quota_bytes`` its quota: past
    it, senders are refused with ``recipient_mailbox_full``."""

    address: str
    kind: str
    part: str
    active: bool
    unread: int
    used_bytes: int = 0
    quota_bytes: int = 0


@dataclass(frozen=True)
class Delivery:
    """One recipient's copy of a sent message: its ``state`` and when it changed."""

    recipient: str
    state: str
    delivered_at: dt.datetime | None
    read_at: dt.datetime | None

    @staticmethod
    def _from_answer(answer: _Answer) -> Delivery:
        return Delivery(
            recipient=answer.text("recipient"),
            state=answer.text("state"),
            delivered_at=answer.optional_time("delivered_at"),
            read_at=answer.optional_time("read_at"),
        )


@dataclass(frozen=True)
class DirectoryEntry:
    """A mailbox as the directory publishes it (:meth:`Client.directory_entry`).

    For a person's mailbox, ``name``, ``profession`` and ``national_id`` are the
    professional's (REQ-SIGNATURE: the signer shown from the directory); for an
    organisation's, ``service`` and ``organisation`` say which.
    """

    address: str
    kind: str  # PER (a person), ORG (an organisation), APP (software), CAB (a practice)
    name: str | None
    profession: str | None
    national_id: str | None
    identifier_type: str | None
    service: str
    organisation: str | None
    city: str | None

    @staticmethod
    def _from_answer(answer: _Answer) -> DirectoryEntry:
        person = answer.optional_object("professional")
        organisation = answer.optional_object("organisation")
        name = None
        if person is not None:
            parts = [person.text(k) for k in ("civil_title", "first_name", "last_name")]
            name = " ".join(part for part in parts if part) or None
        return DirectoryEntry(
            address=answer.text("address"),
            kind=answer.text("type"),
            name=name,
            profession=(person.text("profession") or None) if person else None,
            national_id=person.text("national_id") if person else None,
            identifier_type=person.text("identifier_type") if person else None,
            service=answer.text("service"),
            organisation=(organisation.text("name") or None) if organisation else None,
            city=(organisation.text("city") or None) if organisation else None,
        )


@dataclass(frozen=True)
class MessageSummary:
    """Routing metadata, as the server knows it (it never sees subject nor body)."""

    id: str
    mailbox: str
    folder: str
    from_: str
    sender_person: str
    received_at: dt.datetime
    size: int
    read: bool
    flagged: bool
    thread: str
    in_reply_to: str | None
    recipients: list[str]
    deliveries: list[Delivery] | None

    @staticmethod
    def _from_answer(answer: _Answer) -> MessageSummary:
        deliveries = answer.optional_objects("deliveries")
        return MessageSummary(
            id=answer.text("id"),
            mailbox=answer.text("mailbox"),
            folder=answer.text("folder"),
            from_=answer.text("from"),
            sender_person=answer.text("sender_person"),
            received_at=answer.time("received_at"),
            size=answer.integer("size"),
            read=answer.flag("read"),
            flagged=answer.flag("flagged"),
            thread=answer.text("thread"),
            in_reply_to=answer.optional_text("in_reply_to"),
            recipients=answer.texts("recipients", optional=True),
            deliveries=(
                [Delivery._from_answer(d) for d in deliveries] if deliveries is not None else None
            ),
        )


@dataclass(frozen=True)
class MessagePage:
    """One page of a folder, newest first (:meth:`Client.inbox`)."""

    results: list[MessageSummary]
    page: int
    has_next: bool


@dataclass(frozen=True)
class LoginResult:
    """Who logged in, and with which factors (``passphrase+totp``…)."""

    username: str
    method: str


@dataclass(frozen=True)
class SendResult:
    """A message the server accepted: its ``id``, ``thread`` and one delivery per recipient."""

    id: str
    thread: str
    deliveries: list[Delivery]
    #: The inner Message-ID (what a reply's In-Reply-To names).
    message_id: str
    #: Findings of the pre-send checks that did not refuse (warnings), for the user to see.
    warnings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class AttachmentLimits:
    """The server's attachment settings (``GET /api/uploads/limits``)."""

    max_attachment_bytes: int
    max_upload_bytes: int
    chunk_bytes: int
    max_envelope_bytes: int
    #: Attachment bytes one envelope carries inline; larger content is streamed.
    inline_attachment_bytes: int
    allowed_types: tuple[str, ...]

    @staticmethod
    def _from_answer(answer: _Answer) -> AttachmentLimits:
        return AttachmentLimits(
            max_attachment_bytes=answer.integer("max_attachment_bytes"),
            max_upload_bytes=answer.integer("max_upload_bytes"),
            chunk_bytes=answer.integer("chunk_bytes"),
            max_envelope_bytes=answer.integer("max_envelope_bytes"),
            inline_attachment_bytes=answer.integer("inline_attachment_bytes"),
            allowed_types=tuple(t.lower() for t in answer.texts("allowed_types")),
        )


@dataclass(frozen=True)
class PendingUpload:
    """A large attachment encrypted here and uploaded (or being uploaded) to the server.

    ``ciphertext`` is the local encrypted file (RFC 8188 stream), ``part`` what
    the sealed message will carry: the digest, and the **key** that opens the
    ciphertext. Keep both as carefully as the file itself; give the pending
    upload to :meth:`Client.send` among the attachments once
    :meth:`Client.resume_upload` has completed it.
    """

    upload_id: str
    ciphertext: Path
    part: ExternalPart

    def discard(self) -> None:
        """Remove the local ciphertext (and its private temporary directory)."""
        self.ciphertext.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.ciphertext.parent.rmdir()


@dataclass(frozen=True)
class SignatureStatus:
    """Who signed, as their certificate (validated to a trust anchor) says (REQ-SIGNATURE).

    A message is only ever returned with ``status == "valid"``: any other outcome
    raises the typed :class:`pli.crypto.SignatureError` instead.
    """

    status: str
    signer_emails: list[str]
    common_name: str | None
    national_id: str | None
    fingerprint: str
    signed_at: dt.datetime | None
    revocation_checked: bool
    chain: list[str]
    warnings: list[str]


@dataclass(frozen=True)
class RefusedAttachment:
    """A received attachment that is not saved (:meth:`ReadMessage.refused_attachments`).

    ``index`` counts the inline attachments first, then the large parts.
    """

    index: int
    filename: str
    code: str
    detail: str


@dataclass(frozen=True)
class ReadMessage:
    """A message opened on this workstation: genuine (signature verified), decrypted here."""

    summary: MessageSummary
    signature: SignatureStatus
    from_address: str
    sender: str | None
    to: list[str]
    cc: list[str]
    subject: str
    date: dt.datetime
    message_id: str
    in_reply_to_header: str | None
    references: list[str]
    patient_id: str | None
    body: str
    body_html: str | None
    attachments: list[Attachment]
    #: Large parts stored outside the envelope (decision 0003): their key and digest,
    #: signed; :meth:`save_attachments` downloads and decrypts them.
    external_parts: list[ExternalPart]
    #: Downloads one external part into a directory (set by :meth:`Client.read`).
    fetch_external: Callable[[ExternalPart, Path], Path] | None = field(
        default=None, repr=False, compare=False
    )
    #: The id of the signed read receipt (RFC 8098 MDN) sent when this read marked it read.
    receipt: str | None = None
    #: Why no receipt went although one was asked (``recipient_not_in_directory``…).
    receipt_error: str | None = None
    #: When this message is itself a read receipt: its RFC 8098 fields (who, which, how).
    notification: DispositionNotification | None = None
    #: The operator's accepted attachment types (``GET /api/uploads/limits``), which
    #: :meth:`save_attachments` applies on this side too.
    allowed_types: tuple[str, ...] = DEFAULT_ATTACHMENT_TYPES
    #: Of the refusals' detail (the reading client's).
    language: str = "fr"

    @property
    def id(self) -> str:
        """The server's id of the message (``msg_…``)."""
        return self.summary.id

    def refused_attachments(self) -> list[RefusedAttachment]:
        """The attachments :meth:`save_attachments` will not write, and why.

        The allow-list is enforced by the sending workstation, since the server
        sees ciphertext only; a sender's software that skipped it (or a sender
        with bad intent) must not get an executable saved on the reader's
        workstation either. So here too: ``attachment_type_not_allowed`` for a
        type the operator does not accept, ``attachment_content_mismatch`` for
        an attachment whose first bytes are not of its type (an executable named
        ``.pdf``). A large part is judged on its declared type (its content is
        on the server until it is downloaded).
        """
        refused = []
        for index, attachment in enumerate(self.attachments):
            try:
                check_attachment_type(
                    attachment.filename,
                    attachment.content_type,
                    attachment.data[:512],
                    self.allowed_types,
                    language=self.language,
                )
            except ClientError as error:
                refused.append(
                    RefusedAttachment(index, attachment.filename, error.code, error.detail)
                )
        for number, part in enumerate(self.external_parts, start=len(self.attachments)):
            try:
                # Its type and name: the content is on the server until it is downloaded.
                check_attachment_type(
                    part.filename,
                    part.content_type,
                    None,
                    self.allowed_types,
                    language=self.language,
                )
            except ClientError as error:
                refused.append(RefusedAttachment(number, part.filename, error.code, error.detail))
        return refused

    def save_attachments(
        self, directory: str | os.PathLike[str], *, any_type: bool = False
    ) -> list[Path]:
        """Write the attachments into ``directory`` (``0600``); never overwrites a file.

        Those :meth:`refused_attachments` names are skipped, unless ``any_type``;
        the paths returned are those written, in the message's order.
        Large attachments are downloaded from the server and decrypted as they
        arrive (a broken connection resumes where it stopped); each is kept only
        if its ciphertext has the SHA-256 the signed message names.
        """
        skipped = set() if any_type else {r.index for r in self.refused_attachments()}
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved: list[Path] = []
        for index, attachment in enumerate(self.attachments):
            if index in skipped:
                continue
            # A plain name (no directories, no hidden file), taken exclusively.
            path = _claim_path(target, _safe_filename(attachment.filename))
            with path.open("wb") as handle:
                handle.write(attachment.data)
            saved.append(path)
        for number, part in enumerate(self.external_parts, start=len(self.attachments)):
            if number in skipped:
                continue
            if self.fetch_external is None:
                # Not read through a Client, whose language would be known: French first.
                raise ClientError(
                    "blob_unavailable",
                    translate(
                        "fr",
                        "ce message n'a pas été lu par un Client : aucun téléchargement possible",
                    ),
                )
            saved.append(self.fetch_external(part, target))
        return saved


# --- HTTP ----------------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib would copy the Cookie header to wherever they point."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


@dataclass
class _Response:
    status: int
    headers: EmailHeaders
    body: bytes
    #: What was asked (``GET /api/mailboxes``: method and path, never a query nor a body),
    #: named by the errors about the answer.
    request: str = ""
    language: str = "fr"

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(
                "bad_response",
                translate(
                    self.language,
                    "la réponse du serveur à {request} n'est pas du JSON",
                    request=self.request,
                ),
            ) from None

    def object(self) -> _Answer:
        """The answer, which must be a JSON object (``unexpected_answer`` otherwise)."""
        return _Answer(self.json(), self.request, self.language)

    def objects(self) -> list[_Answer]:
        """The answer, which must be a JSON list of objects (``unexpected_answer`` otherwise)."""
        data = self.json()
        if not isinstance(data, list):
            raise _unexpected(self.request, self.language, None, _EXPECTED_LIST)
        return [
            _Answer(item, self.request, self.language, f"[{index}]")
            for index, item in enumerate(data)
        ]


#: What a field should have been, for ``unexpected_answer``'s detail.
_EXPECTED_OBJECT = N_("un objet JSON")
_EXPECTED_LIST = N_("une liste JSON")
_EXPECTED_TEXT = N_("un texte")
_EXPECTED_INTEGER = N_("un nombre entier")
_EXPECTED_BOOLEAN = N_("un booléen")
_EXPECTED_TIME = N_("une date ISO 8601")
_MISSING = object()


def _unexpected(
    request: str, language: str, field: str | None, expected: str | None
) -> ClientError:
    """``unexpected_answer``: names the request and the field, never a value (health data)."""
    if field is None:
        wanted = expected or _EXPECTED_OBJECT
        detail = translate(
            language,
            "réponse inattendue du serveur à {request} : ce n'est pas {expected}",
            request=request,
            expected=translate(language, wanted),
        )
    elif expected is None:
        detail = translate(
            language,
            "réponse inattendue du serveur à {request} : le champ « {field} » manque",
            request=request,
            field=field,
        )
    else:
        detail = translate(
            language,
            "réponse inattendue du serveur à {request} : le champ « {field} » n'est pas {expected}",
            request=request,
            field=field,
            expected=translate(language, expected),
        )
    return ClientError("unexpected_answer", detail)


class _Answer:
    """A JSON object the server answered, its fields read with the type each must have.

    A 200 of another shape (a proxy or a captive portal answering in its place,
    another version of the API) becomes ``unexpected_answer`` naming the request
    and the field, where the SDK reads it, rather than a KeyError or TypeError
    that the command line could only call ``internal_error``.
    """

    def __init__(self, data: object, request: str, language: str, where: str = "") -> None:
        if not isinstance(data, dict):
            raise _unexpected(request, language, where or None, _EXPECTED_OBJECT)
        self._data: dict[str, Any] = data
        self._request = request
        self._language = language
        self._where = where

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _value(self, key: str, kind: type, expected: str) -> Any:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            raise _unexpected(self._request, self._language, self._name(key), None)
        # JSON's true and false are not numbers, though Python's bool is an int.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _unexpected(self._request, self._language, self._name(key), expected)
        return value

    def has(self, key: str) -> bool:
        """Whether the field is there and not null."""
        return self._data.get(key) is not None

    def text(self, key: str) -> str:
        return str(self._value(key, str, _EXPECTED_TEXT))

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def integer(self, key: str) -> int:
        return int(self._value(key, int, _EXPECTED_INTEGER))

    def flag(self, key: str) -> bool:
        return bool(self._value(key, bool, _EXPECTED_BOOLEAN))

    def optional_flag(self, key: str) -> bool:
        """``False`` when absent or null."""
        return self.flag(key) if self.has(key) else False

    def time(self, key: str) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(self.text(key))
        except ValueError:
            raise _unexpected(
                self._request, self._language, self._name(key), _EXPECTED_TIME
            ) from None

    def optional_time(self, key: str) -> dt.datetime | None:
        return self.time(key) if self.has(key) else None

    def texts(self, key: str, *, optional: bool = False) -> list[str]:
        """A list of strings; ``optional``: absent or null is an empty list."""
        if optional and not self.has(key):
            return []
        items = self._value(key, list, _EXPECTED_LIST)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                name = f"{self._name(key)}[{index}]"
                raise _unexpected(self._request, self._language, name, _EXPECTED_TEXT)
        return [str(item) for item in items]

    def objects(self, key: str) -> list[_Answer]:
        items = self._value(key, list, _EXPECTED_LIST)
        return [
            _Answer(item, self._request, self._language, f"{self._name(key)}[{index}]")
            for index, item in enumerate(items)
        ]

    def optional_objects(self, key: str) -> list[_Answer] | None:
        return self.objects(key) if self.has(key) else None

    def optional_object(self, key: str) -> _Answer | None:
        if not self.has(key):
            return None
        value = self._value(key, dict, _EXPECTED_OBJECT)
        return _Answer(value, self._request, self._language, self._name(key))


def _single_line(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))


# --- the client ----------------------------------------------------------------------------------
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class OutgoingLetter:
    """One message of :meth:`Client.send_batch`: the parameters of :meth:`Client.send`.

    ``from_`` None: the identity's own mailbox. ``attachments``: paths or
    :class:`pli.mime.Attachment`, carried inside the envelope (a batch streams
    nothing: a message with a larger attachment is sent alone, with
    :meth:`Client.send`). ``reply_headers``: the inner In-Reply-To and References
    of an answer, as :meth:`Client.reply` sets them.
    """

    from_: str | None
    to: Sequence[str]
    subject: str
    body: str
    patient_id: str | None = None
    attachments: Sequence[PathLike | Attachment] = ()
    in_reply_to: str | None = None
    patient_names: Sequence[str] = ()
    reply_headers: tuple[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.to, str):
            raise TypeError("to is a list of addresses, not one string")
        if any(isinstance(item, PendingUpload) for item in self.attachments):
            # Sealing would leave it out: an uploaded attachment goes with send alone.
            raise TypeError("an OutgoingLetter carries inline attachments only, not uploads")
        # Tuples: a letter kept in a queue, then sent, is the one that was written.
        object.__setattr__(self, "to", tuple(self.to))
        object.__setattr__(self, "attachments", tuple(self.attachments))
        object.__setattr__(self, "patient_names", tuple(self.patient_names))


#: The largest answer the SDK reads into memory (an envelope or a JSON document), unless
#: the server's own envelope limit (``GET /api/uploads/limits``) asks for more; a large
#: attachment is streamed to disk, never read whole.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: The largest error answer read: a code and a sentence, with room to spare.
MAX_ERROR_ANSWER_BYTES = 1024 * 1024


class Client:
    """A Pli server's messaging API, with the cryptography done on this workstation.

    ``identity``: the PKCS#12 file holding the personal key and its certificate
    (or a :class:`pli.crypto.SoftwareKey`); ``passphrase`` opens it (a string, or
    a function asked only when the key is first needed). ``trust``: PEM files of
    the trust anchors (the operator's CA), and ``crl`` their CRLs: signers and
    recipients' certificates are validated against them. Without a CRL,
    revocation is checked only where one is known, and reported as not checked.
    ``session_file`` keeps the session between processes (``0600``).

    Large attachments: ``inline_threshold`` (bytes; default: what the server's
    envelope limit allows, ``GET /api/uploads/limits``) is the size above which
    an attachment is streamed rather than put in the envelope; ``chunk_bytes``
    the size of each uploaded chunk (at most the server's, 8 MiB);
    ``upload_retries`` how many failures in a row an upload or a download
    survives (each resumes where the server is); ``allowed_types`` narrows the
    server's list of attachment types; ``work_dir`` is where ciphertext waits
    while it is uploaded (the system's temporary directory by default).
    """

    def __init__(
        self,
        base_url: str,
        *,
        identity: PathLike | SoftwareKey | None = None,
        passphrase: str | Callable[[], str] | None = None,
        trust: Sequence[PathLike | Certificate] | TrustStore | None = None,
        crl: Sequence[PathLike | CertificateRevocationList] = (),
        session_file: PathLike | None = None,
        language: str = "fr",
        timeout: float = 60.0,
        tls_ca: PathLike | None = None,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
        inline_threshold: int | None = None,
        chunk_bytes: int | None = None,
        upload_retries: int = 5,
        allowed_types: Sequence[str] | None = None,
        work_dir: PathLike | None = None,
        fetch_crl: bool = True,
        unchecked_revocation: bool = False,
    ) -> None:
        #: Of the server's messages (Accept-Language) and of this SDK's errors' detail.
        self.language = language
        #: Without ``crl=``, fetch the operator CA's CRL from the server (kept only if the
        #: trust anchors signed it) and require revocation checks against it.
        self.fetch_crl = fetch_crl
        #: Seal for recipients' certificates whose revocation could not be checked (no
        #: CRL given, none published): refused unless the caller accepts it knowingly.
        self.unchecked_revocation = unchecked_revocation
        try:
            parsed = urllib.parse.urlsplit(base_url)
        except ValueError:  # "http://[::1": an unclosed IPv6 bracket
            parsed = urllib.parse.SplitResult("", "", "", "", "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ClientError(
                "bad_server_url",
                translate(language, "ce n'est pas une URL http(s) : {url!r}", url=base_url),
            )
        if parsed.scheme == "http" and not _loopback(parsed.hostname or ""):
            # The passphrase, the TOTP code, the session and every answer the routing
            # checks rely on would cross the network in clear: only this machine's own
            # server (the demo) is spoken to without TLS.
            raise ClientError(
                "insecure_server_url",
                translate(
                    language,
                    "le serveur {url} n'est pas joint en https : seul un serveur de ce"
                    " poste (127.0.0.1, localhost) peut l'être en http",
                    url=base_url,
                ),
            )
        self.base_url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        #: Django checks the Origin of unsafe requests against its own host (CSRF, over HTTPS).
        self._origin = f"{parsed.scheme}://{parsed.netloc}"
        self.timeout = timeout
        self.max_recipients = max_recipients
        self.inline_threshold = inline_threshold
        self.chunk_bytes = chunk_bytes
        self.upload_retries = upload_retries
        self.allowed_types = (
            tuple(t.strip().lower() for t in allowed_types) if allowed_types is not None else None
        )
        self.work_dir = _path(work_dir) if work_dir else None
        #: Seconds before the first retry of an upload or download (doubling, at most 10).
        self.retry_delay = 0.5
        self._limits: AttachmentLimits | None = None
        self.session_file = _path(session_file) if session_file else default_session_file()
        self._identity_source = identity
        self._passphrase = passphrase
        self._key: SoftwareKey | None = identity if isinstance(identity, SoftwareKey) else None
        self._chain: list[Certificate] = []
        #: Keys of organisational mailboxes, opened here from their member-wrapped form.
        self._shared_keys: dict[str, list[SoftwareKey]] = {}
        self._trust_source = trust
        self._crl_source = crl
        self._trust: TrustStore | None = trust if isinstance(trust, TrustStore) else None
        #: When a store built on the server's CRL is to be built again (``time.monotonic``).
        self._trust_until: float | None = None
        context = ssl.create_default_context(cafile=str(_path(tls_ca)) if tls_ca else None)
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )
        self._cookies: dict[str, str] = {}
        self._csrf: str | None = None
        self.username: str | None = None
        self._load_session()

    # --- session file ----------------------------------------------------------------------------
    @staticmethod
    def _read_session_file(path: Path, language: str) -> dict[str, Any]:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return {"version": _SESSION_FORMAT, "servers": {}}
        # It holds a bearer secret (the session cookie): like ssh with its keys, refuse
        # to use one that others could have read.
        if mode & 0o077:
            raise ClientError(
                "session_file_insecure",
                translate(
                    language,
                    "{path} est lisible par d'autres : supprimez-le (chmod 600 ne rattraperait"
                    " pas une fuite)",
                    path=path,
                ),
            )
        corrupted = translate(language, "{path} n'est pas une session Pli", path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ClientError("session_file_corrupted", corrupted) from None
        if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
            raise ClientError("session_file_corrupted", corrupted)
        return data

    @staticmethod
    def saved_server(session_file: PathLike | None = None, *, language: str = "fr") -> str | None:
        """The server of the last login kept in ``session_file`` (the CLI's default).

        ``language``: of the errors' detail, as :attr:`language` for a client.
        """
        path = _path(session_file) if session_file else default_session_file()
        current = Client._read_session_file(path, language).get("current")
        return str(current) if current else None

    def _load_session(self) -> None:
        servers = self._read_session_file(self.session_file, self.language)["servers"]
        entry = servers.get(self.base_url) or {}
        cookies = entry.get("cookies") or {}
        self._cookies = {str(k): str(v) for k, v in cookies.items()}
        self._csrf = entry.get("csrf_token") or None
        self.username = entry.get("username") or None

    def _save_session(self) -> None:
        data = self._read_session_file(self.session_file, self.language)
        if self._cookies or self._csrf:
            data["servers"][self.base_url] = {
                "cookies": self._cookies,
                "csrf_token": self._csrf,
                "username": self.username,
            }
            if self.username:
                data["current"] = self.base_url
        else:
            data["servers"].pop(self.base_url, None)
        self.session_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        write_atomically(self.session_file, payload, 0o600)

    def _forget_session(self) -> None:
        self._cookies = {}
        self._csrf = None
        self.username = None
        self._save_session()

    # --- HTTP ------------------------------------------------------------------------------------
    def _absorb_cookies(self, headers: EmailHeaders) -> bool:
        changed = False
        for line in headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(line)
            except CookieError:
                continue
            for name, morsel in jar.items():
                expired = morsel["max-age"] == "0" or (
                    morsel["expires"] and "1970" in morsel["expires"]
                )
                if expired:
                    changed |= self._cookies.pop(name, None) is not None
                elif self._cookies.get(name) != morsel.value:
                    self._cookies[name] = morsel.value
                    changed = True
        return changed

    def _send_request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        accept: str = "application/json",
        raw: bytes | None = None,
    ) -> _Response:
        request = self._request(method, path, query=query, body=body, accept=accept, raw=raw)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                data = self._read_capped(answer, self._answer_cap(), method, path)
                response = _Response(answer.status, answer.headers, data)
        except urllib.error.HTTPError as error:
            data = self._read_capped(error, MAX_ERROR_ANSWER_BYTES, method, path)
            response = _Response(error.code, error.headers, data)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        response.request = f"{method} {path}"
        response.language = self.language
        if self._absorb_cookies(response.headers):
            self._save_session()
        return response

    def _answer_cap(self) -> int:
        """The largest answer read into memory: an envelope at the server's limit, with
        room for its JSON; at least :data:`MAX_ANSWER_BYTES`."""
        limits = self._limits
        return max(MAX_ANSWER_BYTES, 2 * limits.max_envelope_bytes if limits else 0)

    def _read_capped(self, answer: Any, cap: int, method: str, path: str) -> bytes:
        """The body of ``answer``, refused past ``cap`` bytes: a server (or whoever answers
        in its place) cannot exhaust this workstation's memory with an endless body."""
        declared = answer.headers.get("Content-Length") if answer.headers else None
        if declared is not None and declared.isdigit() and int(declared) > cap:
            data = b""
        else:
            data = answer.read(cap + 1)
            if len(data) <= cap:
                return bytes(data)
        raise ClientError(
            "answer_too_large",
            translate(
                self.language,
                "la réponse du serveur à {request} dépasse {size} octets",
                request=f"{method} {path}",
                size=cap,
            ),
        )

    def _unreachable(self, error: Exception) -> ClientError:
        reason = getattr(error, "reason", error)
        return ClientError(
            "server_unreachable",
            translate(
                self.language,
                "{server} injoignable : {reason}",
                server=self.base_url,
                reason=reason,
            ),
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        accept: str = "application/json",
        raw: bytes | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> urllib.request.Request:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {
            "Accept": accept,
            "Accept-Language": self.language,
            "User-Agent": f"pli-sdk/{__version__}",
            **(extra or {}),
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        if method in _UNSAFE_METHODS:
            headers["Origin"] = self._origin
            if self._csrf:
                headers["X-CSRFToken"] = self._csrf
            if data is None:
                data = b""
        if self._cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
        # The scheme is http(s), checked in __init__ (S310 warns of file: URLs).
        return urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310

    def _open_stream(
        self, path: str, *, query: Mapping[str, str] | None = None, start: int = 0
    ) -> http.client.HTTPResponse:
        """``GET path`` (from byte ``start``), its body left unread for the caller to stream."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        request = self._request(
            "GET", path, query=query, accept="application/octet-stream", extra=extra
        )
        try:
            answer = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            data = self._read_capped(error, MAX_ERROR_ANSWER_BYTES, "GET", path)
            failed = _Response(error.code, error.headers, data)
            self._absorb_cookies(failed.headers)
            raise self._error(failed) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        if self._absorb_cookies(answer.headers):
            self._save_session()
        return cast("http.client.HTTPResponse", answer)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        accept: str = "application/json",
        ok: Iterable[int] = (200, 201),
        raw: bytes | None = None,
    ) -> _Response:
        if method in _UNSAFE_METHODS and not self._csrf:
            self._refresh_csrf()
        response = self._send_request(method, path, query=query, body=body, accept=accept, raw=raw)
        if response.status == 403 and self._is_csrf_failure(response):
            # The token rotates at login and with the CSRF cookie: fetch the current one once.
            self._refresh_csrf()
            response = self._send_request(
                method, path, query=query, body=body, accept=accept, raw=raw
            )
        if response.status not in set(ok):
            raise self._error(response)
        return response

    @staticmethod
    def _is_csrf_failure(response: _Response) -> bool:
        try:
            data = json.loads(response.body)
        except ValueError:
            return False
        return isinstance(data, dict) and (
            data.get("code") == "csrf_failed" or data.get("detail") == "CSRF check Failed"
        )

    def _refresh_csrf(self) -> None:
        response = self._send_request("GET", "/api/auth/csrf")
        if response.status != 200:
            raise self._error(response)
        self._csrf = response.object().text("csrf_token")
        self._save_session()

    def _error(self, response: _Response) -> ApiError:
        status = response.status
        try:
            data = json.loads(response.body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        code = data.get("code")
        detail = data.get("detail")
        message = str(data.get("message") or (detail if isinstance(detail, str) else "") or "")
        if 300 <= status < 400:
            code = "unexpected_redirect"
            message = translate(
                self.language, "le serveur a redirigé la requête ({status})", status=status
            )
        elif not isinstance(code, str) or not code:
            # django-ninja's own answers carry no code: give them stable ones.
            if status == 401:
                code = "not_logged_in"
            elif status == 403 and detail == "CSRF check Failed":
                code = "csrf_failed"
            elif status == 422:
                code = "bad_request"
            else:
                code = f"http_{status}"
        message = _single_line(message) or f"HTTP {status}"
        if status == 401:
            if code in ("not_logged_in", "session_ended"):
                # The server holds no session for this cookie any more: stop sending it.
                self._forget_session()
            return AuthenticationRequired(code, message, status, data.get("details"))
        return ApiError(code, message, status, data.get("details"))

    # --- authentication --------------------------------------------------------------------------
    def login(self, username: str, passphrase: str, code: str | Callable[[], str]) -> LoginResult:
        """Passphrase, then second factor (TOTP or recovery code; a function is asked
        only once the passphrase is accepted). The session is saved to ``session_file``."""
        # From a clean slate: a stale session cookie would make the server answer
        # session_ended (its guard runs before any view), even to this login.
        self._cookies = {}
        self._csrf = None
        self._refresh_csrf()
        step = self._call(
            "POST", "/api/auth/login", body={"username": username, "passphrase": passphrase}
        ).object()
        following = step.optional_text("next")
        if following != "second_factor":
            raise ClientError(
                "bad_response",
                translate(
                    self.language, "étape de connexion inattendue : {step!r}", step=following
                ),
            )
        typed = code() if callable(code) else code
        done = self._call("POST", "/api/auth/second-factor", body={"code": typed}).object()
        csrf, username, method = done.text("csrf_token"), done.text("username"), done.text("method")
        self._csrf = csrf
        self.username = username
        self._save_session()
        return LoginResult(username=username, method=method)

    def logout(self) -> None:
        """End the session on the server (it is revoked) and forget it here."""
        try:
            if self._cookies:
                self._call("POST", "/api/auth/logout")
        except AuthenticationRequired:
            pass  # already ended on the server's side: forgetting it here is all that is left
        finally:
            self._forget_session()

    # --- listings --------------------------------------------------------------------------------
    def mailboxes(self) -> list[Mailbox]:
        """The caller's mailboxes: their own first, then those they are member of."""
        return [
            Mailbox(
                address=m.text("address"),
                kind=m.text("kind"),
                part=m.text("part"),
                active=m.flag("active"),
                unread=m.integer("unread"),
                used_bytes=m.integer("used_bytes"),
                quota_bytes=m.integer("quota_bytes"),
            )
            for m in self._call("GET", "/api/mailboxes").objects()
        ]

    def inbox(
        self, mailbox: str | None = None, folder: str = "inbox", page: int = 1
    ) -> MessagePage:
        """One page (50) of a folder's messages, newest first: metadata only."""
        if mailbox is None:
            own = self.mailboxes()
            if not own:
                raise ClientError(
                    "no_mailbox",
                    translate(self.language, "ce compte n'accède à aucune boîte de messagerie"),
                )
            mailbox = own[0].address
        path = f"/api/mailboxes/{urllib.parse.quote(mailbox, safe='@')}/messages"
        data = self._call("GET", path, query={"folder": folder, "page": str(page)}).object()
        return MessagePage(
            results=[MessageSummary._from_answer(m) for m in data.objects("results")],
            page=data.integer("page"),
            has_next=data.flag("has_next"),
        )

    def message(self, message_id: str, mailbox: str | None = None) -> MessageSummary:
        """A message's metadata (with the deliveries, on the sending mailbox's copy)."""
        return MessageSummary._from_answer(
            self._call("GET", self._message_path(message_id), query=_mailbox(mailbox)).object()
        )

    # --- folders and marks -----------------------------------------------------------------------
    def move(self, message_id: str, folder: str, mailbox: str | None = None) -> MessageSummary:
        """Move the mailbox's copy to ``folder``: ``inbox``, ``archive`` or ``trash`` for a
        received copy, ``sent``, ``archive`` or ``trash`` for the sending mailbox's
        (``bad_folder`` otherwise). Only this mailbox's copy moves; traced."""
        path = self._message_path(message_id, "/move")
        answer = self._call("POST", path, query=_mailbox(mailbox), body={"folder": folder})
        return MessageSummary._from_answer(answer.object())

    def flag(
        self, message_id: str, flagged: bool = True, mailbox: str | None = None
    ) -> MessageSummary:
        """Set the copy's flag (clear it with ``flagged=False``), shared by the mailbox's people."""
        path = self._message_path(message_id, "/flag")
        answer = self._call("POST", path, query=_mailbox(mailbox), body={"flagged": flagged})
        return MessageSummary._from_answer(answer.object())

    def delete(
        self, message_id: str, mailbox: str | None = None, *, permanent: bool = False
    ) -> bool:
        """Move the copy to the trash; with ``permanent``, delete a copy that is in the
        trash for good (a copy elsewhere goes to the trash: never gone in one step).

        Returns ``True`` when the copy is gone for good (the other mailboxes'
        copies are not touched; the sender still sees the delivery state). Safe to
        repeat: without ``permanent``, a copy already in the trash stays there.
        """
        path = self._message_path(message_id)
        query = {**_mailbox(mailbox), **({"permanent": "true"} if permanent else {})}
        answer = self._call("DELETE", path, query=query).object()
        return answer.flag("deleted")

    def _message_path(self, message_id: str, suffix: str = "") -> str:
        if not message_id or not set(message_id) <= _ID_CHARS or len(message_id) > 64:
            raise ClientError(
                "bad_message_id",
                translate(
                    self.language,
                    "un identifiant de message s'écrit msg_ suivi de 32 chiffres hexadécimaux",
                ),
            )
        return f"/api/messages/{message_id}{suffix}"

    # --- keys and trust --------------------------------------------------------------------------
    def _identity(self) -> SoftwareKey:
        if self._key is not None:
            return self._key
        if self._identity_source is None or isinstance(self._identity_source, SoftwareKey):
            raise ClientError(
                "identity_missing",
                translate(self.language, "indiquez le fichier d'identité PKCS#12 (identity=)"),
            )
        secret = self._passphrase() if callable(self._passphrase) else self._passphrase
        if not secret:
            raise ClientError(
                "passphrase_missing",
                translate(self.language, "le fichier d'identité demande sa phrase secrète"),
            )
        contents = load_pkcs12(_path(self._identity_source).read_bytes(), secret)
        if contents.certificate is None:
            raise ClientError(
                "certificate_missing",
                translate(
                    self.language,
                    "le fichier d'identité ne contient aucun certificat : installez-le"
                    " (pli keys install)",
                ),
            )
        self._key = contents.software_key()
        self._chain = contents.chain
        return self._key

    def _published_crl(self) -> CertificateRevocationList | None:
        """The operator CA's CRL as the server publishes it (``GET /api/directory/crl``).

        The server cannot forge it: the trust store keeps a CRL only if one of the
        anchors signed it, and a stale one (past its nextUpdate) covers nothing, so
        revocation then fails closed (``revocation_unknown``). ``None`` when the
        server publishes none (an operator without a CA of its own, an older server).
        """
        try:
            answer = self._call("GET", "/api/directory/crl", accept="application/x-pem-file")
        except ApiError as error:
            if error.status == 404:  # crl_unavailable, or a server without the endpoint
                return None
            raise
        try:
            return load_crl(answer.body)
        except CryptoError:
            raise ClientError(
                "bad_response",
                translate(
                    self.language, "la liste de révocation publiée par le serveur est illisible"
                ),
            ) from None

    def _trust_store(self) -> TrustStore:
        if self._trust is not None and (
            self._trust_until is None or time.monotonic() < self._trust_until
        ):
            return self._trust
        if not self._trust_source:
            raise ClientError(
                "trust_missing",
                translate(
                    self.language,
                    "indiquez les ancres de confiance (le fichier PEM de l'autorité de"
                    " certification de l'opérateur, trust=)",
                ),
            )
        anchors: list[Certificate] = []
        for item in cast("Sequence[PathLike | Certificate]", self._trust_source):
            if isinstance(item, str | os.PathLike):
                anchors += load_certificates(_path(item).read_bytes())
            else:
                anchors.append(item)
        crls = [
            load_crl(_path(item).read_bytes()) if isinstance(item, str | os.PathLike) else item
            for item in self._crl_source
        ]
        self._trust_until = None
        if not crls and self.fetch_crl:
            published = self._published_crl()
            crls = [published] if published is not None else []
            # A long-running process (practice software) asks again: a revocation must
            # reach it within minutes, and a list past its nextUpdate covers nothing.
            lifetime = CRL_REFRESH_SECONDS
            if published is not None and published.next_update_utc is not None:
                left = (published.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
                lifetime = max(0.0, min(lifetime, left))
            self._trust_until = time.monotonic() + lifetime
        # With a CRL, revocation is required (fail closed); without, checked where known
        # and reported as not checked (SignatureStatus.revocation_checked).
        policy = RevocationPolicy.REQUIRE if crls else RevocationPolicy.IF_AVAILABLE
        self._trust = TrustStore(anchors, crls, policy)
        return self._trust

    def mailbox_keys(self, address: str) -> list[SoftwareKey]:
        """The keys of the organisational mailbox ``address`` that this member holds.

        The server keeps them wrapped to the member's own certificates
        (``GET /api/accounts/keys/shared``); they are opened here with the
        workstation's key, and each must belong to a certificate that names the
        mailbox and chains to this workstation's trust anchors: the current one
        now (``mailbox_certificate_untrusted`` otherwise), an older one as it was
        when issued (one that does not is left out). The current key comes first;
        older ones open the mail sealed before a rotation.
        """
        address = address.strip().lower()
        cached = self._shared_keys.get(address)
        if cached is not None:
            return cached
        data = self._call("GET", "/api/accounts/keys/shared", query={"address": address}).object()
        member = self._identity()
        trust = self._trust_store()
        keys: list[SoftwareKey] = []
        for item in data.optional_objects("keys") or []:
            certificate = load_certificate(item.text("certificate").encode())
            if address not in certificate_emails(certificate):
                raise ClientError(
                    "certificate_address_mismatch",
                    translate(
                        self.language,
                        "une clé proposée pour {address} appartient à une autre adresse",
                        address=address,
                    ),
                )
            if item.optional_flag("current"):
                try:
                    trust.verify_signer(certificate)
                except CryptoError as error:
                    raise ClientError(
                        "mailbox_certificate_untrusted",
                        translate(
                            self.language,
                            "le certificat de {address} n'est pas valide sur ce poste ({code})",
                            address=address,
                            code=error.code,
                        ),
                    ) from None
            else:
                # An older key: its certificate was revoked at the rotation, and may have
                # expired; it must still have been issued by the operator, or a server
                # could slip in a key of its own making, and a copy it sealed for that
                # key would pass for one in this mailbox (_open: the key proves it).
                try:
                    trust.verify_issued(certificate)
                except CryptoError:
                    continue
            wrapped = item.text("wrapped_key")
            try:
                key = unwrap_private_key_from(
                    base64.b64decode(wrapped, validate=True), member, certificate
                )
            except (CryptoError, ValueError):
                continue  # wrapped to another of the member's keys (another workstation)
            keys.append(SoftwareKey(key, certificate))
        self._shared_keys[address] = keys
        return keys

    def _open(self, envelope: bytes, mailbox: str) -> OpenedMessage:
        """Open with the key of ``mailbox``: the workstation's own when its certificate
        names it, else the organisational mailbox's keys this member holds.

        The key that opens the envelope proves the mailbox the server says the copy
        is in: a copy said to be in another mailbox than the key's is not opened, so
        that a receipt or a reply never goes out from, and sealed to, a mailbox the
        server chose (DESIGN: the server never reads a message).
        """
        key = self._identity()
        trust = self._trust_store()
        address = mailbox.strip().lower()
        if address in certificate_emails(key.certificate):
            return open_envelope(envelope, key, trust)
        try:
            held = self.mailbox_keys(address)
        except ApiError as error:
            if error.status != 404:
                raise
            held = []  # not a member of a shared mailbox of that address
        for shared in held:  # each names the mailbox (mailbox_keys checks it)
            try:
                return open_envelope(envelope, shared, trust)
            except NotARecipient:
                continue
        raise NotARecipient(
            translate(
                self.language,
                "ce message n'a été chiffré pour aucune des clés que vous détenez ({mailbox})",
                mailbox=mailbox,
            )
        )

    def directory_entry(self, address: str) -> DirectoryEntry | None:
        """``address`` as the directory publishes it; ``None`` if no active mailbox has it.

        Red-listed mailboxes are found too: the address is exact, and the caller
        is logged in (``GET /api/directory/mailboxes/{address}``).
        """
        path = f"/api/directory/mailboxes/{urllib.parse.quote(address.strip(), safe='@')}"
        try:
            return DirectoryEntry._from_answer(self._call("GET", path).object())
        except ApiError as error:
            if error.code == "mailbox_not_found":
                return None
            raise

    def certificates(self, address: str) -> list[Certificate]:
        """The current certificates the directory lists for ``address`` (not yet validated)."""
        data = self._call("GET", "/api/directory/certificates", query={"address": address}).object()
        return [
            c
            for entry in data.objects("certificates")
            for c in load_certificates(entry.text("pem").encode())
        ]

    def _validated_certificates(self, address: str) -> list[Certificate] | None:
        """``address``'s certificates, each checked to name it and to chain to our anchors.

        ``None`` when the directory does not know the address: the server then
        refuses the send with its own code (``recipient_not_in_directory``).
        A server cannot slip in a key of its own: it would not chain to the
        anchors this workstation trusts, or would not name the address.
        """
        try:
            found = self.certificates(address)
        except ApiError as error:
            if error.code == "mailbox_not_found":
                return None
            raise
        trust = self._trust_store()
        for certificate in found:
            if address.strip().lower() not in certificate_emails(certificate):
                raise ClientError(
                    "certificate_address_mismatch",
                    translate(
                        self.language,
                        "le certificat de l'annuaire pour {address} désigne une autre adresse",
                        address=address,
                    ),
                )
            try:
                checked = trust.verify_signer(certificate)
            except CryptoError as error:
                raise ClientError(
                    "recipient_certificate_untrusted",
                    translate(
                        self.language,
                        "un certificat de {address} n'est pas valide sur ce poste ({code}) :"
                        " {detail}",
                        address=address,
                        code=error.code,
                        detail=reason(self.language, error.code, error.detail, error),
                    ),
                ) from None
            if not checked.revocation_checked and not self.unchecked_revocation:
                # A server that withholds its CRL must not get new mail sealed for a
                # revoked (stolen) key: sealing fails closed, as reading reports it.
                raise ClientError(
                    "recipient_revocation_unknown",
                    translate(
                        self.language,
                        "la révocation du certificat de {address} n'a pas pu être vérifiée :"
                        " le serveur ne publie pas de liste de révocation ; indiquez celle"
                        " de l'autorité de l'opérateur (--crl)",
                        address=address,
                    ),
                )
        return found

    # --- sending ---------------------------------------------------------------------------------
    def send(  # noqa: PLR0917 - the documented order of the issue's operation
        self,
        from_: str | None,
        to: Sequence[str],
        subject: str,
        body: str,
        patient_id: str | None = None,
        attachments: Sequence[PathLike | Attachment | PendingUpload] = (),
        in_reply_to: str | None = None,
        *,
        patient_names: Sequence[str] = (),
        reply_headers: tuple[str, list[str]] | None = None,
    ) -> SendResult:
        """Check, seal on this workstation, send. ``from_`` None: the identity's own mailbox.

        ``patient_id``: the patient's NIR/INS or NISS (inside the message as
        ``X-MSS-Patient-Id``; to the server for the opposition check, which keeps
        a keyed hash only). ``patient_names``: the patient's names, so that the
        subject check finds them too. ``in_reply_to``: the server id of the message
        answered (the thread); :meth:`reply` also sets the inner In-Reply-To.

        Raises :class:`PolicyRefused` before anything is opened or sent;
        :class:`ClientError` for an attachment (``attachment_unreadable``,
        ``attachment_too_large``, ``attachment_type_not_allowed``…) before anything
        is sent; :class:`ApiError` when the server refuses; :class:`UploadInterrupted`
        when a large attachment's upload stops (resumable; any other failure removes
        the uploads of this send, best effort).
        """
        letter = OutgoingLetter(
            from_,
            to,
            subject,
            body,
            patient_id,
            [item for item in attachments if not isinstance(item, PendingUpload)],
            in_reply_to,
            patient_names,
            reply_headers,
        )
        prepared = self._prepare(
            self._check(letter),
            pending=[item for item in attachments if isinstance(item, PendingUpload)],
        )
        plan = prepared.plan
        created: list[PendingUpload] = []
        try:
            streamed = [*plan.pending, *self._upload_sources(plan.stream, created)]
            sealed = prepared.seal(plan.inline_attachments(), streamed)
            if plan.inline and plan.limits and sealed.size > plan.limits.max_envelope_bytes:
                # Still too large (a long body, an attachment that grew more than 1.9x):
                # every attachment goes out of the envelope, which must then fit.
                streamed += self._upload_sources(plan.inline, created)
                sealed = prepared.seal([], streamed)
            data = self._call("POST", "/api/messages", body=sealed.payload, ok=(201,)).object()
        except UploadInterrupted as interrupted:
            # Resumable: the interrupted upload and those already complete stay (see
            # UploadInterrupted.completed); their ciphertext files too.
            interrupted.completed = [p for p in created if p is not interrupted.pending]
            raise
        except BaseException:
            self._abandon(created)
            raise
        for pending in created:
            pending.discard()
        return prepared.result(data, sealed)

    def send_batch(self, messages: Sequence[OutgoingLetter]) -> list[SendResult]:
        """Check and seal every message here, then send them in one request: all, or none.

        For practice software with many messages at once (a laboratory's
        results: REQ-LPS). Each :class:`OutgoingLetter` gets exactly the checks
        and the sealing of :meth:`send`; the batch goes in one
        ``POST /api/messages/batch``, which the server stores whole or not at all.
        Returns one :class:`SendResult` per message, in the batch's order.

        Raises, before any message is sent: :class:`ClientError` ``no_message``
        for an empty batch (without asking the server anything);
        :class:`PolicyRefused` for the first message the pre-send checks refuse
        (before any request, its ``index`` naming it);
        ``batch_attachment_too_large`` for a message that :meth:`send` would
        have to stream an attachment of (nothing is uploaded in a batch: send it
        alone); ``batch_too_large`` when the envelopes together exceed the
        server's ``max_envelope_bytes`` (:meth:`limits`; ``index`` is the first
        message that does not fit: split the batch there); and any error of
        :meth:`send` about one message, its ``index`` set. :class:`ApiError`
        when the server refuses: ``batch_refused`` lists each refused message
        (:attr:`ApiError.refused`), ``too_many_messages`` (more than
        ``PLI_MAX_BATCH_MESSAGES``, 100 by default; ``details["limit"]``).
        """
        letters = list(messages)
        if not letters:
            raise ClientError(
                "no_message", translate(self.language, "le lot ne contient aucun message")
            )
        checked: list[_Checked] = []
        # The pre-send checks of every message come first: a refused subject stops the
        # batch before any key is opened or any request is made.
        for index, letter in enumerate(letters):
            if not isinstance(letter, OutgoingLetter):
                raise TypeError(f"message {index} is not an OutgoingLetter")
            with _batch_message(index):
                checked.append(self._check(letter))
        limits = self.limits()
        # A laboratory writes to the same few doctors: each address's certificates are
        # fetched and validated once per batch.
        certificates: dict[str, list[Certificate] | None] = {}
        prepared: list[tuple[_Prepared, _Sealed]] = []
        total = 0
        for index, one in enumerate(checked):
            with _batch_message(index):
                ready = self._prepare(one, certificates=certificates)
                streamed = [source.filename for source in ready.plan.stream]
                sealed = None if streamed else ready.seal(ready.plan.inline_attachments(), [])
                # A batch carries envelopes only: what send would upload (an attachment
                # over the inline threshold, or one that leaves the envelope too large)
                # cannot go, and nothing is uploaded for a batch that may be refused whole.
                if sealed is None or (
                    ready.plan.inline and sealed.size > limits.max_envelope_bytes
                ):
                    raise ClientError(
                        "batch_attachment_too_large",
                        translate(
                            self.language,
                            "message {index} : {names} trop volumineux pour tenir dans"
                            " l'enveloppe : envoyez ce message seul (send)",
                            index=index,
                            names=", ".join(streamed),
                        )
                        if streamed
                        else translate(
                            self.language,
                            "message {index} : ses pièces jointes sont trop volumineuses pour"
                            " tenir dans l'enveloppe : envoyez ce message seul (send)",
                            index=index,
                        ),
                    )
                total += sealed.size
                if total > limits.max_envelope_bytes:
                    raise ClientError(
                        "batch_too_large",
                        translate(
                            self.language,
                            "les enveloppes jusqu'au message {index} dépassent les {limit} octets"
                            " admis par le serveur : scindez le lot avant ce message",
                            index=index,
                            limit=limits.max_envelope_bytes,
                        ),
                    )
            prepared.append((ready, sealed))
        response = self._call(
            "POST",
            "/api/messages/batch",
            body={"messages": [sealed.payload for _ready, sealed in prepared]},
            ok=(201,),
        )
        data = response.json()
        answers = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(answers, list) or len(answers) != len(prepared):
            raise ClientError(
                "bad_response",
                translate(
                    self.language, "la réponse du serveur ne reprend pas chacun des messages"
                ),
            )
        return [
            ready.result(
                _Answer(answer, response.request, self.language, f"messages[{index}]"), sealed
            )
            for index, ((ready, sealed), answer) in enumerate(zip(prepared, answers, strict=True))
        ]

    def _check(self, letter: OutgoingLetter) -> _Checked:
        """The pre-send checks (REQ-SUBJECT, REQ-FEW-RECIPIENTS): local, nothing asked yet."""
        patient = _tagged_patient_id(letter.patient_id) if letter.patient_id else None
        findings = check_recipients(letter.to, self.max_recipients) + check_subject(
            letter.subject,
            patient_names=list(letter.patient_names),
            patient_ids=[letter.patient_id] if letter.patient_id else [],
        )
        if any(f.severity is Severity.REFUSE for f in findings):
            raise PolicyRefused(findings, self.language)
        return _Checked(letter, patient, findings)

    def _prepare(
        self,
        checked: _Checked,
        *,
        pending: Sequence[PendingUpload] = (),
        certificates: dict[str, list[Certificate] | None] | None = None,
    ) -> _Prepared:
        """A checked letter made ready to seal: attachments planned, certificates validated.

        ``certificates``: validated certificates by address, shared by the messages of
        a batch (filled here); ``None`` asks the directory for each address.
        """
        letter = checked.letter
        recipients = fold_recipients(letter.to)
        plan = self._plan_attachments([*pending, *letter.attachments], letter.body)
        signer = self._identity()
        own = certificate_emails(signer.certificate)
        sending = (letter.from_ or (own[0] if own else "")).strip().lower()
        if not sending:
            raise ClientError(
                "sender_missing", translate(self.language, "indiquez la boîte d'envoi (from_)")
            )
        cache: dict[str, list[Certificate] | None] = {} if certificates is None else certificates
        sealed_to: list[Certificate] = []
        for address in [*recipients, sending]:
            if address not in cache:
                cache[address] = self._validated_certificates(address)
            sealed_to += cache[address] or []
        return _Prepared(
            checked,
            sending,
            recipients,
            plan,
            signer,
            # Writing for an organisational mailbox: the signer is the Sender.
            own[0] if own and sending not in own else None,
            # Nothing to seal to when no address is known: sealing to ourselves keeps the
            # flow, and the server answers which address is missing (it stores nothing then).
            sealed_to or [signer.certificate],
            self._chain,
        )

    # --- large attachments -----------------------------------------------------------------------
    def limits(self) -> AttachmentLimits:
        """The server's attachment settings (asked once per client)."""
        if self._limits is None:
            self._limits = AttachmentLimits._from_answer(
                self._call("GET", "/api/uploads/limits").object()
            )
        return self._limits

    def _allowed_types(self, limits: AttachmentLimits) -> tuple[str, ...]:
        if self.allowed_types is None:
            return limits.allowed_types
        return tuple(t for t in limits.allowed_types if t in self.allowed_types)

    def _plan_attachments(
        self, attachments: Sequence[PathLike | Attachment | PendingUpload], body: str
    ) -> _Plan:
        """Check every attachment (type, size) and choose which go in the envelope.

        The envelope holds about 1.9 times the attachments' bytes and must stay under
        the server's ``PLI_MAX_ENVELOPE_BYTES``: above ``inline_threshold`` an
        attachment is streamed, and the largest ones go too until the rest fits.
        """
        pending = [item for item in attachments if isinstance(item, PendingUpload)]
        sources = [
            _source(item, self.language)
            for item in attachments
            if not isinstance(item, PendingUpload)
        ]
        if not sources:
            return _Plan([], [], pending, self.limits() if pending else None)
        limits = self.limits()
        allowed = self._allowed_types(limits)
        for source in sources:
            self._check_source(source, limits, allowed)
        budget = (
            limits.inline_attachment_bytes - len(body.encode()) * _ENVELOPE_GROWTH_PERCENT // 100
        )
        threshold = self.inline_threshold
        if threshold is None:
            threshold = limits.inline_attachment_bytes
        inline = [s for s in sources if s.size <= threshold]
        # The largest first, until what stays inline fits the envelope.
        for source in sorted(inline, key=lambda s: s.size, reverse=True):
            if sum(s.size for s in inline) <= budget:
                break
            inline.remove(source)
        stream = [s for s in sources if s not in inline]
        return _Plan(inline, stream, pending, limits)

    def _upload_sources(
        self, sources: Sequence[_Source], created: list[PendingUpload]
    ) -> list[PendingUpload]:
        uploaded: list[PendingUpload] = []
        for source in sources:
            pending = self._upload(source, created)
            uploaded.append(pending)
        return uploaded

    def upload_attachment(self, item: PathLike | Attachment) -> PendingUpload:
        """Encrypt one attachment here (a stream, fresh key) and upload it; checked first.

        Give the result to :meth:`send` among the attachments. An interrupted
        upload raises :class:`UploadInterrupted`: :meth:`resume_upload` goes on.
        """
        source = _source(item, self.language)
        limits = self.limits()
        self._check_source(source, limits, self._allowed_types(limits))
        return self._upload(source, [])

    def _check_source(
        self, source: _Source, limits: AttachmentLimits, allowed: tuple[str, ...]
    ) -> None:
        """An attachment within the server's size limit and of an allowed type."""
        if source.size > limits.max_attachment_bytes:
            raise ClientError(
                "attachment_too_large",
                translate(
                    self.language,
                    "{name} : {size} octets, plus que les {limit} autorisés",
                    name=source.filename,
                    size=source.size,
                    limit=limits.max_attachment_bytes,
                ),
            )
        check_attachment_type(
            source.filename,
            source.content_type,
            source.head(),
            allowed,
            language=self.language,
        )

    def _upload(self, source: _Source, created: list[PendingUpload]) -> PendingUpload:
        work = Path(tempfile.mkdtemp(prefix="pli-upload-", dir=self.work_dir))  # 0700
        ciphertext = work / "blob"
        try:
            with source.open() as plaintext, ciphertext.open("xb") as destination:
                stream = encrypt_stream(plaintext, destination)
            upload_id = (
                self._call(
                    "POST", "/api/uploads", body={"size": stream.size, "sha256": stream.sha256}
                )
                .object()
                .text("id")
            )
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        pending = PendingUpload(
            upload_id=upload_id,
            ciphertext=ciphertext,
            part=ExternalPart(
                filename=_safe_filename(source.filename),
                content_type=source.content_type,
                blob_id=stream.sha256,
                key=stream.key,
                size=stream.size,
                plaintext_size=stream.plaintext_size,
                record_size=stream.record_size,
            ),
        )
        created.append(pending)
        self._push(pending, received=0)
        return pending

    def resume_upload(self, pending: PendingUpload) -> PendingUpload:
        """Go on with an interrupted upload from where the server is (``received``)."""
        self._push(pending, received=None)
        return pending

    def _push(self, pending: PendingUpload, received: int | None) -> None:
        """Upload the ciphertext in chunks; after a failure, ask the server and resume."""
        if not set(pending.upload_id) <= _ID_CHARS or len(pending.upload_id) > 64:
            raise ClientError(
                "bad_upload_id",
                translate(
                    self.language,
                    "un identifiant de téléversement s'écrit upl_ suivi de 32 chiffres"
                    " hexadécimaux",
                ),
            )
        path = f"/api/uploads/{pending.upload_id}"
        size = pending.part.size
        chunk = min(self.chunk_bytes or DEFAULT_CHUNK_BYTES, self.limits().chunk_bytes)
        offset = received
        failures = 0
        with pending.ciphertext.open("rb") as handle:
            while True:
                try:
                    if offset is None:
                        status = self._call("GET", path).object()
                        if status.text("state") == "complete":
                            return
                        offset = status.integer("received")
                    handle.seek(offset)
                    piece = handle.read(min(chunk, size - offset))
                    answer = self._call(
                        "PUT", path, query={"offset": str(offset)}, raw=piece
                    ).object()
                    if answer.text("state") == "complete":
                        return
                    offset = answer.integer("received")
                    failures = 0
                    continue
                except AuthenticationRequired:
                    raise
                except ApiError as error:
                    if error.code not in _RESUMABLE and error.status < 500:
                        raise
                    cause: ClientError = error
                except ClientError as error:
                    if error.code != "server_unreachable":
                        raise
                    cause = error
                failures += 1
                if failures > self.upload_retries:
                    raise UploadInterrupted(pending, cause, self.language)
                time.sleep(min(self.retry_delay * 2 ** (failures - 1), 10.0))
                offset = None  # where is the server? (a chunk may have arrived, or half of one)

    def cancel_upload(self, pending: PendingUpload) -> None:
        """Give up an upload: delete it on the server, and its local ciphertext.

        Best effort on the server's side: an upload it cannot be told of (the
        network is down) is removed there after ``PLI_UPLOAD_EXPIRY_HOURS``.
        """
        self._abandon([pending])

    def _abandon(self, created: Sequence[PendingUpload]) -> None:
        """A send that failed: its uploads go (best effort: they expire anyway)."""
        for pending in created:
            with contextlib.suppress(ClientError):
                self._call("DELETE", f"/api/uploads/{pending.upload_id}", ok=(204,))
            pending.discard()

    def download_attachment(
        self,
        message_id: str,
        part: ExternalPart,
        directory: PathLike,
        *,
        mailbox: str | None = None,
    ) -> Path:
        """Download a large attachment and decrypt it as it arrives into ``directory``.

        Kept (``0600``, never overwriting) only if every record authenticates and
        the ciphertext has the size and SHA-256 that the signed message names
        (:func:`pli.crypto.decrypt_stream`); a broken connection resumes with a
        range request.
        """
        if not _SHA256.fullmatch(part.blob_id):
            raise ClientError(
                "bad_response",
                translate(self.language, "une pièce externe ne désigne aucun contenu valide"),
            )
        target = _path(directory)
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._message_path(message_id, f"/blobs/{part.blob_id}")
        final = _claim_path(target, _safe_filename(part.filename))
        descriptor, temporary = tempfile.mkstemp(dir=target, prefix=".part-")
        reader = _BlobReader(self, path, _mailbox(mailbox), part.size)
        try:
            with os.fdopen(descriptor, "wb") as destination:
                decrypt_stream(
                    cast("BinaryIO", reader),
                    destination,
                    key=part.key,
                    sha256=part.blob_id,
                    size=part.size,
                )
            Path(temporary).replace(final)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise
        finally:
            reader.close()
        return final

    # --- reading ---------------------------------------------------------------------------------
    def read(
        self,
        message_id: str,
        mailbox: str | None = None,
        *,
        mark_read: bool = True,
        receipt: bool | Disposition = True,
    ) -> ReadMessage:
        """Fetch, decrypt and verify a message here; mark the copy read (unless told not to).

        Marking a received copy read sends its sender a signed read receipt
        (:meth:`_mark_read`), unless ``receipt=False``; a :class:`pli.mime.Disposition`
        says how the message was handled (default: displayed on the user's action).

        Raises :class:`pli.crypto.SignatureError` (``signer_untrusted``,
        ``signer_revoked``, ``sender_mismatch``…) rather than return a message
        that is not genuine; the copy is then not marked read.
        """
        summary = self.message(message_id, mailbox)
        if mailbox is not None and summary.mailbox.lower() != mailbox.strip().lower():
            raise ClientError(
                "routing_mismatch",
                translate(
                    self.language,
                    "le serveur a répondu pour la boîte {other}, pas pour {mailbox}",
                    other=summary.mailbox,
                    mailbox=mailbox,
                ),
            )
        at = _mailbox(summary.mailbox)
        envelope = self._call(
            "GET",
            self._message_path(message_id, "/envelope"),
            query=at,
            accept="application/pkcs7-mime",
        ).body
        opened = self._open(envelope, summary.mailbox)
        inner = parse_inner_message(opened.mime)
        # The signed From / Sender name the signer (open_envelope). The server's routing
        # must be the signed one: its From the signed From, its sending person the signer
        # or that mailbox; otherwise a genuine letter is being replayed by someone else,
        # and a receipt or a reply would go where the server chose.
        routing = {summary.from_.lower(), summary.sender_person.lower()}
        if inner.from_address.lower() != summary.from_.lower() or not routing.intersection(
            opened.signer.emails
        ):
            raise SenderMismatch(
                translate(
                    self.language,
                    "signé par {signers}, mais envoyé par {sender}",
                    signers=", ".join(opened.signer.emails),
                    sender=summary.from_,
                )
            )
        warnings = list(opened.warnings)
        if summary.from_.lower() != summary.mailbox.lower() and not inner.addressed_to(
            summary.mailbox
        ):
            # Genuine, but re-encrypted for this mailbox by someone it was not addressed
            # to (surreptitious forwarding, RFC 8551 §3.7 discussion), as pli open says.
            warnings.append("not_addressed_to_you")
        # Asked before the copy is marked read: a failure here leaves it unread.
        allowed = self.limits().allowed_types if inner.attachments or inner.external_parts else ()
        receipt_id = receipt_error = None
        if mark_read and not summary.read:
            receipt_id, receipt_error = self._mark_read(summary, opened.mime, inner, receipt)
        notification = None
        if is_mdn(opened.mime):
            with contextlib.suppress(MimeError):  # genuine all the same: shown as a message
                notification = parse_mdn(opened.mime)
        return ReadMessage(
            summary=summary,
            signature=SignatureStatus(
                status="valid",
                signer_emails=list(opened.signer.emails),
                common_name=opened.signer.common_name,
                national_id=opened.signer.national_id,
                fingerprint=opened.signer.fingerprint,
                signed_at=opened.signed_at,
                revocation_checked=opened.details.revocation_checked,
                chain=list(opened.details.chain),
                warnings=warnings,
            ),
            from_address=inner.from_address,
            sender=inner.sender,
            to=inner.to,
            cc=inner.cc,
            subject=inner.subject,
            date=inner.date,
            message_id=inner.message_id,
            in_reply_to_header=inner.in_reply_to,
            references=inner.references,
            patient_id=inner.patient_id,
            body=inner.body_text,
            body_html=inner.body_html,
            attachments=inner.attachments,
            external_parts=inner.external_parts,
            fetch_external=lambda part, directory: self.download_attachment(
                message_id, part, directory, mailbox=summary.mailbox
            ),
            allowed_types=allowed or DEFAULT_ATTACHMENT_TYPES,
            language=self.language,
            receipt=receipt_id,
            receipt_error=receipt_error,
            notification=notification,
        )

    # --- read receipts (RFC 8098) ----------------------------------------------------------------
    def _mark_read(
        self,
        summary: MessageSummary,
        mime: bytes,
        inner: InnerMessage,
        receipt: bool | Disposition,
    ) -> tuple[str | None, str | None]:
        """Mark the copy read, with a signed read receipt to its sending mailbox.

        The receipt is an MDN (:func:`pli.mime.build_mdn`) signed with this
        workstation's key and sealed, as any message, to the sending mailbox's
        certificates and to the reader's mailbox (``POST /api/messages/{id}/read``,
        docs/api/messaging.md). None answers a receipt (RFC 8098). A receipt
        that cannot go (a certificate not valid here, a sender no longer in the
        directory) never keeps the message unread: it is marked read alone.
        Returns the receipt's id, and the code of why none went.
        """
        path = self._message_path(summary.id, "/read")
        at = _mailbox(summary.mailbox)
        if receipt is False or summary.deliveries is not None or is_mdn(mime):
            self._call("POST", path, query=at)
            return None, None
        disposition = receipt if isinstance(receipt, Disposition) else Disposition()
        try:
            envelope = self._sealed_receipt(summary, inner, disposition)
            response = self._call("POST", path, query=at, body={"receipt": _b64(envelope)})
        except ApiError as error:
            if error.status not in (403, 413, 422):
                raise  # not found, logged out, the server down: the read did not happen
            failure = error.code
        except (ClientError, CryptoError, MimeError) as error:
            failure = error.code
        else:
            # Read outside the try: the copy is marked read, its answer only is not as
            # expected (unexpected_answer), which is no reason to mark it read again.
            return response.object().optional_text("receipt") or None, None
        self._call("POST", path, query=at)
        return None, failure

    def _sealed_receipt(
        self, summary: MessageSummary, inner: InnerMessage, disposition: Disposition
    ) -> bytes:
        signer = self._identity()
        own = certificate_emails(signer.certificate)
        reader = summary.mailbox.strip().lower()
        sealed_to: list[Certificate] = []
        # To the signed From (read() checked the server's routing names it) and to the
        # reading mailbox, proven by the key that opened the copy (_open).
        for address in (inner.from_address, reader):
            sealed_to += self._validated_certificates(address) or []
        notification = build_mdn(
            from_address=reader,
            to=inner.from_address,
            # Reading an organisational mailbox's copy: the reader signs, as Sender.
            sender=own[0] if own and reader not in own else None,
            original_message_id=inner.message_id,
            original_subject=inner.subject,
            original_date=inner.date,
            references=inner.references,
            disposition=disposition,
            reporting_ua=f"Pli SDK; pli {__version__}",
            # The original's date in the workstation's own zone, named, as its reader
            # would see it (the web mail uses the server's).
            zone=workstation_zone(),
        )
        return seal(notification, signer, sealed_to or [signer.certificate], chain=self._chain)

    def reply(
        self,
        message_id: str,
        body: str,
        attachments: Sequence[PathLike | Attachment | PendingUpload] = (),
        *,
        mailbox: str | None = None,
        patient_names: Sequence[str] = (),
    ) -> SendResult:
        """Answer a message: from the mailbox that holds it, to its sender, in its thread.

        The original is opened (and verified) first: its subject, patient and
        Message-ID come from the signed content, never from the server.
        """
        original = self.read(message_id, mailbox, mark_read=False)
        summary = original.summary
        # From the mailbox whose key opened the original (read() proved it), to whom the
        # signed headers name: never to an address only the server gives, but for the
        # recipients of our own group send, which its signed headers do not list
        # (REQ-FEW-RECIPIENTS: the recipients of a group send do not see each other).
        if original.from_address.lower() == summary.mailbox.lower():
            signed = fold_recipients([*original.to, *original.cc])
            blind = set(signed) <= {summary.mailbox.lower()}
            to = summary.recipients if blind else signed
        else:
            to = [original.from_address]
        subject = original.subject
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
        return self.send(
            summary.mailbox,
            to,
            subject,
            body,
            patient_id=original.patient_id,
            attachments=attachments,
            in_reply_to=summary.id,
            patient_names=patient_names,
            reply_headers=(original.message_id, [*original.references, original.message_id]),
        )


def _source(item: PathLike | Attachment, language: str) -> _Source:
    if isinstance(item, Attachment):
        return _Source(
            item.filename, media_type(item.content_type), len(item.data), None, item.data
        )
    path = _path(item)
    try:
        with path.open("rb") as handle:  # there, a file (not a folder), readable
            size = os.fstat(handle.fileno()).st_size
    except OSError as error:
        raise ClientError(
            "attachment_unreadable",
            translate(
                language,
                "{path} illisible : {reason}",
                path=_single_line(str(path)),
                reason=error.strerror or error,
            ),
        ) from None
    guessed, _ = mimetypes.guess_type(path.name)
    return _Source(
        _safe_filename(path.name),
        media_type(guessed or "application/octet-stream"),
        size,
        path,
        None,
    )


@dataclass(frozen=True, eq=False)
class _Source:
    """An attachment to send: in memory, or a file read only when (and as) needed."""

    filename: str
    content_type: str
    size: int
    path: Path | None
    data: bytes | None

    def head(self, size: int = 512) -> bytes:
        if self.data is not None:
            return self.data[:size]
        assert self.path is not None  # noqa: S101 - one of the two is set
        with self.path.open("rb") as handle:
            return handle.read(size)

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None  # noqa: S101 - one of the two is set
        return self.path.open("rb")

    def attachment(self) -> Attachment:
        data = self.data
        if data is None:
            assert self.path is not None  # noqa: S101 - one of the two is set
            data = self.path.read_bytes()
        return Attachment(self.filename, self.content_type, data)


@dataclass(frozen=True)
class _Plan:
    inline: list[_Source]
    stream: list[_Source]
    pending: list[PendingUpload]
    limits: AttachmentLimits | None

    def inline_attachments(self) -> list[Attachment]:
        return [source.attachment() for source in self.inline]


@dataclass(frozen=True)
class _Checked:
    """A letter the pre-send checks let through, with its findings (warnings kept)."""

    letter: OutgoingLetter
    #: ``nir:…`` / ``niss:…``, as the inner message's X-MSS-Patient-Id names it.
    patient: str | None
    findings: list[Finding]


@dataclass(frozen=True)
class _Sealed:
    """One sealed message: its JSON for ``POST /api/messages`` (or one batch item)."""

    payload: dict[str, Any]
    size: int
    #: The inner Message-ID (what a reply's In-Reply-To names).
    message_id: str


@dataclass(frozen=True)
class _Prepared:
    """A checked letter whose recipients' certificates are validated: ready to seal."""

    checked: _Checked
    sending: str
    recipients: list[str]
    plan: _Plan
    signer: SoftwareKey
    sender: str | None
    sealed_to: list[Certificate]
    chain: list[Certificate]

    def seal(self, inline: list[Attachment], streamed: list[PendingUpload]) -> _Sealed:
        """Build the inner message, sign and encrypt it here; its payload for the server."""
        letter = self.checked.letter
        reply = letter.reply_headers
        inner = build_inner_message(
            Draft(
                from_address=self.sending,
                # Several recipients do not see each other (REQ-FEW-RECIPIENTS): the
                # protected To names the sending mailbox only, as a blind copy does.
                to=self.recipients if len(self.recipients) == 1 else [self.sending],
                sender=self.sender,
                subject=letter.subject,
                body_text=letter.body,
                patient_id=self.checked.patient,
                in_reply_to=reply[0] if reply else None,
                references=reply[1] if reply else [],
                attachments=inline,
                external_parts=[pending.part for pending in streamed],
            )
        )
        envelope = seal(inner, self.signer, self.sealed_to, chain=self.chain)
        payload: dict[str, Any] = {
            "from": self.sending,
            "recipients": self.recipients,
            "envelope": _b64(envelope),
        }
        if self.checked.patient:
            payload["patient_id"] = self.checked.patient.split(":", 1)[1]
        if letter.in_reply_to:
            payload["in_reply_to"] = letter.in_reply_to
        if streamed:
            payload["blobs"] = [pending.upload_id for pending in streamed]
        return _Sealed(payload, len(envelope), parse_inner_message(inner).message_id)

    def result(self, answer: _Answer, sealed: _Sealed) -> SendResult:
        """What the server answered for this message, with what only this workstation knows."""
        return SendResult(
            id=answer.text("id"),
            thread=answer.text("thread"),
            deliveries=[Delivery._from_answer(d) for d in answer.objects("deliveries")],
            message_id=sealed.message_id,
            warnings=[f for f in self.checked.findings if f.severity is not Severity.REFUSE],
        )


@contextlib.contextmanager
def _batch_message(index: int) -> Iterator[None]:
    """Errors raised while one message of a batch is checked or sealed name that message."""
    try:
        yield
    except ClientError as error:
        error.index = index
        error.add_note(f"message {index} of the batch")
        raise
    except (CryptoError, MimeError) as error:
        error.add_note(f"message {index} of the batch")
        raise


_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Upload failures after which the client asks the server where it is and resumes.
_RESUMABLE = frozenset({"upload_offset_mismatch", "upload_busy", "upload_chunk_incomplete"})


def _type_not_allowed(
    filename: str, kind: str, accepted: Sequence[str], language: str
) -> ClientError:
    return ClientError(
        "attachment_type_not_allowed",
        translate(
            language,
            "{name} : {kind} n'est pas un type de pièce jointe accepté ({accepted})",
            name=_single_line(filename),
            kind=kind,
            accepted=", ".join(accepted),
        ),
    )


def check_attachment_type(
    filename: str,
    content_type: str,
    head: bytes | None,
    allowed: Iterable[str] = DEFAULT_ATTACHMENT_TYPES,
    *,
    language: str = "fr",
) -> str:
    """The attachment's media type, if allowed and if its first bytes are of that type.

    The server sees ciphertext only, so the allow-list (``PLI_ATTACHMENT_TYPES``,
    by default PDF, JPEG, PNG, TIFF, XML / CDA, ZIP / IHE XDM, plain text) is
    enforced here, before sealing (:func:`pli.mime.types.attachment_type`, as the
    web mail does): ``attachment_type_not_allowed`` for another type,
    ``attachment_content_mismatch`` when the content is not what its type says
    (an executable named ``.pdf``). ``language``: of the errors' detail.
    """
    try:
        return attachment_type(filename, content_type, head, allowed)
    except AttachmentRefused as refusal:
        if refusal.code == "attachment_type_not_allowed":
            raise _type_not_allowed(filename, refusal.kind, refusal.accepted, language) from None
        raise ClientError(
            "attachment_content_mismatch",
            translate(
                language,
                "{name} : son contenu n'est pas du type {kind}",
                name=_single_line(filename),
                kind=refusal.kind,
            ),
        ) from None


class _BlobReader:
    """A blob's body as a file, reconnecting from where it stopped (HTTP ranges).

    ``read(n)`` returns exactly ``n`` bytes until the end (what
    :func:`pli.crypto.decrypt_stream` needs to check the framing).
    """

    def __init__(self, client: Client, path: str, query: Mapping[str, str], size: int) -> None:
        self._client = client
        self._path = path
        self._query = dict(query)
        self._size = size
        self._position = 0
        self._answer: http.client.HTTPResponse | None = None

    def _open(self) -> http.client.HTTPResponse:
        answer = self._client._open_stream(self._path, query=self._query, start=self._position)
        if self._position:
            expected = f"bytes {self._position}-"
            if answer.status != 206 or not (answer.headers.get("Content-Range") or "").startswith(
                expected
            ):
                answer.close()
                raise ClientError(
                    "bad_response",
                    translate(self._client.language, "le serveur n'a pas repris le téléchargement"),
                )
        return answer

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self._size - self._position
        wanted = min(size, self._size - self._position)
        out = bytearray()
        failures = 0
        while len(out) < wanted:
            try:
                if self._answer is None:
                    self._answer = self._open()
                piece = self._answer.read(wanted - len(out))
                if not piece:
                    raise ClientError(
                        "server_unreachable",
                        translate(
                            self._client.language,
                            "le téléchargement s'est arrêté avant la fin",
                        ),
                    )
            except AuthenticationRequired:
                raise
            except (ClientError, OSError, http.client.HTTPException) as error:
                if isinstance(error, ApiError) and error.status < 500:
                    raise
                self.close()
                failures += 1
                if failures > self._client.upload_retries:
                    raise ClientError(
                        "download_interrupted",
                        translate(
                            self._client.language,
                            "le téléchargement s'est arrêté à l'octet {position}",
                            position=self._position,
                        ),
                    ) from None
                time.sleep(min(self._client.retry_delay * 2 ** (failures - 1), 10.0))
                continue
            out += piece
            self._position += len(piece)
            failures = 0
        return bytes(out)

    def close(self) -> None:
        if self._answer is not None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self._answer.close()
            self._answer = None


def _path(value: PathLike) -> Path:
    """Paths as people write them in configuration: ``~`` is their home."""
    return Path(value).expanduser()


def _mailbox(address: str | None) -> dict[str, str]:
    return {"mailbox": address} if address else {}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


#: The names the time zone database gives to UTC itself.
_UTC_NAMES = frozenset(
    {"UTC", "UCT", "Zulu", "Universal", "Etc/UTC", "Etc/UCT", "Etc/Zulu", "Etc/Universal"}
)


def workstation_zone() -> dt.tzinfo:
    """This workstation's time zone: by its IANA name when ``TZ`` or ``/etc/localtime``
    gives one (``Europe/Paris``, with its summer time), else the system's offset now."""
    name = os.environ.get("TZ", "").removeprefix(":")
    if not name:
        with contextlib.suppress(OSError):
            target = os.path.realpath("/etc/localtime")
            if "/zoneinfo/" in target:
                name = target.split("/zoneinfo/", 1)[1]
    if name in _UTC_NAMES:
        return dt.UTC  # named "UTC" in the text, not "Etc/UTC"
    if name:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(name)
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
