"""Attachments uploaded to the compose page stay in memory, never in a temporary file.

Django writes an upload larger than ``FILE_UPLOAD_MAX_MEMORY_SIZE`` to a
temporary file; an attachment is plaintext, which must never rest anywhere
(DESIGN "Key custody": plaintext exists only in the memory of the request).
:class:`MemoryOnlyUploadHandler` replaces Django's handlers for the compose
views: every file is kept in memory, and the whole upload is bounded by the
inline limit (a larger upload is cut short and refused, nothing of it kept).
"""

from __future__ import annotations

import io
from typing import Any

from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest

from pli.server.messaging.actions import max_envelope_bytes

#: Room in an envelope for what is not attachments: headers, body, signature, CMS.
_ENVELOPE_ROOM = 256 * 1024


def inline_limit() -> int:
    """The largest total of attachments one web mail message can carry inline.

    An attachment is base64 in the inner MIME message, which is signed and
    wrapped as base64 again before encryption (RFC 8551 §3.5, opaque signed
    data): the envelope holds about 1.85 times the attachments' bytes, and must
    fit ``PLI_MAX_ENVELOPE_BYTES`` (docs/api/messaging.md).
    """
    return max(0, (max_envelope_bytes() - _ENVELOPE_ROOM) * 100 // 190)


def request_limit() -> int:
    """The largest compose request read: the attachments and the form's text fields."""
    return inline_limit() + 2 * 1024 * 1024


class MemoryOnlyUploadHandler(FileUploadHandler):
    """Keep each uploaded file in memory; stop the upload past ``limit`` bytes in all."""

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0
        self.too_large = False
        self._buffer: io.BytesIO | None = None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._buffer = io.BytesIO()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received > self.limit or self._buffer is None:
            self.too_large = True
            self._buffer = None
            # Read and drop the rest of the request: nothing of it is kept.
            raise StopUpload(connection_reset=False)
        self._buffer.write(raw_data)

    def file_complete(self, file_size: int) -> InMemoryUploadedFile | None:
        if self._buffer is None:
            return None
        buffer, self._buffer = self._buffer, None
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


def keep_uploads_in_memory(request: HttpRequest) -> MemoryOnlyUploadHandler:
    """Install the handler before anything reads the body (the view must be csrf_exempt)."""
    handler = MemoryOnlyUploadHandler(request, inline_limit())
    request.upload_handlers = [handler]
    return handler
