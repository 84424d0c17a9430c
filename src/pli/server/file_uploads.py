"""No file part is accepted outside the compose views: none reaches a disk or memory.

Django's default upload handlers keep a file part in memory up to 2.5 MB,
then write it to a temporary file. They run whenever ``request.POST`` is read
from a ``multipart/form-data`` body — and the CSRF check reads it for every
POST, before any view and before any login is checked. Without this, anyone
holding a CSRF cookie (any GET of the login page gives one) could make the
server write each request's whole body to its disk, up to the proxy's body
limit, without an account (found by a review).

No page of Pli takes files except the web mail's compose views, which install
their own handler before anything reads the body
(:func:`pli.server.webmail.uploads.seal_uploads_as_they_come`: attachments are
plaintext and are encrypted as they arrive). Every other request gets
:class:`RefuseFiles` (``FILE_UPLOAD_HANDLERS``): the parse stops at the first
file part, whose bytes are never kept; the fields before it are what the view
sees, so the request is refused as any malformed one is (no CSRF token: 403;
the API: ``bad_request``).
"""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


class RefuseFiles(FileUploadHandler):
    """Stop the parse at the first file part, keeping none of it."""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        # connection_reset: Django does not read the rest of the body into nothing
        # either; the server drops it with the connection.
        raise StopUpload(connection_reset=True)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        return None  # pragma: no cover - new_file stops the parse first

    def file_complete(self, file_size: int) -> UploadedFile | None:
        return None  # pragma: no cover - new_file stops the parse first
