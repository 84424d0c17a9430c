"""Which attachments Pli accepts: an allow-list of types, and first bytes true to the type.

The server sees ciphertext only, so whoever holds the plaintext checks: the
workstation before sealing and after opening (:mod:`pli.client.sdk`), the web
mail before it seals with the vault's key. One function for all of them, so
that a file the command line refuses is refused by the web mail too.

The default list (an operator narrows or widens it with
``PLI_ATTACHMENT_TYPES``) covers what the issue asks for at least: PDF,
images, CDA R2 / XML documents and IHE XDM packages (``IHE_XDM.zip``), plus
plain text. A type is trusted only if the content starts as that type does:
an executable renamed ``.pdf`` is refused (``attachment_content_mismatch``).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Sequence

from pli.mime import MimeError

__all__ = [
    "DEFAULT_ATTACHMENT_TYPES",
    "HEAD_BYTES",
    "AttachmentRefused",
    "attachment_type",
    "media_type",
]

DEFAULT_ATTACHMENT_TYPES = (
    "application/pdf",
    "image/jpeg",
    "image/png",
    "image/tiff",
    "application/xml",
    "text/xml",
    "application/zip",
    "application/x-zip-compressed",
    "text/plain",
)
#: How many first bytes :func:`attachment_type` looks at.
HEAD_BYTES = 512
#: How the first bytes of each type start (a renamed executable is not a PDF).
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "application/zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "application/x-zip-compressed": (b"PK\x03\x04", b"PK\x05\x06"),
}
_XML_TYPES = frozenset({"application/xml", "text/xml"})
#: Names of one type (what a system's ``mime.types`` calls a ``.xml`` varies).
_SAME_TYPE = {
    "text/xml": "application/xml",
    "application/x-zip-compressed": "application/zip",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
}
#: Extensions refused whatever type and content a part declares: what a click runs
#: (programs, scripts, shortcuts, installers) or a browser renders as a page. Python
#: guesses some of them as harmless types (``.bat`` as text/plain), so they are named.
_DANGEROUS_EXTENSIONS = frozenset(
    {
        "app", "apk", "bash", "bat", "cmd", "com", "cpl", "deb", "desktop", "dll", "dmg",
        "exe", "hta", "htm", "html", "iso", "jar", "js", "jse", "lnk", "msi", "msp", "pif",
        "pkg", "ps1", "psm1", "reg", "rpm", "scr", "sh", "svg", "sys", "url", "vbe", "vbs",
        "wsf", "wsh", "xhtml",
    }
)  # fmt: skip


class AttachmentRefused(MimeError):
    """``attachment_type_not_allowed`` or ``attachment_content_mismatch``, with what
    a caller needs to say it in its reader's language."""

    def __init__(self, code: str, filename: str, kind: str, accepted: Sequence[str]) -> None:
        detail = (
            f"{kind} is not an accepted attachment type"
            if code == "attachment_type_not_allowed"
            else f"the content is not of type {kind}"
        )
        super().__init__(code, detail)
        self.filename = filename
        self.kind = kind
        self.accepted = tuple(accepted)


def media_type(value: str) -> str:
    """``type/subtype`` of a Content-Type value, lower case, without its parameters."""
    return value.split(";", 1)[0].strip().lower()


def _same(first: str, second: str) -> bool:
    return _SAME_TYPE.get(first, first) == _SAME_TYPE.get(second, second)


def attachment_type(
    filename: str,
    content_type: str,
    head: bytes | None,
    allowed: Iterable[str] = DEFAULT_ATTACHMENT_TYPES,
) -> str:
    """The attachment's media type, if allowed, named as such, and if ``head`` (its
    first bytes) is of it.

    A missing or generic type (``application/octet-stream``) is taken from the
    file name's extension. The name must not contradict the type: a program's
    extension is refused whatever the type says (``facture.jar`` declared as a
    zip), and the extension of another accepted type is a mismatch
    (``photo.png`` declared as a PDF), since the reader's system opens a file by
    its name. ``head``
    ``None``: the content is not at hand (a large part not yet downloaded), the
    type and the name are judged alone. Raises :class:`AttachmentRefused`.
    """
    kind = media_type(content_type)
    guessed, _encoding = mimetypes.guess_type(filename)
    named = media_type(guessed) if guessed else ""
    if kind in ("", "application/octet-stream"):
        kind = named or "application/octet-stream"
    accepted = [media_type(t) for t in allowed]
    if kind not in accepted:
        raise AttachmentRefused("attachment_type_not_allowed", filename, kind, accepted)
    extension = filename.rsplit(".", 1)[1].strip().lower() if "." in filename else ""
    if extension in _DANGEROUS_EXTENSIONS:
        raise AttachmentRefused("attachment_type_not_allowed", filename, f".{extension}", accepted)
    # Another accepted type by its name: the reader's system would open it as that one.
    # (An extension the list does not know, ``.cda`` say, is left to the content check:
    # what a system's mime.types guesses for it varies; the dangerous ones are named above.)
    if named in accepted and not _same(named, kind):
        raise AttachmentRefused("attachment_content_mismatch", filename, named, accepted)
    if head is None:
        return kind
    head = head[:HEAD_BYTES]
    if kind in _XML_TYPES:
        matches = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"<")
    elif kind == "text/plain":
        matches = b"\x00" not in head
    else:
        magic = _MAGIC.get(kind)
        matches = magic is None or head.startswith(magic)
    if not matches:
        raise AttachmentRefused("attachment_content_mismatch", filename, kind, accepted)
    return kind
