"""The SDK's batch send (``Client.send_batch``), against a real server over HTTP.

As in ``tests/test_client_sdk.py``: pytest-django's ``live_server`` serves Pli,
the personas keep their keys in PKCS#12 files certified by the operator CA, and
every letter is really sealed by the sender's SDK and really opened and verified
by each recipient's (REQ-LPS, REQ-E2E). The batch goes in one
``POST /api/messages/batch``, stored whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pli.client import (
    ApiError,
    Client,
    ClientError,
    OutgoingLetter,
    PolicyRefused,
    RefusedMessage,
)
from pli.mime import Attachment
from pli.server.messaging.models import Message, MessageEnvelope
from pli.server.messaging.uploads import Upload, inline_attachment_bytes
from tests.accounts_support import PASSPHRASE
from tests.test_client_sdk import (
    IDENTITY_PASSPHRASE,
    NIR,
    UNKNOWN,
    A,
    B,
    Persona,
    Server,
    actions,
    alice,
    bob,
    ca_directory,
    server,
)
from tests.test_messaging_uploads import C, carol, scan

# Fixtures, shared with the SDK tests (carol: a third workstation persona, at C).
__all__ = ["alice", "bob", "ca_directory", "carol", "server"]

pytestmark = pytest.mark.django_db(transaction=True)

#: Nothing listens there: a client pointed at it fails on its first request.
NOWHERE = "http://127.0.0.1:9"


def offline(server: Server, persona: Persona) -> Client:
    """A client whose every request would fail with ``server_unreachable``.

    An error other than that one proves the client raised it before asking the
    server anything.
    """
    return Client(
        NOWHERE,
        identity=persona.identity,
        passphrase=IDENTITY_PASSPHRASE,
        trust=[server.trust],
        crl=[server.crl],
        session_file=server.tmp / "offline-session.json",
    )


def nothing_stored(server: Server) -> bool:
    uploads_left = list(server.tmp.glob("pli-upload-*"))
    return not Message.objects.exists() and not Upload.objects.exists() and not uploads_left


# --------------------------------------------------------------------------- a batch arrives


@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_batch_arrives_sealed_and_each_recipient_opens_and_verifies_its_letters(
    server: Server, alice: Persona, bob: Persona, carol: Persona
) -> None:
    laboratory = server.logged_in(alice)
    report = b"%PDF-1.4 compte rendu de biologie\n"
    letters = [
        OutgoingLetter(
            A,
            [B],
            "Résultats, dossier 2026-001",
            "Cher confrère, voici les résultats.\n",
            attachments=[Attachment("resultats.pdf", "application/pdf", report)],
        ),
        # A repeat folded: a warning for this letter only, not a refusal.
        OutgoingLetter(A, [B, C, B], "Réunion de concertation", "Mardi, 14 h.\n"),
        OutgoingLetter(A, [C], "Résultats, dossier 2026-003", "Normaux.\n", patient_id=NIR),
    ]
    sent = laboratory.send_batch(letters)

    assert [[(d.recipient, d.state) for d in r.deliveries] for r in sent] == [
        [(B, "delivered")],
        [(B, "delivered"), (C, "delivered")],
        [(C, "delivered")],
    ]
    assert [[w.code.value for w in r.warnings] for r in sent] == [[], ["duplicate_recipients"], []]
    assert len({r.id for r in sent}) == 3 and all(r.id.startswith("msg_") for r in sent)
    # One message each, in the batch's order (the server numbers them as it stores them).
    stored = list(Message.objects.order_by("pk").values_list("public_id", flat=True))
    assert stored == [r.id for r in sent]

    # The server holds routing metadata and ciphertext only.
    in_database = b"".join(map(bytes, MessageEnvelope.objects.values_list("data", flat=True)))
    files = [p.read_bytes() for p in (server.tmp / "blobs").rglob("*") if p.is_file()]
    kept = b"".join([in_database, *files])
    assert kept and b"compte rendu" not in kept and "Réunion".encode() not in kept
    assert NIR.encode() not in kept

    # Each recipient opens its letters on its own workstation: signed by A, genuine.
    readers = {}
    for persona, expected in ((bob, [0, 1]), (carol, [1, 2])):
        reader = readers[persona.address] = server.logged_in(persona)
        assert sorted(m.id for m in reader.inbox().results) == sorted(sent[i].id for i in expected)
        for index in expected:
            opened = reader.read(sent[index].id)
            assert opened.subject == letters[index].subject
            assert opened.body == letters[index].body
            assert opened.message_id == sent[index].message_id
            assert opened.signature.status == "valid"
            assert opened.signature.signer_emails == [A]
            assert opened.signature.revocation_checked
            assert opened.summary.from_ == A
            if index == 0:
                assert [(a.filename, a.data) for a in opened.attachments] == [
                    ("resultats.pdf", report)
                ]
            else:
                assert opened.attachments == [] and opened.external_parts == []
            assert opened.patient_id == (f"nir:{NIR}" if index == 2 else None)
    # Two recipients do not see each other (REQ-FEW-RECIPIENTS), as with send.
    assert readers[C].read(sent[1].id, mark_read=False).to == [A]


# --------------------------------------------------------------------------- refusals


@pytest.mark.requirement("REQ-SUBJECT")
@pytest.mark.requirement("REQ-LPS")
def test_a_patient_id_in_one_subject_refuses_the_batch_before_any_request(
    server: Server, alice: Persona, bob: Persona
) -> None:
    letters = [
        OutgoingLetter(A, [B], "Résultats, dossier 2026-001", "Texte.\n"),
        OutgoingLetter(A, [B], f"Résultats de {NIR}", "Texte.\n", patient_id=NIR),
        OutgoingLetter(A, [B], "Résultats, dossier 2026-003", "Texte.\n"),
    ]
    # Offline, any request would fail as server_unreachable: the refusal comes first.
    with pytest.raises(PolicyRefused) as before:
        offline(server, alice).send_batch(letters)
    assert (before.value.code, before.value.index) == ("subject_contains_patient_id", 1)
    assert before.value.codes == ["subject_contains_patient_id"]

    laboratory = server.logged_in(alice)
    with pytest.raises(PolicyRefused) as refused:
        laboratory.send_batch(letters)
    assert (refused.value.code, refused.value.index) == ("subject_contains_patient_id", 1)
    # Nothing reached the server: no message, not even a refused attempt in the trail.
    assert not Message.objects.exists() and actions("messages.sent") == []
    # A single send's refusal names no message of a batch.
    with pytest.raises(PolicyRefused) as single:
        laboratory.send(A, [B], f"Résultats de {NIR}", "Texte.\n")
    assert single.value.index is None


@pytest.mark.requirement("REQ-LPS")
def test_an_unknown_recipient_in_one_letter_refuses_the_whole_batch(
    server: Server, alice: Persona, bob: Persona
) -> None:
    laboratory = server.logged_in(alice)
    with pytest.raises(ApiError) as refused:
        laboratory.send_batch(
            [
                OutgoingLetter(A, [B], "Résultats, dossier 2026-001", "Texte.\n"),
                OutgoingLetter(A, [UNKNOWN], "Résultats, dossier 2026-002", "Texte.\n"),
                OutgoingLetter(A, [B], "Résultats, dossier 2026-003", "Texte.\n"),
            ]
        )
    error = refused.value
    assert (error.code, error.status, error.index) == ("batch_refused", 422, None)
    assert [(r.index, r.code, r.details) for r in error.refused] == [
        (1, "recipient_not_in_directory", {"addresses": [UNKNOWN]})
    ]
    assert error.refused[0].message  # translated, for people
    assert error.details["refused"][0]["index"] == 1  # the raw details stay reachable
    # All or nothing: the two valid letters were not stored either.
    assert not Message.objects.exists()
    [event] = actions("messages.sent")
    assert event.outcome == "failure"
    assert json.loads(event.detail) == {"code": "recipient_not_in_directory"}


def test_refused_messages_are_read_from_a_batch_refusal_only() -> None:
    details = {
        "refused": [
            {"index": 0, "code": "patient_opposed", "message": "Refus\n", "details": {}},
            {"index": 3, "code": "recipient_not_in_directory", "message": "Inconnu"},
        ]
    }
    assert ApiError("batch_refused", "Refusé", 422, details).refused == [
        RefusedMessage(0, "patient_opposed", "Refus", {}),
        RefusedMessage(3, "recipient_not_in_directory", "Inconnu", {}),
    ]
    assert ApiError("patient_opposed", "Refusé", 422, details).refused == []
    assert ApiError("batch_refused", "Refusé", 422, {"refused": "?"}).refused == []


@pytest.mark.requirement("REQ-LPS")
def test_an_empty_batch_is_refused_without_asking_the_server(
    server: Server, alice: Persona
) -> None:
    with pytest.raises(ClientError) as empty:
        offline(server, alice).send_batch([])
    assert not isinstance(empty.value, ApiError)
    assert (empty.value.code, empty.value.index) == ("no_message", None)


@pytest.mark.requirement("REQ-LPS")
def test_an_attachment_that_would_be_streamed_refuses_the_batch_and_nothing_is_uploaded(
    server: Server,
    alice: Persona,
    bob: Persona,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(900 * 1024))
    budget = inline_attachment_bytes(900 * 1024)
    large = tmp_path / "imagerie.pdf"
    large.write_bytes(scan(budget + 20_000))
    laboratory = server.client(alice, "laboratory", work_dir=server.tmp)
    laboratory.login(A, PASSPHRASE, alice.code())
    letters = [
        OutgoingLetter(A, [B], "Résultats, dossier 2026-001", "Texte.\n"),
        OutgoingLetter(A, [B], "Imagerie, dossier 2026-002", "Texte.\n", attachments=[large]),
    ]
    with pytest.raises(ClientError) as refused:
        laboratory.send_batch(letters)
    assert not isinstance(refused.value, ApiError)
    assert (refused.value.code, refused.value.index) == ("batch_attachment_too_large", 1)
    assert "imagerie.pdf" in refused.value.detail
    assert nothing_stored(server) and actions("messages.sent") == []
    # Alone, the same letter goes, its attachment streamed (what a batch cannot do).
    alone = letters[1]
    sent = laboratory.send(alone.from_, alone.to, alone.subject, alone.body, attachments=[large])
    assert Message.objects.get().public_id == sent.id


@pytest.mark.requirement("REQ-LPS")
def test_envelopes_over_the_server_limit_together_refuse_the_batch_where_it_overflows(
    server: Server, alice: Persona, bob: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(900 * 1024))
    near = inline_attachment_bytes(900 * 1024) - 20_000
    letters = [
        OutgoingLetter(
            A,
            [B],
            f"Résultats, dossier 2026-00{i}",
            "Texte.\n",
            attachments=[Attachment(f"r{i}.pdf", "application/pdf", scan(near))],
        )
        for i in range(2)
    ]
    laboratory = server.logged_in(alice)
    with pytest.raises(ClientError) as refused:
        laboratory.send_batch(letters)
    assert (refused.value.code, refused.value.index) == ("batch_too_large", 1)
    assert nothing_stored(server) and actions("messages.sent") == []
    # Each fits alone: split there, both go.
    assert len(laboratory.send_batch(letters[:1]) + laboratory.send_batch(letters[1:])) == 2
