"""Attachments uploaded to the compose page: never a byte of them in clear on a disk.

Django writes an upload larger than ``FILE_UPLOAD_MAX_MEMORY_SIZE`` to a
temporary file; an attachment is plaintext, which must never rest anywhere
(DESIGN "Key custody": plaintext exists only in the memory of the request;
REQ-AT-REST). :class:`SealingUploadHandler` replaces Django's handlers for the
compose views:

* attachments that fit the envelope together (:func:`inline_limit`) stay in
  memory and are sealed inside it, as before;
* an attachment that would pass that limit is **encrypted as it arrives**
  (:class:`pli.crypto.StreamEncryptor`: RFC 8188 records, AES-256-GCM, a
  fresh key; decision 0003) and its ciphertext written to the blob store; it
  becomes a complete upload of the sender (what the API's chunks build), and
  the sealed message carries its key and digest in a
  ``message/external-body`` part, exactly as the workstation client does. The
  key exists only in this request's memory and inside the envelope.

Memory is the inline attachments plus one record (1 MiB), whatever the size.
Limits: each streamed attachment, and all of them together, at most
``PLI_MAX_ATTACHMENT_BYTES`` (1 GiB by default); types from the operator's
allow-list (``PLI_ATTACHMENT_TYPES``), a streamed one checked on its first
bytes before anything of it is stored. Past a limit the upload stops, the
rest of the request is read and dropped, and what was stored of it is removed.

A form cut short (a connection lost during a long upload) must not send a
message whose last attachment is truncated: the compose form ends with a
field, :data:`END_FIELD`, which the view requires (``upload_interrupted``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, NoReturn

from django.core.files.uploadedfile import InMemoryUploadedFile, UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest
from django.utils.translation import gettext as _

from pli.crypto import StreamEncryptor
from pli.mime import Attachment, ExternalPart
from pli.mime.types import HEAD_BYTES, AttachmentRefused, attachment_type
from pli.server.accounts.models import User
from pli.server.blobs import BlobStore, BlobTooLarge, BlobWriter, blob_store
from pli.server.messaging.access import MessagingError
from pli.server.messaging.actions import max_envelope_bytes
from pli.server.messaging.uploads import (
    COPY_BYTES,
    allowed_attachment_types,
    do_complete_sealed_upload,
    do_discard_uploads,
    do_reserve_sealed_upload,
    inline_attachment_bytes,
    max_attachment_bytes,
    stream_ciphertext_bytes,
)

#: The compose form's last field: a body that lacks it was cut short.
END_FIELD = "end"
#: The form's text fields and the multipart framing, beside the attachments.
_FORM_ROOM = 2 * 1024 * 1024
#: The types of an attachment's Content-Type a browser may send that are not a file's.
_NOT_A_FILE_TYPE = ("multipart", "message")


def inline_limit() -> int:
    """The largest total of attachments one web mail message carries inside its envelope.

    An attachment is base64 in the inner MIME message, which is signed and
    wrapped as base64 again before encryption (RFC 8551 §3.5, opaque signed
    data): the envelope holds about 1.85 times the attachments' bytes, and must
    fit ``PLI_MAX_ENVELOPE_BYTES`` (docs/api/messaging.md).
    """
    return inline_attachment_bytes(max_envelope_bytes())


def request_limit() -> int:
    """The largest compose request read: inline and streamed attachments, and the text."""
    return inline_limit() + max_attachment_bytes() + _FORM_ROOM


def too_large_error() -> MessagingError:
    limit = max_attachment_bytes()
    return MessagingError(
        "attachments_too_large",
        _("Les pièces jointes dépassent la taille admise (%(limit)s octets en tout).")
        % {"limit": limit},
        {"limit": limit},
    )


def type_error(refusal: AttachmentRefused) -> MessagingError:
    """The allow-list's refusal, in the reader's language (the same codes as ``pli``'s)."""
    if refusal.code == "attachment_type_not_allowed":
        message = _(
            "%(name)s : le type %(kind)s n'est pas accepté en pièce jointe "
            "(types acceptés : %(accepted)s)."
        ) % {
            "name": refusal.filename,
            "kind": refusal.kind,
            "accepted": ", ".join(refusal.accepted),
        }
    else:
        message = _("%(name)s : son contenu n'est pas du type %(kind)s.") % {
            "name": refusal.filename,
            "kind": refusal.kind,
        }
    return MessagingError(refusal.code, message, {"name": refusal.filename, "type": refusal.kind})


def received_refusal(filename: str, content_type: str, head: bytes | None) -> MessagingError | None:
    """Why the web mail does not hand a received attachment over, if it does not.

    The rule the workstation applies before saving one (``ReadMessage.
    refused_attachments``): the sender's software enforces the operator's
    allow-list, but one that skipped it (or a sender with bad intent) must not
    get an executable one click away from a reader either. ``head``: the
    attachment's first bytes; ``None`` for a large part, judged on its
    declared type (its content is decrypted only as it downloads).
    """
    try:
        attachment_type(filename, content_type, head, allowed_attachment_types())
    except AttachmentRefused as refusal:
        return type_error(refusal)
    return None


def declared_type(content_type: str | None) -> str:
    """The browser's Content-Type of a file, or the generic one if it is not a file's."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if "/" not in kind or kind.split("/")[0] in _NOT_A_FILE_TYPE or len(kind) > 127:
        return "application/octet-stream"
    return kind


@dataclass(frozen=True)
class StreamedAttachment:
    """A large attachment encrypted as it arrived: a complete upload of the sender."""

    upload_id: str
    part: ExternalPart


class StreamedFile(UploadedFile):
    """What ``request.FILES`` holds for a streamed attachment: no content, its upload."""

    def __init__(self, streamed: StreamedAttachment, field_name: str | None) -> None:
        super().__init__(
            file=io.BytesIO(b""),
            name=streamed.part.filename,
            content_type=streamed.part.content_type,
            size=streamed.part.plaintext_size,
        )
        self.field_name = field_name
        self.streamed = streamed


class _Encrypting:
    """One attachment on its way: encrypted record by record into a blob being written.

    It is an upload of its sender from before its first byte is stored
    (``do_reserve_sealed_upload``: ``too_many_uploads`` past
    ``PLI_MAX_PENDING_UPLOADS``), so that the uploads the web mail encrypts
    at once are bounded per person as the API's are. Whoever starts one
    discards that upload (``do_discard_uploads``) unless a send attached it.
    """

    def __init__(self, user: User, store: BlobStore, max_plaintext: int) -> None:
        most = stream_ciphertext_bytes(max_plaintext)
        self.store = store
        self.upload = do_reserve_sealed_upload(user, most)
        self.encryptor = StreamEncryptor()
        try:
            self.writer: BlobWriter = store.writer(max_bytes=most)
        except BaseException:
            do_discard_uploads(user, [self.upload.public_id], store)
            raise

    def write(self, data: bytes) -> None:
        ciphertext = self.encryptor.update(data)
        if ciphertext:
            self.writer.write(ciphertext)

    def finish(self, filename: str, kind: str) -> StreamedAttachment:
        """The last record written, the blob installed: the upload complete, and the
        external part that names it in the sealed message."""
        try:
            self.writer.write(self.encryptor.finish())
            stored = self.writer.commit()
        except BaseException:
            self.writer.abort()  # a disk error: no temporary file stays behind
            raise
        seal = self.encryptor.seal
        upload = do_complete_sealed_upload(self.upload, stored, self.store)
        part = ExternalPart(
            filename=filename,
            content_type=kind,
            blob_id=seal.sha256,
            key=seal.key,
            size=seal.size,
            plaintext_size=seal.plaintext_size,
            record_size=seal.record_size,
        )
        return StreamedAttachment(upload.public_id, part)


def stream_attachment(
    user: User, attachment: Attachment, store: BlobStore | None = None
) -> StreamedAttachment:
    """An attachment already in memory, encrypted into the blob store as the handler
    encrypts a large file: for one the envelope cannot hold beside the others."""
    store = store or blob_store()
    encrypting = _Encrypting(user, store, len(attachment.data))
    try:
        view = memoryview(attachment.data)
        for start in range(0, len(view), COPY_BYTES):
            # A failed write removes what the writer held (BlobWriter.write).
            encrypting.write(bytes(view[start : start + COPY_BYTES]))
        return encrypting.finish(attachment.filename, attachment.content_type)
    except BaseException:
        encrypting.writer.abort()
        do_discard_uploads(user, [encrypting.upload.public_id], store)
        raise


class SealingUploadHandler(FileUploadHandler):
    """Small attachments in memory, large ones encrypted into the blob store as they arrive."""

    #: What Django's parser reads at a time (64 KiB by default): with pieces of a record's
    #: size, a large upload takes sixteen times fewer turns of the parser's Python loop.
    chunk_size = 1024 * 1024

    def __init__(self, request: HttpRequest, user: User, store: BlobStore | None = None) -> None:
        super().__init__(request)
        self.user = user
        self.store = store or blob_store()
        self.inline_limit = inline_limit()
        self.max_streamed = max_attachment_bytes()
        self.allowed = allowed_attachment_types()
        #: Why the upload stopped (too large, a refused type); the view shows it.
        self.refusal: MessagingError | None = None
        #: The uploads made for this request, until a send attaches them.
        self.kept: list[str] = []
        self._inline = 0
        self._streamed = 0
        self._buffer: io.BytesIO | None = None
        self._encrypting: _Encrypting | None = None
        self._kind = "application/octet-stream"

    @property
    def too_large(self) -> bool:
        return self.refusal is not None and self.refusal.code == "attachments_too_large"

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._buffer = io.BytesIO()
        if self._encrypting is not None:  # pragma: no cover - Django completes a file first
            self._encrypting.writer.abort()
        self._encrypting = None

    def _stop(self, refusal: MessagingError) -> NoReturn:
        self.refusal = refusal
        self._buffer = None
        if self._encrypting is not None:
            self._encrypting.writer.abort()
            self._encrypting = None
        # Read and drop the rest of the request: nothing of it is kept.
        raise StopUpload(connection_reset=False)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if self.refusal is not None:
            raise StopUpload(connection_reset=False)
        if self._encrypting is None:
            buffer = self._buffer
            if buffer is None:  # pragma: no cover - Django calls new_file first
                self._stop(too_large_error())
            if self._inline + buffer.tell() + len(raw_data) <= self.inline_limit:
                buffer.write(raw_data)
                return None
            self._start_encrypting(buffer.getvalue(), raw_data)
            return None
        self._streamed += len(raw_data)
        if self._streamed > self.max_streamed:
            self._stop(too_large_error())
        try:
            self._encrypting.write(raw_data)
        except BlobTooLarge:
            self._stop(too_large_error())
        return None

    def _start_encrypting(self, held: bytes, raw_data: bytes) -> None:
        """This file passes what the envelope holds: encrypt it as it comes, from here on."""
        self._buffer = None
        head = (held + raw_data[:HEAD_BYTES])[:HEAD_BYTES]
        try:
            # Before anything of it is stored: an executable does not reach the disk. The
            # type checked is the one its part declares (a reader judges it on that alone).
            self._kind = attachment_type(
                self.file_name or "", declared_type(self.content_type), head, self.allowed
            )
        except AttachmentRefused as refusal:
            self._stop(type_error(refusal))
        self._streamed += len(held) + len(raw_data)
        if self._streamed > self.max_streamed:
            self._stop(too_large_error())
        try:
            self._encrypting = _Encrypting(self.user, self.store, self.max_streamed)
        except MessagingError as refusal:  # too_many_uploads
            self._stop(refusal)
        # From here on, whatever happens, close() removes it unless a send took it.
        self.kept.append(self._encrypting.upload.public_id)
        self._encrypting.write(held)
        self._encrypting.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self._encrypting is not None:
            return self._complete_streamed(file_size)
        if self._buffer is None:
            return None
        buffer, self._buffer = self._buffer, None
        self._inline += file_size
        buffer.seek(0)
        return InMemoryUploadedFile(
            file=buffer,
            field_name=self.field_name,
            name=self.file_name,
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )

    def _complete_streamed(self, file_size: int) -> StreamedFile:
        encrypting, self._encrypting = self._encrypting, None
        assert encrypting is not None  # noqa: S101 - the caller checked
        try:
            streamed = encrypting.finish(self.file_name or "", self._kind)
        except BlobTooLarge:
            self._stop(too_large_error())
        except MessagingError as refusal:  # its upload expired meanwhile: not_found
            self._stop(refusal)
        if streamed.part.plaintext_size != file_size:  # pragma: no cover - Django counts it
            self._stop(too_large_error())
        return StreamedFile(streamed, self.field_name)

    def upload_interrupted(self) -> None:
        self.close()

    def close(self) -> None:
        """The request is over: drop what is half-written, and the uploads no send took
        (a send that went attached them: they are no longer uploads)."""
        if self._encrypting is not None:
            self._encrypting.writer.abort()
            self._encrypting = None
        self._buffer = None
        kept, self.kept = self.kept, []
        if kept:
            do_discard_uploads(self.user, kept, self.store)


def seal_uploads_as_they_come(request: HttpRequest, user: User) -> SealingUploadHandler:
    """Install the handler before anything reads the body (the view must be csrf_exempt)."""
    handler = SealingUploadHandler(request, user)
    request.upload_handlers = [handler]
    return handler
