"""Streamed encryption of large content: AES-256-GCM in RFC 8188 records.

``cryptography``'s CMS API holds the whole payload in memory (about 5x its
size), so content above a threshold is not put inside the CMS: it is
encrypted here, as a stream, under a fresh key; the key and the SHA-256 of
the ciphertext travel inside the sealed (signed, encrypted) message.

Layout (RFC 8188 §2): a header ``salt (16) | rs (uint32) | idlen (1) | keyid``
then records of ``rs`` bytes (the last one shorter), each the AES-GCM
encryption of ``data || delimiter`` (0x01, or 0x02 for the last record).
The content key and base nonce are derived with HKDF-SHA-256 from the fresh
input key and the salt, as in RFC 8188 §2.2-2.3; the ``info`` strings name
AES-256-GCM instead of the RFC's AES-128-GCM. The record nonce is the base
nonce XOR the record's sequence number (§2.3), which, with the delimiter,
makes reordering, truncation and extension fail.

Peak memory is a few records, whatever the size: the calling thread
encrypts (or decrypts) while one thread hashes and another writes.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pli.crypto.errors import BlobCorrupted

#: Default record size: large records amortise the per-record cost (1 MiB).
DEFAULT_RECORD_SIZE = 1024 * 1024
MIN_RECORD_SIZE = 18  # RFC 8188 §2: rs > 17 (16-byte tag plus one delimiter)
MAX_RECORD_SIZE = 16 * 1024 * 1024
_TAG = 16
_HEADER = struct.Struct(">16sIB")
_KEY_INFO = b"Content-Encoding: pli-aes256gcm\x00"
_NONCE_INFO = b"Content-Encoding: nonce\x00"
_PIPELINE_DEPTH = 4


@dataclass(frozen=True)
class StreamSeal:
    """What the sealed message must carry to find, check and decrypt a stream."""

    key: bytes
    sha256: str  # of the whole ciphertext, header included
    size: int  # ciphertext bytes
    plaintext_size: int
    record_size: int


def new_stream_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _derive(key: bytes, salt: bytes) -> tuple[AESGCM, int]:
    content_key = HKDF(hashes.SHA256(), 32, salt, _KEY_INFO).derive(key)
    nonce = HKDF(hashes.SHA256(), 12, salt, _NONCE_INFO).derive(key)
    return AESGCM(content_key), int.from_bytes(nonce, "big")


def _nonce(base: int, sequence: int) -> bytes:
    return (base ^ sequence).to_bytes(12, "big")


class _Worker:
    """Runs ``consume`` on every chunk in a second thread, a bounded queue in between."""

    def __init__(self, consume: Callable[[bytes], object], name: str) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPELINE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._consume(chunk)
            except BaseException as error:  # noqa: BLE001 - re-raised in the producer thread
                self._error = error

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            self.close()
        self._queue.put(chunk)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _Digest:
    """SHA-256 and length of everything it is given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)


class _Pipeline:
    """One thread hashes the ciphertext, another writes the output: with the
    cipher in the calling thread, the three overlap (both libraries release the GIL)."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self.digest = _Digest()
        self.hasher = _Worker(self.digest.update, "pli-stream-hash")
        self.writer = _Worker(write, "pli-stream-write")

    def close(self) -> None:
        try:
            self.hasher.close()
        finally:
            self.writer.close()


def encrypt_stream(
    source: BinaryIO,
    destination: BinaryIO,
    *,
    key: bytes | None = None,
    record_size: int = DEFAULT_RECORD_SIZE,
) -> StreamSeal:
    """Encrypt ``source`` into ``destination``; the returned seal opens it."""
    if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise ValueError(f"record size must be between {MIN_RECORD_SIZE} and {MAX_RECORD_SIZE}")
    key = key or new_stream_key()
    salt = os.urandom(16)
    aead, base = _derive(key, salt)
    chunk_size = record_size - _TAG - 1
    pipeline = _Pipeline(destination.write)
    plaintext_size = 0

    def emit(chunk: bytes) -> None:
        pipeline.hasher.put(chunk)
        pipeline.writer.put(chunk)

    try:
        emit(_HEADER.pack(salt, record_size, 0))
        current = source.read(chunk_size)
        sequence = 0
        while True:
            following = source.read(chunk_size) if len(current) == chunk_size else b""
            last = not following
            plaintext_size += len(current)
            record = current + (b"\x02" if last else b"\x01")
            emit(aead.encrypt(_nonce(base, sequence), record, None))
            if last:
                break
            current = following
            sequence += 1
    finally:
        pipeline.close()
    return StreamSeal(
        key=key,
        sha256=pipeline.digest.hash.hexdigest(),
        size=pipeline.digest.size,
        plaintext_size=plaintext_size,
        record_size=record_size,
    )


class StreamEncryptor:
    """The push form of :func:`encrypt_stream`, for a source that hands bytes over as
    they come (an HTTP upload parsed piece by piece).

    :meth:`update` returns the ciphertext of every record it could close,
    :meth:`finish` the last record; the framing and the records are exactly
    :func:`encrypt_stream`'s (a record is the last one only once the source
    has ended, RFC 8188 §2), so :func:`decrypt_stream` and
    :func:`iter_decrypted` open either. It hashes what it gives out, in the
    calling thread: memory is one record, whatever the size.
    """

    def __init__(self, *, key: bytes | None = None, record_size: int = DEFAULT_RECORD_SIZE) -> None:
        if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
            raise ValueError(f"record size must be between {MIN_RECORD_SIZE} and {MAX_RECORD_SIZE}")
        self._key = key or new_stream_key()
        salt = os.urandom(16)
        self._aead, self._base = _derive(self._key, salt)
        self._record_size = record_size
        self._chunk_size = record_size - _TAG - 1
        self._pending = bytearray()
        self._sequence = 0
        self._plaintext_size = 0
        self._digest = _Digest()
        self._header: bytes | None = _HEADER.pack(salt, record_size, 0)
        self._seal: StreamSeal | None = None

    def _emit(self, pieces: list[bytes]) -> bytes:
        if self._header is not None:
            pieces.insert(0, self._header)
            self._header = None
        out = b"".join(pieces)
        self._digest.update(out)
        return out

    def _record(self, data: bytes | bytearray, last: bool) -> bytes:
        record = bytes(data) + (b"\x02" if last else b"\x01")
        sealed = self._aead.encrypt(_nonce(self._base, self._sequence), record, None)
        self._sequence += 1
        return sealed

    def update(self, data: bytes) -> bytes:
        """Take ``data``; the ciphertext of the records it completed (maybe nothing)."""
        if self._seal is not None:
            raise ValueError("the stream is finished")
        self._plaintext_size += len(data)
        self._pending += data
        records: list[bytes] = []
        # Strictly more than a record's worth: the last record must stay for finish(),
        # which alone knows the source has ended.
        while len(self._pending) > self._chunk_size:
            records.append(self._record(self._pending[: self._chunk_size], last=False))
            del self._pending[: self._chunk_size]
        return self._emit(records) if records or self._header is not None else b""

    def finish(self) -> bytes:
        """The last record; :attr:`seal` then says how to find, check and open the stream."""
        if self._seal is not None:
            raise ValueError("the stream is finished")
        out = self._emit([self._record(self._pending, last=True)])
        self._pending = bytearray()
        self._seal = StreamSeal(
            key=self._key,
            sha256=self._digest.hash.hexdigest(),
            size=self._digest.size,
            plaintext_size=self._plaintext_size,
            record_size=self._record_size,
        )
        return out

    @property
    def seal(self) -> StreamSeal:
        if self._seal is None:
            raise ValueError("the stream is not finished")
        return self._seal


def _plain_records(read: Callable[[int], bytes], key: bytes) -> Iterator[bytes]:
    """The plaintext of each record in turn, each authenticated before it is given.

    RFC 8188 §2: the nonce of a record is its sequence number, and only the
    last one ends with 0x02, so records cut, reordered or added fail here.
    The digest of the whole ciphertext is the caller's (``read`` sees it all).
    """
    header = read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise BlobCorrupted("truncated header")
    salt, record_size, id_length = _HEADER.unpack(header)
    if id_length:
        read(id_length)
    if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise BlobCorrupted("bad record size")
    aead, base = _derive(key, salt)
    sequence = 0
    while True:
        record = read(record_size)
        if not record:
            raise BlobCorrupted("truncated: the last record is missing")
        try:
            plain = aead.decrypt(_nonce(base, sequence), record, None)
        except InvalidTag:
            raise BlobCorrupted(f"record {sequence} fails authentication") from None
        data, delimiter = plain[:-1], plain[-1:]
        if delimiter == b"\x02":
            if read(1):
                raise BlobCorrupted("data after the last record")
            yield data
            return
        if delimiter != b"\x01" or len(record) != record_size:
            raise BlobCorrupted(f"record {sequence} is badly framed")
        yield data
        sequence += 1


def _check_digest(digest: _Digest, sha256: str, size: int | None) -> None:
    if digest.hash.hexdigest() != sha256.lower():
        raise BlobCorrupted("the ciphertext digest does not match the sealed message")
    if size is not None and digest.size != size:
        raise BlobCorrupted("the ciphertext size does not match the sealed message")


def decrypt_stream(
    source: BinaryIO,
    destination: BinaryIO,
    *,
    key: bytes,
    sha256: str,
    size: int | None = None,
) -> int:
    """Decrypt and check a stream written by :func:`encrypt_stream`; plaintext bytes written.

    The digest is known only at the end: a caller writes ``destination`` to
    a temporary place and keeps it only when this returns.
    """
    pipeline = _Pipeline(destination.write)

    def read(size: int) -> bytes:
        chunk = source.read(size)
        if chunk:
            pipeline.hasher.put(chunk)
        return chunk

    written = 0
    try:
        for data in _plain_records(read, key):
            pipeline.writer.put(data)
            written += len(data)
    finally:
        pipeline.close()
    _check_digest(pipeline.digest, sha256, size)
    return written


def iter_decrypted(
    source: BinaryIO,
    *,
    key: bytes,
    sha256: str,
    size: int | None = None,
    plaintext_size: int | None = None,
) -> Iterator[bytes]:
    """The plaintext of a stream, record by record, for a reader that cannot wait for the end.

    For an HTTP answer that streams a download (the web mail's large
    attachments): each piece is given once its record authenticates, and the
    **last** non-empty piece only once the whole ciphertext has matched ``sha256``
    and ``size`` and the plaintext ``plaintext_size`` (never exceeded on the way).
    A stream that fails any check raises :class:`BlobCorrupted` before that
    piece, so the reader never receives every byte it was promised
    (``Content-Length``) and sees the download fail, instead of keeping a file
    that looks whole.
    """
    digest = _Digest()

    def read(size: int) -> bytes:
        chunk = source.read(size)
        digest.update(chunk)
        return chunk

    held = b""  # the newest non-empty piece: given only once a later one authenticates
    given = 0
    for data in _plain_records(read, key):
        if not data:
            # An empty record releases nothing: were it the last, the piece before it
            # would otherwise go out before the whole stream is checked.
            continue
        if held:
            given += len(held)
            yield held
        held = data
        if plaintext_size is not None and given + len(held) > plaintext_size:
            raise BlobCorrupted("the plaintext is longer than the sealed message says")
    _check_digest(digest, sha256, size)
    if plaintext_size is not None and given + len(held) != plaintext_size:
        raise BlobCorrupted("the plaintext size does not match the sealed message")
    if held:
        yield held
