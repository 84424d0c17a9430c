"""Large attachments: resumable uploads, sends that name them, streamed downloads, the SDK.

The server part uses Django's test client with the personas of
tests/test_messaging_api.py (A sends, B receives, C must see nothing). The
SDK part runs against a live server, as practice software would, with small
chunks and a low inline threshold so that small files take the streamed path
(the 1 GiB case is benchmarks/bench_messaging.py). Interruptions are real: a
socket that sends half a chunk and closes, a download whose connection breaks.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client as DjangoClient
from django.utils import timezone
from pytest_django.fixtures import Settings

from pli.client import ApiError, Client, ClientError
from pli.client import sdk as messaging_sdk
from pli.client.castore import CaDirectory
from pli.client.sdk import (
    DEFAULT_ATTACHMENT_TYPES,
    PendingUpload,
    UploadInterrupted,
    check_attachment_type,
)
from pli.crypto import BlobCorrupted, seal
from pli.mime import Attachment
from pli.server.accounts import operator_ca
from pli.server.audit.models import AuditEvent
from pli.server.blobs import LocalBlobStore
from pli.server.messaging import uploads as messaging_uploads
from pli.server.messaging.access import MessagingError
from pli.server.messaging.models import Message, MessageEnvelope
from pli.server.messaging.uploads import (
    CHUNK_BYTES_MAX,
    MessageBlob,
    Upload,
    UploadState,
    do_create_upload,
    inline_attachment_bytes,
    max_upload_bytes,
    purge_expired_uploads,
    spool_directory,
    stream_ciphertext_bytes,
    upload_cleanup_job,
)
from tests.accounts_support import PASSPHRASE
from tests.conftest import Pki
from tests.test_audit_sequencer import in_threads
from tests.test_client_cli_messaging import Workstation
from tests.test_client_sdk import (
    CA_PASSPHRASE,
    A,
    B,
    Persona,
    Server,
    workstation_persona,
)
from tests.test_messaging_api import (
    MESSAGES,
    World,
    encoded,
    letter,
    make_world,
    post_json,
)

C = "dr.petit@cabinet-c.pli.test"
UPLOADS = "/api/uploads"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def create(client: DjangoClient, data: bytes, **override: Any) -> Any:
    body = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **override}
    return post_json(client, UPLOADS, body)


def put(client: DjangoClient, upload_id: str, offset: int | str, chunk: bytes, **extra: Any) -> Any:
    return client.put(
        f"{UPLOADS}/{upload_id}?offset={offset}",
        data=chunk,
        content_type="application/octet-stream",
        **extra,
    )


def upload(client: DjangoClient, data: bytes, chunk: int = 1000) -> str:
    created = create(client, data)
    assert created.status_code == 201, created.content
    upload_id = str(created.json()["id"])
    for offset in range(0, len(data), chunk):
        answer = put(client, upload_id, offset, data[offset : offset + chunk])
        assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "complete"
    return upload_id


def a_to_b(world: World) -> bytes:
    return seal(letter(A, [B]), world.a_key, [world.b_key.certificate])


def send_with(world: World, blobs: list[str], user: Any = None) -> Any:
    body = {"from": A, "recipients": [B], "envelope": encoded(a_to_b(world)), "blobs": blobs}
    return post_json(world.client(user or world.a), MESSAGES, body)


def store_files(world: World) -> list[str]:
    """Files of the blob store proper (not the spool of uploads in progress)."""
    root = world.blob_dir
    if not root.exists():
        return []
    return sorted(p.name for p in root.rglob("*") if p.is_file() and p.parent.name != "uploads")


def kept(world: World) -> list[str]:
    """What the store keeps: its files and the envelopes kept in the database (decision 0013)."""
    rows = MessageEnvelope.objects.values_list("message_id", flat=True)
    return sorted(store_files(world) + [f"database:{pk}" for pk in rows])


def body_of(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def spool_files() -> list[str]:
    directory = spool_directory()
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def ciphertext(size: int) -> bytes:
    """Bytes standing for a stream's ciphertext: the server cannot tell them apart."""
    return os.urandom(size)


# --------------------------------------------------------------------------- uploads, the API


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_an_upload_resumes_at_the_offset_the_server_holds_and_completes_once_verified(
    world: World,
) -> None:
    client = world.client(world.a)
    data = ciphertext(2500)
    created = create(client, data)
    assert created.status_code == 201
    body = created.json()
    upload_id = body["id"]
    assert upload_id.startswith("upl_") and len(upload_id) == 36
    assert body | {"expires_at": None} == {
        "id": upload_id,
        "size": 2500,
        "sha256": hashlib.sha256(data).hexdigest(),
        "received": 0,
        "state": "receiving",
        "expires_at": None,
    }
    assert put(client, upload_id, 0, data[:1000]).json()["received"] == 1000
    # Resuming: the client asks where the server is.
    assert client.get(f"{UPLOADS}/{upload_id}").json()["received"] == 1000
    # A chunk sent twice, or from the wrong place, is refused and says where to resume.
    for offset in (0, 1500):
        refused = put(client, upload_id, offset, data[offset : offset + 1000])
        assert refused.status_code == 409
        assert refused.json()["code"] == "upload_offset_mismatch"
        assert refused.json()["details"] == {"received": 1000}
    # An offset that is not plain digits (a superscript passes str.isdigit, not int()).
    for odd in ("\u00b2", "-1", "1e3", "9" * 5000, ""):
        refused = put(client, upload_id, urllib.parse.quote(odd), data[1000:2000])
        assert (refused.status_code, refused.json()["code"]) == (422, "bad_request"), odd
    assert client.get(f"{UPLOADS}/{upload_id}").json()["received"] == 1000
    assert put(client, upload_id, 1000, data[1000:2000]).json()["state"] == "receiving"
    done = put(client, upload_id, 2000, data[2000:])
    assert done.status_code == 200
    assert done.json()["state"] == "complete" and done.json()["received"] == 2500
    # The ciphertext is in the blob store, the spool file is gone.
    row = Upload.objects.get(public_id=upload_id)
    assert LocalBlobStore(world.blob_dir).open(row.blob_id).read() == data
    assert spool_files() == []
    # A repeated last call is harmless; more bytes are not.
    assert put(client, upload_id, 2500, b"").status_code == 200
    assert put(client, upload_id, 2500, b"x").json()["code"] == "upload_offset_mismatch"


@pytest.mark.django_db
def test_an_upload_whose_bytes_do_not_have_the_announced_digest_is_discarded(
    world: World,
) -> None:
    client = world.client(world.a)
    data = ciphertext(1200)
    created = create(client, data, sha256=hashlib.sha256(b"other").hexdigest()).json()
    put(client, created["id"], 0, data[:1000])
    refused = put(client, created["id"], 1000, data[1000:])
    assert refused.status_code == 422
    assert refused.json()["code"] == "upload_digest_mismatch"
    assert not Upload.objects.exists() and spool_files() == [] and store_files(world) == []
    assert client.get(f"{UPLOADS}/{created['id']}").status_code == 404


@pytest.mark.django_db
def test_upload_refusals_have_stable_codes(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    client = world.client(world.a)
    data = ciphertext(100)
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", "50")
    too_large = create(client, data)
    assert too_large.status_code == 413
    assert too_large.json()["code"] == "attachment_too_large"
    assert too_large.json()["details"]["limit"] == 50
    assert not Upload.objects.exists() and spool_files() == []  # nothing begun
    monkeypatch.delenv("PLI_MAX_ATTACHMENT_BYTES")
    for bad in ({"size": 0}, {"sha256": "X" * 64}, {"size": "12"}, {"name": "cr.pdf"}):
        answer = create(client, data, **bad)
        assert answer.status_code == 422 and answer.json()["code"] == "bad_request", bad
    upload_id = create(client, data).json()["id"]
    beyond = put(client, upload_id, 0, data + b"more")
    assert beyond.status_code == 422 and beyond.json()["code"] == "upload_beyond_size"
    assert put(client, upload_id, "-1", data).json()["code"] == "bad_request"
    # A chunk larger than allowed is refused from its announced length, unread.
    big = put(client, upload_id, 0, b"x", CONTENT_LENGTH=str(CHUNK_BYTES_MAX + 1))
    assert big.status_code == 413 and big.json()["code"] == "upload_chunk_too_large"
    # One writer at a time: a chunk arriving while another is written is told so.
    with (spool_directory() / upload_id[4:]).open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        busy = put(client, upload_id, 0, data)
    assert busy.status_code == 409 and busy.json()["code"] == "upload_busy"
    assert Upload.objects.get(public_id=upload_id).received == 0
    # Too many uploads waiting.
    monkeypatch.setenv("PLI_MAX_PENDING_UPLOADS", "1")
    crowded = create(client, data)
    assert crowded.status_code == 429 and crowded.json()["code"] == "too_many_uploads"


@pytest.mark.django_db(transaction=True)
def test_uploads_created_at_once_stay_within_the_limit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions: the tests' SQLite database is in memory")
    monkeypatch.setenv("PLI_MAX_PENDING_UPLOADS", "5")
    data = ciphertext(100)
    refused: list[str] = []

    def create_one(_number: int) -> None:
        try:
            do_create_upload(world.a, len(data), hashlib.sha256(data).hexdigest())
        except MessagingError as error:
            refused.append(error.code)

    assert in_threads(24, create_one) == []
    assert Upload.objects.filter(owner=world.a).count() == 5
    assert refused == ["too_many_uploads"] * 19
    assert len(spool_files()) == 5  # the refused ones left no file


@pytest.mark.django_db
def test_an_upload_deleted_while_it_completes_takes_its_blob(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = world.client(world.a)
    data = ciphertext(1500)
    upload_id = create(client, data).json()["id"]
    put(client, upload_id, 0, data[:1000])
    # The deletion reads the upload while it is still receiving, then the last chunk
    # completes it (its blob stored), then the deletion goes on with what it read.
    stale = Upload.objects.get(public_id=upload_id)
    assert stale.blob_id == ""
    assert put(client, upload_id, 1000, data[1000:]).json()["state"] == "complete"
    assert len(store_files(world)) == 1
    monkeypatch.setattr(messaging_uploads, "access_upload", lambda _user, _id: stale)
    messaging_uploads.do_delete_upload(world.a, upload_id)
    assert not Upload.objects.exists()
    assert store_files(world) == []  # nothing left that nothing names


@pytest.mark.django_db
@pytest.mark.requirement("REQ-E2E")
def test_an_upload_is_its_owners_alone(world: World) -> None:
    data = ciphertext(300)
    mine = upload(world.client(world.a), data)
    other = world.client(world.c)
    assert other.get(f"{UPLOADS}/{mine}").status_code == 404
    assert put(other, mine, 300, b"").json()["code"] == "not_found"
    assert other.delete(f"{UPLOADS}/{mine}").status_code == 404
    assert DjangoClient().get(f"{UPLOADS}/{mine}").status_code == 401
    # C cannot send it either (and B cannot: it is A's).
    body = {"from": C, "recipients": [B], "envelope": encoded(a_to_b(world)), "blobs": [mine]}
    refused = post_json(other, MESSAGES, body)
    assert refused.json()["code"] in ("blob_not_found", "recipient_without_certificate")
    assert Upload.objects.filter(public_id=mine).exists()


@pytest.mark.django_db
def test_the_limits_say_what_clients_must_enforce(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = world.client(world.a)
    limits = client.get(f"{UPLOADS}/limits").json()
    assert limits == {
        "max_attachment_bytes": 1024**3,
        "max_upload_bytes": max_upload_bytes(),
        "chunk_bytes": 8 * 1024 * 1024,
        "max_envelope_bytes": 10 * 1024 * 1024,
        "inline_attachment_bytes": inline_attachment_bytes(10 * 1024 * 1024),
        "allowed_types": list(DEFAULT_ATTACHMENT_TYPES),
    }
    # About 5.1 MiB inline with the default 10 MiB envelope.
    assert 5_300_000 < limits["inline_attachment_bytes"] < 5_500_000
    # 1 GiB of content, in 1 MiB records, is accepted as ciphertext.
    assert stream_ciphertext_bytes(1024**3) == limits["max_upload_bytes"]
    monkeypatch.setenv("PLI_ATTACHMENT_TYPES", "application/pdf, Text/XML")
    assert client.get(f"{UPLOADS}/limits").json()["allowed_types"] == [
        "application/pdf",
        "text/xml",
    ]


# --------------------------------------------------------------------------- send, download


@pytest.mark.django_db
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
def test_a_send_attaches_complete_uploads_and_only_its_people_download_them(
    world: World,
) -> None:
    data = ciphertext(5000)
    digest = hashlib.sha256(data).hexdigest()
    sender = world.client(world.a)
    upload_id = upload(sender, data)
    sent = send_with(world, [upload_id])
    assert sent.status_code == 201, sent.content
    message = Message.objects.get(public_id=sent.json()["id"])
    [blob] = MessageBlob.objects.filter(message=message)
    assert (blob.sha256, blob.size) == (digest, 5000)
    assert not Upload.objects.exists()  # attached: the upload is gone, its blob stays
    event = AuditEvent.objects.filter(action="messages.sent", outcome="success").get()
    assert json.loads(event.detail)["blobs"] == 1

    path = f"{MESSAGES}/{message.public_id}/blobs/{digest}"
    recipient = world.client(world.b)
    whole = recipient.get(path)
    assert whole.status_code == 200
    assert body_of(whole) == data
    assert whole["Content-Length"] == "5000" and whole["Accept-Ranges"] == "bytes"
    # A resumed download: from byte N to the end, and a bounded range.
    resumed = recipient.get(path, HTTP_RANGE="bytes=4000-")
    assert resumed.status_code == 206
    assert resumed["Content-Range"] == "bytes 4000-4999/5000"
    assert body_of(resumed) == data[4000:]
    middle = recipient.get(path, HTTP_RANGE="bytes=10-19")
    assert body_of(middle) == data[10:20]
    assert middle["Content-Length"] == "10"
    outside = recipient.get(path, HTTP_RANGE="bytes=5000-")
    assert outside.status_code == 416 and outside["Content-Range"] == "bytes */5000"
    # The sender's copy reaches it too; nobody else, and no other name.
    assert world.client(world.a).get(path).status_code == 200
    assert world.client(world.c).get(path).json()["code"] == "not_found"
    assert world.client(world.d).get(path).status_code == 404
    assert recipient.get(f"{MESSAGES}/{message.public_id}/blobs/{'0' * 64}").status_code == 404
    assert recipient.get(f"{MESSAGES}/{message.public_id}/blobs/..%2f..").status_code == 404
    opened = AuditEvent.objects.filter(action="messages.opened")
    assert {json.loads(e.detail)["blob"] for e in opened} == {digest}


@pytest.mark.django_db
def test_an_upload_is_attached_once_and_only_when_complete(world: World) -> None:
    sender = world.client(world.a)
    data = ciphertext(800)
    half = create(sender, data).json()["id"]
    put(sender, half, 0, data[:400])
    before = (Message.objects.count(), store_files(world))
    refused = send_with(world, [half])
    assert refused.status_code == 422
    assert refused.json()["code"] == "blob_not_found"
    assert refused.json()["details"] == {"blobs": [half]}
    assert (Message.objects.count(), store_files(world)) == before

    whole = upload(sender, data)
    assert send_with(world, [whole, whole]).status_code == 201  # named twice: one blob
    again = send_with(world, [whole])
    assert again.json()["code"] == "blob_not_found"
    assert MessageBlob.objects.count() == 1


@pytest.mark.django_db
def test_a_refused_send_leaves_its_uploads_for_another_try(world: World) -> None:
    sender = world.client(world.a)
    upload_id = upload(sender, ciphertext(600))
    body = {"from": A, "recipients": [B], "envelope": encoded(b"not CMS"), "blobs": [upload_id]}
    assert post_json(sender, MESSAGES, body).json()["code"] == "envelope_malformed"
    assert Upload.objects.get(public_id=upload_id).state == UploadState.COMPLETE
    assert send_with(world, [upload_id]).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_a_message_deleted_by_everyone_takes_its_blobs(world: World, envelope_storage: str) -> None:
    sender = world.client(world.a)
    upload_id = upload(sender, ciphertext(700))
    message_id = send_with(world, [upload_id]).json()["id"]
    assert len(kept(world)) == 2  # the envelope and the attachment
    assert len(store_files(world)) == (2 if envelope_storage == "blob_store" else 1)
    for user in (world.a, world.b):
        client = world.client(user)
        client.delete(f"{MESSAGES}/{message_id}")
        client.delete(f"{MESSAGES}/{message_id}?permanent=true")
    assert not Message.objects.exists() and not MessageBlob.objects.exists()
    assert kept(world) == []


@pytest.mark.django_db
def test_expired_uploads_are_purged_and_never_become_attachments(world: World) -> None:
    sender = world.client(world.a)
    data = ciphertext(900)
    waiting = create(sender, data).json()["id"]
    put(sender, waiting, 0, data[:500])
    complete = upload(sender, data)
    attached = upload(sender, ciphertext(100))
    assert send_with(world, [attached]).status_code == 201
    stray = spool_directory() / ("f" * 32)
    stray.write_bytes(b"left by a crash")
    old = timezone.now() - dt.timedelta(days=2)
    os.utime(stray, (old.timestamp(), old.timestamp()))
    later = timezone.now() + dt.timedelta(hours=25)

    dry = upload_cleanup_job(later, True)
    assert dry.data["uploads"] == 2 and dry.data["bytes"] == 500 + 900
    assert Upload.objects.count() == 2

    summary = upload_cleanup_job(later, False)
    assert summary.ok
    assert summary.data == {"uploads": 2, "bytes": 1400, "spool_files": 1, "temporary_files": 0}
    assert not Upload.objects.exists() and spool_files() == []
    assert len(kept(world)) == 2  # the attached blob and the envelope stay
    for upload_id in (waiting, complete):
        assert send_with(world, [upload_id]).json()["code"] == "blob_not_found"
    assert purge_expired_uploads(later).uploads == 0  # idempotent


# --------------------------------------------------------------------------- a chunk cut short


@pytest.mark.django_db(transaction=True)
def test_a_chunk_cut_short_by_a_broken_connection_is_not_counted(
    server: Server, alice: Persona
) -> None:
    client = server.logged_in(alice)
    data = ciphertext(3000)
    created = client._call(
        "POST", UPLOADS, body={"size": 3000, "sha256": hashlib.sha256(data).hexdigest()}
    ).json()
    upload_id = created["id"]
    client._call("PUT", f"{UPLOADS}/{upload_id}", query={"offset": "0"}, raw=data[:1000])
    half_a_chunk(client, upload_id, 1000, data[1000:2000], sent=400)
    status = client._call("GET", f"{UPLOADS}/{upload_id}").json()
    assert status["received"] == 1000  # the 400 bytes that arrived are not counted
    # Nor kept: the spool holds the first chunk exactly, and the store nothing yet.
    spool = server.tmp / "blobs" / "uploads" / Upload.objects.get(public_id=upload_id).spool_name
    assert spool.read_bytes() == data[:1000]
    assert [p for p in (server.tmp / "blobs").rglob("*") if p.is_file()] == [spool]
    done = client._call(
        "PUT", f"{UPLOADS}/{upload_id}", query={"offset": "1000"}, raw=data[1000:]
    ).json()
    assert done["state"] == "complete"
    row = Upload.objects.get(public_id=upload_id)
    assert LocalBlobStore(server.tmp / "blobs").open(row.blob_id).read() == data


def half_a_chunk(client: Client, upload_id: str, offset: int, chunk: bytes, sent: int) -> None:
    """A PUT that announces the whole chunk, sends ``sent`` bytes of it, and hangs up."""
    parts = urllib.parse.urlsplit(client.base_url)
    cookies = "; ".join(f"{k}={v}" for k, v in client._cookies.items())
    head = (
        f"PUT {UPLOADS}/{upload_id}?offset={offset} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Cookie: {cookies}\r\n"
        f"X-CSRFToken: {client._csrf}\r\n"
        f"Origin: {client.base_url}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(chunk)}\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as raw:
        raw.sendall(head + chunk[:sent])
        raw.shutdown(socket.SHUT_WR)
        raw.recv(4096)  # the server's answer (or the connection closing)


# --------------------------------------------------------------------------- the SDK


@pytest.fixture(scope="module")
def ca_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uploads-operator-ca") / "ca"
    CaDirectory.create(path, "Pli Test Operator CA", CA_PASSPHRASE)
    return path


@pytest.fixture
def server(
    live_server: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    ca_directory: Path,
    tmp_path: Path,
) -> Server:
    """As tests/test_client_sdk.py: the live server runs in this process, with these settings."""
    settings.PLI_CA_DIR = ca_directory
    settings.BLOB_DIR = tmp_path / "blobs"
    monkeypatch.setenv("PLI_CA_PASSPHRASE", CA_PASSPHRASE)
    return Server(str(live_server.url), operator_ca.operator_ca(), tmp_path)


@pytest.fixture
def alice(server: Server, pki: Pki) -> Persona:
    return workstation_persona(server, A, pki.keys["alice"], organisation="Hôpital A")


@pytest.fixture
def bob(server: Server, pki: Pki) -> Persona:
    return workstation_persona(server, B, pki.keys["bob"], organisation="Clinique B")


@pytest.fixture
def carol(server: Server, pki: Pki) -> Persona:
    return workstation_persona(server, C, pki.keys["carol"], organisation="Cabinet C")


def streaming_client(
    server: Server, persona: Persona, *, login: bool = True, **options: Any
) -> Client:
    """A client that streams anything above 1 KB, in chunks of 64 KiB.

    ``login=False``: the session saved by an earlier client of the same persona
    (the same session file), as a later process on the same workstation.
    """
    client = server.client(
        persona,
        persona.address.split("@")[0],
        inline_threshold=1000,
        chunk_bytes=64 * 1024,
        work_dir=server.tmp,
        **options,
    )
    client.retry_delay = 0.01
    if login:
        client.login(persona.address, PASSPHRASE, persona.code())
    return client


def scan(size: int) -> bytes:
    """A PDF-looking file of ``size`` bytes."""
    return b"%PDF-1.7\n" + os.urandom(size - 9)


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
def test_the_sdk_streams_a_large_attachment_and_the_recipient_decrypts_it_to_a_file(
    server: Server, alice: Persona, bob: Persona, carol: Persona, tmp_path: Path
) -> None:
    report = tmp_path / "scanner" / "dossier.pdf"
    report.parent.mkdir()
    report.write_bytes(scan(300_000))
    small = Attachment("note.txt", "text/plain", b"Note courte.\n")
    sender = streaming_client(server, alice)
    sent = sender.send(A, [B], "Dossier", "Voici le dossier.\n", attachments=[report, small])

    [blob] = MessageBlob.objects.filter(message__public_id=sent.id)
    assert blob.size == stream_ciphertext_bytes(300_000)
    # The server holds ciphertext only, and nothing waits in the spool or the work dir.
    stored = b"".join(p.read_bytes() for p in (server.tmp / "blobs").rglob("*") if p.is_file())
    assert report.read_bytes()[:4096] not in stored and b"Note courte" not in stored
    assert not Upload.objects.exists() and not list(server.tmp.glob("pli-upload-*"))

    reader = streaming_client(server, bob)
    opened = reader.read(sent.id)
    assert [a.filename for a in opened.attachments] == ["note.txt"]
    assert [(p.filename, p.content_type) for p in opened.external_parts] == [
        ("dossier.pdf", "application/pdf")
    ]
    saved = opened.save_attachments(tmp_path / "received")
    assert [p.name for p in saved] == ["note.txt", "dossier.pdf"]
    assert saved[1].read_bytes() == report.read_bytes()
    assert oct(saved[1].stat().st_mode & 0o777) == "0o600"
    assert not list((tmp_path / "received").glob(".part-*"))
    # The sender's copy too; someone else cannot fetch the blob.
    own = sender.read(sent.id, mark_read=False)
    assert own.save_attachments(tmp_path / "mine")[-1].read_bytes() == report.read_bytes()
    outsider = streaming_client(server, carol)
    with pytest.raises(ApiError) as refused:
        outsider.download_attachment(sent.id, opened.external_parts[0], tmp_path / "stolen")
    assert refused.value.code == "not_found"
    assert not list((tmp_path / "stolen").iterdir())


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_pli_read_lists_a_large_attachment_and_saves_it_decrypted(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    """The command names the large part; ``--save-attachments`` fetches and decrypts it."""
    report = scan(200_000)
    sent = streaming_client(server, alice).send(
        A,
        [B],
        "Dossier",
        "Voici.\n",
        attachments=[Attachment("irm.pdf", "application/pdf", report)],
    )
    shell = Workstation(server, bob)
    assert shell.login().exit_code == 0

    listed = shell.run("read", sent.id, *shell.key_options(), language=None)
    assert listed.exit_code == 0, listed.output
    assert "Pièce jointe volumineuse : irm.pdf (application/pdf, 200000 octets)" in listed.stdout
    assert "--save-attachments DOSSIER les télécharge" in listed.stdout
    assert "warning" not in listed.output

    folder = tmp_path / "recus"
    saved = shell.run("read", sent.id, "--save-attachments", str(folder), *shell.key_options())
    assert saved.exit_code == 0, saved.output
    assert f"Large attachment: irm.pdf (application/pdf, 200000 bytes) -> {folder / 'irm.pdf'}" in (
        saved.stdout
    )
    assert "--save-attachments" not in saved.stdout
    assert (folder / "irm.pdf").read_bytes() == report


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_an_upload_interrupted_mid_chunk_resumes_where_the_server_is(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third chunk's connection breaks after half of it: the SDK asks the server
    where it is (two chunks), and sends the rest; nothing is sent twice."""
    report = tmp_path / "irm.pdf"
    report.write_bytes(scan(400_000))
    sender = streaming_client(server, alice)
    offsets: list[int] = []
    original = Client._send_request

    def flaky(self: Client, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT":
            offset = int((kwargs.get("query") or {})["offset"])
            offsets.append(offset)
            if len(offsets) == 3:
                half_a_chunk(self, path.rsplit("/", 1)[1], offset, kwargs["raw"], sent=30_000)
                raise ClientError("server_unreachable", "connection reset by peer")
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(Client, "_send_request", flaky)
    sent = sender.send(A, [B], "IRM", "Images.\n", attachments=[report])
    chunk = 64 * 1024
    assert offsets[:4] == [0, chunk, 2 * chunk, 2 * chunk]  # resumed at the third chunk
    assert offsets == sorted(offsets)
    monkeypatch.setattr(Client, "_send_request", original)
    opened = streaming_client(server, bob).read(sent.id)
    [path] = opened.save_attachments(tmp_path / "received")
    assert path.read_bytes() == report.read_bytes()


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_an_upload_that_gives_up_can_be_resumed_later_and_sent(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "scanner.pdf"
    report.write_bytes(scan(200_000))
    sender = streaming_client(server, alice, upload_retries=0)
    original = Client._send_request
    puts: list[int] = []

    def down(self: Client, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT":
            puts.append(1)
            if len(puts) >= 2:
                raise ClientError("server_unreachable", "the network is down")
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(Client, "_send_request", down)
    with pytest.raises(UploadInterrupted) as interrupted:
        sender.send(A, [B], "Scanner", "Images.\n", attachments=[report])
    pending = interrupted.value.pending
    assert isinstance(pending, PendingUpload) and pending.ciphertext.is_file()
    row = Upload.objects.get(public_id=pending.upload_id)
    assert interrupted.value.code == "upload_interrupted"
    assert row.received == 64 * 1024
    assert not Message.objects.exists()
    # Nothing half-stored: the spool holds the one chunk the server acknowledged.
    spool = server.tmp / "blobs" / "uploads" / row.spool_name
    assert spool.read_bytes() == pending.ciphertext.read_bytes()[: 64 * 1024]

    monkeypatch.setattr(Client, "_send_request", original)
    later = streaming_client(server, alice, login=False)  # later, on the same workstation
    later.resume_upload(pending)
    assert Upload.objects.get(public_id=pending.upload_id).state == UploadState.COMPLETE
    sent = later.send(A, [B], "Scanner", "Images.\n", attachments=[pending])
    pending.discard()
    opened = streaming_client(server, bob).read(sent.id)
    [path] = opened.save_attachments(tmp_path / "received")
    assert path.read_bytes() == report.read_bytes()


@pytest.mark.django_db(transaction=True)
def test_a_download_cut_off_resumes_with_a_range(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = scan(500_000)
    sent = streaming_client(server, alice).send(
        A, [B], "Scan", "Voir.\n", attachments=[Attachment("scan.pdf", "application/pdf", data)]
    )
    reader = streaming_client(server, bob)
    opened = reader.read(sent.id)
    starts: list[int] = []
    original = Client._open_stream

    def breaking(self: Client, path: str, **kwargs: Any) -> Any:
        starts.append(int(kwargs.get("start", 0)))
        answer = original(self, path, **kwargs)
        if len(starts) == 1:
            return _Breaks(answer, after=200_000)
        return answer

    monkeypatch.setattr(Client, "_open_stream", breaking)
    [path] = opened.save_attachments(tmp_path / "received")
    assert path.read_bytes() == data
    assert starts[0] == 0 and 0 < starts[1] <= 200_000 and len(starts) == 2


class _Breaks:
    """A response whose connection breaks after ``after`` bytes."""

    def __init__(self, answer: Any, after: int) -> None:
        self._answer = answer
        self._left = after
        self.status = answer.status
        self.headers = answer.headers

    def read(self, size: int) -> bytes:
        if self._left <= 0:
            raise ConnectionResetError("connection reset by peer")
        piece: bytes = self._answer.read(min(size, self._left))
        self._left -= len(piece)
        return piece

    def close(self) -> None:
        self._answer.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-AT-REST")
def test_a_blob_altered_on_the_server_is_never_saved(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    sent = streaming_client(server, alice).send(
        A,
        [B],
        "Scan",
        "Voir.\n",
        attachments=[Attachment("scan.pdf", "application/pdf", scan(90_000))],
    )
    blob = MessageBlob.objects.get(message__public_id=sent.id)
    stored = server.tmp / "blobs" / blob.blob_id[:2] / blob.blob_id
    altered = bytearray(stored.read_bytes())
    altered[50_000] ^= 1
    stored.write_bytes(bytes(altered))
    opened = streaming_client(server, bob).read(sent.id)
    with pytest.raises(BlobCorrupted):
        opened.save_attachments(tmp_path / "received")
    assert [p.name for p in (tmp_path / "received").iterdir()] == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_the_sdk_keeps_envelopes_under_the_server_limit(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a threshold of its own, the SDK streams what the server's envelope limit
    cannot carry (about 1.9x the attachment), and keeps the rest inline."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(900 * 1024))
    budget = inline_attachment_bytes(900 * 1024)
    sender = server.logged_in(alice)  # the default client: threshold from the server
    near = Attachment("limite.pdf", "application/pdf", scan(budget - 20_000))
    over = Attachment("grand.pdf", "application/pdf", scan(budget + 20_000))
    first = sender.send(A, [B], "Limite", "Texte.\n", attachments=[near])
    assert not MessageBlob.objects.filter(message__public_id=first.id).exists()
    second = sender.send(A, [B], "Grand", "Texte.\n", attachments=[over, near])
    # Both together exceed the envelope: the larger is streamed, the other stays inline.
    assert MessageBlob.objects.filter(message__public_id=second.id).count() == 1
    for message in Message.objects.all():
        assert message.size <= 900 * 1024
    opened = server.logged_in(bob).read(second.id)
    assert [a.filename for a in opened.attachments] == ["limite.pdf"]
    saved = opened.save_attachments(tmp_path / "in")
    assert sorted(p.read_bytes() for p in saved) == sorted([near.data, over.data])


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_a_reader_does_not_save_what_the_allow_list_refuses(
    server: Server,
    alice: Persona,
    bob: Persona,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender's software that skipped the allow-list: the server sees ciphertext only,
    so the reading workstation applies it too before writing anything."""
    note = Attachment("note.txt", "text/plain", b"Note courte.\n")
    program = Attachment("outil.exe", "application/x-msdownload", b"MZ\x90\x00" + bytes(200))
    disguised = Attachment("bilan.pdf", "application/pdf", b"MZ\x90\x00" + bytes(200))
    large = Attachment("setup.exe", "application/x-msdownload", b"MZ\x90\x00" + bytes(5000))
    with monkeypatch.context() as patched:
        # The sender's modified software: every type passes its own check.
        patched.setattr(
            messaging_sdk, "check_attachment_type", lambda name, kind, *_, **__: kind.lower()
        )
        sent = streaming_client(server, alice).send(
            A, [B], "Pièces", "Voir.\n", attachments=[note, program, disguised, large]
        )
    opened = streaming_client(server, bob).read(sent.id)
    assert [p.filename for p in opened.external_parts] == ["setup.exe"]
    assert [(r.index, r.filename, r.code) for r in opened.refused_attachments()] == [
        (1, "outil.exe", "attachment_type_not_allowed"),
        (2, "bilan.pdf", "attachment_content_mismatch"),
        (3, "setup.exe", "attachment_type_not_allowed"),
    ]
    assert [p.name for p in opened.save_attachments(tmp_path / "recus")] == ["note.txt"]
    assert sorted(p.name for p in (tmp_path / "recus").iterdir()) == ["note.txt"]
    everything = opened.save_attachments(tmp_path / "tout", any_type=True)
    assert [p.name for p in everything] == ["note.txt", "outil.exe", "bilan.pdf", "setup.exe"]

    # The command says so, and writes only what passes (or everything, when told).
    shell = Workstation(server, bob)
    shell.session = server.tmp / f"{B.split('@')[0]}-session.json"  # the SDK's session
    folder = tmp_path / "pli"
    read = shell.run("read", sent.id, "--save-attachments", str(folder), *shell.key_options())
    assert read.exit_code == 0, read.output
    assert f"Attachment: note.txt (text/plain, 13 bytes) -> {folder / 'note.txt'}" in read.stdout
    assert "Attachment: outil.exe (application/x-msdownload, 204 bytes)\n" in read.stdout
    warnings = read.stderr.strip().splitlines()
    assert [w.split(":")[1].strip() for w in warnings] == [
        "attachment_type_not_allowed",
        "attachment_content_mismatch",
        "attachment_type_not_allowed",
    ]
    assert all(w.endswith("not saved (--any-type saves it all the same)") for w in warnings)
    assert sorted(p.name for p in folder.iterdir()) == ["note.txt"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_attachment_types_are_checked_on_the_workstation_before_sealing(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = streaming_client(server, alice)
    cases = {
        "attachment_type_not_allowed": Attachment("setup.exe", "application/x-msdownload", b"MZ"),
        "attachment_content_mismatch": Attachment("cr.pdf", "application/pdf", b"MZ\x90\x00"),
    }
    for code, attachment in cases.items():
        with pytest.raises(ClientError) as refused:
            sender.send(A, [B], "Pièce", "Texte.\n", attachments=[attachment])
        assert refused.value.code == code
    executable = tmp_path / "rapport.pdf"
    executable.write_bytes(b"\x7fELF" + b"\x00" * 5000)
    with pytest.raises(ClientError) as disguised:
        sender.send(A, [B], "Pièce", "Texte.\n", attachments=[executable])
    assert disguised.value.code == "attachment_content_mismatch"
    # The operator narrows the list: the server says so, the SDK applies it.
    monkeypatch.setenv("PLI_ATTACHMENT_TYPES", "application/pdf")
    narrowed = streaming_client(server, alice, login=False)
    with pytest.raises(ClientError) as png:
        narrowed.send(
            A,
            [B],
            "Image",
            "Texte.\n",
            attachments=[Attachment("ecg.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"0" * 99)],
        )
    assert png.value.code == "attachment_type_not_allowed"
    # And the maximum size, before anything is encrypted.
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", "1000")
    with pytest.raises(ClientError) as large:
        streaming_client(server, alice, login=False).send(
            A,
            [B],
            "Gros",
            "Texte.\n",
            attachments=[Attachment("x.pdf", "application/pdf", scan(2000))],
        )
    assert large.value.code == "attachment_too_large"
    assert not Message.objects.exists() and not Upload.objects.exists()


@pytest.mark.parametrize(
    ("name", "content_type", "head"),
    [
        ("compte-rendu.pdf", "application/pdf", b"%PDF-1.4\n"),
        ("ecg.png", "image/png", b"\x89PNG\r\n\x1a\n\x00"),
        ("photo.jpg", "image/jpeg", b"\xff\xd8\xff\xe0"),
        ("radio.tiff", "image/tiff", b"II*\x00\x08"),
        ("cda.xml", "text/xml", b"\xef\xbb\xbf\n  <?xml version='1.0'?><ClinicalDocument/>"),
        ("cda.xml", "application/octet-stream", b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>"),
        ("IHE_XDM.zip", "application/zip", b"PK\x03\x04\x14\x00"),
        ("note.txt", "text/plain; charset=utf-8", "Résultats normaux.".encode()),
        ("compte-rendu.cda", "application/xml", b"<ClinicalDocument/>"),  # an unknown extension
        ("SCAN.PDF", "application/pdf", b"%PDF-1.4"),
        ("sans-extension", "application/pdf", b"%PDF-1.4"),
    ],
)
def test_the_default_types_cover_pdf_images_cda_and_ihe_xdm(
    name: str, content_type: str, head: bytes
) -> None:
    kind = check_attachment_type(name, content_type, head)
    assert kind in DEFAULT_ATTACHMENT_TYPES


@pytest.mark.parametrize(
    ("name", "content_type", "head", "code"),
    [
        ("run.sh", "application/x-sh", b"#!/bin/sh", "attachment_type_not_allowed"),
        ("page.html", "text/html", b"<html>", "attachment_type_not_allowed"),
        ("scan.pdf", "application/pdf", b"PK\x03\x04", "attachment_content_mismatch"),
        ("IHE_XDM.zip", "application/zip", b"%PDF-", "attachment_content_mismatch"),
        ("cda.xml", "text/xml", b"MZ\x00", "attachment_content_mismatch"),
        ("note.txt", "text/plain", b"a\x00b", "attachment_content_mismatch"),
        # The name contradicts the type: what the reader's system opens is the name.
        ("facture.jar", "application/zip", b"PK\x03\x04", "attachment_type_not_allowed"),
        ("lancer.bat", "text/plain", b"@echo off", "attachment_type_not_allowed"),
        ("page.hta", "text/plain", b"<script>", "attachment_type_not_allowed"),
        ("dessin.svg", "application/xml", b"<svg/>", "attachment_type_not_allowed"),
        ("RAPPORT.EXE", "application/pdf", b"%PDF-1.4", "attachment_type_not_allowed"),
        ("photo.png", "application/pdf", b"%PDF-1.4", "attachment_content_mismatch"),
    ],
)
def test_other_types_and_disguised_content_are_refused(
    name: str, content_type: str, head: bytes, code: str
) -> None:
    with pytest.raises(ClientError) as refused:
        check_attachment_type(name, content_type, head)
    assert refused.value.code == code


def test_the_stream_size_formula_matches_the_encryption() -> None:
    import io

    from pli.crypto import encrypt_stream

    for size in (0, 1, 1024 * 1024 - 17, 1024 * 1024 - 16, 3 * 1024 * 1024 + 5):
        sink = io.BytesIO()
        sealed = encrypt_stream(io.BytesIO(b"\x00" * size), sink)
        assert sealed.size == stream_ciphertext_bytes(size), size
