"""What each mailbox holds, and its quota (``pli.server.messaging.storage``).

Every send counts its size (envelope and streamed attachments, as stored) in
each mailbox it gives a copy; a deletion for good takes it off; the daily job
counts again from the copies. A send that would take a recipient past its
quota is refused with ``recipient_mailbox_full`` (409), nothing stored, the
refusal audited. Personas as in ``tests/test_messaging_api.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from pli.client.cli import main
from pli.crypto import seal
from pli.server.accounts.models import Role
from pli.server.audit.models import AuditEvent
from pli.server.directory.models import Mailbox
from pli.server.jobs import DAILY_JOBS, run_job
from pli.server.messaging.access import MessagingError
from pli.server.messaging.allowance import SHARDS
from pli.server.messaging.models import MailboxStorage, Message
from pli.server.messaging.storage import (
    do_set_mailbox_quota,
    largest_mailboxes,
    recount_storage,
    storage_of,
)
from tests.accounts_support import make_account
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    WARD,
    A,
    B,
    World,
    a_to_b,
    encoded,
    letter,
    make_world,
    post_json,
    send,
    stored_state,
)
from tests.test_messaging_daily_limits import batch, refused_codes
from tests.test_messaging_uploads import upload


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def used(address: str) -> int:
    pk = Mailbox.objects.get(address=address).pk
    return storage_of([pk])[pk].used


def a_to_b_and_ward(world: World) -> bytes:
    return seal(
        letter(A, [B, WARD]),
        world.a_key,
        [world.b_key.certificate, world.ward_key.certificate],
    )


def delete_for_good(client: Client, message_id: str, mailbox: str) -> None:
    for query in ("", "&permanent=true"):  # to the trash, then for good
        answer = client.delete(f"{MESSAGES}/{message_id}?mailbox={mailbox}{query}")
        assert answer.status_code == 200, answer.content


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_each_copy_counts_in_its_mailbox_and_a_deletion_for_good_takes_it_off(
    world: World,
) -> None:
    alice = world.client(world.a)
    scan = b"\x42" * 30_000  # a ciphertext of the client's, as the API stores it
    blob = upload(alice, scan, chunk=10_000)
    envelope = a_to_b_and_ward(world)
    sent = post_json(
        alice,
        MESSAGES,
        {"from": A, "recipients": [B, WARD], "envelope": encoded(envelope), "blobs": [blob]},
    )
    assert sent.status_code == 201, sent.content
    size = len(envelope) + len(scan)
    # The sender's copy in "sent" and each recipient's.
    assert (used(A), used(B), used(WARD)) == (size, size, size)
    small = a_to_b(world)
    message_id = send(alice, A, [B], small).json()["id"]
    assert (used(A), used(B), used(WARD)) == (size + len(small), size + len(small), size)

    # To the trash it still counts; from the trash it is gone, from that mailbox only.
    bob = world.client(world.b)
    assert bob.delete(f"{MESSAGES}/{message_id}?mailbox={B}").status_code == 200
    assert used(B) == size + len(small)
    assert bob.delete(f"{MESSAGES}/{message_id}?mailbox={B}&permanent=true").status_code == 200
    assert (used(A), used(B)) == (size + len(small), size)
    first = sent.json()["id"]
    delete_for_good(bob, first, B)
    delete_for_good(bob, first, WARD)
    assert (used(A), used(B), used(WARD)) == (size + len(small), 0, 0)

    # The counts kept by sends and deletions are what the copies hold.
    assert recount_storage().corrected == 0


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_send_that_would_fill_a_recipient_past_its_quota_is_refused_and_nothing_stored(
    world: World,
) -> None:
    alice = world.client(world.a)
    envelope = a_to_b(world)
    # Room for two such messages in B's mailbox, not three.
    do_set_mailbox_quota(None, B, 2 * len(envelope) + 100)
    for _ in range(2):
        assert send(alice, A, [B], envelope).status_code == 201
    before = stored_state(world.blob_dir)
    counted = (used(A), used(B))

    refused = send(alice, A, [B], envelope)
    assert refused.status_code == 409, refused.content
    answer = refused.json()
    assert answer["code"] == "recipient_mailbox_full"
    assert answer["details"] == {"addresses": [B]}
    assert f"La boîte de ces destinataires est pleine : {B}" in answer["message"]
    assert stored_state(world.blob_dir) == before
    assert (used(A), used(B)) == counted
    assert refused_codes() == ["recipient_mailbox_full"]

    # Only the full mailbox is named; and nothing goes to the other recipient either.
    both = send(alice, A, [B, WARD], a_to_b_and_ward(world))
    assert both.json()["details"] == {"addresses": [B]}
    assert used(WARD) == 0

    # B empties its trash: the messages come again.
    bob = world.client(world.b)
    oldest = Message.objects.order_by("pk").first()
    assert oldest is not None
    delete_for_good(bob, oldest.public_id, B)
    assert send(alice, A, [B], envelope).status_code == 201


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_batch_that_would_fill_a_recipient_is_refused_from_its_first_message_over(
    world: World,
) -> None:
    alice = world.client(world.a)
    envelope = a_to_b(world)
    do_set_mailbox_quota(None, B, 2 * len(envelope) + 100)
    before = stored_state(world.blob_dir)
    refused = batch(alice, [envelope] * 3)
    assert refused.status_code == 422, refused.content
    (over,) = refused.json()["details"]["refused"]
    assert (over["index"], over["code"]) == (2, "recipient_mailbox_full")
    assert stored_state(world.blob_dir) == before
    assert used(B) == 0

    accepted = batch(alice, [envelope] * 2)
    assert accepted.status_code == 201, accepted.content
    assert (used(A), used(B)) == (2 * len(envelope), 2 * len(envelope))
    assert send(alice, A, [B], envelope).json()["code"] == "recipient_mailbox_full"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_read_receipt_reaches_a_full_mailbox_and_counts_in_it(world: World) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    first = send(alice, A, [B], a_to_b(world)).json()["id"]
    # A's own mailbox is full (its sent copy): A still sends, and still gets receipts.
    do_set_mailbox_quota(None, A, 1)
    assert send(alice, A, [B], a_to_b(world)).status_code == 201
    before = used(A)
    receipt = seal(letter(B, [A], subject="Lu : avis"), world.b_key, [world.a_key.certificate])
    read = post_json(bob, f"{MESSAGES}/{first}/read", {"receipt": encoded(receipt)})
    assert read.status_code == 200, read.content
    assert read.json()["receipt"] is not None
    assert used(A) == before + len(receipt)
    assert used(B) >= len(receipt)
    assert recount_storage().corrected == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_send_outside_any_transaction_counts_the_mailboxes_in_its_own_statement(
    pki: Pki, settings: Settings, tmp_path: Path
) -> None:
    # On PostgreSQL a single send is one statement (decision 0010): the mailboxes are
    # counted by it, each on the connection's own row.
    settings.BLOB_DIR = tmp_path / "blobs"
    world = make_world(pki, Path(settings.BLOB_DIR))
    alice = world.client(world.a)
    envelope = a_to_b_and_ward(world)
    do_set_mailbox_quota(None, WARD, 2 * len(envelope) + 100)
    for _ in range(2):
        assert send(alice, A, [B, WARD], envelope).status_code == 201
    assert (used(A), used(B), used(WARD)) == (2 * len(envelope),) * 3
    rows = MailboxStorage.objects.all()
    assert all(0 <= row.shard < SHARDS for row in rows)
    refused = send(alice, A, [B, WARD], envelope)
    assert refused.json()["details"] == {"addresses": [WARD]}
    assert used(B) == 2 * len(envelope)
    assert recount_storage().corrected == 0


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_the_daily_job_counts_again_and_corrects_a_drift(world: World) -> None:
    alice = world.client(world.a)
    envelope = a_to_b(world)
    send(alice, A, [B], envelope)
    b = Mailbox.objects.get(address=B)
    # A drift: a count lost, another made up.
    MailboxStorage.objects.filter(mailbox=b).delete()
    MailboxStorage.objects.create(mailbox=Mailbox.objects.get(address=WARD), shard=3, bytes=999)
    (job,) = [j for j in DAILY_JOBS if j.name == "mailbox_storage"]
    dry = run_job(job, timezone.now(), dry_run=True)
    assert dry.summary is not None and dry.summary.data == {"mailboxes": 3, "corrected": 2}
    assert (used(B), used(WARD)) == (0, 999)
    done = run_job(job, timezone.now())
    assert done.status == "ok" and done.summary is not None
    assert done.summary.data == {"mailboxes": 3, "corrected": 2}
    assert (used(A), used(B), used(WARD)) == (len(envelope), len(envelope), 0)
    assert list(MailboxStorage.objects.filter(mailbox=b).values_list("shard", "bytes")) == [
        (0, len(envelope))
    ]
    again = run_job(job, timezone.now())
    assert again.summary is not None and again.summary.data["corrected"] == 0


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
@pytest.mark.requirement("REQ-TRACE")
def test_the_operator_sets_a_mailboxs_quota_and_it_is_audited(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAILBOX_QUOTA_BYTES", str(5 * 1024**3))
    envelope = a_to_b(world)
    assert send(world.client(world.a), A, [B], envelope).status_code == 201
    runner = CliRunner()
    shown = runner.invoke(main, ["storage", "quota", B])
    assert shown.exit_code == 0, shown.output
    assert f"{B} : {len(envelope)} octets utilisés sur {5 * 1024**3}" in shown.output
    assert "(0 %, quota de l'opérateur)" in shown.output

    raised = runner.invoke(main, ["storage", "quota", B.upper(), "--bytes", "50G"])
    assert raised.exit_code == 0, raised.output
    assert f"sur {50 * 1024**3} (0 %, quota de la boîte)" in raised.output
    assert storage_of([world.mailbox_b.pk])[world.mailbox_b.pk].quota == 50 * 1024**3
    back = runner.invoke(main, ["storage", "quota", B, "--default"])
    assert "quota de l'opérateur" in back.output

    largest = runner.invoke(main, ["storage", "largest", "--json"])
    assert largest.exit_code == 0, largest.output
    rows = json.loads(largest.output)
    assert {row["address"] for row in rows} == {A, B}
    assert all(row["used_bytes"] == len(envelope) for row in rows)
    assert [address for address, _storage in largest_mailboxes(1)] == [A]

    changes = AuditEvent.objects.filter(action="messaging.mailbox_quota_changed").order_by("seq")
    assert [json.loads(str(e.detail)) for e in changes] == [{"bytes": 50 * 1024**3}, {"bytes": 0}]
    assert {e.target for e in changes} == {f"mailbox:{world.mailbox_b.pk}"}

    # Refusals: a bad size, both ways at once, an unknown mailbox, a professional.
    assert runner.invoke(main, ["storage", "quota", B, "--bytes", "5X"]).exit_code == 2
    both = runner.invoke(main, ["storage", "quota", B, "--default", "--bytes", "2G"])
    assert both.exit_code == 2
    unknown = runner.invoke(main, ["storage", "quota", "nobody@nowhere.pli.test"])
    assert unknown.exit_code != 0 and "not_found" in unknown.output
    with pytest.raises(MessagingError) as bad:
        do_set_mailbox_quota(None, B, 0)
    assert bad.value.code == "bad_quota"
    with pytest.raises(MessagingError) as not_allowed:
        do_set_mailbox_quota(world.b, B, 10)
    assert not_allowed.value.code == "not_allowed"
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    do_set_mailbox_quota(admin, B, 10)
    assert AuditEvent.objects.filter(action="messaging.mailbox_quota_changed").count() == 3


@pytest.mark.django_db
def test_the_mailbox_list_gives_each_mailboxs_usage_and_quota(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAILBOX_QUOTA_BYTES", "1000000")
    envelope = a_to_b(world)
    send(world.client(world.a), A, [B], envelope)
    listed = world.client(world.b).get("/api/mailboxes").json()
    mine = next(m for m in listed if m["address"] == B)
    assert (mine["used_bytes"], mine["quota_bytes"]) == (len(envelope), 1_000_000)
