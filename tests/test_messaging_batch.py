"""Messaging: a batch of sealed messages in one request, stored all or none.

``POST /api/messages/batch`` (docs/api/messaging.md, "Sending a batch") is for
practice software with many messages at once (REQ-LPS). Every message is
checked exactly as a single send is, with real envelopes sealed to the test
PKI's certificates; one refused message refuses the batch and stores nothing.
Personas as in ``tests/test_messaging_api.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from pytest_django.fixtures import Settings

from pli.crypto import open_envelope, seal
from pli.mime import parse_inner_message
from pli.server.accounts.models import Role
from pli.server.audit.models import AuditEvent
from pli.server.compliance.actions import do_record_opposition
from pli.server.directory.actions import BadAddress, normalise_address
from pli.server.directory.actions import _normalised_address as normalised_address_cache
from pli.server.messaging import actions as messaging_actions
from pli.server.messaging.access import MessagingError
from pli.server.messaging.actions import BatchRefused, OutgoingMessage, do_send_messages
from pli.server.messaging.models import Message, MessageCopy
from tests.accounts_support import make_account
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGE_ID,
    WARD,
    A,
    B,
    D,
    World,
    a_to_b,
    encoded,
    events,
    letter,
    make_world,
    stored_state,
    valid_nir,
)

BATCH = "/api/messages/batch"


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def item(envelope: bytes, recipients: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"from": A, "recipients": recipients or [B], "envelope": encoded(envelope), **extra}


def post_batch(client: Client, messages: list[dict[str, Any]], language: str = "fr") -> Any:
    return client.post(
        BATCH,
        data=json.dumps({"messages": messages}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE=language,
    )


def a_to_b_and_ward(world: World, subject: str) -> bytes:
    return seal(
        letter(A, [B, WARD], subject=subject),
        world.a_key,
        [world.b_key.certificate, world.ward_key.certificate],
    )


@pytest.mark.django_db
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-FEW-RECIPIENTS")
def test_a_batch_stores_each_message_as_a_single_send_would(
    world: World, envelope_storage: str
) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    envelopes = [
        a_to_b(world, subject="Résultat 1"),
        a_to_b_and_ward(world, "Résultat 2"),
        a_to_b(world, subject="Résultat 3", patient=valid_nir()),
    ]
    response = post_batch(
        alice,
        [
            item(envelopes[0]),
            item(envelopes[1], [B, WARD]),
            item(envelopes[2], patient_id=valid_nir()),
        ],
    )

    assert response.status_code == 201, response.content
    sent = response.json()["messages"]
    assert len(sent) == 3 and all(MESSAGE_ID.fullmatch(m["id"]) for m in sent)
    assert len({m["id"] for m in sent}) == 3 and len({m["thread"] for m in sent}) == 3
    assert [[(d["recipient"], d["state"]) for d in m["deliveries"]] for m in sent] == [
        [(B, "delivered")],
        [(B, "delivered"), (WARD, "delivered")],
        [(B, "delivered")],
    ]
    # Each is a message of its own: B opens every one; the ward sees the second only,
    # and never the other recipient (REQ-FEW-RECIPIENTS).
    for message, envelope, subject in zip(
        sent, envelopes, ["Résultat 1", "Résultat 2", "Résultat 3"], strict=True
    ):
        download = bob.get(f"/api/messages/{message['id']}/envelope", {"mailbox": B})
        assert download.status_code == 200 and download.content == envelope
        opened = open_envelope(download.content, world.b_key, world.trust)
        assert opened.signer.emails == [A]
        assert parse_inner_message(opened.mime).subject == subject
    ward_inbox = bob.get(f"/api/mailboxes/{WARD}/messages").json()["results"]
    assert [(m["id"], m["recipients"]) for m in ward_inbox] == [(sent[1]["id"], [WARD])]
    assert Message.objects.filter(public_id=sent[2]["id"]).get().patient_key
    assert MessageCopy.objects.filter(mailbox=world.mailbox_a, folder="sent").count() == 3
    # Audited as three sends, with codes and counts only (REQ-TRACE).
    targets = [f"message:{m['id']}" for m in sent]
    assert [e.target for e in events("messages.sent")] == targets
    assert [e.target for e in events("messages.delivered")] == targets
    for event in AuditEvent.objects.filter(action__startswith="messages."):
        assert "@" not in event.detail and "Résultat" not in event.detail


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-OPPOSITION")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.parametrize("language", ["fr", "en"])
def test_one_refused_message_refuses_the_batch_and_names_each_refusal(
    world: World, envelope_storage: str, language: str
) -> None:
    officer, _ = make_account("dpo@operator.pli.test", role=Role.DPO)
    do_record_opposition(officer, valid_nir(), None)
    before = stored_state(world.blob_dir)
    failures = AuditEvent.objects.filter(action="messages.sent", outcome="failure").count()

    response = post_batch(
        world.client(world.a),
        [
            item(a_to_b(world)),
            item(a_to_b(world), [B, "inconnu@ailleurs.pli.test"]),
            item(a_to_b(world), patient_id=valid_nir()),
            item(a_to_b(world), [B, WARD]),  # not sealed for the ward
            item(a_to_b(world)[:-40]),
            item(a_to_b(world), patient_id="123456789012345"),
        ],
        language,
    )

    assert response.status_code == 422, response.content
    answer = response.json()
    assert answer["code"] == "batch_refused"
    refused = answer["details"]["refused"]
    assert [(r["index"], r["code"]) for r in refused] == [
        (1, "recipient_not_in_directory"),
        (2, "patient_opposed"),
        (3, "not_encrypted_to_recipient"),
        (4, "envelope_malformed"),
        (5, "bad_patient_id"),
    ]
    assert refused[0]["details"]["addresses"] == ["inconnu@ailleurs.pli.test"]
    assert refused[2]["details"]["addresses"] == [WARD]
    french = {"fr": "refusés", "en": "refused"}[language]
    assert french in answer["message"] and "5" in answer["message"]
    opposed = {"fr": "courrier postal", "en": "(post)"}[language]
    assert opposed in refused[1]["message"]  # REQ-OPPOSITION: what to do instead
    # Nothing stored, not even the first (valid) message; each refusal audited.
    assert stored_state(world.blob_dir) == before
    assert not events("messages.delivered")
    codes = [
        json.loads(e.detail)["code"]
        for e in AuditEvent.objects.filter(action="messages.sent", outcome="failure").order_by(
            "seq"
        )[failures:]
    ]
    assert codes == [r["code"] for r in refused]


@pytest.mark.django_db
@pytest.mark.requirement("REQ-CITY-HOSPITAL")
def test_a_batch_sends_from_the_mailboxes_the_person_reaches_only(world: World) -> None:
    ward_letter = seal(
        letter(WARD, [A], person=B),
        world.b_key,
        [world.a_key.certificate, world.ward_key.certificate],
    )
    own_letter = seal(
        letter(B, [A]), world.b_key, [world.a_key.certificate, world.b_key.certificate]
    )
    bob = world.client(world.b)
    response = post_batch(
        bob,
        [
            {"from": WARD, "recipients": [A], "envelope": encoded(ward_letter)},
            {"from": B, "recipients": [A], "envelope": encoded(own_letter)},
        ],
    )
    assert response.status_code == 201, response.content
    first, second = (Message.objects.get(public_id=m["id"]) for m in response.json()["messages"])
    assert (first.sender_address, first.sender_person) == (WARD, B)
    assert (second.sender_address, second.sender_person) == (B, B)

    # D, B's colleague but not a member of the ward, and C, elsewhere: the same refusal
    # for a mailbox that is not theirs and for one that does not exist.
    before = stored_state(world.blob_dir)
    for user in (world.d, world.c):
        answer = post_batch(
            world.client(user),
            [
                {"from": WARD, "recipients": [A], "envelope": encoded(ward_letter)},
                {"from": "nobody@clinique-b.pli.test", "recipients": [A], "envelope": "MA=="},
            ],
        ).json()
        assert [(r["index"], r["code"]) for r in answer["details"]["refused"]] == [
            (0, "not_allowed_sender"),
            (1, "not_allowed_sender"),
        ]
        first_refusal, second_refusal = answer["details"]["refused"]
        assert first_refusal["message"] == second_refusal["message"]
    assert stored_state(world.blob_dir) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("too_many_messages", 422, "too_many_messages"),
        ("envelopes_too_large", 413, "envelope_too_large"),
        ("empty", 422, "bad_request"),
        ("streamed_attachment", 422, "bad_request"),
        ("not_base64", 422, "envelope_malformed"),
        ("not_json", 422, "bad_request"),
    ],
)
def test_a_batch_out_of_bounds_is_refused_with_a_stable_code(
    world: World, monkeypatch: pytest.MonkeyPatch, case: str, status: int, code: str
) -> None:
    monkeypatch.setenv("PLI_MAX_BATCH_MESSAGES", "3")
    envelope = a_to_b(world)
    messages = {
        "too_many_messages": [item(envelope)] * 4,
        "envelopes_too_large": [item(envelope)] * 3,
        "empty": [],
        "streamed_attachment": [item(envelope, blobs=["0" * 64])],
        "not_base64": [item(envelope), {**item(envelope), "envelope": "%%%"}],
    }.get(case)
    if case == "envelopes_too_large":
        # Each envelope fits alone; together they do not.
        monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(len(envelope) * 2))
    before = stored_state(world.blob_dir)
    alice = world.client(world.a)
    if messages is None:
        response = alice.post(BATCH, data="{messages: [", content_type="application/json")
    else:
        response = post_batch(alice, messages)
    assert response.status_code == status, response.content
    answer = response.json()
    assert answer["code"] == code and answer["message"]
    if case == "not_base64":
        assert answer["details"] == {"field": "messages[1].envelope"}
    if case == "too_many_messages":
        assert answer["details"] == {"limit": 3}
    assert stored_state(world.blob_dir) == before


@pytest.mark.django_db
def test_a_batch_body_larger_than_its_limit_is_refused_before_it_is_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", "1024")
    monkeypatch.setenv("PLI_MAX_BATCH_MESSAGES", "2")
    messages = [item(b"\x30" * 100_000)] * 2
    response = post_batch(world.client(world.a), messages)
    assert (response.status_code, response.json()["code"]) == (413, "envelope_too_large")
    assert stored_state(world.blob_dir) == (0, 0, 0, [])


@pytest.mark.django_db
def test_too_many_messages_are_refused_before_any_of_them_is_validated(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of many tiny messages, within the size limit, is counted first: the
    refusal is ``too_many_messages``, not a validation of each (which took seconds
    and hundreds of MB for a few hundred thousand), and it is audited."""
    monkeypatch.setenv("PLI_MAX_BATCH_MESSAGES", "3")
    # Each message is malformed (no sender, an envelope of the wrong type): validated
    # first, the batch would be a bad_request naming them.
    body = json.dumps({"messages": [{"recipients": [B], "envelope": 5}] * 20_000})
    refused = [e for e in events("messages.sent") if e.outcome == "failure"]
    response = world.client(world.a).post(BATCH, data=body, content_type="application/json")
    answer = response.json()
    assert (response.status_code, answer["code"]) == (422, "too_many_messages")
    assert answer["details"] == {"limit": 3}
    [audited] = [e for e in events("messages.sent") if e.outcome == "failure"][len(refused) :]
    assert json.loads(audited.detail) == {"code": "too_many_messages"}
    assert stored_state(world.blob_dir) == (0, 0, 0, [])


@pytest.mark.django_db
@pytest.mark.parametrize("path", [BATCH, "/api/messages"])
def test_a_recipient_longer_than_an_address_is_refused_and_not_kept(
    world: World, path: str
) -> None:
    """Every recipient goes through the addresses' cache, which keeps what it is given:
    a text longer than any address is refused before it (13 MB each were kept)."""
    cached = normalised_address_cache.cache_info().currsize
    long_text = "x" * 300 + "@clinique-b.pli.test"
    message = {"from": A, "recipients": [B, long_text], "envelope": "MA=="}
    body = {"messages": [message]} if path == BATCH else message
    response = world.client(world.a).post(
        path, data=json.dumps(body), content_type="application/json"
    )
    answer = response.json()
    assert (response.status_code, answer["code"]) == (422, "bad_request"), answer
    assert long_text not in response.content.decode()
    assert normalised_address_cache.cache_info().currsize == cached
    with pytest.raises(BadAddress):
        normalise_address(" " + "y" * 10_000 + "@clinique-b.pli.test ")
    assert normalised_address_cache.cache_info().currsize == cached
    assert stored_state(world.blob_dir) == (0, 0, 0, [])


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-OPPOSITION")
def test_a_batch_asks_the_directory_and_the_opposition_register_once(world: World) -> None:
    """The point of a batch (benchmarks/README.md): its messages share the directory's
    query and the register's, whatever their number."""
    outgoing = [
        OutgoingMessage(A, [B], a_to_b(world, subject=f"Résultat {n}"), valid_nir())
        for n in range(10)
    ] + [OutgoingMessage(A, [B, WARD], a_to_b_and_ward(world, "Résultat 10"))]
    with CaptureQueriesContext(connection) as queries:
        messages = do_send_messages(world.a, outgoing)
    assert len(messages) == 11
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    # One query for both: the register is asked within the directory's.
    (routing,) = [sql for sql in reads if "directory_mailbox" in sql]
    assert [sql for sql in reads if "opposition" in sql] == [routing], reads
    assert Message.objects.count() == 11


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AT-REST")
def test_a_batch_that_fails_while_stored_leaves_nothing_behind(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every envelope in the blob store: the files written before the transaction must go.
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "0")
    original = messaging_actions._store_one
    calls: list[int] = []

    def failing_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the database went away")
        return original(*args, **kwargs)

    monkeypatch.setattr(messaging_actions, "_store_one", failing_third)
    outgoing = [OutgoingMessage(A, [B], a_to_b(world)) for _ in range(4)]
    with pytest.raises(RuntimeError, match="went away"):
        do_send_messages(world.a, outgoing)
    assert len(calls) == 3
    assert stored_state(world.blob_dir) == (0, 0, 0, [])
    assert not events("messages.sent") and not events("messages.delivered")


@pytest.mark.django_db
def test_the_action_refuses_as_the_api_does(world: World) -> None:
    with pytest.raises(BatchRefused) as refused:
        do_send_messages(world.c, [OutgoingMessage(A, [B], a_to_b(world))])
    assert [(index, error.code) for index, error in refused.value.refusals] == [
        (0, "not_allowed_sender")
    ]
    with pytest.raises(MessagingError) as empty:
        do_send_messages(world.a, [])
    assert empty.value.code == "no_message"
    # D has no certificate: refused as a single send would be.
    with pytest.raises(BatchRefused) as without:
        do_send_messages(world.a, [OutgoingMessage(A, [D], a_to_b(world))])
    assert without.value.refusals[0][1].code == "recipient_without_certificate"
