"""JSON API of large attachments: resumable uploads, and downloads of a message's blobs.

The contract is docs/api/messaging.md, "Large attachments"; the work is in
:mod:`pli.server.messaging.uploads`. Thin views, as :mod:`pli.server.messaging.api`:
every endpoint needs an authenticated session (CSRF on ``POST``, ``PUT``,
``DELETE``), refusals have the shape ``{"code", "message", "details"}``, and
what is not the caller's answers ``404 not_found`` as what does not exist.

A chunk's body is never read whole: :func:`put_chunk` hands the request's
stream to the action, which copies it to disk in pieces of 1 MiB; a blob is
answered as a file (``FileResponse``: gunicorn sends it with ``sendfile``)
from the range asked.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.translation import gettext as _
from ninja import Field, Router, Status
from ninja.security import django_auth
from pydantic import ValidationError

from pli.server.accounts.session_auth import signed_in_user
from pli.server.messaging.access import MessagingError, access_copy_by_message_id
from pli.server.messaging.actions import STATUS, max_envelope_bytes
from pli.server.messaging.uploads import (
    CHUNK_BYTES_MAX,
    UPLOAD_STATUS,
    Upload,
    access_upload,
    allowed_attachment_types,
    bounded_pieces,
    do_create_upload,
    do_delete_upload,
    do_receive_chunk,
    inline_attachment_bytes,
    max_attachment_bytes,
    max_upload_bytes,
    open_message_blob,
)
from pli.server.validation import StrictSchema, field_errors, whole_number

router = Router(tags=["messaging"], auth=django_auth)

_BODY_MAX = 4096


class _Strict(StrictSchema):
    pass


class UploadIn(_Strict):
    #: Bytes of the ciphertext (RFC 8188 stream, header included).
    size: int = Field(ge=1)
    #: SHA-256 of the ciphertext, 64 hexadecimal digits: what the sealed message names.
    sha256: str = Field(min_length=64, max_length=64)


class UploadOut(_Strict):
    id: str
    size: int
    sha256: str
    #: Bytes received so far: the ``offset`` of the next chunk.
    received: int
    #: ``receiving``, or ``complete`` (ready to be named in a send's ``blobs``).
    state: str
    expires_at: dt.datetime


class LimitsOut(_Strict):
    #: PLI_MAX_ATTACHMENT_BYTES: the largest attachment (its plaintext).
    max_attachment_bytes: int
    #: The largest ciphertext an upload may announce (that attachment in 1 MiB records).
    max_upload_bytes: int
    #: The largest chunk of one PUT.
    chunk_bytes: int
    #: PLI_MAX_ENVELOPE_BYTES: the largest envelope sent inline.
    max_envelope_bytes: int
    #: The attachment bytes an envelope can carry inline; clients stream the rest.
    inline_attachment_bytes: int
    #: PLI_ATTACHMENT_TYPES: the media types clients accept as attachments.
    allowed_types: list[str]


class ErrorOut(_Strict):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


_ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys(
    (400, 403, 404, 409, 411, 413, 416, 422, 429, 503), ErrorOut
)


def _status(code: str) -> int:
    return UPLOAD_STATUS.get(code) or STATUS.get(code, 422)


def _refusal(error: MessagingError) -> Status[ErrorOut]:
    return Status(
        _status(error.code),
        ErrorOut(code=error.code, message=error.message, details=dict(error.details)),
    )


def _upload_out(upload: Upload) -> UploadOut:
    return UploadOut(
        id=upload.public_id,
        size=upload.size,
        sha256=upload.sha256,
        received=upload.received,
        state=upload.state,
        expires_at=upload.expires_at,
    )


def _read_create(request: HttpRequest) -> UploadIn:
    bad = MessagingError("bad_request", _("Requête invalide."))
    raw = request.read(_BODY_MAX + 1)
    if len(raw) > _BODY_MAX or request.content_type != "application/json":
        raise bad
    try:
        return UploadIn.model_validate_json(raw)
    except ValidationError as error:
        raise MessagingError(
            "bad_request",
            _("Requête invalide."),
            {"errors": field_errors(error)},
        ) from None


@router.get("/uploads/limits", response=LimitsOut, summary="Limites des pièces jointes")
def upload_limits(request: HttpRequest) -> LimitsOut:
    """What a client needs to choose inline or streamed, and to check types before sealing."""
    envelope = max_envelope_bytes()
    return LimitsOut(
        max_attachment_bytes=max_attachment_bytes(),
        max_upload_bytes=max_upload_bytes(),
        chunk_bytes=CHUNK_BYTES_MAX,
        max_envelope_bytes=envelope,
        inline_attachment_bytes=inline_attachment_bytes(envelope),
        allowed_types=allowed_attachment_types(),
    )


@router.post(
    "/uploads",
    response={201: UploadOut, **_ERRORS},
    summary="Annoncer le dépôt d'une pièce jointe chiffrée",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": UploadIn.model_json_schema()}},
        }
    },
)
def create_upload(request: HttpRequest) -> Status[UploadOut] | Status[ErrorOut]:
    try:
        body = _read_create(request)
        upload = do_create_upload(signed_in_user(request), body.size, body.sha256)
    except MessagingError as error:
        return _refusal(error)
    return Status(201, _upload_out(upload))


@router.get(
    "/uploads/{upload_id}",
    response={200: UploadOut, **_ERRORS},
    summary="Où en est un dépôt (pour reprendre)",
)
def get_upload(request: HttpRequest, upload_id: str) -> Status[UploadOut] | Status[ErrorOut]:
    try:
        upload = access_upload(signed_in_user(request), upload_id)
    except MessagingError as error:
        return _refusal(error)
    return Status(200, _upload_out(upload))


@router.put(
    "/uploads/{upload_id}",
    response={200: UploadOut, **_ERRORS},
    summary="Envoyer un morceau du fichier chiffré, à partir de offset",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
def put_chunk(
    request: HttpRequest, upload_id: str, offset: str = ""
) -> Status[UploadOut] | Status[ErrorOut]:
    try:
        start = whole_number(offset, digits=19)
        if start is None:
            raise MessagingError(
                "bad_request", _("Requête invalide."), {"errors": [{"field": "offset"}]}
            )
        announced = str(request.META.get("CONTENT_LENGTH") or "")
        length = whole_number(announced, digits=19)
        if length is None and not announced and not request.META.get("HTTP_TRANSFER_ENCODING"):
            length = 0  # no body
        # Otherwise None: chunked, or nonsense; the length must be known in advance.
        upload = do_receive_chunk(signed_in_user(request), upload_id, start, length, request)
    except MessagingError as error:
        return _refusal(error)
    return Status(200, _upload_out(upload))


@router.delete(
    "/uploads/{upload_id}",
    response={204: None, **_ERRORS},
    summary="Abandonner un dépôt",
)
def delete_upload(request: HttpRequest, upload_id: str) -> Status[None] | Status[ErrorOut]:
    try:
        do_delete_upload(signed_in_user(request), upload_id)
    except MessagingError as error:
        return _refusal(error)
    return Status(204, None)


@router.get(
    "/messages/{message_id}/blobs/{blob_id}",
    response={**_ERRORS},
    summary="Télécharger une pièce jointe chiffrée d'un message (plages admises)",
    openapi_extra={
        "responses": {
            "200": {
                "description": "The ciphertext (RFC 8188 stream)",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            "206": {"description": "The range asked (Content-Range)"},
        }
    },
)
def get_blob(
    request: HttpRequest, message_id: str, blob_id: str, mailbox: str = ""
) -> HttpResponseBase | Status[ErrorOut]:
    user = signed_in_user(request)
    try:
        copy = access_copy_by_message_id(user, message_id, mailbox or None)
        # Not cut to a length: the digest followed by anything was the blob, under any name.
        opened = open_message_blob(user, copy, blob_id, request.headers.get("Range"), request)
    except MessagingError as error:
        if error.code == "range_not_satisfiable":
            refused = JsonResponse(
                {"code": error.code, "message": error.message, "details": dict(error.details)},
                status=416,
            )
            refused["Content-Range"] = f"bytes */{error.details.get('size', 0)}"
            return refused
        return _refusal(error)
    span = opened.span
    response: FileResponse | StreamingHttpResponse
    if span.end == span.size - 1:
        # To the end (the whole blob, or a resumed download): a file, sent with sendfile.
        response = FileResponse(opened.handle, content_type="application/octet-stream")
    else:
        response = StreamingHttpResponse(
            bounded_pieces(opened.handle, span.length), content_type="application/octet-stream"
        )
    response["Content-Length"] = str(span.length)
    if span.partial:
        response.status_code = 206
        response["Content-Range"] = f"bytes {span.start}-{span.end}/{span.size}"
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = f'"{opened.blob.sha256}"'
    response["Content-Disposition"] = f'attachment; filename="{opened.blob.sha256}.bin"'
    response["Cache-Control"] = "no-store"
    return response
