"""Daily send limits per person (``pli.server.messaging.allowance``).

An account may send at most ``PLI_DAILY_SEND_MESSAGES`` messages and
``PLI_DAILY_SEND_BYTES`` stored bytes (envelopes and streamed attachments) per
day; past either, ``daily_limit_reached`` (429), nothing stored, the refusal
audited. The operator sets an account's own limits (``pli accounts
send-limits``, audited); read receipts are not counted; past days' counters go
with the daily job. Personas as in ``tests/test_messaging_api.py``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from pli.client.cli import main
from pli.crypto import seal
from pli.server.accounts.actions import do_set_send_limits
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import Role, User
from pli.server.audit.models import AuditEvent
from pli.server.jobs import DAILY_JOBS, run_job
from pli.server.messaging import allowance
from pli.server.messaging.actions import RECEIPT_MAX_BYTES
from pli.server.messaging.models import Message, SendUsage
from tests.accounts_support import make_account
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
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
from tests.test_messaging_uploads import upload


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def usage(user: User) -> tuple[int, int]:
    used = allowance.usage_of(user)
    return used.messages, used.bytes


def refused_codes() -> list[str]:
    return [
        json.loads(str(event.detail))["code"]
        for event in AuditEvent.objects.filter(action="messages.sent", outcome="failure")
    ]


def batch(client: Client, envelopes: list[bytes]) -> Any:
    body = {"messages": [{"from": A, "recipients": [B], "envelope": encoded(e)} for e in envelopes]}
    return post_json(client, "/api/messages/batch", body)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_past_the_daily_message_limit_a_send_is_refused_and_nothing_is_stored(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "2")
    alice = world.client(world.a)
    envelope = a_to_b(world)
    for _ in range(2):
        assert send(alice, A, [B], envelope).status_code == 201
    assert usage(world.a) == (2, 2 * len(envelope))
    before = stored_state(world.blob_dir)

    refused = send(alice, A, [B], envelope)
    assert refused.status_code == 429, refused.content
    answer = refused.json()
    assert answer["code"] == "daily_limit_reached"
    assert "Limite d'envoi du jour atteinte" in answer["message"]
    details = answer["details"]
    assert (details["limit_messages"], details["sent_messages"]) == (2, 2)
    assert details["sent_bytes"] == 2 * len(envelope)
    resets_at = dt.datetime.fromisoformat(details["resets_at"])
    assert resets_at == timezone.make_aware(
        dt.datetime.combine(timezone.localdate() + dt.timedelta(days=1), dt.time())
    )
    assert stored_state(world.blob_dir) == before
    assert usage(world.a) == (2, 2 * len(envelope))
    assert refused_codes() == ["daily_limit_reached"]

    # The limit is each person's: another sender is not held back by A's day.
    to_a = seal(letter(B, [A]), world.b_key, [world.a_key.certificate])
    assert send(world.client(world.b), B, [A], to_a).status_code == 201

    # Tomorrow, A sends again.
    today = timezone.localdate()
    tomorrow = today + dt.timedelta(days=1)
    monkeypatch.setattr(allowance, "today", lambda: tomorrow)
    assert send(alice, A, [B], envelope).status_code == 201
    assert allowance.usage_of(world.a, tomorrow) == allowance.Usage(1, len(envelope))
    assert allowance.usage_of(world.a, today) == allowance.Usage(2, 2 * len(envelope))


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_the_byte_limit_counts_envelopes_and_streamed_attachments(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = world.client(world.a)
    scan = b"\x42" * 40_000  # a ciphertext of the client's, as the API stores it
    blob = upload(alice, scan, chunk=10_000)
    envelope = a_to_b(world)
    sent = post_json(
        alice,
        MESSAGES,
        {"from": A, "recipients": [B], "envelope": encoded(envelope), "blobs": [blob]},
    )
    assert sent.status_code == 201, sent.content
    assert usage(world.a) == (1, len(envelope) + len(scan))

    # Room for one more envelope, not for one more scan.
    monkeypatch.setenv("PLI_DAILY_SEND_BYTES", str(2 * len(envelope) + len(scan) + 10))
    second = upload(alice, scan, chunk=10_000)
    before = stored_state(world.blob_dir)
    refused = post_json(
        alice,
        MESSAGES,
        {"from": A, "recipients": [B], "envelope": encoded(envelope), "blobs": [second]},
    )
    assert (refused.status_code, refused.json()["code"]) == (429, "daily_limit_reached")
    assert stored_state(world.blob_dir) == before
    # The upload is still there, complete, for tomorrow or a smaller send.
    assert alice.get(f"/api/uploads/{second}").json()["state"] == "complete"
    assert send(alice, A, [B], envelope).status_code == 201
    assert send(alice, A, [B], envelope).json()["code"] == "daily_limit_reached"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_batch_past_the_limit_is_refused_from_its_first_message_over_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "3")
    alice = world.client(world.a)
    envelope = a_to_b(world)
    assert send(alice, A, [B], envelope).status_code == 201
    before = stored_state(world.blob_dir)

    refused = batch(alice, [envelope] * 3)
    assert refused.status_code == 422, refused.content
    assert refused.json()["code"] == "batch_refused"
    (over,) = refused.json()["details"]["refused"]
    assert (over["index"], over["code"]) == (2, "daily_limit_reached")
    # Counted with the batch's own messages before it (none of which was stored).
    assert over["details"]["sent_messages"] == 3
    assert stored_state(world.blob_dir) == before
    assert usage(world.a) == (1, len(envelope))

    accepted = batch(alice, [envelope] * 2)
    assert accepted.status_code == 201, accepted.content
    assert usage(world.a) == (3, 3 * len(envelope))
    assert send(alice, A, [B], envelope).json()["code"] == "daily_limit_reached"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_read_receipts_are_not_counted_nor_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "1")
    alice, bob = world.client(world.a), world.client(world.b)
    first = send(alice, A, [B], a_to_b(world)).json()["id"]
    second = send(world.client(world.a), A, [B], a_to_b(world))
    assert second.json()["code"] == "daily_limit_reached"
    # B used its day on one message of its own...
    to_a = seal(letter(B, [A]), world.b_key, [world.a_key.certificate])
    assert send(bob, B, [A], to_a).status_code == 201
    # ...and still acknowledges what it reads.
    receipt = seal(letter(B, [A], subject="Lu : avis"), world.b_key, [world.a_key.certificate])
    read = post_json(bob, f"{MESSAGES}/{first}/read", {"receipt": encoded(receipt)})
    assert read.status_code == 200, read.content
    receipt_id = read.json()["receipt"]
    assert Message.objects.get(public_id=receipt_id).receipt
    assert usage(world.b) == (1, len(to_a))

    # A receipt is not acknowledged in turn: A reads B's receipt, its own receipt is
    # ignored (otherwise two mailboxes could answer each other's receipts without end).
    again = seal(letter(A, [B], subject="Lu : Lu : avis"), world.a_key, [world.b_key.certificate])
    messages = Message.objects.count()
    read_back = post_json(alice, f"{MESSAGES}/{receipt_id}/read", {"receipt": encoded(again)})
    assert read_back.status_code == 200, read_back.content
    assert read_back.json()["receipt"] is None and read_back.json()["read"] is True
    assert Message.objects.count() == messages


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_receipt_larger_than_a_receipt_can_be_is_refused_and_the_read_too(
    world: World,
) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    first = send(alice, A, [B], a_to_b(world)).json()["id"]
    padded = seal(
        letter(B, [A], subject="Lu : avis", body="x" * (RECEIPT_MAX_BYTES + 1)),
        world.b_key,
        [world.a_key.certificate],
    )
    assert len(padded) > RECEIPT_MAX_BYTES
    before = stored_state(world.blob_dir)
    refused = post_json(bob, f"{MESSAGES}/{first}/read", {"receipt": encoded(padded)})
    assert (refused.status_code, refused.json()["code"]) == (413, "receipt_too_large")
    assert refused.json()["details"]["limit"] == RECEIPT_MAX_BYTES
    assert stored_state(world.blob_dir) == before
    assert bob.get(f"{MESSAGES}/{first}").json()["read"] is False
    assert refused_codes() == ["receipt_too_large"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_send_outside_any_transaction_counts_in_its_own_statement(
    pki: Pki, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a single send is one statement (decision 0010): the usage is
    # counted by it, on the connection's own row of the day.
    settings.BLOB_DIR = tmp_path / "blobs"
    world = make_world(pki, Path(settings.BLOB_DIR))
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "2")
    alice = world.client(world.a)
    envelope = a_to_b(world)
    assert send(alice, A, [B], envelope).status_code == 201
    assert send(alice, A, [B], envelope).status_code == 201
    assert usage(world.a) == (2, 2 * len(envelope))
    rows = SendUsage.objects.filter(user=world.a)
    assert all(0 <= row.shard < allowance.SHARDS for row in rows)
    assert send(alice, A, [B], envelope).json()["code"] == "daily_limit_reached"
    assert usage(world.a) == (2, 2 * len(envelope))


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
@pytest.mark.requirement("REQ-TRACE")
def test_the_operator_sets_an_accounts_own_limits_and_it_is_audited(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "1")
    alice = world.client(world.a)
    envelope = a_to_b(world)
    assert send(alice, A, [B], envelope).status_code == 201
    assert send(alice, A, [B], envelope).json()["code"] == "daily_limit_reached"

    runner = CliRunner()
    raised = runner.invoke(main, ["accounts", "send-limits", A, "--messages", "3", "--bytes", "1M"])
    assert raised.exit_code == 0, raised.output
    assert "par jour au plus, messages : 3, octets : 1048576 (limites du compte)" in raised.output
    assert "envoyés aujourd'hui, messages : 1, octets : " in raised.output
    world.a.refresh_from_db()
    assert (world.a.daily_send_messages, world.a.daily_send_bytes) == (3, 1024**2)
    assert send(world.client(world.a), A, [B], envelope).status_code == 201

    # An option left out keeps the account's other value.
    runner.invoke(main, ["accounts", "send-limits", A, "--messages", "5"])
    world.a.refresh_from_db()
    assert (world.a.daily_send_messages, world.a.daily_send_bytes) == (5, 1024**2)
    shown = runner.invoke(main, ["accounts", "send-limits", A])
    assert "envoyés aujourd'hui, messages : 2, octets : " in shown.output

    back = runner.invoke(main, ["accounts", "send-limits", A, "--default"])
    assert "(limites de l'opérateur)" in back.output
    world.a.refresh_from_db()
    assert (world.a.daily_send_messages, world.a.daily_send_bytes) == (None, None)
    assert send(world.client(world.a), A, [B], envelope).json()["code"] == "daily_limit_reached"

    changes = AuditEvent.objects.filter(action="accounts.send_limits_changed").order_by("seq")
    assert [json.loads(str(e.detail)) for e in changes] == [
        {"messages": 3, "bytes": 1024**2},
        {"messages": 5, "bytes": 1024**2},
        {"messages": 0, "bytes": 0},
    ]
    assert {e.target for e in changes} == {f"user:{world.a.pk}"}

    # Refusals: a bad size, beyond the columns' range, both ways at once, an unknown
    # account, a professional.
    assert runner.invoke(main, ["accounts", "send-limits", A, "--bytes", "5X"]).exit_code == 2
    huge = runner.invoke(main, ["accounts", "send-limits", A, "--bytes", "99999999T"])
    assert huge.exit_code == 2 and "dépasse 9223372036854775807" in huge.output
    many = ["accounts", "send-limits", A, "--messages", str(2**31)]
    assert runner.invoke(main, many).exit_code == 2
    with pytest.raises(AccountError) as too_many:
        do_set_send_limits(None, A, messages=2**31, size=None)
    assert too_many.value.code == "bad_limit"
    both = runner.invoke(main, ["accounts", "send-limits", A, "--default", "--messages", "2"])
    assert both.exit_code == 2
    unknown = runner.invoke(main, ["accounts", "send-limits", "nobody@nowhere.pli.test"])
    assert unknown.exit_code != 0 and "not_found" in unknown.output
    with pytest.raises(AccountError) as not_allowed:
        do_set_send_limits(world.b, A, messages=100, size=None)
    assert not_allowed.value.code == "not_allowed"
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    do_set_send_limits(admin, A, messages=100, size=None)
    assert User.objects.get(pk=world.a.pk).daily_send_messages == 100
    assert AuditEvent.objects.filter(action="accounts.send_limits_changed").count() == 4


@pytest.mark.django_db
def test_the_daily_job_removes_past_days_counters_and_keeps_yesterdays(world: World) -> None:
    today = timezone.localdate()
    for days_ago in (0, 1, 2, 30):
        SendUsage.objects.create(
            user=world.a, day=today - dt.timedelta(days=days_ago), messages=1, bytes=10
        )
    (job,) = [j for j in DAILY_JOBS if j.name == "send_usage"]
    dry = run_job(job, timezone.now(), dry_run=True)
    assert dry.summary is not None and dry.summary.data == {"rows": 2}
    assert SendUsage.objects.count() == 4
    done = run_job(job, timezone.now())
    assert done.status == "ok" and done.summary is not None
    assert done.summary.data == {"rows": 2}
    assert sorted(SendUsage.objects.values_list("day", flat=True)) == [
        today - dt.timedelta(days=1),
        today,
    ]
