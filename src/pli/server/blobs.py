"""The blob store: where the server keeps encrypted bytes (envelopes, later large attachments).

DESIGN "Stack": "Object storage for encrypted blobs behind one interface: local
directory by default, S3-compatible when configured". Only ciphertext comes
here (REQ-AT-REST): CMS envelopes sealed on the sender's workstation, stream
-encrypted parts (docs/decisions/0003-large-content.md). The store never sees
a key.

:class:`BlobStore` is the interface the messaging app uses; :class:`LocalBlobStore`
is the default implementation, a directory (``settings.BLOB_DIR``, i.e.
``PLI_BLOB_DIR`` or ``<data dir>/blobs``). An S3 implementation would provide
the same methods (a random or SHA-256 key per object, a multipart upload
committed only at the end, so that readers never see half an object).

Two kinds of names:

* random ids (32 hexadecimal digits, :meth:`BlobStore.write`), for envelopes:
  a blob belongs to the one message that wrote it, so a failed send removes
  exactly what it wrote, and two identical uploads never share a file that
  one of them might delete;
* content addresses (SHA-256 of the bytes, 64 hexadecimal digits,
  :meth:`BlobStore.write_addressed`), for large parts whose digest the signed
  message already names (decision 0003).

Writes are atomic: the bytes go to a temporary file in the store's own
directory, are flushed to disk, then renamed into place (``os.replace``,
atomic on POSIX), and the directory entry is flushed too. A crash leaves at
worst a temporary file (swept by :meth:`LocalBlobStore.sweep_temporary`),
never a partial blob under a real name. Reads and writes are streamed in
chunks: memory does not grow with the size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings

CHUNK_BYTES = 1024 * 1024
_RANDOM_ID = re.compile(r"[0-9a-f]{32}")
_ADDRESSED_ID = re.compile(r"[0-9a-f]{64}")
_TEMPORARY_PREFIX = ".part-"
#: Temporary files older than this are leftovers of a crash (no write takes a day).
_TEMPORARY_MAX_AGE_SECONDS = 24 * 3600


class BlobError(Exception):
    """A blob operation failed; ``code`` is stable."""

    code = "blob_error"


class BlobNotFound(BlobError):
    code = "blob_not_found"


class BlobTooLarge(BlobError):
    code = "blob_too_large"


class BlobDigestMismatch(BlobError):
    """The bytes do not have the digest their name (or the caller) promised."""

    code = "blob_digest_mismatch"


class InvalidBlobId(BlobError):
    code = "invalid_blob_id"


@dataclass(frozen=True)
class StoredBlob:
    blob_id: str
    size: int
    #: SHA-256 of the stored bytes, hexadecimal: lets readers check integrity (REQ-AT-REST).
    sha256: str


Source = bytes | BinaryIO | Iterable[bytes]


class BlobWriter(Protocol):
    """A blob being written by pieces: readers see nothing until :meth:`commit`."""

    #: Bytes written so far.
    size: int

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; :class:`BlobTooLarge` (and nothing kept) past ``max_bytes``."""
        ...

    def commit(self) -> StoredBlob:
        """Flush, and install the blob under a new random id."""
        ...

    def abort(self) -> None:
        """Drop what was written (idempotent; after a commit, nothing to drop)."""
        ...


class BlobStore(Protocol):
    """Encrypted bytes by id. Implementations: :class:`LocalBlobStore` (S3 to come)."""

    def write(self, source: Source, *, max_bytes: int | None = None) -> StoredBlob:
        """Store ``source`` under a new random id; :class:`BlobTooLarge` beyond ``max_bytes``."""
        ...

    def write_addressed(
        self, source: Source, *, expected_sha256: str | None = None, max_bytes: int | None = None
    ) -> StoredBlob:
        """Store ``source`` under its SHA-256; an existing identical blob is kept (idempotent)."""
        ...

    def writer(self, *, max_bytes: int | None = None) -> BlobWriter:
        """A blob written piece by piece, for a source that pushes its bytes; random id."""
        ...

    def open(self, blob_id: str) -> BinaryIO:
        """A readable binary stream of the blob; :class:`BlobNotFound` if there is none."""
        ...

    def read_chunks(self, blob_id: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]: ...

    def exists(self, blob_id: str) -> bool: ...

    def size(self, blob_id: str) -> int: ...

    def delete(self, blob_id: str) -> bool:
        """Remove the blob; False if it was not there (deleting is idempotent)."""
        ...

    def ids(self) -> Iterator[str]:
        """Every stored blob id (for sweeps, audits of the store, and tests)."""
        ...


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start : start + CHUNK_BYTES])
        return
    read = getattr(source, "read", None)
    if callable(read):
        while chunk := read(CHUNK_BYTES):
            yield bytes(chunk)
        return
    for chunk in source:
        yield bytes(chunk)


def check_blob_id(blob_id: str) -> str:
    """A valid id (random or SHA-256, lower-case hex) or :class:`InvalidBlobId`.

    Ids become file names: nothing but hexadecimal digits may reach the path.
    """
    if not isinstance(blob_id, str) or not (
        _RANDOM_ID.fullmatch(blob_id) or _ADDRESSED_ID.fullmatch(blob_id)
    ):
        raise InvalidBlobId("a blob id is 32 or 64 lower-case hexadecimal digits")
    return blob_id


class LocalBlobStore:
    """Blobs as files under one directory: ``<root>/<first two digits>/<id>``.

    Directories are created ``0700`` and files ``0600``: only the server's
    account reads them (the bytes are ciphertext anyway).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- paths ---------------------------------------------------------------------------
    def _path(self, blob_id: str) -> Path:
        check_blob_id(blob_id)
        return self.root / blob_id[:2] / blob_id

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @staticmethod
    def _fsync_directory(path: Path) -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # --- writing -------------------------------------------------------------------------
    def _write_temporary(self, source: Source, max_bytes: int | None) -> tuple[Path, int, str]:
        """Stream ``source`` into a new temporary file in the root; its path, size and digest."""
        writer = _LocalBlobWriter(self, max_bytes)
        try:
            for chunk in _chunks(source):
                writer.write(chunk)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def writer(self, *, max_bytes: int | None = None) -> BlobWriter:
        return _LocalBlobWriter(self, max_bytes)

    def _install(self, temporary: Path, blob_id: str) -> None:
        final = self._path(blob_id)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        temporary.replace(final)  # atomic on POSIX (rename(2))
        self._fsync_directory(final.parent)

    def write(self, source: Source, *, max_bytes: int | None = None) -> StoredBlob:
        temporary, size, sha256 = self._write_temporary(source, max_bytes)
        blob_id = secrets.token_hex(16)
        try:
            self._install(temporary, blob_id)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return StoredBlob(blob_id, size, sha256)

    def write_addressed(
        self, source: Source, *, expected_sha256: str | None = None, max_bytes: int | None = None
    ) -> StoredBlob:
        temporary, size, sha256 = self._write_temporary(source, max_bytes)
        try:
            if expected_sha256 is not None and expected_sha256 != sha256:
                raise BlobDigestMismatch("the bytes do not have the announced SHA-256")
            if self._path(sha256).exists():
                temporary.unlink()  # same name, same bytes: keep the one already there
            else:
                self._install(temporary, sha256)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return StoredBlob(sha256, size, sha256)

    # --- reading -------------------------------------------------------------------------
    def open(self, blob_id: str) -> BinaryIO:
        try:
            return self._path(blob_id).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(blob_id) from None

    def read_chunks(self, blob_id: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        with self.open(blob_id) as handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    def exists(self, blob_id: str) -> bool:
        return self._path(blob_id).is_file()

    def size(self, blob_id: str) -> int:
        try:
            return self._path(blob_id).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(blob_id) from None

    # --- removing ------------------------------------------------------------------------
    def delete(self, blob_id: str) -> bool:
        path = self._path(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            self._fsync_directory(path.parent)
        return True

    def ids(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir() or len(directory.name) != 2:
                continue
            for path in sorted(directory.iterdir()):
                name = path.name
                if _RANDOM_ID.fullmatch(name) or _ADDRESSED_ID.fullmatch(name):
                    yield name

    def sweep_temporary(self, older_than_seconds: float = _TEMPORARY_MAX_AGE_SECONDS) -> int:
        """Remove temporary files a crash left behind; how many. Idempotent."""
        if not self.root.is_dir():
            return 0
        limit = time.time() - older_than_seconds
        removed = 0
        for path in self.root.glob(f"{_TEMPORARY_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed


class _LocalBlobWriter:
    """A temporary file in the store's root, renamed into place by :meth:`commit`."""

    def __init__(self, store: LocalBlobStore, max_bytes: int | None) -> None:
        store._ensure_root()
        self._store = store
        self._max_bytes = max_bytes
        self.temporary = store.root / f"{_TEMPORARY_PREFIX}{secrets.token_hex(16)}"
        descriptor = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._handle: BinaryIO | None = os.fdopen(descriptor, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._handle is None:
            raise BlobError("the blob is no longer being written")
        self.size += len(chunk)
        if self._max_bytes is not None and self.size > self._max_bytes:
            self.abort()
            raise BlobTooLarge(f"more than {self._max_bytes} bytes")
        self._digest.update(chunk)
        try:
            self._handle.write(chunk)
        except BaseException:
            self.abort()  # a full disk, say: nothing of it stays behind
            raise

    def close(self) -> tuple[Path, int, str]:
        """Flush to disk; the temporary file's path, size and digest."""
        if self._handle is None:
            raise BlobError("the blob is no longer being written")
        handle, self._handle = self._handle, None
        with handle:
            handle.flush()
            os.fsync(handle.fileno())
        return self.temporary, self.size, self._digest.hexdigest()

    def commit(self) -> StoredBlob:
        try:
            temporary, size, sha256 = self.close()
            blob_id = secrets.token_hex(16)
            self._store._install(temporary, blob_id)
        except BaseException:
            self.abort()
            raise
        return StoredBlob(blob_id, size, sha256)

    def abort(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        self.temporary.unlink(missing_ok=True)


def blob_store() -> BlobStore:
    """The configured store: today always the local directory ``settings.BLOB_DIR``.

    Read at each call (cheap), so that a test's ``settings.BLOB_DIR`` applies.
    """
    return LocalBlobStore(Path(settings.BLOB_DIR))
