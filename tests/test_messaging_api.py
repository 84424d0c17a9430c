"""Messaging: the envelope inspector, the blob store, and the API with real envelopes.

Envelopes are really sealed (``pli.crypto.seal``) with certificates of the test
PKI published in the directory, and really opened by the recipient's key
(``pli.crypto.open_envelope``). Personas: A, a doctor of Hôpital A; B, a doctor
of Clinique B and member of its cardiology ward's mailbox; C, a doctor of
another practice, who must see nothing; D, B's colleague in Clinique B, not a
member of the ward; and the anonymous outsider.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import resource
import signal
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from pli.crypto import (
    Certificate,
    MalformedEnvelope,
    NotARecipient,
    SoftwareKey,
    TrustStore,
    UnsupportedAlgorithm,
    certificate_pem,
    inspect_envelope,
    open_envelope,
    seal,
)
from pli.identifiers import nir_key
from pli.mime import Draft, build_inner_message, parse_inner_message
from pli.server.accounts import lifecycle
from pli.server.accounts.models import Membership, Role, User
from pli.server.audit.actions import do_record_event, do_record_events
from pli.server.audit.models import AuditEvent
from pli.server.blobs import (
    BlobDigestMismatch,
    BlobError,
    BlobNotFound,
    BlobTooLarge,
    InvalidBlobId,
    LocalBlobStore,
)
from pli.server.compliance.actions import do_lift_opposition, do_record_opposition
from pli.server.config import ConfigurationError
from pli.server.directory.actions import do_publish_mailbox_certificate
from pli.server.directory.models import Mailbox, Organisation
from pli.server.messaging import actions as messaging_actions
from pli.server.messaging import api as messaging_api
from pli.server.messaging.access import MessagingError
from pli.server.messaging.actions import do_delete_message, do_send_message
from pli.server.messaging.models import Delivery, Folder, Message, MessageCopy, MessageEnvelope
from tests.accounts_support import make_account, signed_in
from tests.conftest import ALICE, Pki

A = "dr.martin@hopital-a.pli.test"
B = "dr.durand@clinique-b.pli.test"
WARD = "cardiologie@clinique-b.pli.test"
C = "dr.petit@cabinet-c.pli.test"
D = "dr.moreau@clinique-b.pli.test"
CLOSED = "ferme@ailleurs.pli.test"
MESSAGES = "/api/messages"
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")


def valid_nir(first13: str = "1850578006084") -> str:
    return f"{first13}{nir_key(first13):02d}"


# --------------------------------------------------------------------------- helpers


def letter(
    sender: str,
    to: list[str],
    *,
    subject: str = "Avis cardiologique",
    body: str = "Cher confrère, voici mon avis.\n",
    person: str | None = None,
    patient: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    return build_inner_message(
        Draft(
            from_address=sender,
            to=to,
            subject=subject,
            body_text=body,
            sender=person,
            patient_id=patient,
            in_reply_to=in_reply_to,
        )
    )


def encoded(envelope: bytes) -> str:
    return base64.b64encode(envelope).decode()


def send(client: Client, sender: str, recipients: list[str], envelope: bytes, **extra: Any) -> Any:
    body = {"from": sender, "recipients": recipients, "envelope": encoded(envelope), **extra}
    return client.post(MESSAGES, data=json.dumps(body), content_type="application/json")


def post_json(client: Client, path: str, body: dict[str, Any] | None = None) -> Any:
    data = "" if body is None else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def blob_files(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def envelope_place(message: Message) -> str:
    """Where a message's envelope is kept: its blob file, or its row (decision 0013)."""
    if message.envelope_blob:
        return f"{message.envelope_blob[:2]}/{message.envelope_blob}"
    return f"database:{message.pk}"


def envelopes_kept(directory: Path) -> list[str]:
    """Every envelope kept: files of the blob store and rows of the database."""
    rows = MessageEnvelope.objects.values_list("message_id", flat=True)
    return sorted(blob_files(directory) + [f"database:{pk}" for pk in rows])


def stored_state(directory: Path) -> tuple[int, int, int, list[str]]:
    return (
        Message.objects.count(),
        Delivery.objects.count(),
        MessageCopy.objects.count(),
        envelopes_kept(directory),
    )


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


@dataclass
class World:
    a: User
    b: User
    c: User
    d: User
    a_key: SoftwareKey
    b_key: SoftwareKey
    ward_key: SoftwareKey
    mailbox_a: Mailbox
    mailbox_b: Mailbox
    ward: Mailbox
    trust: TrustStore
    blob_dir: Path
    pki: Pki

    def client(self, user: User) -> Client:
        return signed_in(user)

    def publish(self, mailbox: Mailbox, key_name: str) -> SoftwareKey:
        return publish(self.pki, mailbox, key_name)


def publish(pki: Pki, mailbox: Mailbox, key_name: str) -> SoftwareKey:
    """A certificate of the test CA for ``mailbox``, published in the directory."""
    issued = pki.authority.issue(pki.keys[key_name], mailbox.address, mailbox.address[:60])
    do_publish_mailbox_certificate(mailbox, certificate_pem(issued.certificate))
    return issued


@pytest.fixture
def blob_dir(settings: Settings, tmp_path: Path) -> Path:
    settings.BLOB_DIR = tmp_path / "blobs"
    return Path(settings.BLOB_DIR)


@pytest.fixture
def world(pki: Pki, blob_dir: Path) -> World:
    return make_world(pki, blob_dir)


def make_world(pki: Pki, blob_dir: Path) -> World:
    """The personas, their mailboxes and published certificates (see the module's doc)."""
    a, _ = make_account(A, organisation="Hôpital A")
    b, _ = make_account(B, organisation="Clinique B")
    c, _ = make_account(C, organisation="Cabinet C")
    d, _ = make_account(D, organisation="Clinique B")
    mailbox_a = Mailbox.objects.get(address=A)
    mailbox_b = Mailbox.objects.get(address=B)
    ward = Mailbox.objects.create(
        address=WARD, kind="ORG", organisation=Organisation.objects.get(technical_id="TClinique B")
    )
    Membership.objects.create(user=b, mailbox=ward, role="member")
    return World(
        a=a,
        b=b,
        c=c,
        d=d,
        a_key=publish(pki, mailbox_a, "alice"),
        b_key=publish(pki, mailbox_b, "bob"),
        ward_key=publish(pki, ward, "carol"),
        mailbox_a=mailbox_a,
        mailbox_b=mailbox_b,
        ward=ward,
        trust=pki.trust(),
        blob_dir=blob_dir,
        pki=pki,
    )


def a_to_b(world: World, **kwargs: Any) -> bytes:
    return seal(letter(A, [B], **kwargs), world.a_key, [world.b_key.certificate])


# --------------------------------------------------------------------------- envelope_info


@pytest.fixture(scope="session")
def sample_envelope(pki: Pki) -> bytes:
    return seal(letter(ALICE, [B]), pki.alice, [pki.bob.certificate, pki.carol.certificate])


@pytest.mark.requirement("REQ-E2E")
def test_the_inspector_lists_recipients_and_cipher_without_a_key(
    pki: Pki, sample_envelope: bytes
) -> None:
    info = inspect_envelope(sample_envelope)
    assert info.content_type == "enveloped_data"
    assert info.content_encryption == "aes256_cbc"
    assert [r.kind for r in info.recipients] == ["ktri", "ktri", "ktri"]
    assert {r.serial for r in info.recipients} == {
        pki.bob.certificate.serial_number,
        pki.carol.certificate.serial_number,
        pki.alice.certificate.serial_number,
    }
    assert all(r.key_encryption == "rsaes_pkcs1v15" for r in info.recipients)
    assert "Pli Test Operator" in (info.recipients[0].issuer or "")
    for key in (pki.alice, pki.bob, pki.carol):
        assert info.require_recipient(key.certificate).matches(key.certificate)
    # Same key, another certificate: not a recipient (the rid names the certificate).
    assert info.recipient_for(pki.alice_foreign.certificate) is None
    with pytest.raises(NotARecipient):
        info.require_recipient(pki.alice_foreign.certificate)


def test_the_inspector_refuses_truncated_padded_and_foreign_structures(
    sample_envelope: bytes,
) -> None:
    envelope = sample_envelope
    for length in range(0, len(envelope), 13):
        with pytest.raises(MalformedEnvelope):
            inspect_envelope(envelope[:length])
    for bad in (
        envelope + b"\x00",
        b"not a CMS structure",
        b"",
        bytes.fromhex("300f06092a864886f70d010701a0020400"),  # ContentInfo of type data
        b"\x30\x80" + envelope[2:],
    ):
        with pytest.raises(MalformedEnvelope):
            inspect_envelope(bad)


@hypothesis_settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_the_inspector_never_fails_otherwise_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(MalformedEnvelope):
        inspect_envelope(b"\x30" + data)


@hypothesis_settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_inspector_never_fails_otherwise_on_altered_envelopes(
    sample_envelope: bytes, data: Any
) -> None:
    envelope = bytearray(sample_envelope)
    # The structure (everything before the encrypted content) is where parsing can go wrong.
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, 1700))
        envelope[position] = data.draw(st.integers(0, 255))
    try:
        info = inspect_envelope(bytes(envelope))
    except MalformedEnvelope:
        return
    assert info.recipients


def _openssl_encrypt(
    openssl: str, tmp_path: Path, certificate: Certificate, *options: str
) -> bytes:
    source = tmp_path / "in.txt"
    source.write_bytes(b"Content-Type: text/plain\r\n\r\nBonjour\r\n")
    recipient = tmp_path / "recipient.pem"
    recipient.write_bytes(certificate_pem(certificate))
    output = tmp_path / "out.der"
    subprocess.run(
        [
            *(openssl, "cms", "-encrypt", "-binary", "-outform", "DER"),
            *("-in", str(source), "-out", str(output), "-recip", str(recipient), *options),
        ],
        check=True,
        capture_output=True,
    )
    return output.read_bytes()


@pytest.mark.requirement("REQ-INTEROP")
def test_the_inspector_reads_openssl_key_identifiers_ber_and_refuses_gcm(
    openssl: str, pki: Pki, tmp_path: Path
) -> None:
    streamed = _openssl_encrypt(
        openssl, tmp_path, pki.bob.certificate, "-aes-256-cbc", "-keyid", "-stream"
    )
    info = inspect_envelope(streamed)  # BER with indefinite lengths, as streaming agents write
    (recipient,) = info.recipients
    assert recipient.subject_key_id is not None and recipient.serial is None
    assert info.require_recipient(pki.bob.certificate) is recipient
    assert info.recipient_for(pki.carol.certificate) is None

    gcm = _openssl_encrypt(openssl, tmp_path, pki.bob.certificate, "-aes-256-gcm")
    info = inspect_envelope(gcm)
    assert info.content_type == "authenticated_enveloped_data"
    with pytest.raises(UnsupportedAlgorithm):
        info.require_recipient(pki.bob.certificate)

    oaep = _openssl_encrypt(
        openssl, tmp_path, pki.bob.certificate, "-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep"
    )
    with pytest.raises(UnsupportedAlgorithm, match="rsaes_oaep"):
        inspect_envelope(oaep).require_recipient(pki.bob.certificate)


# --------------------------------------------------------------------------- blob store


@pytest.mark.requirement("REQ-AT-REST")
def test_the_blob_store_writes_atomically_and_streams(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    payload = b"x" * (3 * 1024 * 1024 + 5)
    stored = store.write(iter([payload[:1000], payload[1000:]]))
    assert re.fullmatch(r"[0-9a-f]{32}", stored.blob_id)
    assert stored.size == len(payload)
    assert b"".join(store.read_chunks(stored.blob_id)) == payload
    assert store.size(stored.blob_id) == len(payload)
    path = tmp_path / "blobs" / stored.blob_id[:2] / stored.blob_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(store.ids()) == [stored.blob_id]
    assert [p.name for p in (tmp_path / "blobs").iterdir() if p.is_file()] == []  # no leftovers

    addressed = store.write_addressed(b"chiffre")
    again = store.write_addressed(b"chiffre", expected_sha256=addressed.sha256)
    assert addressed == again and addressed.blob_id == addressed.sha256
    with pytest.raises(BlobDigestMismatch):
        store.write_addressed(b"autre", expected_sha256=addressed.sha256)

    with pytest.raises(BlobTooLarge):
        store.write(payload, max_bytes=1024)
    assert sorted(store.ids()) == sorted([stored.blob_id, addressed.blob_id])
    assert [p.name for p in (tmp_path / "blobs").iterdir() if p.is_file()] == []

    assert store.delete(stored.blob_id) is True
    assert store.delete(stored.blob_id) is False
    with pytest.raises(BlobNotFound):
        store.open(stored.blob_id)
    for hostile in ("../../etc/passwd", "A" * 32, "", "0" * 31, "0" * 32 + "/x"):
        with pytest.raises(InvalidBlobId):
            store.exists(hostile)
    (tmp_path / "blobs" / ".part-leftover").write_bytes(b"half")
    assert store.sweep_temporary(older_than_seconds=-1) == 1


@pytest.mark.requirement("REQ-AT-REST")
def test_a_blob_written_by_pieces_appears_only_when_committed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    root = tmp_path / "blobs"

    def names() -> list[str]:
        return sorted(p.name for p in root.rglob("*") if p.is_file())

    writer = store.writer(max_bytes=10)
    writer.write(b"chif")
    writer.write(b"fre")
    assert list(store.ids()) == [] and writer.size == 7  # readers see nothing yet
    stored = writer.commit()
    assert stored.size == 7 and stored.sha256 == hashlib.sha256(b"chiffre").hexdigest()
    assert b"".join(store.read_chunks(stored.blob_id)) == b"chiffre"
    assert names() == [stored.blob_id]  # no temporary file left
    writer.abort()  # after the commit: nothing to drop
    assert store.exists(stored.blob_id)

    dropped = store.writer()
    dropped.write(b"half")
    dropped.abort()
    assert names() == [stored.blob_id]
    with pytest.raises(BlobError):
        dropped.write(b"more")

    bounded = store.writer(max_bytes=4)
    bounded.write(b"1234")
    with pytest.raises(BlobTooLarge):
        bounded.write(b"5")
    assert names() == [stored.blob_id]  # what was written past the bound is gone

    # The disk refuses a write (here the file-size limit, as a full disk would): the
    # temporary file goes at once, not at the next day's sweep.
    failing = store.writer()
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, previous[1]))
    try:
        with pytest.raises(OSError, match="too large"):  # EFBIG: "File too large"
            failing.write(bytes(2 * 1024 * 1024))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)
    assert names() == [stored.blob_id]


# --------------------------------------------------------------------------- end to end


@pytest.mark.django_db
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-CITY-HOSPITAL")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_message_goes_from_the_hospital_to_the_clinic_end_to_end(world: World) -> None:
    alice, bob, charlie = world.client(world.a), world.client(world.b), world.client(world.c)
    envelope = a_to_b(world, subject="Avis — réf. 2026-117")

    response = send(alice, A, [B], envelope)
    assert response.status_code == 201, response.content
    sent = response.json()
    message_id = sent["id"]
    assert MESSAGE_ID.fullmatch(message_id)
    assert [(d["recipient"], d["state"]) for d in sent["deliveries"]] == [(B, "delivered")]

    mailboxes = {m["address"]: m for m in bob.get("/api/mailboxes").json()}
    assert mailboxes[B]["unread"] == 1 and mailboxes[B]["part"] == "owner"
    assert mailboxes[WARD]["part"] == "member"
    inbox = bob.get(f"/api/mailboxes/{B}/messages", {"folder": "inbox"}).json()
    (listed,) = inbox["results"]
    assert listed["id"] == message_id and listed["from"] == A and listed["sender_person"] == A
    assert listed["read"] is False and listed["recipients"] == [B]
    assert listed["size"] == len(envelope) and inbox["has_next"] is False

    download = bob.get(f"{MESSAGES}/{message_id}/envelope")
    assert download.status_code == 200
    assert download["Content-Type"].startswith("application/pkcs7-mime")
    assert download.content == envelope
    opened = open_envelope(download.content, world.b_key, world.trust)
    assert opened.signer.emails == [A]
    assert parse_inner_message(opened.mime).subject == "Avis — réf. 2026-117"

    detail = alice.get(f"{MESSAGES}/{message_id}").json()
    assert detail["folder"] == "sent"
    assert [(d["recipient"], d["state"], d["read_at"]) for d in detail["deliveries"]] == [
        (B, "delivered", None)
    ]
    assert bob.get(f"{MESSAGES}/{message_id}").json()["deliveries"] is None

    assert post_json(bob, f"{MESSAGES}/{message_id}/read").json() == {
        "id": message_id,
        "read": True,
        "receipt": None,
    }
    assert post_json(bob, f"{MESSAGES}/{message_id}/read").status_code == 200  # idempotent
    (delivery,) = alice.get(f"{MESSAGES}/{message_id}").json()["deliveries"]
    assert delivery["state"] == "read" and delivery["read_at"] is not None
    assert {m["address"]: m["unread"] for m in bob.get("/api/mailboxes").json()}[B] == 0

    # The Sent copy stays readable by its sender (REQ-E2E: sealed to the sender too).
    own = alice.get(f"{MESSAGES}/{message_id}/envelope").content
    assert open_envelope(own, world.a_key, world.trust).signer.emails == [A]

    # Charlie, a doctor elsewhere: the same 404 as for a message that does not exist.
    missing = "msg_" + "0" * 32
    for target in (message_id, missing):
        for method, path in (
            ("get", f"{MESSAGES}/{target}"),
            ("get", f"{MESSAGES}/{target}/envelope"),
            ("post", f"{MESSAGES}/{target}/read"),
            ("post", f"{MESSAGES}/{target}/move"),
            ("post", f"{MESSAGES}/{target}/flag"),
            ("delete", f"{MESSAGES}/{target}"),
        ):
            answer = (
                post_json(charlie, path, {"folder": "archive"} if "move" in path else None)
                if method == "post"
                else getattr(charlie, method)(path)
            )
            assert answer.status_code == 404, (method, path)
            assert answer.json()["code"] == "not_found"
    assert charlie.get(f"/api/mailboxes/{A}/messages").status_code == 404
    assert (
        charlie.get(f"/api/mailboxes/{A}/messages").json()
        == charlie.get("/api/mailboxes/nobody@nowhere.pli.test/messages").json()
    )
    assert [m["address"] for m in charlie.get("/api/mailboxes").json()] == [C]

    target = f"message:{message_id}"
    assert [e.target for e in events("messages.sent")] == [target]
    assert [e.target for e in events("messages.delivered")] == [target]
    assert [e.target for e in events("messages.opened")] == [target, target]
    assert [e.target for e in events("messages.read")] == [target]  # once: idempotent
    for event in AuditEvent.objects.filter(action__startswith="messages."):
        assert "@" not in event.detail and "Avis" not in event.detail


@pytest.mark.django_db(transaction=True)
def test_rolling_back_the_envelopes_table_is_refused_while_it_holds_envelopes(
    world: World,
) -> None:
    bob = world.client(world.b)
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    try:
        with pytest.raises(RuntimeError, match="keep their envelope in the database"):
            call_command("migrate", "messaging", "0002", verbosity=0)
        # The migrations after 0003 were undone before it refused (each is its own
        # transaction): applied again, the table and the envelope are still there.
        call_command("migrate", "messaging", verbosity=0)
        assert MessageEnvelope.objects.count() == 1
        assert bob.get(f"{MESSAGES}/{message_id}/envelope").status_code == 200
        Message.objects.all().delete()  # the envelope goes with its message
        assert not MessageEnvelope.objects.exists()
        call_command("migrate", "messaging", "0002", verbosity=0)  # empty: allowed
        assert "messaging_messageenvelope" not in connection.introspection.table_names()
    finally:
        call_command("migrate", "messaging", verbosity=0)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_small_envelopes_are_kept_in_the_database_larger_ones_in_the_blob_store(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    envelope = a_to_b(world)
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", str(len(envelope)))  # the limit: kept
    in_database = send(alice, A, [B], envelope).json()["id"]
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", str(len(envelope) - 1))
    in_file = send(alice, A, [B], envelope).json()["id"]
    first, second = (Message.objects.get(public_id=i) for i in (in_database, in_file))
    assert first.envelope_blob == "" and second.envelope_blob != ""
    assert envelopes_kept(world.blob_dir) == sorted(
        [f"database:{first.pk}", envelope_place(second)]
    )
    kept = MessageEnvelope.objects.get(message_id=first.pk)
    assert bytes(kept.data) == envelope  # the ciphertext as sealed, nothing else
    for message_id in (in_database, in_file):
        assert bob.get(f"{MESSAGES}/{message_id}/envelope").content == envelope

    # Altered at rest: refused by the digest recorded at send, never served.
    MessageEnvelope.objects.filter(pk=first.pk).update(
        data=envelope[:-1] + bytes([envelope[-1] ^ 0xFF])
    )
    damaged = bob.get(f"{MESSAGES}/{in_database}/envelope")
    assert (damaged.status_code, damaged.json()["code"]) == (503, "envelope_unavailable")
    MessageEnvelope.objects.filter(pk=first.pk).delete()
    missing = bob.get(f"{MESSAGES}/{in_database}/envelope")
    assert (missing.status_code, missing.json()["code"]) == (503, "envelope_unavailable")

    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "-1")
    with pytest.raises(ConfigurationError, match="ENVELOPE_IN_DATABASE_BYTES"):
        do_send_message(world.a, A, [B], envelope)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-CITY-HOSPITAL")
@pytest.mark.requirement("REQ-E2E")
def test_an_organisational_mailbox_is_read_and_answered_by_its_members(world: World) -> None:
    alice, bob, dan = world.client(world.a), world.client(world.b), world.client(world.d)
    envelope = seal(letter(A, [WARD]), world.a_key, [world.ward_key.certificate])
    message_id = send(alice, A, [WARD], envelope).json()["id"]

    (listed,) = bob.get(f"/api/mailboxes/{WARD}/messages").json()["results"]
    assert listed["id"] == message_id and listed["mailbox"] == WARD
    data = bob.get(f"{MESSAGES}/{message_id}/envelope").content
    assert open_envelope(data, world.ward_key, world.trust).signer.emails == [A]
    # Dan works at the same clinic but is not a member of the ward: nothing to see.
    assert dan.get(f"/api/mailboxes/{WARD}/messages").status_code == 404
    assert dan.get(f"{MESSAGES}/{message_id}").status_code == 404

    # Bob answers for the ward: signed with his own key, sealed to Alice and to the ward.
    reply = seal(
        letter(WARD, [A], person=B, subject="Re: avis"),
        world.b_key,
        [world.a_key.certificate, world.ward_key.certificate],
    )
    answered = send(bob, WARD, [A], reply, in_reply_to=message_id)
    assert answered.status_code == 201, answered.content
    (received,) = alice.get(f"/api/mailboxes/{A}/messages").json()["results"]
    assert received["from"] == WARD and received["sender_person"] == B
    assert received["in_reply_to"] == message_id and received["thread"] == listed["thread"]
    opened = open_envelope(
        alice.get(f"{MESSAGES}/{received['id']}/envelope").content, world.a_key, world.trust
    )
    assert opened.signer.emails == [B]
    # The ward's Sent copy: every member sees its deliveries.
    sent = bob.get(f"/api/mailboxes/{WARD}/messages", {"folder": "sent"}).json()["results"]
    assert [m["id"] for m in sent] == [received["id"]]
    assert bob.get(f"{MESSAGES}/{received['id']}").json()["deliveries"][0]["recipient"] == A


@pytest.mark.django_db
@pytest.mark.requirement("REQ-CITY-HOSPITAL")
def test_a_substitute_reads_and_sends_for_a_colleague(world: World) -> None:
    Membership.objects.create(user=world.d, mailbox=world.mailbox_b, role="substitute")
    d_key = world.publish(Mailbox.objects.get(address=D), "carol")
    alice, dan = world.client(world.a), world.client(world.d)
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    assert [m["id"] for m in dan.get(f"/api/mailboxes/{B}/messages").json()["results"]] == [
        message_id
    ]
    parts = {m["address"]: m["part"] for m in dan.get("/api/mailboxes").json()}
    assert parts == {D: "owner", B: "substitute"}
    envelope = seal(
        letter(B, [A], person=D), d_key, [world.a_key.certificate, world.b_key.certificate]
    )
    assert send(dan, B, [A], envelope).status_code == 201
    # Without the membership, the same address is refused as if it did not exist.
    Membership.objects.filter(user=world.d).delete()
    refused = send(dan, B, [A], envelope)
    assert (refused.status_code, refused.json()["code"]) == (403, "not_allowed_sender")


@pytest.mark.django_db
@pytest.mark.requirement("REQ-FEW-RECIPIENTS")
def test_recipients_never_see_each_other(world: World) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    envelope = seal(
        letter(A, [B, WARD]), world.a_key, [world.b_key.certificate, world.ward_key.certificate]
    )
    message_id = send(alice, A, [B, WARD, B.upper()], envelope).json()["id"]
    detail = alice.get(f"{MESSAGES}/{message_id}").json()
    assert detail["recipients"] == [B, WARD]  # one delivery per mailbox, duplicates folded
    mine = bob.get(f"{MESSAGES}/{message_id}", {"mailbox": B}).json()
    assert mine["recipients"] == [B] and mine["deliveries"] is None
    ward = bob.get(f"{MESSAGES}/{message_id}", {"mailbox": WARD}).json()
    assert ward["recipients"] == [WARD]
    # Held by two of Bob's mailboxes: which copy he acts on must be said.
    ambiguous = bob.get(f"{MESSAGES}/{message_id}")
    assert ambiguous.status_code == 409
    assert ambiguous.json()["details"] == {"mailboxes": [WARD, B]}
    assert post_json(bob, f"{MESSAGES}/{message_id}/read?mailbox={WARD}").status_code == 200
    states = {
        d["recipient"]: d["state"]
        for d in alice.get(f"{MESSAGES}/{message_id}").json()["deliveries"]
    }
    assert states == {B: "delivered", WARD: "read"}


# --------------------------------------------------------------------------- personas


def _endpoints(message_id: str, address: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("get", "/api/mailboxes", None),
        ("get", f"/api/mailboxes/{address}/messages", None),
        ("get", f"{MESSAGES}/{message_id}", None),
        ("get", f"{MESSAGES}/{message_id}/envelope", None),
        ("post", f"{MESSAGES}/{message_id}/read", {}),
        ("post", f"{MESSAGES}/{message_id}/flag", {"flagged": True}),
        ("post", f"{MESSAGES}/{message_id}/move", {"folder": "archive"}),
        ("delete", f"{MESSAGES}/{message_id}", None),
        ("post", MESSAGES, {}),
    ]


def _call(client: Client, method: str, path: str, body: dict[str, Any] | None) -> Any:
    if method == "post":
        return post_json(client, path, body)
    return getattr(client, method)(path)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
def test_every_endpoint_the_owner_can_the_colleague_gets_404_the_outsider_401(
    world: World,
) -> None:
    alice, charlie, outsider = world.client(world.a), world.client(world.c), Client()
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    for method, path, body in _endpoints(message_id, A):
        assert _call(outsider, method, path, body).status_code == 401, (method, path)
        answer = _call(charlie, method, path, body)
        if path in ("/api/mailboxes", MESSAGES):
            continue  # the colleague's own list; a send with an empty body (below)
        assert answer.status_code == 404, (method, path, answer.status_code)
        assert answer.json()["code"] == "not_found"
    for method, path, body in _endpoints(message_id, A):
        if path == MESSAGES:
            continue
        assert _call(alice, method, path, body).status_code == 200, (method, path)
    assert _call(charlie, "post", MESSAGES, {}).json()["code"] == "bad_request"


# --------------------------------------------------------------------------- folders


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AFTER-SEND")
def test_move_flag_and_delete_act_on_the_callers_copy_only(
    world: World, django_capture_on_commit_callbacks: Any, envelope_storage: str
) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    base = f"{MESSAGES}/{message_id}"

    moved = post_json(bob, f"{base}/move", {"folder": "archive"})
    assert moved.status_code == 200 and moved.json()["folder"] == "archive"
    assert [
        m["id"]
        for m in bob.get(f"/api/mailboxes/{B}/messages", {"folder": "archive"}).json()["results"]
    ] == [message_id]
    assert bob.get(f"/api/mailboxes/{B}/messages").json()["results"] == []
    wrong = post_json(bob, f"{base}/move", {"folder": "sent"})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "bad_folder")
    assert post_json(bob, f"{base}/flag", {"flagged": True}).json()["flagged"] is True
    assert alice.get(base).json()["flagged"] is False  # marks belong to each mailbox
    assert post_json(bob, f"{base}/flag", {"flagged": "yes"}).json()["code"] == "bad_request"
    unknown = bob.get(f"/api/mailboxes/{B}/messages", {"folder": "spam"})
    assert (unknown.status_code, unknown.json()["code"]) == (422, "bad_request")

    assert bob.delete(base).json() == {"id": message_id, "deleted": False, "folder": "trash"}
    assert bob.delete(f"{base}?permanent=true").json()["deleted"] is True
    assert bob.get(base).status_code == 404
    # Alice's Sent copy and Bob's delivery state remain.
    assert alice.get(base).json()["deliveries"][0]["recipient"] == B
    (kept,) = envelopes_kept(world.blob_dir)
    assert kept.startswith("database:") == (envelope_storage == "database")
    assert alice.delete(base).json()["deleted"] is False
    with django_capture_on_commit_callbacks(execute=True):
        assert alice.delete(f"{base}?permanent=true").json()["deleted"] is True
    assert Message.objects.count() == 0 and Delivery.objects.count() == 0
    assert envelopes_kept(world.blob_dir) == []
    assert [e.detail for e in events("messages.deleted")] == [
        json.dumps({"mailbox": mailbox, "permanent": permanent}, separators=(",", ":"))
        for mailbox, permanent in (
            (world.mailbox_b.pk, 0),
            (world.mailbox_b.pk, 1),
            (world.mailbox_a.pk, 0),
            (world.mailbox_a.pk, 1),
        )
    ]
    assert kept  # it existed until the last copy went


@pytest.mark.django_db
def test_a_copy_restored_meanwhile_goes_to_the_trash_not_away_for_good(world: World) -> None:
    """In a shared mailbox, one member deletes from the trash a copy that another has
    just restored: what was read before is not what decides."""
    alice = world.client(world.a)
    message_id = send(
        alice, A, [WARD], seal(letter(A, [WARD]), world.a_key, [world.ward_key.certificate])
    ).json()["id"]
    copy = MessageCopy.objects.get(message__public_id=message_id, mailbox=world.ward)
    MessageCopy.objects.filter(pk=copy.pk).update(folder=Folder.TRASH)
    stale = MessageCopy.objects.select_related("message").get(pk=copy.pk)
    MessageCopy.objects.filter(pk=copy.pk).update(folder=Folder.INBOX)  # another member
    result = do_delete_message(world.b, stale, for_good=True)
    assert result.permanent is False
    assert MessageCopy.objects.get(pk=copy.pk).folder == Folder.TRASH
    MessageCopy.objects.filter(pk=copy.pk).delete()  # and deleted for good meanwhile
    with pytest.raises(MessagingError) as gone:
        do_delete_message(world.b, stale, for_good=True)
    assert gone.value.code == "not_found"


@pytest.mark.django_db
@pytest.mark.parametrize("number", ["0", "-1", "x", "\u00b2", "\u0663", "9" * 5000])
def test_a_page_number_that_is_not_plain_digits_is_refused(world: World, number: str) -> None:
    # Superscripts and other scripts' digits pass str.isdigit but not int(); 5000 digits
    # pass neither int() nor any page count: a refusal with its code, never a 500.
    listing = world.client(world.a).get(f"/api/mailboxes/{A}/messages", {"page": number})
    assert (listing.status_code, listing.json()["code"]) == (422, "bad_request")


@pytest.mark.django_db
def test_listings_are_paged(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messaging_api, "PAGE_SIZE", 2)
    alice, bob = world.client(world.a), world.client(world.b)
    ids = [send(alice, A, [B], a_to_b(world)).json()["id"] for _ in range(3)]
    first = bob.get(f"/api/mailboxes/{B}/messages", {"page": "1"}).json()
    second = bob.get(f"/api/mailboxes/{B}/messages", {"page": "2"}).json()
    assert [m["id"] for m in first["results"] + second["results"]] == ids[::-1]
    assert (first["has_next"], second["has_next"]) == (True, False)
    assert bob.get(f"/api/mailboxes/{B}/messages", {"page": "0"}).status_code == 422


@pytest.mark.django_db
@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_read_receipt_is_stored_as_a_message_to_the_sender(world: World) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    mdn = seal(
        letter(B, [A], subject="Lu : avis", body="Votre message a été lu.\n"),
        world.b_key,
        [world.a_key.certificate],
    )
    answer = post_json(bob, f"{MESSAGES}/{message_id}/read", {"receipt": encoded(mdn)})
    receipt_id = answer.json()["receipt"]
    assert MESSAGE_ID.fullmatch(receipt_id)
    (received,) = alice.get(f"/api/mailboxes/{A}/messages").json()["results"]
    assert (received["id"], received["from"], received["in_reply_to"]) == (
        receipt_id,
        B,
        message_id,
    )
    # A receipt is a message like any other: sealed for the sender, or refused.
    other = send(alice, A, [B], a_to_b(world)).json()["id"]
    unsealed = seal(letter(B, [A]), world.b_key, [world.ward_key.certificate])
    refused = post_json(bob, f"{MESSAGES}/{other}/read", {"receipt": encoded(unsealed)})
    assert refused.json()["code"] == "not_encrypted_to_recipient"
    assert bob.get(f"{MESSAGES}/{other}").json()["read"] is False  # nothing changed
    garbled = post_json(bob, f"{MESSAGES}/{other}/read", {"receipt": "%%%"})
    assert (garbled.status_code, garbled.json()["code"]) == (422, "envelope_malformed")
    assert bob.get(f"{MESSAGES}/{other}").json()["read"] is False
    # Each refused receipt is traced as a refused send, as POST /api/messages would be.
    assert [e.detail for e in events("messages.sent") if e.outcome == "failure"] == [
        '{"code":"not_encrypted_to_recipient"}',
        '{"code":"envelope_malformed"}',
    ]


@pytest.mark.django_db
def test_a_receipt_after_the_first_read_is_ignored_whatever_it_holds(world: World) -> None:
    # Documented: a receipt goes with the first read only. Garbled base64 and an
    # envelope that could not be stored are ignored alike, on the reader's copy once
    # read and on the sender's own copy; nothing is stored or traced as a send.
    alice, bob = world.client(world.a), world.client(world.b)
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    first = post_json(bob, f"{MESSAGES}/{message_id}/read", {})
    assert (first.status_code, first.json()["receipt"]) == (200, None)
    unsealed = encoded(seal(letter(B, [A]), world.b_key, [world.ward_key.certificate]))
    stored = Message.objects.count()
    answers = [
        post_json(bob, f"{MESSAGES}/{message_id}/read", {"receipt": "%%%"}),
        post_json(bob, f"{MESSAGES}/{message_id}/read", {"receipt": unsealed}),
        post_json(alice, f"{MESSAGES}/{message_id}/read", {"receipt": "%%%"}),
        post_json(alice, f"{MESSAGES}/{message_id}/read", {"receipt": unsealed}),
    ]
    assert [(a.status_code, a.json()["receipt"]) for a in answers] == [(200, None)] * 4
    assert Message.objects.count() == stored
    assert [e for e in events("messages.sent") if e.outcome == "failure"] == []
    # A body that is not the documented shape is still refused, read or not.
    wrong = post_json(bob, f"{MESSAGES}/{message_id}/read", {"receipt": 1})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "bad_request")


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_a_read_that_fails_after_its_receipt_leaves_neither_behind(
    world: World, monkeypatch: pytest.MonkeyPatch, blob_dir: Path
) -> None:
    # Every envelope to the blob store, but a receipt is stored inside the read's own
    # transaction: it stays in the database, where it rolls back with the rest.
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "0")
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    copy = MessageCopy.objects.get(message__public_id=message_id, mailbox__address=B)
    mdn = seal(letter(B, [A], subject="Lu : avis"), world.b_key, [world.a_key.certificate])
    before = stored_state(blob_dir)
    original = do_record_event

    def failing(action: str, **fields: Any) -> Any:
        if action == "messages.read":
            raise RuntimeError("the database went away")
        return original(action, **fields)

    monkeypatch.setattr(messaging_actions, "do_record_event", failing)
    with pytest.raises(RuntimeError, match="went away"):
        messaging_actions.do_mark_read(world.b, copy, receipt=mdn)
    assert stored_state(blob_dir) == before  # no receipt row, no file
    monkeypatch.setattr(messaging_actions, "do_record_event", original)
    receipt = messaging_actions.do_mark_read(world.b, copy, receipt=mdn).receipt
    assert receipt is not None and receipt.envelope_blob == ""  # in the database
    assert len(blob_files(blob_dir)) == 1  # the letter's own file only


# --------------------------------------------------------------------------- refusals


def _refusal_cases() -> dict[str, Callable[[World], tuple[User, dict[str, Any]]]]:
    def body(world: World, envelope: bytes | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "from": A,
            "recipients": [B],
            "envelope": encoded(envelope if envelope is not None else a_to_b(world)),
            **extra,
        }

    return {
        "envelope_malformed:garbage": lambda w: (w.a, body(w, b"not a CMS envelope")),
        "envelope_malformed:truncated": lambda w: (w.a, body(w, a_to_b(w)[:-40])),
        "envelope_malformed:base64": lambda w: (w.a, {**body(w), "envelope": "%%%"}),
        "envelope_malformed:data": lambda w: (
            w.a,
            body(w, bytes.fromhex("300f06092a864886f70d010701a0020400")),
        ),
        "not_allowed_sender:other": lambda w: (w.c, body(w)),
        "not_allowed_sender:missing": lambda w: (
            w.a,
            {**body(w), "from": "nobody@hopital-a.pli.test"},
        ),
        "recipient_not_in_directory": lambda w: (
            w.a,
            {
                **body(w),
                "recipients": [B, "inconnu@ailleurs.pli.test", "pas une adresse", CLOSED],
            },
        ),
        # None is an address at all: no directory lookup can match (PostgreSQL: no "IN ()").
        "recipient_not_in_directory:only_malformed": lambda w: (
            w.a,
            {**body(w), "recipients": ["pas une adresse"]},
        ),
        "too_many_recipients": lambda w: (w.a, {**body(w), "recipients": [B, WARD, D]}),
        "envelope_too_large": lambda w: (w.a, body(w, a_to_b(w, body="x" * 4000))),
        "not_encrypted_to_recipient:recipient": lambda w: (
            w.a,
            {**body(w), "recipients": [B, WARD]},
        ),
        "not_encrypted_to_recipient:sender": lambda w: (
            w.b,
            body(
                w,
                seal(letter(WARD, [A], person=B), w.b_key, [w.a_key.certificate]),
                **{"from": WARD, "recipients": [A]},
            ),
        ),
        "recipient_without_certificate": lambda w: (w.a, {**body(w), "recipients": [B, D]}),
        "bad_patient_id": lambda w: (w.a, body(w, patient_id="123456789012345")),
        "patient_opposed": lambda w: (w.a, body(w, patient_id=valid_nir())),
        "in_reply_to_not_found": lambda w: (w.a, body(w, in_reply_to="msg_" + "1" * 32)),
        "recipient_is_sender": lambda w: (w.a, {**body(w), "recipients": [B, A]}),
        "blob_not_found": lambda w: (w.a, body(w, blobs=["0" * 64])),
        "bad_request:unknown_field": lambda w: (w.a, body(w, subject="jamais côté serveur")),
        "bad_request:types": lambda w: (w.a, {**body(w), "recipients": B}),
        "no_recipient": lambda w: (w.a, {**body(w), "recipients": ["  "]}),
    }


_STATUS = {
    "not_allowed_sender": 403,
    "patient_opposed": 403,
    "envelope_too_large": 413,
}


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-FEW-RECIPIENTS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.requirement("REQ-OPPOSITION"))
        if case.startswith("patient_opposed")
        else case
        for case in sorted(_refusal_cases())
    ],
)
def test_a_refused_send_has_a_stable_code_and_stores_nothing(
    world: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = case.split(":", maxsplit=1)[0]
    if code == "too_many_recipients":
        monkeypatch.setenv("PLI_MAX_RECIPIENTS", "2")
    if code == "envelope_too_large":
        monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", "4096")
    if code == "patient_opposed":
        officer, _ = make_account("dpo@operator.pli.test", role=Role.DPO)
        do_record_opposition(officer, valid_nir(), None)
    if code == "recipient_not_in_directory":
        Mailbox.objects.create(address=CLOSED, kind="PER", active=False)
    user, body = _refusal_cases()[case](world)
    before = stored_state(world.blob_dir)
    failures = AuditEvent.objects.filter(action="messages.sent", outcome="failure").count()

    response = post_json(world.client(user), MESSAGES, body)

    assert response.status_code == _STATUS.get(code, 422), response.content
    answer = response.json()
    assert answer["code"] == code
    assert set(answer) == {"code", "message", "details"} and answer["message"]
    assert stored_state(world.blob_dir) == before
    assert not events("messages.delivered")
    if case == "recipient_not_in_directory:only_malformed":
        assert answer["details"]["addresses"] == ["pas une adresse"]
    elif code == "recipient_not_in_directory":
        assert answer["details"]["addresses"] == [
            "inconnu@ailleurs.pli.test",
            "pas une adresse",
            CLOSED,
        ]
    if code.startswith("not_encrypted"):
        assert answer["details"]["addresses"] == [WARD]
    if code == "recipient_without_certificate":
        assert answer["details"]["addresses"] == [D]
    if code != "bad_request":
        refused = AuditEvent.objects.filter(action="messages.sent", outcome="failure")
        assert refused.count() == failures + 1
        last = refused.order_by("seq").last()
        assert last is not None and json.loads(last.detail) == {"code": code}


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_an_oversized_body_is_refused_before_it_is_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", "1024")
    envelope = b"\x30" * 200_000
    response = send(world.client(world.a), A, [B], envelope)
    assert (response.status_code, response.json()["code"]) == (413, "envelope_too_large")
    assert stored_state(world.blob_dir) == (0, 0, 0, [])


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_a_transaction_that_fails_leaves_no_blob_behind(
    world: World, monkeypatch: pytest.MonkeyPatch, envelope_storage: str
) -> None:
    original = do_record_events

    def failing(events: Any) -> Any:
        # EventFields: (actor_id, username, role, action, …): the send's second event fails.
        if any(fields[3] == "messages.delivered" for fields in events):
            raise RuntimeError("the database went away")
        return original(events)

    monkeypatch.setattr(messaging_actions, "do_record_events", failing)  # the action's own name
    with pytest.raises(RuntimeError, match="went away"):
        do_send_message(world.a, A, [B], a_to_b(world))
    assert stored_state(world.blob_dir) == (0, 0, 0, [])
    assert not events("messages.sent")


@pytest.mark.django_db
def test_a_send_without_the_api_checks_the_same(world: World) -> None:
    with pytest.raises(MessagingError) as refused:
        do_send_message(world.c, A, [B], a_to_b(world))
    assert refused.value.code == "not_allowed_sender"
    with transaction.atomic():
        message = do_send_message(world.a, A, [B], a_to_b(world), patient_id=valid_nir())
    assert len(message.patient_key) == 64 and valid_nir() not in message.patient_key


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-CITY-HOSPITAL")
def test_the_sender_the_recipients_and_their_certificates_are_read_in_one_query(
    world: World,
) -> None:
    """The routing of a send (who may send from where, who receives, who can open) is one
    directory query (benchmarks/README.md, "Messaging"): the checks it feeds still hold."""
    envelope = seal(
        letter(B, [A, WARD]),
        world.b_key,
        [world.a_key.certificate, world.ward_key.certificate],
    )
    with CaptureQueriesContext(connection) as queries:
        message = do_send_message(world.b, B, [A, WARD], envelope)
    directory_reads = [
        q["sql"] for q in queries if "directory_mailbox" in q["sql"] and "INSERT" not in q["sql"]
    ]
    assert len(directory_reads) == 1, directory_reads
    assert [d.recipient_address for d in message.deliveries.all()] == [A, WARD]
    # Bob reaches the ward as a member and names it as a recipient: both halves of the
    # query return it, and its certificate is required once, like any other.
    assert MessageCopy.objects.filter(message=message, mailbox=world.ward).count() == 1
    without_ward = seal(letter(B, [A, WARD]), world.b_key, [world.a_key.certificate])
    with pytest.raises(MessagingError) as refused:
        do_send_message(world.b, B, [A, WARD], without_ward)
    assert refused.value.code == "not_encrypted_to_recipient"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-OPPOSITION")
def test_a_send_asks_the_opposition_register_in_its_directory_query(world: World) -> None:
    """A send declaring its patient still reads the directory and the register in one
    query; the register's answer is the one of that moment, recorded or lifted."""
    officer, _ = make_account("dpo@operator.pli.test", role=Role.DPO)
    other = valid_nir("2850578006084")

    def routing_reads(patient_id: str) -> tuple[list[str], str]:
        with CaptureQueriesContext(connection) as queries:
            try:
                do_send_message(world.a, A, [B], a_to_b(world), patient_id=patient_id)
                outcome = "sent"
            except MessagingError as refused:
                outcome = refused.code
        reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
        return [sql for sql in reads if "opposition" in sql or "directory_mailbox" in sql], outcome

    reads, outcome = routing_reads(valid_nir())
    assert (len(reads), outcome) == (1, "sent")
    assert "opposition" in reads[0] and "directory_mailbox" in reads[0]
    do_record_opposition(officer, valid_nir(), None)
    assert routing_reads(valid_nir())[1] == "patient_opposed"
    assert routing_reads(f" {valid_nir()} ")[1] == "patient_opposed"  # as declared, trimmed
    assert routing_reads(other)[1] == "sent"  # another patient is not concerned
    do_lift_opposition(officer, valid_nir(), None)
    reads, outcome = routing_reads(valid_nir())
    assert (len(reads), outcome) == (1, "sent")
    # An identifier that is not one is refused in its place, after the directory's checks.
    assert routing_reads("1850578006084" + "00")[1] == "bad_patient_id"
    assert Message.objects.filter(patient_key="").count() == 0
    assert Message.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize("recipients", [[], ["  "], [B, WARD, D]])
def test_a_sender_the_person_may_not_use_is_named_before_the_recipients_count(
    world: World, recipients: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAX_RECIPIENTS", "2")
    with pytest.raises(MessagingError) as refused:
        do_send_message(world.c, A, recipients, a_to_b(world))
    assert refused.value.code == "not_allowed_sender"
    with pytest.raises(MessagingError) as refused:
        do_send_message(world.a, A, recipients, a_to_b(world))
    assert refused.value.code == ("too_many_recipients" if recipients[2:] else "no_recipient")


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.django_db
@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_deleting_a_mailboxs_content_keeps_what_others_still_hold(
    world: World, django_capture_on_commit_callbacks: Any, envelope_storage: str
) -> None:
    alice = world.client(world.a)
    to_b = send(alice, A, [B], a_to_b(world)).json()["id"]
    to_both = send(
        alice,
        A,
        [B, WARD],
        seal(
            letter(A, [B, WARD]), world.a_key, [world.b_key.certificate, world.ward_key.certificate]
        ),
    ).json()["id"]
    assert len(envelopes_kept(world.blob_dir)) == 2
    assert len(blob_files(world.blob_dir)) == (2 if envelope_storage == "blob_store" else 0)

    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.delete_mailbox_content(world.mailbox_b) == 2
    assert not MessageCopy.objects.filter(mailbox=world.mailbox_b).exists()
    assert not Delivery.objects.filter(recipient_address=B).exists()
    # Alice's Sent copies and the ward's copy stay, with their envelopes.
    assert len(envelopes_kept(world.blob_dir)) == 2
    assert alice.get(f"{MESSAGES}/{to_b}").json()["deliveries"] == []
    assert [d["recipient"] for d in alice.get(f"{MESSAGES}/{to_both}").json()["deliveries"]] == [
        WARD
    ]

    with django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.delete_mailbox_content(world.mailbox_a) == 2
    # The first message is held by nobody now: gone with its blob; the ward keeps the other.
    assert list(Message.objects.values_list("public_id", flat=True)) == [to_both]
    assert envelopes_kept(world.blob_dir) == [envelope_place(m) for m in Message.objects.all()]


@pytest.mark.django_db
def test_an_inactive_personal_mailbox_stays_readable_but_cannot_send(world: World) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    message_id = send(alice, A, [B], a_to_b(world)).json()["id"]
    Mailbox.objects.filter(pk=world.mailbox_b.pk).update(active=False)
    assert bob.get(f"{MESSAGES}/{message_id}").status_code == 200
    reply = seal(letter(B, [A]), world.b_key, [world.a_key.certificate])
    assert send(bob, B, [A], reply).json()["code"] == "not_allowed_sender"
    assert send(alice, A, [B], a_to_b(world)).json()["code"] == "recipient_not_in_directory"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-ADMIN-LIMITS")
def test_the_admin_console_shows_routing_metadata_only(world: World) -> None:
    message_id = send(
        world.client(world.a), A, [B], a_to_b(world, subject="Avis secret"), patient_id=valid_nir()
    ).json()["id"]
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    console = signed_in(admin)
    listing = console.get("/admin/messaging/message/")
    assert listing.status_code == 200 and message_id in listing.content.decode()
    message = Message.objects.get(public_id=message_id)
    page = console.get(f"/admin/messaging/message/{message.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert B in text  # the delivery, read-only
    for hidden in filter(
        None, (message.envelope_blob, message.envelope_sha256, message.patient_key)
    ):
        assert hidden not in text
    assert console.get("/admin/messaging/message/add/").status_code == 403
    assert console.get(f"/admin/messaging/message/{message.pk}/delete/").status_code == 403
