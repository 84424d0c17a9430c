"""Large attachments: resumable uploads of stream-encrypted blobs, and their downloads.

Decision 0003 (docs/decisions/0003-large-content.md): content too large for the
CMS envelope is encrypted on the workstation as a stream (RFC 8188 records,
AES-256-GCM, :mod:`pli.crypto.stream`); the sealed message carries the key and
the SHA-256 of the ciphertext. The server receives that ciphertext here and
never anything else: it cannot tell a PDF from a scan (REQ-E2E, REQ-AT-REST).

The life of an upload (docs/api/messaging.md, "Large attachments"):

1. ``POST /api/uploads {"size", "sha256"}``: the ciphertext's size and digest,
   announced. An :class:`Upload` row and an empty spool file
   (``<BLOB_DIR>/uploads/<hex>``, ``0600``) are made.
2. ``PUT /api/uploads/{id}?offset=N``, a raw chunk (at most
   :data:`CHUNK_BYTES_MAX`): ``N`` must be what the server holds so far
   (``received``). The chunk is copied from the request stream to the spool
   file in pieces of 1 MiB, flushed to disk, and only then counted: a chunk
   cut short by a broken connection is not counted, and the next ``PUT``
   truncates it away. ``GET /api/uploads/{id}`` says ``received``: that is how
   a client resumes.
3. The chunk that brings ``received`` to ``size`` completes the upload: the
   spool file is copied into the blob store (:mod:`pli.server.blobs`), which
   hashes it on the way; a digest or size other than announced discards the
   upload (``upload_digest_mismatch``). The upload is then ``complete``.
4. ``POST /api/messages`` names complete uploads in ``blobs``:
   :func:`attach_uploads`, inside the send's transaction, turns each into a
   :class:`MessageBlob` of the message (same blob, no copy) and deletes the
   upload. An upload never attached expires (:func:`purge_expired_uploads`,
   a daily job) and never becomes an attachment.

Recipients and the sender fetch a message's blob with
``GET /api/messages/{id}/blobs/{sha256}`` (:func:`open_message_blob`), ranges
allowed, so that an interrupted download resumes.

Memory does not grow with the size: every copy goes in pieces of 1 MiB. A
spool file is written by one request at a time (an exclusive ``flock``:
concurrent ``PUT`` requests on one upload get ``upload_busy``); the database
row is updated in short transactions, never while bytes are in flight.

The models live here (not in ``models.py``) to keep uploads in one module;
``models.py`` imports them so that Django's app registry knows them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pli.crypto.stream import DEFAULT_RECORD_SIZE
from pli.mime.types import DEFAULT_ATTACHMENT_TYPES
from pli.server.accounts.models import User
from pli.server.audit.actions import do_record_event
from pli.server.audit.models import AuditAction
from pli.server.blobs import BlobError, BlobStore, StoredBlob, blob_store
from pli.server.config import ConfigurationError, positive_setting, setting
from pli.server.jobs import JobSummary
from pli.server.messaging.access import MessagingError, not_found
from pli.server.messaging.models import Message, MessageCopy

logger = logging.getLogger(__name__)

#: ``upl_`` + 32 hexadecimal digits (128 random bits).
UPLOAD_ID_LENGTH = 36
UPLOAD_ID = re.compile(r"upl_[0-9a-f]{32}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: The largest chunk one ``PUT`` may carry.
CHUNK_BYTES_MAX = 8 * 1024 * 1024
#: Pieces in which bytes are copied (request → spool, spool → store, store → response).
COPY_BYTES = 1024 * 1024
MAX_ATTACHMENT_BYTES_DEFAULT = 1024 * 1024 * 1024
UPLOAD_EXPIRY_HOURS_DEFAULT = 24
MAX_PENDING_UPLOADS_DEFAULT = 20
#: RFC 8188 framing: header salt (16) | rs (4) | idlen (1); per record a tag (16) and a delimiter.
_STREAM_HEADER = 21
_RECORD_OVERHEAD = 17
#: Room in an envelope for what is not attachments: headers, body, signature, CMS.
ENVELOPE_ROOM = 256 * 1024
#: An attachment's bytes grow about 1.85 times in an envelope: base64 in the MIME
#: entity, then that signed entity base64 again in the enveloped content (RFC 8551).
ENVELOPE_GROWTH_PERCENT = 190

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


# --------------------------------------------------------------------------- models


class UploadState(models.TextChoices):
    RECEIVING = "receiving", gettext_lazy("En cours")
    #: A ciphertext the server writes itself: the web mail encrypting an attachment as it
    #: arrives, or copying a forwarded one. Counted against the person's limit from its
    #: first byte; never the API's to write to (``access_upload`` does not see it).
    SEALING = "sealing", gettext_lazy("Chiffrement en cours")
    COMPLETE = "complete", gettext_lazy("Terminé")


class Upload(models.Model):
    """An attachment's ciphertext on its way in; deleted once attached or expired."""

    public_id = models.CharField(gettext_lazy("identifiant"), max_length=UPLOAD_ID_LENGTH)
    #: Who uploads it; only they may send it. Set null if the account goes (the purge
    #: then removes the upload).
    # No index of its own: messaging_upload_owner_idx (owner, state) begins with it.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    #: Announced ciphertext bytes and SHA-256 (hexadecimal), checked at completion.
    size = models.PositiveBigIntegerField(gettext_lazy("taille"))
    sha256 = models.CharField(max_length=64)
    #: Bytes received and flushed to disk, in order: where the next chunk starts.
    received = models.PositiveBigIntegerField(gettext_lazy("reçu"), default=0)
    state = models.CharField(max_length=16, choices=UploadState.choices)
    #: The blob store's id, once complete.
    blob_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    #: Pushed back by every chunk and by the completion.
    expires_at = models.DateTimeField()

    class Meta:
        app_label = "messaging"
        verbose_name = gettext_lazy("dépôt de pièce jointe")
        verbose_name_plural = gettext_lazy("dépôts de pièces jointes")
        constraints = [  # noqa: RUF012 - Django's Meta convention
            models.UniqueConstraint(fields=["public_id"], name="messaging_upload_public_id_uniq"),
        ]
        indexes = [  # noqa: RUF012 - Django's Meta convention
            models.Index(fields=["owner", "state"], name="messaging_upload_owner_idx"),
            models.Index(fields=["expires_at"], name="messaging_upload_expiry_idx"),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def spool_name(self) -> str:
        return self.public_id.removeprefix("upl_")


class MessageBlob(models.Model):
    """A large attachment's ciphertext, part of a message (as its envelope is)."""

    # No index of its own: messaging_one_blob_each (message, sha256) begins with it.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="blobs", db_index=False
    )
    #: SHA-256 of the ciphertext: what the sealed message names, and the URL's name.
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField(gettext_lazy("taille"))
    #: Where the blob store keeps it (a random id: a blob belongs to one message).
    blob_id = models.CharField(max_length=64)

    class Meta:
        app_label = "messaging"
        verbose_name = gettext_lazy("pièce jointe chiffrée")
        verbose_name_plural = gettext_lazy("pièces jointes chiffrées")
        constraints = [  # noqa: RUF012 - Django's Meta convention
            models.UniqueConstraint(fields=["message", "sha256"], name="messaging_one_blob_each"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id}/{self.sha256[:12]}"


# --------------------------------------------------------------------------- settings


def max_attachment_bytes() -> int:
    """``PLI_MAX_ATTACHMENT_BYTES``: the largest attachment (its plaintext), 1 GiB by default."""
    return positive_setting("MAX_ATTACHMENT_BYTES", MAX_ATTACHMENT_BYTES_DEFAULT)


def stream_ciphertext_bytes(plaintext: int, record_size: int = DEFAULT_RECORD_SIZE) -> int:
    """The size :func:`pli.crypto.encrypt_stream` gives ``plaintext`` bytes (RFC 8188 framing)."""
    per_record = record_size - _RECORD_OVERHEAD
    records = max(1, -(-plaintext // per_record))
    return _STREAM_HEADER + plaintext + records * _RECORD_OVERHEAD


def max_upload_bytes() -> int:
    """The largest ciphertext accepted: the largest attachment, encrypted in 1 MiB records."""
    return stream_ciphertext_bytes(max_attachment_bytes())


def upload_expiry() -> dt.timedelta:
    """``PLI_UPLOAD_EXPIRY_HOURS``: an upload left alone this long is removed (24 h)."""
    return dt.timedelta(hours=positive_setting("UPLOAD_EXPIRY_HOURS", UPLOAD_EXPIRY_HOURS_DEFAULT))


def max_pending_uploads() -> int:
    """``PLI_MAX_PENDING_UPLOADS``: uploads one person may have unattached at once (20)."""
    return positive_setting("MAX_PENDING_UPLOADS", MAX_PENDING_UPLOADS_DEFAULT)


def allowed_attachment_types() -> list[str]:
    """``PLI_ATTACHMENT_TYPES`` (comma-separated media types), else the default list.

    Enforced by clients before sealing (the SDK, the web mail): the server only
    ever sees ciphertext. Served to clients by ``GET /api/uploads/limits``.
    """
    raw = setting("ATTACHMENT_TYPES")
    if raw is None:
        return list(DEFAULT_ATTACHMENT_TYPES)
    types = [item.strip().lower() for item in raw.split(",") if item.strip()]
    bad = [item for item in types if not _MEDIA_TYPE.fullmatch(item)]
    if bad or not types:
        raise ConfigurationError(
            f"PLI_ATTACHMENT_TYPES must be media types separated by commas, not {raw!r}"
        )
    return list(dict.fromkeys(types))


def inline_attachment_bytes(envelope_limit: int) -> int:
    """The most attachment bytes one envelope of ``envelope_limit`` bytes can carry inline.

    About 5.1 MiB for the default 10 MiB envelope; a client streams the rest
    (decision 0003), and so does the web mail (``webmail/uploads.py``).
    """
    return max(0, (envelope_limit - ENVELOPE_ROOM) * 100 // ENVELOPE_GROWTH_PERCENT)


# --------------------------------------------------------------------------- errors


def _error(code: str, message: str, **details: object) -> MessagingError:
    return MessagingError(code, message, details or None)


#: HTTP statuses of the upload refusals (the others answer 422, ``not_found`` 404).
UPLOAD_STATUS = {
    "not_found": 404,
    "attachment_too_large": 413,
    "upload_chunk_too_large": 413,
    "upload_offset_mismatch": 409,
    "upload_busy": 409,
    "upload_length_required": 411,
    "upload_chunk_incomplete": 400,
    "too_many_uploads": 429,
    "range_not_satisfiable": 416,
    "blob_unavailable": 503,
}


# --------------------------------------------------------------------------- the spool


def spool_directory() -> Path:
    """Where uploads in progress wait: ``<BLOB_DIR>/uploads`` (the same file system)."""
    return Path(settings.BLOB_DIR) / "uploads"


def _spool_path(upload: Upload) -> Path:
    return spool_directory() / upload.spool_name


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@contextlib.contextmanager
def _locked_spool(upload: Upload) -> Iterator[int]:
    """The spool file, open for writing, under an exclusive lock (one writer at a time)."""
    try:
        descriptor = os.open(_spool_path(upload), os.O_RDWR)
    except FileNotFoundError:
        raise not_found() from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _error(
                "upload_busy", _("Ce dépôt reçoit déjà un autre morceau : réessayez.")
            ) from None
        yield descriptor
    finally:
        os.close(descriptor)  # releases the lock


# --------------------------------------------------------------------------- actions


def new_upload_id() -> str:
    return "upl_" + secrets.token_hex(16)


def _live(user: User) -> models.QuerySet[Upload]:
    return Upload.objects.filter(owner=user, expires_at__gt=timezone.now())


def do_create_upload(user: User, size: int, sha256: str) -> Upload:
    """Announce a ciphertext of ``size`` bytes with this SHA-256; its upload, empty."""
    limit = max_upload_bytes()
    if size > limit:
        raise _error(
            "attachment_too_large",
            _("La pièce jointe dépasse la taille admise (%(limit)s octets).")
            % {"limit": max_attachment_bytes()},
            limit=max_attachment_bytes(),
            ciphertext_limit=limit,
        )
    if size < 1:
        raise _error("bad_request", _("Requête invalide."), errors=[{"field": "size"}])
    digest = sha256.lower()
    if not SHA256_HEX.fullmatch(digest):
        raise _error("bad_request", _("Requête invalide."), errors=[{"field": "sha256"}])
    most = max_pending_uploads()
    if _live(user).count() >= most:  # early, before any file: the common refusal
        raise _too_many_uploads(most)
    directory = spool_directory()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    upload = Upload(
        public_id=new_upload_id(),
        owner=user,
        size=size,
        sha256=digest,
        state=UploadState.RECEIVING,
        expires_at=timezone.now() + upload_expiry(),
    )
    path = _spool_path(upload)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        _insert_within_limit(user, upload, most)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return upload


def _insert_within_limit(user: User, upload: Upload, most: int) -> None:
    """Save ``upload`` unless ``user`` already has ``most`` live ones."""
    with transaction.atomic():
        # Counted again under a lock on the person's row, so that uploads created at
        # the same time cannot together pass the limit (the only bound on the disk
        # one person's unsent uploads take). SQLite: its writers are serialised.
        User.objects.select_for_update().filter(pk=user.pk).exists()
        if _live(user).count() >= most:
            raise _too_many_uploads(most)
        upload.save(force_insert=True)


def do_reserve_sealed_upload(user: User, most_bytes: int) -> Upload:
    """Room for a ciphertext of at most ``most_bytes`` that the server writes itself.

    The web mail encrypts a large attachment as it arrives (and copies a
    forwarded one): before the first byte of it is stored, it becomes an
    upload of ``user`` in state ``sealing``, counted against
    ``PLI_MAX_PENDING_UPLOADS`` as the API's are (``too_many_uploads``), so that
    the disk one person's unsent attachments take has the same bound whichever
    way they come. :func:`do_complete_sealed_upload` makes it complete; a
    request that ends without doing so discards it (:func:`do_discard_uploads`),
    and one whose process died leaves a row that expires
    (:func:`purge_expired_uploads`) and a temporary file the store sweeps.
    """
    most = max_pending_uploads()
    if _live(user).count() >= most:  # early, without the lock: the common refusal
        raise _too_many_uploads(most)
    upload = Upload(
        public_id=new_upload_id(),
        owner=user,
        size=most_bytes,
        sha256="",
        state=UploadState.SEALING,
        expires_at=timezone.now() + upload_expiry(),
    )
    _insert_within_limit(user, upload, most)
    return upload


def do_complete_sealed_upload(
    upload: Upload, stored: StoredBlob, store: BlobStore | None = None
) -> Upload:
    """The reserved upload names the ciphertext now in the store: complete, which a
    send attaches as it attaches the API's.

    Its row is written as soon as the blob is, so that a process that dies
    before the send leaves an upload that expires with its blob, never a blob
    nothing names. If the reservation is gone (expired and purged during a very
    long upload), the blob goes too and the caller gets ``not_found``.
    """
    store = store or blob_store()
    try:
        with transaction.atomic():
            changed = Upload.objects.filter(pk=upload.pk, state=UploadState.SEALING).update(
                state=UploadState.COMPLETE,
                size=stored.size,
                received=stored.size,
                sha256=stored.sha256,
                blob_id=stored.blob_id,
                expires_at=timezone.now() + upload_expiry(),
            )
    except BaseException:
        store.delete(stored.blob_id)
        raise
    if not changed:
        store.delete(stored.blob_id)
        raise not_found()
    upload.state, upload.blob_id = UploadState.COMPLETE, stored.blob_id
    upload.size = upload.received = stored.size
    upload.sha256 = stored.sha256
    return upload


def do_discard_uploads(
    user: User, public_ids: Sequence[str], store: BlobStore | None = None
) -> int:
    """Remove those of these uploads ``user`` still holds, with their blobs; how many.

    For a web mail send that did not go: what it encrypted goes at once. An
    upload a send attached is no longer an upload (its blob is the message's)
    and is left alone.
    """
    if not public_ids:
        return 0
    rows = list(
        Upload.objects.filter(owner=user, public_id__in=list(public_ids)).values_list(
            "pk", "blob_id", "public_id"
        )
    )
    store = store or blob_store()
    removed = 0
    for pk, blob_id, public_id in rows:
        with transaction.atomic():
            deleted, _counts = Upload.objects.filter(pk=pk).delete()
        if not deleted:
            continue  # a send attached it meanwhile: the blob is that message's now
        removed += 1
        if blob_id:
            store.delete(blob_id)
        (spool_directory() / public_id.removeprefix("upl_")).unlink(missing_ok=True)
    return removed


def _too_many_uploads(most: int) -> MessagingError:
    return _error(
        "too_many_uploads",
        _("Trop de dépôts en attente : envoyez ou laissez expirer les précédents."),
        limit=most,
    )


def access_upload(user: User, public_id: str) -> Upload:
    """The caller's live upload; anything else (another's, expired, unknown) is ``not_found``."""
    if not UPLOAD_ID.fullmatch(public_id or ""):
        raise not_found()
    upload = _live(user).exclude(state=UploadState.SEALING).filter(public_id=public_id).first()
    if upload is None:
        raise not_found()
    return upload


def do_receive_chunk(
    user: User, public_id: str, offset: int, length: int | None, stream: _Readable
) -> Upload:
    """Append ``length`` bytes read from ``stream`` at ``offset``; complete at the last byte.

    ``offset`` must be the bytes received so far (``upload_offset_mismatch``
    otherwise, with ``details.received``); nothing is counted until the
    whole chunk is on disk. An empty chunk at ``offset == size`` completes an
    upload whose completion was interrupted (and is harmless on a complete one).
    """
    if length is None:
        raise _error(
            "upload_length_required", _("Indiquez la longueur du morceau (Content-Length).")
        )
    if length > CHUNK_BYTES_MAX:
        raise _error(
            "upload_chunk_too_large",
            _("Le morceau dépasse la taille admise (%(limit)s octets).")
            % {"limit": CHUNK_BYTES_MAX},
            limit=CHUNK_BYTES_MAX,
        )
    upload = access_upload(user, public_id)
    if upload.state == UploadState.COMPLETE:
        if offset == upload.size and length == 0:
            return upload
        raise _offset_mismatch(upload.size)
    with _locked_spool(upload) as descriptor:
        upload.refresh_from_db(fields=["received", "state"])  # as of the lock
        if offset != upload.received:
            raise _offset_mismatch(upload.received)
        if offset + length > upload.size:
            raise _error(
                "upload_beyond_size",
                _("Le morceau dépasse la taille annoncée du dépôt."),
                size=upload.size,
            )
        if length:
            _write_chunk(descriptor, offset, length, stream)
            counted = Upload.objects.filter(pk=upload.pk, received=offset).update(
                received=offset + length, expires_at=timezone.now() + upload_expiry()
            )
            if not counted:  # purged meanwhile
                raise not_found()
            upload.received = offset + length
        if upload.received == upload.size:
            _complete(upload, descriptor)
    return upload


def _offset_mismatch(received: int) -> MessagingError:
    return _error(
        "upload_offset_mismatch",
        _("Ce morceau ne commence pas où le dépôt en est : reprenez à %(received)s octets.")
        % {"received": received},
        received=received,
    )


def _write_chunk(descriptor: int, offset: int, length: int, stream: _Readable) -> None:
    """Copy exactly ``length`` bytes to ``offset``, flushed; on a short body, undo."""
    # Whatever a previous, broken request left past what was counted goes first.
    os.ftruncate(descriptor, offset)
    os.lseek(descriptor, offset, os.SEEK_SET)
    remaining = length
    try:
        while remaining:
            piece = stream.read(min(COPY_BYTES, remaining))
            if not piece:
                break
            view = memoryview(piece)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            remaining -= len(piece)
        if remaining:
            raise _error(
                "upload_chunk_incomplete",
                _("Le morceau est arrivé incomplet : reprenez à %(received)s octets.")
                % {"received": offset},
                received=offset,
            )
        os.fsync(descriptor)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, offset)
        raise


def _complete(upload: Upload, descriptor: int, store: BlobStore | None = None) -> None:
    """Copy the spool into the blob store, checking size and digest; then the upload is complete."""
    store = store or blob_store()
    os.lseek(descriptor, 0, os.SEEK_SET)
    with os.fdopen(os.dup(descriptor), "rb", buffering=0) as spool:
        stored = store.write(_Pieces(spool, upload.size), max_bytes=upload.size)
    if stored.size != upload.size or stored.sha256 != upload.sha256:
        store.delete(stored.blob_id)
        _discard(upload)
        raise _error(
            "upload_digest_mismatch",
            _("Le fichier reçu n'a pas l'empreinte SHA-256 annoncée : déposez-le de nouveau."),
        )
    try:
        with transaction.atomic():
            changed = Upload.objects.filter(pk=upload.pk, state=UploadState.RECEIVING).update(
                state=UploadState.COMPLETE,
                blob_id=stored.blob_id,
                expires_at=timezone.now() + upload_expiry(),
            )
    except BaseException:
        store.delete(stored.blob_id)
        raise
    if not changed:  # removed meanwhile (expired and purged): nothing may name the blob
        store.delete(stored.blob_id)
        raise not_found()
    upload.state, upload.blob_id = UploadState.COMPLETE, stored.blob_id
    _spool_path(upload).unlink(missing_ok=True)


class _Pieces:
    """``size`` bytes of a file, read in pieces of :data:`COPY_BYTES` (what the store reads)."""

    def __init__(self, handle: _Readable, size: int) -> None:
        self._handle = handle
        self._left = size

    def __iter__(self) -> Iterator[bytes]:
        while self._left > 0:
            piece = self._handle.read(min(COPY_BYTES, self._left))
            if not piece:
                return
            self._left -= len(piece)
            yield piece


def _discard(upload: Upload) -> None:
    with transaction.atomic():
        Upload.objects.filter(pk=upload.pk).delete()
    _spool_path(upload).unlink(missing_ok=True)


def do_delete_upload(user: User, public_id: str) -> None:
    """Abandon one of the caller's uploads (not yet attached): its row and files go."""
    upload = access_upload(user, public_id)
    with transaction.atomic():
        # The blob id as committed now, under the row's lock: an upload that completed
        # since it was read names a blob that must go with it.
        blob_id = (
            Upload.objects.select_for_update()
            .filter(pk=upload.pk)
            .values_list("blob_id", flat=True)
            .first()
        )
        deleted, _counts = Upload.objects.filter(pk=upload.pk).delete()
    if not deleted:
        raise not_found()
    if blob_id:
        blob_store().delete(blob_id)
    _spool_path(upload).unlink(missing_ok=True)


# --------------------------------------------------------------------------- sending


def check_uploads(user: User, public_ids: Sequence[str]) -> dict[str, int]:
    """The distinct upload ids of a send, each a complete upload of the caller
    (``blob_not_found``), in order, with their sizes (the daily limits count them).

    Read only: the send checks in its documented order; :func:`attach_uploads`
    claims them, under a lock, in the send's transaction.
    """
    wanted = list(dict.fromkeys(public_ids))
    found = dict(
        _live(user)
        .filter(public_id__in=wanted, state=UploadState.COMPLETE)
        .values_list("public_id", "size")
    )
    missing = [public_id for public_id in wanted if public_id not in found]
    if missing:
        raise _blob_not_found(missing)
    return {public_id: found[public_id] for public_id in wanted}


def _blob_not_found(missing: Sequence[str]) -> MessagingError:
    return _error(
        "blob_not_found",
        _("Pièce jointe introuvable : déposez-la d'abord."),
        blobs=[str(m)[:64] for m in missing[:20]],
    )


def attach_uploads(user: User, message: Message, public_ids: Sequence[str]) -> list[MessageBlob]:
    """Make the caller's complete uploads blobs of ``message``; inside the send's transaction.

    The rows are locked, so two sends cannot both take one upload (the second
    answers ``blob_not_found``, as for any upload that is not there). Each
    becomes a :class:`MessageBlob` naming the same stored blob, and goes.
    Two uploads with the same ciphertext become one blob (the other's file
    is removed once the send commits).
    """
    if not public_ids:
        return []
    rows = list(
        _live(user)
        .select_for_update()
        .filter(public_id__in=list(public_ids), state=UploadState.COMPLETE)
        .order_by("pk")
    )
    missing = sorted(set(public_ids) - {row.public_id for row in rows})
    if missing:
        raise _blob_not_found(missing)
    blobs: dict[str, MessageBlob] = {}
    duplicates: list[str] = []
    for row in rows:
        if row.sha256 in blobs:
            duplicates.append(row.blob_id)
            continue
        blobs[row.sha256] = MessageBlob(
            message=message, sha256=row.sha256, size=row.size, blob_id=row.blob_id
        )
    created = MessageBlob.objects.bulk_create(blobs.values())
    Upload.objects.filter(pk__in=[row.pk for row in rows]).delete()
    if duplicates:
        store = blob_store()

        def remove_duplicates() -> None:
            for blob_id in duplicates:
                store.delete(blob_id)

        transaction.on_commit(remove_duplicates)
    return created


def blob_ids_of(message_ids: Sequence[int]) -> list[str]:
    """The store ids of the blobs of these messages (removed with them)."""
    return list(
        MessageBlob.objects.filter(message_id__in=list(message_ids)).values_list(
            "blob_id", flat=True
        )
    )


# --------------------------------------------------------------------------- downloads


@dataclass(frozen=True)
class BlobRange:
    """Bytes ``start`` to ``end`` (inclusive) of a blob of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def partial(self) -> bool:
        return self.start > 0 or self.end < self.size - 1

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> BlobRange:
    """One ``bytes=`` range of RFC 9110 §14.1.2 (``N-``, ``N-M``, ``-K``); the whole blob if none.

    Several ranges, or another unit, are ignored (the whole blob is sent, as
    RFC 9110 allows); a range that starts past the end is ``range_not_satisfiable``.
    """
    whole = BlobRange(0, size - 1, size)
    match = _RANGE.fullmatch((header or "").strip())
    if match is None:
        return whole
    first, last = match.groups()
    if not first and not last:
        return whole
    if not first:  # the last K bytes
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        return BlobRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return BlobRange(start, end, size)


def _unsatisfiable(size: int) -> MessagingError:
    return _error("range_not_satisfiable", _("La plage demandée est hors du fichier."), size=size)


@dataclass
class OpenedBlob:
    blob: MessageBlob
    handle: BinaryIO
    span: BlobRange


def open_message_blob(
    user: User,
    copy: MessageCopy,
    sha256: str,
    range_header: str | None,
    request: HttpRequest | None = None,
) -> OpenedBlob:
    """A blob of the caller's copy of a message, opened at the range asked; traced.

    Reached only through a copy (the recipients' and the sending mailbox's):
    anyone else, and any other name, answers ``not_found``. Traced as
    ``messages.opened`` with the blob's digest (``detail.blob``).
    """
    name = (sha256 or "").lower()
    if not SHA256_HEX.fullmatch(name):
        raise not_found()
    blob = MessageBlob.objects.filter(message_id=copy.message_id, sha256=name).first()
    if blob is None:
        raise not_found()
    span = parse_range(range_header, blob.size)
    store = blob_store()
    try:
        handle = store.open(blob.blob_id)
    except BlobError:
        logger.exception("messaging: blob %s of %s is missing", name, copy.message.public_id)
        raise _error(
            "blob_unavailable", _("Cette pièce jointe est momentanément illisible.")
        ) from None
    try:
        actual = os.fstat(handle.fileno()).st_size if hasattr(handle, "fileno") else blob.size
        if actual != blob.size:
            logger.error(
                "messaging: blob %s of %s has the wrong size", name, copy.message.public_id
            )
            raise _error("blob_unavailable", _("Cette pièce jointe est momentanément illisible."))
        handle.seek(span.start)
        with transaction.atomic():
            do_record_event(
                AuditAction.MESSAGES_OPENED,
                actor=user,
                request=request,
                target=f"message:{copy.message.public_id}",
                detail={"mailbox": copy.mailbox_id, "blob": name},
            )
    except BaseException:
        handle.close()
        raise
    return OpenedBlob(blob, handle, span)


def do_copy_message_blob(
    user: User, copy: MessageCopy, sha256: str, request: HttpRequest | None = None
) -> Upload:
    """A large part of a message the caller holds, copied as a complete upload of theirs.

    For a forward from the web mail (REQ-AFTER-SEND: with the patient's
    agreement): the new message names the same ciphertext and key (its signed
    external part says so), so its recipients need the same bytes, under a
    blob of the new message's own (a message's blobs go with it). The copy is
    checked against the digest the signed message names; it is traced as the
    original's ``messages.opened`` with the blob. Never attached, it expires
    like any upload.
    """
    opened = open_message_blob(user, copy, sha256, None, request)
    store = blob_store()
    try:
        upload = do_reserve_sealed_upload(user, opened.blob.size)
    except BaseException:
        opened.handle.close()
        raise
    try:
        try:
            writer = store.writer(max_bytes=opened.blob.size)
        except BaseException:
            opened.handle.close()
            raise
        try:
            for piece in bounded_pieces(opened.handle, opened.blob.size):
                writer.write(piece)
            stored = writer.commit()
        except BaseException:
            writer.abort()
            raise
        if stored.sha256 != opened.blob.sha256 or stored.size != opened.blob.size:
            store.delete(stored.blob_id)
            logger.error("messaging: blob %s of %s is altered", sha256, copy.message.public_id)
            raise _error("blob_unavailable", _("Cette pièce jointe est momentanément illisible."))
        return do_complete_sealed_upload(upload, stored, store)
    except BaseException:
        do_discard_uploads(user, [upload.public_id], store)
        raise


def bounded_pieces(handle: BinaryIO, length: int) -> Iterator[bytes]:
    """``length`` bytes from the handle's position, in pieces; closes it at the end."""
    try:
        left = length
        while left > 0:
            piece = handle.read(min(COPY_BYTES, left))
            if not piece:
                return
            left -= len(piece)
            yield piece
    finally:
        handle.close()


# --------------------------------------------------------------------------- clean-up


@dataclass(frozen=True)
class PurgeResult:
    uploads: int
    bytes: int
    spool_files: int
    temporary_files: int


def purge_expired_uploads(now: dt.datetime | None = None, *, dry_run: bool = False) -> PurgeResult:
    """Remove expired uploads (and those whose account went), their files, and leftovers.

    Idempotent; an upload never attached is never an attachment. Spool files
    no upload names (a crash between the file and its row) older than the
    expiry go too, and the blob store's temporary files of crashed writes.
    """
    now = now or timezone.now()
    store = blob_store()
    expired = Upload.objects.filter(models.Q(expires_at__lte=now) | models.Q(owner__isnull=True))
    rows = list(expired.values_list("pk", "public_id", "blob_id", "received", "size", "state"))
    if dry_run:
        return PurgeResult(
            len(rows),
            sum(
                size if state == UploadState.COMPLETE else received
                for *_, received, size, state in rows
            ),
            0,
            0,
        )
    removed_bytes = 0
    for pk, public_id, blob_id, received, size, state in rows:
        with transaction.atomic():
            deleted, _counts = (
                Upload.objects.filter(pk=pk)
                .filter(models.Q(expires_at__lte=now) | models.Q(owner__isnull=True))
                .delete()
            )
        if not deleted:
            continue  # attached or renewed meanwhile
        removed_bytes += size if state == UploadState.COMPLETE else received
        if blob_id:
            store.delete(blob_id)
        (spool_directory() / public_id.removeprefix("upl_")).unlink(missing_ok=True)
    spool_files = _sweep_spool(now)
    temporary = 0
    sweep = getattr(store, "sweep_temporary", None)
    if callable(sweep):
        temporary = int(sweep())
    return PurgeResult(len(rows), removed_bytes, spool_files, temporary)


def _sweep_spool(now: dt.datetime) -> int:
    directory = spool_directory()
    if not directory.is_dir():
        return 0
    limit = (now - upload_expiry()).timestamp()
    known = {
        public_id.removeprefix("upl_")
        for public_id in Upload.objects.values_list("public_id", flat=True)
    }
    removed = 0
    for path in directory.iterdir():
        if path.name in known or not re.fullmatch(r"[0-9a-f]{32}", path.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
    return removed


def upload_cleanup_job(now: dt.datetime, dry_run: bool) -> JobSummary:
    """The daily job (``pli.server.jobs``): :func:`purge_expired_uploads`, summarised."""
    result = purge_expired_uploads(now, dry_run=dry_run)
    text = (
        _(
            "seraient supprimés : %(uploads)s dépôt(s) expiré(s) (%(bytes)s octets),"
            " %(spool)s fichier(s) de dépôt orphelin(s), %(temporary)s fichier(s) temporaire(s)"
        )
        if dry_run
        else _(
            "supprimés : %(uploads)s dépôt(s) expiré(s) (%(bytes)s octets),"
            " %(spool)s fichier(s) de dépôt orphelin(s), %(temporary)s fichier(s) temporaire(s)"
        )
    ) % {
        "uploads": result.uploads,
        "bytes": result.bytes,
        "spool": result.spool_files,
        "temporary": result.temporary_files,
    }
    return JobSummary(
        text,
        {
            "uploads": result.uploads,
            "bytes": result.bytes,
            "spool_files": result.spool_files,
            "temporary_files": result.temporary_files,
        },
    )
