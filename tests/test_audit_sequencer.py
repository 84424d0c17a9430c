"""The audit journal and its sequencer (docs/decisions/0010-audit-sequencer.md).

On PostgreSQL a send writes its events to the journal in its own statement,
without the chain's lock, and the sequencer chains them right after the
commit; ``pli audit verify`` and the daily checkpoint job chain whatever a
stopped process left. Runs on SQLite and, with ``PLI_DATABASE_URL``, on
PostgreSQL (``-m django_db``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from pli.client.cli import main
from pli.crypto import generate_signing_key
from pli.server.audit import actions as audit_actions
from pli.server.audit import keys
from pli.server.audit.actions import (
    do_record_event,
    do_record_event_deferred,
    do_record_events,
    do_write_checkpoint,
    event_fields,
    pending_events,
    sequence_pending_events,
)
from pli.server.audit.chain import verify_trail
from pli.server.audit.models import AuditEvent, AuditPendingEvent
from pli.server.config import ConfigurationError
from pli.server.messaging import actions as messaging_actions
from pli.server.messaging.actions import OutgoingMessage, do_send_message, do_send_messages
from pli.server.messaging.models import Message
from tests.test_messaging_api import A, B, a_to_b, blob_dir, make_world, world  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def audit_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit-key.pem"
    path.write_bytes(generate_signing_key().pem())
    monkeypatch.setenv("PLI_AUDIT_KEY_FILE", str(path))
    for name in ("CHECKPOINT_EVENTS", "CHECKPOINT_MINUTES", "RETENTION_DAYS"):
        monkeypatch.delenv(f"PLI_AUDIT_{name}", raising=False)
    return path


def pending(action: str = "messages.sent", target: str = "message:x") -> AuditPendingEvent:
    """A journal row as a send writes it (what a process stopped after its commit leaves)."""
    return AuditPendingEvent.objects.create(
        occurred_at=timezone.now(),
        actor_id=7,
        actor_username="dr.zoë@pli.test",
        actor_role="",
        action=action,
        target=target,
        source_address="2001:db8::1",
        user_agent="Navigateur «é» 😀",
        outcome="success",
        detail=json.dumps({"recipients": 1}),
    )


def seqs() -> list[int]:
    return list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))


def in_threads(threads: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(0)`` … ``work(threads - 1)`` at once, each on its own connection; the errors."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            start.wait()
            work(number)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return errors


def deferred_sends_from_threads(threads: int, appends: int) -> None:
    """``threads`` threads at once, each committing ``appends`` deferred events."""

    def worker(number: int) -> None:
        for n in range(appends):
            do_record_event_deferred("messages.sent", target=f"message:{number}-{n}")

    assert in_threads(threads, worker) == []


def counting_runs(monkeypatch: pytest.MonkeyPatch, pause: float = 0.0) -> list[int]:
    """The sequencer, each run recorded (by thread), ``pause`` seconds long at least."""
    runs: list[int] = []
    chain = audit_actions.sequence_pending_events

    def counted(batch: int = audit_actions.SEQUENCE_BATCH) -> int:
        runs.append(threading.get_ident())
        time.sleep(pause)
        return chain(batch)

    monkeypatch.setattr(audit_actions, "sequence_pending_events", counted)
    return runs


@pytest.mark.requirement("REQ-TRACE")
def test_the_sequencer_chains_the_journal_in_order_and_empties_it(audit_key: Path) -> None:
    do_record_event("auth.login", target="user:1")
    first, second = pending(target="message:a"), pending(target="message:b")
    assert sequence_pending_events() == 2
    assert pending_events() == 0
    chained = list(AuditEvent.objects.order_by("seq"))
    assert [(e.seq, e.target) for e in chained] == [
        (1, "user:1"),
        (2, "message:a"),
        (3, "message:b"),
    ]
    assert chained[1].occurred_at == first.occurred_at and chained[2].prev_hash == chained[1].hash
    assert chained[2].actor_username == second.actor_username
    assert sequence_pending_events() == 0  # idempotent
    report = verify_trail([keys.verifying_key_from_file(audit_key)])
    assert report.events == 3


@pytest.mark.requirement("REQ-TRACE")
def test_a_pending_event_is_never_rewritten() -> None:
    row = pending()
    with pytest.raises(DatabaseError, match="never rewritten"), transaction.atomic():
        AuditPendingEvent.objects.filter(pk=row.pk).update(target="message:forged")


@pytest.mark.requirement("REQ-TRACE")
def test_pli_audit_verify_and_the_daily_checkpoint_catch_up_with_the_journal() -> None:
    do_record_event("auth.login")
    pending(target="message:left")  # committed, then the process stopped: not chained
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "vérifié : 2 événement(s)" in result.output  # the login and the send, now chained
    assert pending_events() == 0
    pending(target="message:later")
    assert do_write_checkpoint() is not None
    assert pending_events() == 0 and AuditEvent.objects.filter(target="message:later").exists()


@pytest.mark.requirement("REQ-TRACE")
def test_a_deferred_event_inside_a_callers_transaction_commits_with_it_or_not_at_all() -> None:
    def failing_action() -> None:
        with transaction.atomic():
            do_record_event_deferred("messages.sent", target="message:gone")
            raise RuntimeError("the action failed")

    with pytest.raises(RuntimeError):
        failing_action()
    assert pending_events() == 0 and not AuditEvent.objects.exists()


def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite chains in the transaction (its write lock serialises writers)")


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_deferred_event_is_chained_right_after_the_commit() -> None:
    _postgresql_only()
    with transaction.atomic():
        do_record_event_deferred("messages.sent", target="message:m1")
        assert pending_events() == 1 and not AuditEvent.objects.exists()  # not chained yet
    assert pending_events() == 0
    assert [e.target for e in AuditEvent.objects.all()] == ["message:m1"]


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_concurrent_deferred_and_direct_appends_lose_nothing(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgresql_only()
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "7")
    threads, appends = 6, 25

    def worker(number: int) -> None:
        for n in range(appends):
            if number % 2 or n % 5 == 0:
                do_record_event_deferred("messages.sent", target=f"message:{number}-{n}")
            else:
                with transaction.atomic():
                    do_record_event("auth.login", target=f"user:{number}")

    assert in_threads(threads, worker) == []
    assert pending_events() == 0  # every committer chained, or found its events chained
    assert seqs() == list(range(1, threads * appends + 1))
    report = verify_trail([keys.verifying_key_from_file(audit_key)])
    assert report.events == threads * appends and report.last_checkpoint_seq is not None


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_concurrent_commits_share_sequencer_runs_and_leave_nothing_pending(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgresql_only()
    # Each run long enough for the other threads' commits to find it busy.
    runs = counting_runs(monkeypatch, pause=0.02)
    threads, appends = 6, 10
    deferred_sends_from_threads(threads, appends)
    # Fewer runs than commits (a busy sequencer runs once more for the others), and
    # still every event chained by the time the last committer returned.
    assert 0 < len(runs) < threads * appends
    assert pending_events() == 0
    assert seqs() == list(range(1, threads * appends + 1))
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events == threads * appends


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_send_is_one_statement_and_its_events_are_chained_when_it_returns(
    world: Any,  # noqa: F811 - the messaging tests' fixture
    audit_key: Path,
) -> None:
    _postgresql_only()
    statements: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        message = do_send_message(world.a, A, [B], a_to_b(world))
    writes = [s for s in statements if "INSERT" in s and "auditcheckpoint" not in s]
    assert len(writes) == 1 and "audit_auditpendingevent" in writes[0]
    assert [d.recipient_address for d in message.deliveries.all()] == [B]
    assert pending_events() == 0
    target = f"message:{message.public_id}"
    assert list(
        AuditEvent.objects.filter(target=target).order_by("seq").values_list("action", flat=True)
    ) == ["messages.sent", "messages.delivered"]
    assert message.deliveries.count() == 1 and message.copies.count() == 2
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events >= 2


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_batch_is_one_transaction_of_one_statement_per_message(
    world: Any,  # noqa: F811 - the messaging tests' fixture
    audit_key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch (decision 0016) on the path production takes: each message one statement
    (its rows and its journal events), all of them in one transaction, chained after it."""
    _postgresql_only()
    statements: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    batch = [OutgoingMessage(A, [B], a_to_b(world)) for _ in range(3)]
    with connection.execute_wrapper(count):
        messages = do_send_messages(world.a, batch)
    writes = [s for s in statements if "INSERT" in s and "auditcheckpoint" not in s]
    # Each message's statement, one for the batch's count against the daily limits and
    # one for what it adds to the mailboxes' storage (quotas).
    usage = [w for w in writes if "messaging_sendusage" in w]
    storage = [w for w in writes if "messaging_mailboxstorage" in w]
    writes = [w for w in writes if w not in usage and w not in storage]
    assert len(usage) == 1 and "audit_auditpendingevent" not in usage[0]
    assert len(storage) == 1 and "audit_auditpendingevent" not in storage[0]
    assert len(writes) == 3 and all("audit_auditpendingevent" in w for w in writes)
    assert pending_events() == 0
    for message in messages:
        assert list(
            AuditEvent.objects.filter(target=f"message:{message.public_id}")
            .order_by("seq")
            .values_list("action", flat=True)
        ) == ["messages.sent", "messages.delivered"]
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events >= 6

    # The third statement fails: the transaction takes the first two with it.
    before = (Message.objects.count(), AuditEvent.objects.count())
    original = messaging_actions._store_message_at_once
    calls: list[int] = []

    def failing_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise DatabaseError("the connection was lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(messaging_actions, "_store_message_at_once", failing_third)
    with pytest.raises(DatabaseError):
        do_send_messages(world.a, batch)
    assert (Message.objects.count(), AuditEvent.objects.count()) == before
    assert pending_events() == 0


@pytest.mark.requirement("REQ-TRACE")
def test_several_events_appended_at_once_chain_as_one_append_each(audit_key: Path) -> None:
    do_record_event("auth.login", target="user:1")
    with transaction.atomic():
        do_record_events(
            [
                event_fields("messages.sent", target="message:a", detail={"recipients": 2}),
                event_fields("messages.delivered", target="message:a", detail={"deliveries": 2}),
            ]
        )
    chained = list(AuditEvent.objects.order_by("seq"))
    assert [(e.seq, e.action) for e in chained] == [
        (1, "auth.login"),
        (2, "messages.sent"),
        (3, "messages.delivered"),
    ]
    assert [e.prev_hash for e in chained[1:]] == [e.hash for e in chained[:-1]]
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events == 3


# --------------------------------------------------------------------------- in the background


@pytest.fixture
def background(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Turns the background sequencer on with a window of ``ms``; stopped (its last run
    made, its connection closed) before pytest-django empties the tables."""

    def window(ms: int) -> None:
        monkeypatch.setenv("PLI_AUDIT_SEQUENCER_DELAY_MS", str(ms))

    yield window
    audit_actions.stop_background_sequencer()


def wait_for(done: Callable[[], bool], failure: str, seconds: float = 10.0) -> float:
    """Seconds until ``done()``; fails the test with ``failure`` if not within ``seconds``."""
    began = time.monotonic()
    while not done():
        assert time.monotonic() - began < seconds, failure
        time.sleep(0.005)
    return time.monotonic() - began


def wait_until_chained() -> float:
    """Seconds until the journal is empty and the run that emptied it has ended.

    The events commit before the run writes its checkpoint, in a second
    transaction: the journal is empty a moment before the trail verifies (a
    CI run verified in that moment and found no checkpoint). The run holds
    the process's sequencing lock from before the chaining until after the
    checkpoint, so an empty journal seen before a free lock means that run
    is over.
    """
    return wait_for(
        lambda: pending_events() == 0 and not audit_actions._SEQUENCING.locked(),
        "the background sequencer chained nothing",
    )


@pytest.mark.requirement("REQ-TRACE")
def test_the_sequencer_window_is_a_whole_number_of_milliseconds_up_to_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLI_AUDIT_SEQUENCER_DELAY_MS")
    assert audit_actions.sequencer_delay_ms() == 10  # the default
    for value, accepted in (
        ("0", True),
        ("1000", True),
        ("1001", False),
        ("-1", False),
        ("x", False),
    ):
        monkeypatch.setenv("PLI_AUDIT_SEQUENCER_DELAY_MS", value)
        if accepted:
            assert audit_actions.sequencer_delay_ms() == int(value)
        else:
            with pytest.raises(ConfigurationError, match="SEQUENCER_DELAY_MS"):
                audit_actions.sequencer_delay_ms()


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_background_sequencer_chains_a_send_within_its_window(
    world: Any,  # noqa: F811 - the messaging tests' fixture
    audit_key: Path,
    background: Callable[[int], None],
) -> None:
    _postgresql_only()
    envelope = a_to_b(world)  # sealed before the window starts
    background(1000)  # the longest allowed: the events seen waiting even on a loaded machine
    message = do_send_message(world.a, A, [B], envelope)
    # The send returned (its 201 would leave now); its events wait in the journal.
    assert pending_events() == 2
    assert not AuditEvent.objects.filter(target=f"message:{message.public_id}").exists()
    waited = wait_until_chained()
    assert waited > 0.3  # the window, not the send, chained them
    assert list(
        AuditEvent.objects.filter(target=f"message:{message.public_id}")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["messages.sent", "messages.delivered"]
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events >= 2


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_background_sequencer_chains_many_commits_in_few_runs(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch, background: Callable[[int], None]
) -> None:
    _postgresql_only()
    background(50)  # commits of the same 50 ms share a run, even on a loaded machine
    runs = counting_runs(monkeypatch)
    threads, appends = 6, 15
    deferred_sends_from_threads(threads, appends)
    wait_until_chained()
    # One thread ran them all, and fewer times than there were commits.
    assert len(set(runs)) == 1 and 0 < len(runs) < threads * appends
    assert seqs() == list(range(1, threads * appends + 1))
    assert verify_trail([keys.verifying_key_from_file(audit_key)]).events == threads * appends


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_stopping_the_background_sequencer_chains_what_waits_at_once(
    background: Callable[[int], None],
) -> None:
    _postgresql_only()
    background(1000)  # the longest window the setting allows
    do_record_event_deferred("messages.sent", target="message:last")
    time.sleep(0.1)  # the woken thread is inside its window now
    assert pending_events() == 1
    began = time.monotonic()
    audit_actions.stop_background_sequencer()  # what atexit does when a worker leaves
    # The window is cut short: a worker that leaves does not wait it out.
    assert time.monotonic() - began < 0.8
    assert pending_events() == 0
    assert [e.target for e in AuditEvent.objects.all()] == ["message:last"]


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_failed_background_run_is_logged_and_the_next_commit_chains_both(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    background: Callable[[int], None],
) -> None:
    _postgresql_only()
    background(5)
    chain = audit_actions.sequence_pending_events
    failures = [DatabaseError("the connection dropped")]

    def failing_once(batch: int = audit_actions.SEQUENCE_BATCH) -> int:
        if failures:
            raise failures.pop()
        return chain(batch)

    monkeypatch.setattr(audit_actions, "sequence_pending_events", failing_once)
    with caplog.at_level("ERROR", logger="pli.server.audit.actions"):
        do_record_event_deferred("messages.sent", target="message:first")
        wait_for(
            lambda: any("could not be chained" in r.getMessage() for r in caplog.records),
            "the failed run was not logged",
        )
    assert pending_events() == 1  # committed, waiting: the send stood
    do_record_event_deferred("messages.sent", target="message:second")
    wait_until_chained()
    assert [e.target for e in AuditEvent.objects.order_by("seq")] == [
        "message:first",
        "message:second",
    ]


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_process_that_exits_chains_its_events_on_the_way_out(
    audit_key: Path,
) -> None:
    """A gunicorn worker leaves through ``sys.exit``: the ``atexit`` run chains what waits."""
    _postgresql_only()
    settings = connection.settings_dict
    url = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    child = (
        "import sys\n"
        "from pli.server.commands import setup_django\n"
        "setup_django()\n"
        "from pli.server.audit.actions import do_record_event_deferred\n"
        "do_record_event_deferred('messages.sent', target='message:leaving')\n"
        "sys.exit(0)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "PLI_DATABASE_URL": url,
        "PLI_AUDIT_SEQUENCER_DELAY_MS": "1000",
        "PLI_AUDIT_KEY_FILE": str(audit_key),
    }
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert pending_events() == 0
    assert [e.target for e in AuditEvent.objects.all()] == ["message:leaving"]
    assert time.monotonic() - began < 60
