"""REQ-AT-REST: what rests on the server holds no subject, body or patient identifier in clear.

A message with distinctive phrases in its subject, its body, an attachment
sealed inside it and a large attachment streamed beside it (issue 5: "a
phrase inside the attachment"), and a patient identifier both inside the
message and declared for the opposition check, is sent, delivered, read and
answered through the API. Then everything the server keeps is searched for
those phrases: the whole SQLite database as a file (copied page for page by
SQLite's backup API, free pages included), every table read back through
SQL (on SQLite and on PostgreSQL), and every byte of the blob directory.
Nothing may be found. The same search finds the routing metadata (the
sender's address), the envelope opens to the phrases and the stored blob
decrypts to its phrase, so the search is known to look at the right data.
"""

from __future__ import annotations

import base64
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from pytest_django.fixtures import Settings

from pli.crypto import decrypt_stream, encrypt_stream, open_envelope, seal
from pli.mime import Attachment, Draft, ExternalPart, build_inner_message, parse_inner_message
from pli.server.blobs import LocalBlobStore
from pli.server.messaging.models import Message
from pli.server.messaging.uploads import MessageBlob
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    A,
    B,
    World,
    blob_files,
    envelope_place,
    envelopes_kept,
    letter,
    make_world,
    post_json,
    send,
    valid_nir,
)
from tests.test_messaging_uploads import upload

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.requirement("REQ-AT-REST"),
    pytest.mark.requirement("REQ-E2E"),
]

SUBJECT = "QUOKKA-ZEPHYRIN-7731 bilan"
BODY = "Le patient XYLOPHAGE-BARTHOLOME-9953 presente une dyspnee.\n"
REPLY_BODY = "Reponse: PANGOLIN-ISIDORE-4417 a revoir.\n"
#: Inside the attachment sealed in the envelope, and inside the large one streamed beside it.
INLINE = "Conclusion: ORNITHORYNQUE-CASIMIR-2208 stable."
STREAMED = "Scanner thoracique: AXOLOTL-PERPETUE-6650 sans anomalie."
PHRASES = [
    "QUOKKA-ZEPHYRIN-7731",
    "XYLOPHAGE-BARTHOLOME-9953",
    "PANGOLIN-ISIDORE-4417",
    "ORNITHORYNQUE-CASIMIR-2208",
    "AXOLOTL-PERPETUE-6650",
]


def forms(phrase: str) -> Iterator[bytes]:
    """The phrase as it could rest: UTF-8, UTF-16, upper and lower case, base64 at 3 offsets."""
    text = phrase.strip()
    for variant in {text, text.lower(), text.upper()}:
        raw = variant.encode()
        yield raw
        yield variant.encode("utf-16-le")
        for offset in range(3):
            chunk = base64.b64encode(raw[offset:])[:-4]  # the last group mixes in what follows
            if len(chunk) >= 12:
                yield chunk


def found(data: bytes, phrases: list[str]) -> list[str]:
    return [p for p in phrases for form in forms(p) if form in data]


def sql_dump() -> bytes:
    """Every row of every table, read back through SQL (what a database dump holds)."""
    parts: list[bytes] = []
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - our tables
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview | bytes | bytearray):
                        parts.append(bytes(value))
                    else:
                        parts.append(str(value).encode())
    return b"\x00".join(parts)


def sqlite_file(tmp_path: Path) -> bytes:
    """The whole SQLite database as one file (the test database lives in memory), copied
    page for page by SQLite's backup API: free pages too, where a deleted row's bytes
    could linger (``VACUUM INTO`` would leave them out)."""
    path = tmp_path / "copy.sqlite3"
    connection.ensure_connection()
    target = sqlite3.connect(path)
    try:
        connection.connection.backup(target)
    finally:
        target.close()
    return path.read_bytes()


def blob_bytes(directory: Path) -> bytes:
    return b"\x00".join((directory / name).read_bytes() for name in blob_files(directory))


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


@pytest.fixture
def conversation(world: World, envelope_storage: str) -> dict[str, Any]:
    """A → B with the phrases and a patient, B reads it and answers; the raw envelopes.

    Twice: small envelopes kept in the database, then in the blob store (decision 0013).
    """
    alice, bob = world.client(world.a), world.client(world.b)
    patient = valid_nir()
    # The large attachment: encrypted as a stream on the workstation, uploaded in chunks.
    scan = b"%PDF-1.7\n" + (b"x" * 20_000 + STREAMED.encode() + b"\n") * 3
    ciphertext = io.BytesIO()
    stream = encrypt_stream(io.BytesIO(scan), ciphertext)
    upload_id = upload(alice, ciphertext.getvalue(), chunk=16_384)
    draft = Draft(
        from_address=A,
        to=[B],
        subject=SUBJECT,
        body_text=BODY,
        patient_id=patient,
        attachments=[Attachment("conclusion.txt", "text/plain", INLINE.encode())],
        external_parts=[
            ExternalPart(
                filename="scanner.pdf",
                content_type="application/pdf",
                blob_id=stream.sha256,
                key=stream.key,
                size=stream.size,
                plaintext_size=stream.plaintext_size,
                record_size=stream.record_size,
            )
        ],
    )
    envelope = seal(build_inner_message(draft), world.a_key, [world.b_key.certificate])
    first = send(alice, A, [B], envelope, patient_id=patient, blobs=[upload_id])
    assert first.status_code == 201, first.content
    message_id = first.json()["id"]
    assert post_json(bob, f"{MESSAGES}/{message_id}/read").status_code == 200
    reply = seal(
        letter(B, [A], subject=f"Re: {SUBJECT}", body=REPLY_BODY, patient=patient),
        world.b_key,
        [world.a_key.certificate],
    )
    answered = send(bob, B, [A], reply, in_reply_to=message_id, patient_id=patient)
    assert answered.status_code == 201, answered.content
    return {
        "patient": patient,
        "envelopes": [envelope, reply],
        "id": message_id,
        "stream": stream,
        "scan": scan,
    }


def test_no_subject_body_or_patient_identifier_rests_in_clear(
    world: World, conversation: dict[str, Any], tmp_path: Path, envelope_storage: str
) -> None:
    patient = conversation["patient"]
    secrets = [*PHRASES, patient]

    # The phrases were really sent: the recipient's key opens them.
    opened = open_envelope(conversation["envelopes"][0], world.b_key, world.trust)
    inner = parse_inner_message(opened.mime)
    assert SUBJECT in inner.subject and BODY.strip() in inner.body_text
    assert inner.patient_id is not None and patient in inner.patient_id
    assert [a.data for a in inner.attachments] == [INLINE.encode()]
    [part] = inner.external_parts
    stream = conversation["stream"]
    assert (part.blob_id, part.key) == (stream.sha256, stream.key)
    # The large attachment rests in the blob store, and decrypts to its phrase.
    [kept_blob] = MessageBlob.objects.filter(sha256=stream.sha256)
    plain = io.BytesIO()
    with LocalBlobStore(world.blob_dir).open(kept_blob.blob_id) as source:
        decrypt_stream(source, plain, key=stream.key, sha256=stream.sha256)
    assert plain.getvalue() == conversation["scan"]

    dump = sql_dump()
    assert A.encode() in dump and B.encode() in dump  # routing metadata is there (REQ-DIRECTORY)
    assert found(dump, secrets) == []
    if connection.vendor == "sqlite":
        database = sqlite_file(tmp_path)
        assert A.encode() in database
        assert found(database, secrets) == []

    stored = blob_bytes(world.blob_dir)
    # Two envelopes and the large attachment.
    assert len(envelopes_kept(world.blob_dir)) == 3
    assert (Message.objects.count(), MessageBlob.objects.count()) == (2, 1)
    # Kept as sealed, in the database (decision 0013) or in the blob store.
    kept = dump if envelope_storage == "database" else stored
    assert all(envelope in kept for envelope in conversation["envelopes"])
    assert found(stored, secrets) == []
    # The declared patient is kept only as a keyed hash, the same for both messages.
    keys = set(Message.objects.values_list("patient_key", flat=True))
    assert len(keys) == 1 and len(next(iter(keys))) == 64


def test_deleted_messages_leave_no_envelope_behind(
    world: World, conversation: dict[str, Any], envelope_storage: str
) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    for client, message in ((alice, conversation["id"]), (bob, conversation["id"])):
        # To the trash, then for good.
        assert client.delete(f"{MESSAGES}/{message}").status_code == 200
        assert client.delete(f"{MESSAGES}/{message}?permanent=true").status_code == 200
    # transaction=True: the on_commit removal really ran.
    assert Message.objects.count() == 1
    (remaining,) = Message.objects.all()
    assert envelopes_kept(world.blob_dir) == [envelope_place(remaining)]
