"""JSON API of messaging: send sealed envelopes, list, fetch, mark, move, delete.

The contract, for client and SDK authors, is docs/api/messaging.md. Thin views:
validate, authorise (:mod:`pli.server.messaging.access`), call an action. Every
endpoint needs an authenticated session (CSRF on unsafe methods); a message or
mailbox that is not the caller's answers ``404 not_found`` exactly like one
that does not exist.

Request bodies are read and validated here rather than by django-ninja, so
that a too large body is refused from its announced length without being
read, whatever ``DATA_UPLOAD_MAX_MEMORY_SIZE`` says, and so that every refusal
has the contract's shape ``{"code", "message", "details"}``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any, TypeVar

from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from ninja import Field, Router, Status
from ninja.security import django_auth
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pli.server.accounts.session_auth import signed_in_user
from pli.server.messaging.access import (
    MessagingError,
    access_copy_by_message_id,
    access_mailbox_by_address,
    reachable_mailboxes,
)
from pli.server.messaging.actions import (
    STATUS,
    OutgoingMessage,
    check_batch_size,
    do_delete_message,
    do_flag_message,
    do_mark_read,
    do_move_message,
    do_open_envelope,
    do_send_message,
    do_send_messages,
    max_batch_messages,
    max_envelope_bytes,
    max_recipients,
    record_refused_send,
)
from pli.server.messaging.models import Delivery, Folder, Message, MessageCopy
from pli.server.messaging.storage import storage_of
from pli.server.validation import StrictSchema, field_errors, whole_number

router = Router(tags=["messaging"], auth=django_auth)

PAGE_SIZE = 50
#: Room for the JSON around a base64 envelope: addresses, ids, field names.
_JSON_OVERHEAD = 64 * 1024
_ADDRESS_MAX = 254
_ID_MAX = 64
_T = TypeVar("_T", bound=BaseModel)


class _Strict(StrictSchema):
    pass


# --------------------------------------------------------------------------- schemas


class BatchItemIn(_Strict):
    """One message of a batch: a send's fields, without streamed attachments."""

    from_address: str = Field(alias="from", max_length=_ADDRESS_MAX)
    #: Each at most an address's length (RFC 5321 §4.5.3.1.3): a longer text is no
    #: address, and is refused before anything keeps it (the addresses' cache).
    recipients: list[Annotated[str, Field(max_length=_ADDRESS_MAX)]] = Field(
        min_length=1, max_length=1000
    )
    #: INS/NIR or NISS, for the opposition check; stored only as a keyed hash.
    patient_id: str | None = Field(default=None, max_length=64)
    in_reply_to: str | None = Field(default=None, max_length=_ID_MAX)
    #: Base64 (RFC 4648 §4) of the DER CMS EnvelopedData; line breaks are allowed.
    envelope: str


class SendIn(BatchItemIn):
    #: Ids of streamed attachments already uploaded (decision 0003): none can exist yet.
    blobs: list[Annotated[str, Field(max_length=_ID_MAX)]] = Field(
        default_factory=list, max_length=100
    )


class BatchIn(_Strict):
    #: At most ``PLI_MAX_BATCH_MESSAGES`` (100): ``too_many_messages``.
    messages: list[BatchItemIn] = Field(min_length=1)

    @field_validator("messages", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        # Counted before each message is validated (pydantic checks a list's length
        # only after its items): a body of a few hundred thousand tiny messages
        # would otherwise cost seconds and hundreds of MB before its refusal. The
        # refusal is the action's, a MessagingError, which pydantic lets through.
        if isinstance(value, list):
            check_batch_size(len(value))
        return value


class ReadIn(_Strict):
    #: Base64 of a CMS EnvelopedData holding the signed RFC 8098 MDN, sealed to the
    #: sending mailbox and to the reader's mailbox.
    receipt: str | None = None


class MoveIn(_Strict):
    folder: str = Field(max_length=16)


class FlagIn(_Strict):
    flagged: bool


class ErrorOut(_Strict):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class DeliveryOut(_Strict):
    recipient: str
    state: str
    delivered_at: dt.datetime | None
    read_at: dt.datetime | None


class SendOut(_Strict):
    id: str
    thread: str
    deliveries: list[DeliveryOut]


class BatchOut(_Strict):
    #: The messages sent, in the batch's order.
    messages: list[SendOut]


class MailboxOut(_Strict):
    address: str
    kind: str
    #: owner, or the membership role: member, manager, substitute.
    part: str
    active: bool
    unread: int
    #: What the mailbox holds (envelopes and streamed attachments, as stored) and its
    #: quota, in bytes (pli.server.messaging.storage).
    used_bytes: int
    quota_bytes: int


class MessageOut(_Strict):
    # By name too: ninja re-reads nested schemas attribute by attribute.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    id: str
    mailbox: str
    folder: str
    from_address: str = Field(alias="from")
    sender_person: str
    received_at: dt.datetime
    size: int
    read: bool
    flagged: bool
    thread: str
    in_reply_to: str | None
    #: The sending mailbox's copy lists every recipient; a recipient's copy only its own
    #: mailbox (REQ-FEW-RECIPIENTS: recipients never see each other).
    recipients: list[str]
    #: Only on the sending mailbox's copy: each recipient's state (REQ-E2E traceability).
    deliveries: list[DeliveryOut] | None = None


class MessagePageOut(_Strict):
    results: list[MessageOut]
    page: int
    has_next: bool


class ReadOut(_Strict):
    id: str
    read: bool
    #: The id of the stored read receipt, when one was given with the first read.
    receipt: str | None


class DeleteOut(_Strict):
    id: str
    #: False: moved to the trash; True: the mailbox's copy is gone.
    deleted: bool
    folder: str | None


# --------------------------------------------------------------------------- helpers


def _refusal(error: MessagingError) -> Status[ErrorOut]:
    return Status(
        STATUS.get(error.code, 422),
        ErrorOut(code=error.code, message=error.message, details=dict(error.details)),
    )


def _bad_request(message: str, **details: Any) -> MessagingError:
    return MessagingError("bad_request", message, details or None)


def _read_body(request: HttpRequest, model: type[_T], limit: int, *, empty_ok: bool = False) -> _T:
    """The JSON body, at most ``limit`` bytes, as a strict model; refusals have stable codes."""
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    if announced > limit:
        raise MessagingError(
            "envelope_too_large",
            _("La requête dépasse la taille admise."),
            {"limit": limit},
        )
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise MessagingError(
            "envelope_too_large", _("La requête dépasse la taille admise."), {"limit": limit}
        )
    if not raw.strip() and empty_ok:
        raw = b"{}"
    elif request.content_type != "application/json":
        raise _bad_request(_("Le corps de la requête doit être du JSON."))
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise _bad_request(
            _("Requête invalide."),
            errors=field_errors(error),
        ) from None


_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _decode(text: str, what: str) -> bytes:
    try:
        # The usual case, base64 on one line, checked and decoded in one pass of C; line
        # breaks or anything else take the second path, which decides.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(text.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise MessagingError(
            "envelope_malformed", _("L'enveloppe n'est pas en base64 valide."), {"field": what}
        ) from None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": model is not ReadIn,
            "content": {"application/json": {"schema": model.model_json_schema(by_alias=True)}},
        }
    }


def _delivery_out(delivery: Delivery) -> DeliveryOut:
    # Built from our own rows, whose types the model already has: ``model_construct``
    # skips the validators (ninja's attribute getter, the NUL check), which cost
    # more than the rest of a send's answer (benchmarks/README.md, "Messaging").
    return DeliveryOut.model_construct(
        recipient=delivery.recipient_address,
        state=delivery.state,
        delivered_at=delivery.delivered_at,
        read_at=delivery.read_at,
    )


def _message_out(copy: MessageCopy, *, with_deliveries: bool) -> MessageOut:
    message = copy.message
    sender_copy = copy.delivery_id is None
    deliveries = sorted(message.deliveries.all(), key=lambda d: d.pk) if sender_copy else []
    return MessageOut.model_validate(
        {
            "id": message.public_id,
            "mailbox": copy.mailbox.address,
            "folder": copy.folder,
            "from": message.sender_address,
            "sender_person": message.sender_person,
            "received_at": copy.created_at,
            "size": message.size,
            "read": copy.read,
            "flagged": copy.flagged,
            "thread": message.thread_id,
            "in_reply_to": message.in_reply_to.public_id if message.in_reply_to else None,
            "recipients": (
                [d.recipient_address for d in deliveries] if sender_copy else [copy.mailbox.address]
            ),
            "deliveries": (
                [_delivery_out(d) for d in deliveries] if sender_copy and with_deliveries else None
            ),
        }
    )


def _copy(request: HttpRequest, message_id: str, mailbox: str | None) -> MessageCopy:
    # Checked whole (its shape) by the access helper, never cut to a length.
    return access_copy_by_message_id(signed_in_user(request), message_id, mailbox or None)


_ERRORS: dict[int, type[ErrorOut]] = {
    400: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
    429: ErrorOut,
    503: ErrorOut,
}


# --------------------------------------------------------------------------- mailboxes


@router.get("/mailboxes", response=list[MailboxOut], summary="Mes boîtes aux lettres")
def list_mailboxes(request: HttpRequest) -> list[MailboxOut]:
    """The caller's personal mailbox and the ones they are member or substitute of."""
    reachable = reachable_mailboxes(signed_in_user(request))
    unread = dict(
        MessageCopy.objects.filter(
            mailbox_id__in=[r.mailbox.pk for r in reachable], folder=Folder.INBOX, read=False
        )
        .values("mailbox_id")
        .annotate(count=Count("pk"))
        .values_list("mailbox_id", "count")
    )
    storage = storage_of(r.mailbox.pk for r in reachable)
    return [
        MailboxOut(
            address=r.mailbox.address,
            kind=r.mailbox.kind,
            part=r.part,
            active=r.mailbox.active,
            unread=unread.get(r.mailbox.pk, 0),
            used_bytes=storage[r.mailbox.pk].used,
            quota_bytes=storage[r.mailbox.pk].quota,
        )
        for r in reachable
    ]


@router.get(
    "/mailboxes/{address}/messages",
    response={200: MessagePageOut, **_ERRORS},
    by_alias=True,
    summary="Les messages d'un dossier (métadonnées)",
)
def list_messages(
    request: HttpRequest, address: str, folder: str = "inbox", page: str = "1"
) -> Status[MessagePageOut] | Status[ErrorOut]:
    try:
        mailbox = access_mailbox_by_address(signed_in_user(request), address)
        if folder not in Folder.values:
            raise _bad_request(_("Dossier inconnu."), allowed=list(Folder.values))
        number = whole_number(page, digits=7) or 0
        if not 1 <= number <= 1_000_000:
            raise _bad_request(_("Numéro de page invalide."))
    except MessagingError as error:
        return _refusal(error)
    start = (number - 1) * PAGE_SIZE
    copies = list(
        MessageCopy.objects.filter(mailbox=mailbox, folder=folder)
        .select_related("message", "message__in_reply_to", "mailbox")
        .prefetch_related(Prefetch("message__deliveries", queryset=Delivery.objects.order_by("pk")))
        .order_by("-created_at", "-pk")[start : start + PAGE_SIZE + 1]
    )
    return Status(
        200,
        MessagePageOut(
            results=[_message_out(c, with_deliveries=False) for c in copies[:PAGE_SIZE]],
            page=number,
            has_next=len(copies) > PAGE_SIZE,
        ),
    )


# --------------------------------------------------------------------------- sending


@router.post(
    "/messages",
    response={201: SendOut, **_ERRORS},
    summary="Envoyer un message scellé sur le poste de travail",
    openapi_extra=_body_schema(SendIn),
)
def send_message(request: HttpRequest) -> Status[SendOut] | Status[ErrorOut]:
    user = signed_in_user(request)
    limit = (max_envelope_bytes() + 2) // 3 * 4 + _JSON_OVERHEAD + max_recipients() * 512
    try:
        body = _read_body(request, SendIn, limit)
        envelope = _decode(body.envelope, "envelope")
    except MessagingError as error:
        if error.code != "bad_request":  # the request's shape is not a send attempt
            record_refused_send(user, request, error.code)
        return _refusal(error)
    try:
        message = do_send_message(
            user,
            body.from_address,
            body.recipients,
            envelope,
            patient_id=body.patient_id,
            in_reply_to=body.in_reply_to,
            request=request,
            blobs=body.blobs,
        )
    except MessagingError as error:
        return _refusal(error)
    return Status(201, _send_out(message))


def _send_out(message: Message) -> SendOut:
    # Known from the send itself (its prefetch cache): nothing is read back.
    deliveries = sorted(message.deliveries.all(), key=lambda delivery: delivery.pk)
    return SendOut.model_construct(  # our own values: no validation (see _delivery_out)
        id=message.public_id,
        thread=message.thread_id,
        deliveries=[_delivery_out(d) for d in deliveries],
    )


@router.post(
    "/messages/batch",
    response={201: BatchOut, **_ERRORS},
    summary="Envoyer un lot de messages scellés (tous ou aucun)",
    openapi_extra=_body_schema(BatchIn),
)
def send_messages(request: HttpRequest) -> Status[BatchOut] | Status[ErrorOut]:
    """Several sealed messages in one request, stored all or none (REQ-LPS).

    For practice software with many messages to send at once. Each message is
    checked as ``POST /api/messages`` checks one; a refusal of any of them
    (``batch_refused``, each refused message named by its index and code)
    stores none. docs/api/messaging.md, "Sending a batch".
    """
    user = signed_in_user(request)
    per_message = max_recipients() * 512 + 1024
    limit = (
        (max_envelope_bytes() + 2) // 3 * 4 + _JSON_OVERHEAD + max_batch_messages() * per_message
    )
    try:
        body = _read_body(request, BatchIn, limit)
        outgoing = [
            OutgoingMessage(
                item.from_address,
                item.recipients,
                _decode(item.envelope, f"messages[{index}].envelope"),
                item.patient_id,
                item.in_reply_to,
            )
            for index, item in enumerate(body.messages)
        ]
    except MessagingError as error:
        if error.code != "bad_request":  # the request's shape is not a send attempt
            record_refused_send(user, request, error.code)
        return _refusal(error)
    try:
        messages = do_send_messages(user, outgoing, request=request)
    except MessagingError as error:
        return _refusal(error)
    return Status(201, BatchOut.model_construct(messages=[_send_out(m) for m in messages]))


# --------------------------------------------------------------------------- one message


@router.get(
    "/messages/{message_id}",
    response={200: MessageOut, **_ERRORS},
    by_alias=True,
    summary="Métadonnées d'un message",
)
def get_message(
    request: HttpRequest, message_id: str, mailbox: str = ""
) -> Status[MessageOut] | Status[ErrorOut]:
    try:
        copy = _copy(request, message_id, mailbox)
    except MessagingError as error:
        return _refusal(error)
    return Status(200, _message_out(copy, with_deliveries=True))


@router.get(
    "/messages/{message_id}/envelope",
    response={**_ERRORS},
    summary="L'enveloppe CMS du message (application/pkcs7-mime, DER)",
    openapi_extra={
        "responses": {
            "200": {
                "description": "DER CMS EnvelopedData",
                "content": {"application/pkcs7-mime": {"schema": {"type": "string"}}},
            }
        }
    },
)
def get_envelope(
    request: HttpRequest, message_id: str, mailbox: str = ""
) -> HttpResponse | Status[ErrorOut]:
    try:
        copy = _copy(request, message_id, mailbox)
        data = do_open_envelope(signed_in_user(request), copy, request)
    except MessagingError as error:
        return _refusal(error)
    response = HttpResponse(
        data,
        content_type='application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
    )
    response["Content-Disposition"] = 'attachment; filename="smime.p7m"'
    response["Cache-Control"] = "no-store"
    return response


@router.post(
    "/messages/{message_id}/read",
    response={200: ReadOut, **_ERRORS},
    summary="Marquer lu (accusé de lecture facultatif)",
    openapi_extra=_body_schema(ReadIn),
)
def mark_read(
    request: HttpRequest, message_id: str, mailbox: str = ""
) -> Status[ReadOut] | Status[ErrorOut]:
    user = signed_in_user(request)
    limit = (max_envelope_bytes() + 2) // 3 * 4 + _JSON_OVERHEAD
    try:
        copy = _copy(request, message_id, mailbox)
        body = _read_body(request, ReadIn, limit, empty_ok=True)
    except MessagingError as error:
        return _refusal(error)
    # A receipt goes with the first read of a received copy only, and is otherwise
    # ignored whatever it holds: decoding it here for a copy already read (or the
    # sender's own) would refuse bad base64 where an unopenable envelope is ignored.
    wanted = body.receipt is not None and not copy.read and copy.delivery_id is not None
    try:
        receipt = _decode(body.receipt, "receipt") if wanted and body.receipt is not None else None
    except MessagingError as error:  # a receipt is a send: its refusal is traced as one
        record_refused_send(user, request, error.code)
        return _refusal(error)
    try:
        result = do_mark_read(user, copy, receipt=receipt, request=request)
    except MessagingError as error:
        return _refusal(error)
    return Status(
        200,
        ReadOut(
            id=copy.message.public_id,
            read=True,
            receipt=result.receipt.public_id if result.receipt else None,
        ),
    )


@router.post(
    "/messages/{message_id}/move",
    response={200: MessageOut, **_ERRORS},
    by_alias=True,
    summary="Déplacer dans un dossier",
    openapi_extra=_body_schema(MoveIn),
)
def move_message(
    request: HttpRequest, message_id: str, mailbox: str = ""
) -> Status[MessageOut] | Status[ErrorOut]:
    try:
        copy = _copy(request, message_id, mailbox)
        body = _read_body(request, MoveIn, 4096)
        copy = do_move_message(signed_in_user(request), copy, body.folder, request)
    except MessagingError as error:
        return _refusal(error)
    return Status(200, _message_out(copy, with_deliveries=True))


@router.post(
    "/messages/{message_id}/flag",
    response={200: MessageOut, **_ERRORS},
    by_alias=True,
    summary="Suivre / ne plus suivre",
    openapi_extra=_body_schema(FlagIn),
)
def flag_message(
    request: HttpRequest, message_id: str, mailbox: str = ""
) -> Status[MessageOut] | Status[ErrorOut]:
    try:
        copy = _copy(request, message_id, mailbox)
        body = _read_body(request, FlagIn, 4096)
        copy = do_flag_message(signed_in_user(request), copy, body.flagged, request)
    except MessagingError as error:
        return _refusal(error)
    return Status(200, _message_out(copy, with_deliveries=True))


@router.delete(
    "/messages/{message_id}",
    response={200: DeleteOut, **_ERRORS},
    summary="Mettre à la corbeille ; depuis la corbeille, avec permanent=true, supprimer",
)
def delete_message(
    request: HttpRequest, message_id: str, mailbox: str = "", permanent: bool = False
) -> Status[DeleteOut] | Status[ErrorOut]:
    try:
        copy = _copy(request, message_id, mailbox)
        result = do_delete_message(signed_in_user(request), copy, request, for_good=permanent)
    except MessagingError as error:
        return _refusal(error)
    return Status(
        200,
        DeleteOut(
            id=copy.message.public_id,
            deleted=result.permanent,
            folder=None if result.permanent else Folder.TRASH,
        ),
    )
