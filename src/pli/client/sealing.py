"""Sealing and opening whole messages, large attachments included.

Content above :data:`LARGE_CONTENT_THRESHOLD` never enters the CMS
envelope: it is stream-encrypted (``pli.crypto.stream``) into a blob named by
the SHA-256 of its ciphertext, and the inner message carries a
``message/external-body`` part with that digest and the blob's key. The
blob is thus covered by the signature (its digest is signed) and readable
only by the envelope's recipients (its key is inside the envelope).
"""

from __future__ import annotations

import io
import mimetypes
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pli.client.castore import write_atomically
from pli.client.i18n import _
from pli.crypto import (
    Certificate,
    Decrypter,
    OpenedMessage,
    Signer,
    TrustStore,
    certificate_emails,
    decrypt_stream,
    encrypt_stream,
    open_envelope,
    seal,
)
from pli.mime import (
    Attachment,
    ExternalPart,
    InnerMessage,
    MimeError,
    complete_message,
    parse_inner_message,
)

#: cryptography's CMS API needs about 5x the payload in memory: above this, stream it.
LARGE_CONTENT_THRESHOLD = 10 * 1024 * 1024


def printable(text: str, *, lines: bool = False) -> str:
    """Text from a certificate, a message or a server, without control, format (bidi) or
    line-separator characters (``lines``: newlines and tabs kept). Such a text must not
    reach the terminal with an escape sequence, which could hide or rewrite what is
    printed after it."""
    return "".join(
        c
        for c in text
        if (lines and c in "\n\t") or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp")
    )


#: UTF-8 bytes a file name is cut to: file systems hold 255, and ``name (999).ext`` needs room.
_NAME_BYTES = 200


def _safe_filename(name: str) -> str:
    """A plain file name: no directories, no hidden file, no control or bidi characters.

    A surrogate (an undecodable byte of a name read from a non-UTF-8 file system)
    becomes ``_``: it could not be encoded into a message nor a file name. A name
    longer than 200 UTF-8 bytes is cut, its extension kept: 200 characters of
    ``é`` would not fit a file system's 255 bytes.
    """
    text = "".join("_" if unicodedata.category(c) == "Cs" else c for c in name)
    base = printable(Path(text.replace("\\", "/")).name).strip().lstrip(".")
    if len(base.encode()) > _NAME_BYTES:
        suffix = Path(base).suffix
        if len(suffix.encode()) > _NAME_BYTES // 10:
            suffix = ""
        stem = base.removesuffix(suffix).encode()[: _NAME_BYTES - len(suffix.encode())]
        base = (stem.decode("utf-8", "ignore").rstrip() + suffix).lstrip(".")
    return base or "attachment"


def _claim_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name (2)``… when taken: extraction never overwrites."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for number in range(1, 1000):
        candidate = directory / (name if number == 1 else f"{stem} ({number}){suffix}")
        try:
            candidate.touch(mode=0o600, exist_ok=False)
        except FileExistsError:
            continue
        return candidate
    raise MimeError(
        "file_exists",
        _("trop de fichiers nommés {name} dans {directory}", name=name, directory=directory),
    )


def store_blob(
    source_path: Path | None, data: bytes | None, blob_dir: Path, **meta: str
) -> ExternalPart:
    """Stream-encrypt a file (or bytes) into ``blob_dir``; the part that references it."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=blob_dir, prefix=".blob-")
    try:
        with os.fdopen(fd, "wb") as destination:
            if source_path is not None:
                with source_path.open("rb") as source:
                    sealed = encrypt_stream(source, destination)
            else:
                sealed = encrypt_stream(io.BytesIO(data or b""), destination)
        Path(temporary).replace(blob_dir / sealed.sha256)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return ExternalPart(
        filename=meta["filename"],
        content_type=meta["content_type"],
        blob_id=sealed.sha256,
        key=sealed.key,
        size=sealed.size,
        plaintext_size=sealed.plaintext_size,
        record_size=sealed.record_size,
    )


def seal_file_message(
    eml: bytes,
    signer: Signer,
    recipients: Sequence[Certificate],
    *,
    attach: Sequence[Path] = (),
    blob_dir: Path,
    threshold: int = LARGE_CONTENT_THRESHOLD,
    chain: Sequence[Certificate] = (),
) -> bytes:
    """Seal a user's ``.eml`` with extra files; large content goes to ``blob_dir``."""
    attachments: list[Attachment] = []
    external: list[ExternalPart] = []
    for path in attach:
        content_type = _guess_type(path)
        if path.stat().st_size > threshold:
            external.append(
                store_blob(
                    path,
                    None,
                    blob_dir,
                    filename=_safe_filename(path.name),
                    content_type=content_type,
                )
            )
        else:
            attachments.append(
                Attachment(_safe_filename(path.name), content_type, path.read_bytes())
            )

    def externalise(attachment: Attachment) -> ExternalPart:
        return store_blob(
            None,
            attachment.data,
            blob_dir,
            filename=_safe_filename(attachment.filename),
            content_type=attachment.content_type,
        )

    inner = complete_message(
        eml,
        attachments=attachments,
        external_parts=external,
        externalise=externalise,
        threshold=threshold,
    )
    return seal(inner, signer, recipients, chain=chain)


def _guess_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@dataclass(frozen=True)
class OpenedFileMessage:
    opened: OpenedMessage
    message: InnerMessage
    extracted: list[Path]


def open_file_message(
    data: bytes,
    decrypter: Decrypter,
    trust: TrustStore,
    *,
    blob_dir: Path | None = None,
    attachments_dir: Path | None = None,
) -> OpenedFileMessage:
    """Open, verify and parse; decrypt external parts into ``attachments_dir`` if given."""
    opened = open_envelope(data, decrypter, trust)
    message = parse_inner_message(opened.mime)
    # A signed message re-encrypted by a recipient for someone else ("surreptitious
    # forwarding", RFC 8551 §3.7 discussion): genuine, but not addressed to you.
    addressed = {a.lower() for a in [*message.to, *message.cc, message.from_address]}
    if message.sender:
        addressed.add(message.sender.lower())
    if not addressed.intersection(certificate_emails(decrypter.certificate)):
        opened.warnings.append("not_addressed_to_you")
    extracted: list[Path] = []
    if message.external_parts and attachments_dir is not None:
        if blob_dir is None:
            raise MimeError(
                "blob_missing",
                _("le message désigne un contenu externe : indiquez --blobs DOSSIER"),
            )
        attachments_dir.mkdir(parents=True, exist_ok=True)
        for part in message.external_parts:
            extracted.append(_extract(part, blob_dir, attachments_dir))
    return OpenedFileMessage(opened, message, extracted)


def _extract(part: ExternalPart, blob_dir: Path, attachments_dir: Path) -> Path:
    source_path = blob_dir / part.blob_id
    if not source_path.is_file():
        raise MimeError(
            "blob_missing",
            _("contenu externe {blob}… introuvable", blob=part.blob_id[:12]),
        )
    target = _claim_path(attachments_dir, _safe_filename(part.filename))
    fd, temporary = tempfile.mkstemp(dir=attachments_dir, prefix=".part-")
    try:
        with source_path.open("rb") as source, os.fdopen(fd, "wb") as destination:
            decrypt_stream(source, destination, key=part.key, sha256=part.blob_id, size=part.size)
        # Only content whose digest matched the signed message is kept.
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise
    return target


__all__ = [
    "LARGE_CONTENT_THRESHOLD",
    "OpenedFileMessage",
    "open_file_message",
    "seal_file_message",
    "store_blob",
    "write_atomically",
]
