"""Streamed AES-256-GCM content in RFC 8188 records: round trips and every kind of tampering."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pli.crypto import (
    BlobCorrupted,
    StreamEncryptor,
    decrypt_stream,
    encrypt_stream,
    iter_decrypted,
)
from pli.crypto import stream as stream_module
from pli.crypto.stream import MIN_RECORD_SIZE, StreamSeal

RS = 64  # small records so that tests cross many record boundaries
CHUNK = RS - 17


def seal_bytes(data: bytes, record_size: int = RS) -> tuple[bytes, StreamSeal]:
    out = io.BytesIO()
    sealed = encrypt_stream(io.BytesIO(data), out, record_size=record_size)
    return out.getvalue(), sealed


def open_bytes(blob: bytes, sealed: StreamSeal, *, sha256: str | None = None) -> bytes:
    out = io.BytesIO()
    decrypt_stream(
        io.BytesIO(blob), out, key=sealed.key, sha256=sha256 or hashlib.sha256(blob).hexdigest()
    )
    return out.getvalue()


@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1000])
def test_round_trip_at_record_boundaries(size: int) -> None:
    data = os.urandom(size)
    blob, sealed = seal_bytes(data)
    assert sealed.sha256 == hashlib.sha256(blob).hexdigest()
    assert sealed.size == len(blob)
    assert sealed.plaintext_size == size
    assert open_bytes(blob, sealed, sha256=sealed.sha256) == data
    if size >= 16:
        assert data[:16] not in blob


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=600), record_size=st.integers(min_value=18, max_value=200))
def test_round_trip_any_content_any_record_size(data: bytes, record_size: int) -> None:
    blob, sealed = seal_bytes(data, record_size)
    assert open_bytes(blob, sealed, sha256=sealed.sha256) == data


def test_fresh_key_and_salt_every_time() -> None:
    first, a = seal_bytes(b"same content")
    second, b = seal_bytes(b"same content")
    assert a.key != b.key
    assert first != second


@pytest.mark.requirement("REQ-AT-REST")
def test_every_flipped_byte_is_detected() -> None:
    blob, sealed = seal_bytes(os.urandom(200))
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x40
        # Even with the digest recomputed by the attacker, GCM and framing catch it.
        with pytest.raises(BlobCorrupted):
            open_bytes(bytes(tampered), sealed)


def records(blob: bytes) -> tuple[bytes, list[bytes]]:
    header, body = blob[:21], blob[21:]
    return header, [body[i : i + RS] for i in range(0, len(body), RS)]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda h, r: h + b"".join(r[:-1]), id="last-record-dropped"),
        pytest.param(lambda h, r: h + b"".join([r[1], r[0], *r[2:]]), id="records-swapped"),
        pytest.param(lambda h, r: h + b"".join([*r, r[-1]]), id="record-appended"),
        pytest.param(lambda h, r: h + b"".join(r)[:-5], id="truncated"),
        pytest.param(
            lambda h, r: h[:16] + b"\x00\x00\x00\x20" + h[20:] + b"".join(r), id="rs-changed"
        ),
        pytest.param(lambda h, r: h[:10], id="header-truncated"),
    ],
)
def test_structural_tampering_is_detected(change: object) -> None:
    blob, sealed = seal_bytes(os.urandom(5 * CHUNK + 3))
    header, parts = records(blob)
    assert callable(change)
    tampered = change(header, parts)
    with pytest.raises(BlobCorrupted):
        open_bytes(tampered, sealed)


def test_wrong_key_and_wrong_digest_are_detected() -> None:
    blob, sealed = seal_bytes(b"x" * 300)
    with pytest.raises(BlobCorrupted, match="digest"):
        open_bytes(blob, sealed, sha256="0" * 64)
    other = StreamSeal(os.urandom(32), sealed.sha256, sealed.size, 300, RS)
    with pytest.raises(BlobCorrupted):
        open_bytes(blob, other, sha256=sealed.sha256)


def test_record_size_is_validated() -> None:
    with pytest.raises(ValueError, match="record size"):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), record_size=17)


def test_write_errors_reach_the_caller() -> None:
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        encrypt_stream(io.BytesIO(b"y" * 1000), Full(), record_size=RS)


# --- iter_decrypted: the pull form, for a download answered as it is decrypted ----------------


def pieces(blob: bytes, sealed: StreamSeal, **checks: object) -> list[bytes]:
    """What a reader receives before the stream stops, whether it ends well or not."""
    received: list[bytes] = []
    arguments: dict[str, object] = {"sha256": sealed.sha256, "size": sealed.size, **checks}
    try:
        for piece in iter_decrypted(io.BytesIO(blob), key=sealed.key, **arguments):  # type: ignore[arg-type]
            received.append(piece)
    except BlobCorrupted:
        received.append(b"<corrupted>")
    return received


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3])
def test_the_pull_form_gives_the_same_plaintext_record_by_record(size: int) -> None:
    data = os.urandom(size)
    blob, sealed = seal_bytes(data)
    received = pieces(blob, sealed, plaintext_size=size)
    assert b"".join(received) == data
    assert len(received) == -(-size // CHUNK)  # one piece per non-empty record


@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.parametrize(
    ("what", "checks"),
    [
        ("digest", {"sha256": "0" * 64}),
        ("size", {"size": 1}),
        ("plaintext", {"plaintext_size": 5 * CHUNK + 4}),
    ],
)
def test_the_pull_form_withholds_the_last_piece_until_every_check_passes(
    what: str, checks: dict[str, object]
) -> None:
    """The reader never receives all the bytes it was promised from a stream that fails."""
    data = os.urandom(5 * CHUNK + 3)
    blob, sealed = seal_bytes(data)
    received = pieces(blob, sealed, **{"plaintext_size": len(data), **checks})
    assert received[-1] == b"<corrupted>", what
    assert len(b"".join(received[:-1])) < len(data)
    assert data.startswith(b"".join(received[:-1]))


@pytest.mark.requirement("REQ-AT-REST")
def test_the_pull_form_stops_at_the_first_altered_record() -> None:
    data = os.urandom(5 * CHUNK + 3)
    blob, sealed = seal_bytes(data)
    tampered = bytearray(blob)
    tampered[21 + 2 * RS + 5] ^= 1  # inside the third record
    # The digest is the altered stream's own: only the record's tag can tell.
    received = pieces(bytes(tampered), sealed, sha256=hashlib.sha256(tampered).hexdigest())
    assert received == [data[:CHUNK], b"<corrupted>"]


@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda h, r: h + b"".join(r[:-1]), id="last-record-dropped"),
        pytest.param(lambda h, r: h + b"".join(r[:3]), id="cut-at-a-record-boundary"),
        pytest.param(lambda h, r: h + b"".join([r[1], r[0], *r[2:]]), id="records-swapped"),
        pytest.param(lambda h, r: h + b"".join([*r, r[-1]]), id="record-appended"),
        pytest.param(lambda h, r: h + b"".join(r) + b"x", id="byte-appended"),
        pytest.param(lambda h, r: h + b"".join(r)[:-5], id="truncated"),
    ],
)
def test_the_pull_form_never_gives_every_byte_of_an_altered_stream(change: object) -> None:
    """Even with the digest recomputed over the altered stream (a server holding no key)."""
    data = os.urandom(5 * CHUNK + 3)
    blob, sealed = seal_bytes(data)
    header, parts = records(blob)
    assert callable(change)
    tampered = change(header, parts)
    received = pieces(tampered, sealed, sha256=hashlib.sha256(tampered).hexdigest(), size=None)
    assert received[-1] == b"<corrupted>"
    assert len(b"".join(received[:-1])) < len(data)


def hand_sealed(chunks: list[bytes]) -> tuple[bytes, StreamSeal]:
    """A stream of exactly these records (another RFC 8188 encoder's choice of cuts)."""
    key, salt = os.urandom(32), os.urandom(16)
    aead, base = stream_module._derive(key, salt)
    out = [stream_module._HEADER.pack(salt, RS, 0)]
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        out.append(
            aead.encrypt(
                stream_module._nonce(base, number), chunk + (b"\x02" if last else b"\x01"), None
            )
        )
    blob = b"".join(out)
    return blob, StreamSeal(
        key, hashlib.sha256(blob).hexdigest(), len(blob), sum(map(len, chunks)), RS
    )


def test_an_empty_last_record_does_not_release_the_piece_before_it() -> None:
    """Records of RS bytes, then an empty last one: legal, and nothing leaks early."""
    chunks = [os.urandom(CHUNK), os.urandom(CHUNK), b""]
    blob, sealed = hand_sealed(chunks)
    whole = b"".join(chunks)
    assert pieces(blob, sealed, plaintext_size=len(whole)) == chunks[:2]
    # The same stream judged against another digest: the second piece is withheld.
    withheld = pieces(blob, sealed, sha256="0" * 64, plaintext_size=len(whole))
    assert withheld == [chunks[0], b"<corrupted>"]


def test_a_plaintext_longer_than_promised_stops_before_the_promise_is_exceeded() -> None:
    data = os.urandom(5 * CHUNK + 3)
    blob, sealed = seal_bytes(data)
    received = pieces(blob, sealed, plaintext_size=2 * CHUNK)
    assert received[-1] == b"<corrupted>"
    assert len(b"".join(received[:-1])) <= 2 * CHUNK


def _push(encryptor: StreamEncryptor, data: bytes, cuts: list[int]) -> bytes:
    """``data`` through the push form, handed over in pieces cut at ``cuts``."""
    out = bytearray()
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += encryptor.update(data[start:cut])
        start = cut
    return bytes(out + encryptor.finish())


@pytest.mark.requirement("REQ-AT-REST")
@given(
    data=st.binary(max_size=6 * CHUNK + 5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
@example(data=b"", cuts=[])
@example(data=bytes(CHUNK), cuts=[])
@example(data=bytes(3 * CHUNK), cuts=[CHUNK, 2 * CHUNK])
@example(data=bytes(2 * CHUNK + 1), cuts=[CHUNK + 1])
@settings(max_examples=150, deadline=None)
def test_the_push_form_writes_exactly_what_the_stream_form_writes(
    data: bytes, cuts: list[int]
) -> None:
    salt = os.urandom(16)
    key = os.urandom(32)
    with pytest.MonkeyPatch.context() as patch:
        # The same salt for both: then the two forms must agree byte for byte.
        patch.setattr(os, "urandom", lambda n: salt[:n])
        expected = io.BytesIO()
        sealed = encrypt_stream(io.BytesIO(data), expected, key=key, record_size=RS)
        encryptor = StreamEncryptor(key=key, record_size=RS)
    pushed = _push(encryptor, data, cuts)
    assert pushed == expected.getvalue()
    assert encryptor.seal == sealed
    assert open_bytes(pushed, encryptor.seal) == data


def test_the_push_form_opens_with_the_checks_of_the_stream_form() -> None:
    data = os.urandom(5 * CHUNK + 3)
    encryptor = StreamEncryptor(record_size=RS)
    blob = _push(encryptor, data, [1, 70, 200])
    sealed = encryptor.seal
    assert sealed.plaintext_size == len(data) and sealed.size == len(blob)
    assert sealed.sha256 == hashlib.sha256(blob).hexdigest()
    assert b"".join(iter_decrypted(io.BytesIO(blob), key=sealed.key, sha256=sealed.sha256)) == data
    altered = bytearray(blob)
    altered[len(blob) // 2] ^= 1
    with pytest.raises(BlobCorrupted):
        open_bytes(bytes(altered), sealed, sha256=sealed.sha256)
    encryptor = StreamEncryptor(record_size=RS)
    with pytest.raises(ValueError, match="not finished"):
        _ = encryptor.seal
    encryptor.finish()
    with pytest.raises(ValueError, match="finished"):
        encryptor.update(b"more")
    with pytest.raises(ValueError, match="record size"):
        StreamEncryptor(record_size=MIN_RECORD_SIZE - 1)
