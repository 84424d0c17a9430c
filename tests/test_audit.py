"""The audit trail on a real database: recording, chain, checkpoints, tampering, purge, CLI.

Runs on SQLite and, with ``PLI_DATABASE_URL``, on PostgreSQL (``-m django_db``).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connection, transaction
from django.db.models import Max, Min
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from pli.client.cli import main
from pli.crypto import VerifyingKey, generate_signing_key
from pli.server.accounts.models import Role, User
from pli.server.audit import actions, chain, keys
from pli.server.audit.actions import (
    do_record_event,
    do_write_checkpoint,
    purge_expired_events,
    retention_days,
)
from pli.server.audit.chain import (
    GENESIS,
    VerificationReport,
    event_hash,
    micros,
    verify_trail,
)
from pli.server.audit.errors import (
    AuditChainBroken,
    AuditCheckpointInvalid,
    AuditError,
    AuditHashMismatch,
    AuditMissingPredecessor,
    AuditUnsigned,
    AuditValueRefused,
    UnknownAuditAction,
)
from pli.server.audit.models import AuditAction, AuditCheckpoint, AuditEvent
from pli.server.config import ConfigurationError
from pli.server.directory.models import ImportRun, Mailbox

pytestmark = pytest.mark.django_db

SRC = Path(__file__).resolve().parent.parent / "src" / "pli"


@dataclass
class Clock:
    """The time the trail sees (django.utils.timezone.now): the edge of the world."""

    now: dt.datetime

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(timezone.now())
    monkeypatch.setattr(timezone, "now", lambda: clock.now)
    return clock


@pytest.fixture(autouse=True)
def audit_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh operator audit key per test, and the default checkpoint policy."""
    path = tmp_path / "audit-key.pem"
    path.write_bytes(generate_signing_key().pem())
    monkeypatch.setenv("PLI_AUDIT_KEY_FILE", str(path))
    for name in ("CHECKPOINT_EVENTS", "CHECKPOINT_MINUTES", "RETENTION_DAYS"):
        monkeypatch.delenv(f"PLI_AUDIT_{name}", raising=False)
    return path


def operator_key(path: Path) -> list[VerifyingKey]:
    return [keys.verifying_key_from_file(path)]


def record(count: int, action: str = "auth.login") -> list[AuditEvent]:
    return [do_record_event(action, target=f"user:{n}") for n in range(count)]


@dataclass
class _Trigger:
    """Disable the append-only trigger as the table owner or a superuser would (tests only)."""

    def __enter__(self) -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
                cursor.execute("ALTER TABLE audit_auditcheckpoint DISABLE TRIGGER USER")
            else:
                # IF EXISTS: a test may tamper twice; the first drop lasts until the rollback.
                cursor.execute("DROP TRIGGER IF EXISTS audit_auditevent_no_update")
                cursor.execute("DROP TRIGGER IF EXISTS audit_auditcheckpoint_no_update")

    def __exit__(self, *exc: object) -> None:
        # Both databases roll this DDL back with the test's transaction; PostgreSQL at once.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
                cursor.execute("ALTER TABLE audit_auditcheckpoint ENABLE TRIGGER USER")


def tamper(sql: str, *params: str | int) -> None:
    with _Trigger(), connection.cursor() as cursor:
        cursor.execute(sql, list(params))


def verify_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", *args])
    return result.exit_code, result.output


# --------------------------------------------------------------------------- recording


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.requirement("REQ-DATA-ADMIN")
def test_an_event_says_who_did_what_from_where_and_chains_to_the_previous_one() -> None:
    admin = User.objects.create(username="admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    request = RequestFactory().get(
        "/",
        REMOTE_ADDR="203.0.113.7",
        HTTP_X_FORWARDED_FOR="198.51.100.1",  # chosen by the client: never trusted
        HTTP_USER_AGENT="Mozilla/5.0 " + "x" * 400 + "\n",
    )
    first = do_record_event("auth.login", actor=admin, request=request, target=f"user:{admin.pk}")
    second = do_record_event(
        "auth.login_failed",
        request=request,
        target="user:unknown",
        outcome="failure",
        detail={"factor": "password", "attempts": 3},
    )

    first.refresh_from_db()
    assert (first.seq, first.action, first.outcome) == (1, "auth.login", "success")
    assert (first.actor_id, first.actor_username, first.actor_role) == (
        admin.pk,
        "admin@operator.pli.test",
        "operator_admin",
    )
    assert first.source_address == "203.0.113.7"
    assert first.user_agent.startswith("Mozilla/5.0 x")
    assert len(first.user_agent) == 200 and "\n" not in first.user_agent
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash
    assert (second.actor_id, second.actor_username) == (None, "")
    assert json.loads(second.detail) == {"attempts": 3, "factor": "password"}
    # The stored hash is the canonical form's, recomputed from what the database returns.
    assert first.hash == event_hash(
        first.seq,
        micros(first.occurred_at),
        first.actor_id,
        first.actor_username,
        first.actor_role,
        first.action,
        first.target,
        first.source_address,
        first.user_agent,
        first.outcome,
        first.detail,
        first.prev_hash,
    )


@pytest.mark.requirement("REQ-TRACE")
def test_the_database_reads_back_awkward_values_exactly_as_they_were_hashed(
    audit_key: Path,
) -> None:
    """PostgreSQL rebuilds the canonical form in SQL: it must agree with Python's."""
    odd = User.objects.create(username="zoë.ß😀\n3:x@pli.test", role="")
    request = RequestFactory().get(
        "/", REMOTE_ADDR="2001:DB8::0:1", HTTP_USER_AGENT="Navigateur «é» 😀 " + "ü" * 300
    )
    do_record_event("auth.login", actor=odd, request=request, target="user:Ab_+-9")
    do_record_event("keys.unlocked", detail={"count": -(2**52), "code": "a:b+c-d_e"})
    do_record_event("admin.change", outcome="denied")
    event = AuditEvent.objects.get(seq=1)
    assert event.source_address == "2001:db8::1"
    assert event.user_agent.endswith("ü") and len(event.user_agent) == 200
    assert verify_trail(operator_key(audit_key)).events == 3


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.parametrize("microsecond", [0, 1, 499_999, 999_499, 999_500, 999_999])
def test_times_are_read_back_to_the_microsecond(
    microsecond: int, clock: Clock, audit_key: Path
) -> None:
    """The verification reads times as integers computed by the database: exactly."""
    clock.now = clock.now.replace(second=59, microsecond=microsecond)
    event = do_record_event("auth.login")
    event.refresh_from_db()
    assert event.occurred_at.microsecond == microsecond
    assert verify_trail(operator_key(audit_key)).events == 1


@pytest.mark.requirement("REQ-DATA-ADMIN")
def test_the_trail_outlives_the_account_it_names() -> None:
    user = User.objects.create(username="dr.gone@pli.test")
    do_record_event("accounts.enrolled", actor=user, target=f"user:{user.pk}")
    user.delete()  # REQ-INACTIVE-DELETE: accounts go, their trail stays
    event = AuditEvent.objects.get()
    assert event.actor_username == "dr.gone@pli.test"


@pytest.mark.requirement("REQ-TRACE")
def test_an_unknown_action_is_refused_and_nothing_is_written() -> None:
    with pytest.raises(UnknownAuditAction, match=r"auth\.logn"):
        do_record_event("auth.logn")
    assert not AuditEvent.objects.exists()


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.parametrize(
    ("target", "detail"),
    [
        ("message:Résultats biologie Mme Dupont", None),  # a subject
        ("file:compte-rendu-irm.pdf", None),  # a file name
        ("mailbox:dr.martin@pli.test", None),  # an address: use the mailbox id
        ("user:12", {"subject": "Résultats biologie"}),
        ("user:12", {"file": "compte-rendu.pdf"}),
        ("user:12", {"note": "x" * 65}),
        ("user:12", {"Bad-Key": "x"}),
        ("user:12", {"nested": {"a": 1}}),
        ("user:12", {"ratio": 0.5}),
        ("user:12", {"flag": True}),
        ("user:12", {"big": 2**60}),
        ("user:12", {f"k{n}": n for n in range(9)}),
    ],
)
def test_targets_and_details_hold_identifiers_codes_and_counts_only(
    target: str, detail: dict[str, str | int] | None
) -> None:
    with pytest.raises(AuditValueRefused):
        do_record_event("admin.change", target=target, detail=detail)
    with pytest.raises(AuditValueRefused):
        do_record_event("admin.change", outcome="maybe")
    assert not AuditEvent.objects.exists()


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if isinstance(node.func, ast.Attribute):
                name = node.func.attr
            if name == "do_record_event":
                yield node


def _action_codes(node: ast.expr) -> list[str]:
    """The action codes a call can pass: literals, conditionals of them, AuditAction members."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _action_codes(node.body) + _action_codes(node.orelse)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "AuditAction"
    ):
        return [AuditAction[node.attr].value]
    raise AssertionError(f"line {node.lineno}: the action is not a literal code")


FORBIDDEN_DETAIL_KEYS = {"subject", "body", "content", "file", "filename", "name", "patient"}


@pytest.mark.requirement("REQ-TRACE")
def test_every_caller_in_the_code_passes_a_known_action_and_code_keys() -> None:
    """Typos in action codes are caught here, before they reach a request."""
    callers = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree):
            if not call.args:  # the definition's own recursive mention, if any
                continue
            callers += 1
            for code in _action_codes(call.args[0]):
                assert code in AuditAction.values, f"{path}:{call.lineno}: {code}"
            for keyword in call.keywords:
                if keyword.arg == "detail" and isinstance(keyword.value, ast.Dict):
                    for key in keyword.value.keys:
                        assert isinstance(key, ast.Constant), f"{path}:{call.lineno}"
                        assert key.value not in FORBIDDEN_DETAIL_KEYS, f"{path}:{call.lineno}"
    assert callers >= 3  # this app's own calls at least


@pytest.mark.requirement("REQ-TRACE")
def test_the_event_commits_with_the_action_or_not_at_all() -> None:
    class Failure(Exception):
        pass

    def action() -> None:
        with transaction.atomic():
            Mailbox.objects.create(address="dr.x@pli.test", kind="PER")
            do_record_event("admin.change", target="mailbox:1")
            raise Failure

    with pytest.raises(Failure):
        action()
    assert not AuditEvent.objects.exists()
    assert not Mailbox.objects.exists()
    # The chain goes on from where it was: the position of the rolled-back event is reused.
    assert do_record_event("admin.change").seq == 1


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_on_postgresql_never_fork_the_chain(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers itself (BEGIN IMMEDIATE)")
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "7")
    threads, appends = 6, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            start.wait()
            for _ in range(appends):
                with transaction.atomic():
                    do_record_event("auth.login", target=f"user:{number}")
                    # The caller's transaction goes on after its event: the lock must hold.
                    Mailbox.objects.exists()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert errors == []
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, threads * appends + 1))
    report = verify_trail(operator_key(audit_key))
    assert (report.events, report.last_checkpoint_seq) == (150, 148)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.requirement("REQ-TRACE")
def test_checkpoints_are_signed_every_n_events(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "3")
    events = record(8)
    checkpoints = list(AuditCheckpoint.objects.order_by("event_seq"))
    assert [c.event_seq for c in checkpoints] == [1, 4, 7]
    assert [c.event_hash for c in checkpoints] == [events[n].hash for n in (0, 3, 6)]
    fingerprint = keys.verifying_key_from_file(audit_key).fingerprint
    assert {c.key_fingerprint for c in checkpoints} == {fingerprint}
    report = verify_trail(operator_key(audit_key))
    assert (report.events, report.checkpoints, report.last_checkpoint_seq) == (8, 3, 7)
    assert report.unsigned_tail == 1


@pytest.mark.requirement("REQ-TRACE")
def test_checkpoints_are_signed_every_m_minutes(
    clock: Clock, audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_MINUTES", "5")
    record(2)
    clock.advance(minutes=4)
    record(1)
    clock.advance(minutes=1, seconds=1)
    record(2)
    assert list(AuditCheckpoint.objects.values_list("event_seq", flat=True)) == [4, 1]
    # A scheduled job may sign the head between appends.
    checkpoint = do_write_checkpoint()
    assert checkpoint is not None and checkpoint.event_seq == 5
    assert do_write_checkpoint() is None  # idempotent
    assert verify_trail(operator_key(audit_key)).unsigned_tail == 0


@pytest.mark.requirement("REQ-TRACE")
def test_the_default_key_is_made_once_owner_only_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLI_AUDIT_KEY_FILE")
    with override_settings(DATA_DIR=tmp_path / "data"):
        record(2)
        path = tmp_path / "data" / "audit-signing-key.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = path.read_bytes()
        monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "1")
        record(1)
        assert path.read_bytes() == first  # never replaced
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
        exit_code, output = verify_cli()
    assert exit_code == 0, output


def test_a_missing_configured_key_is_logged_and_does_not_stop_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PLI_AUDIT_KEY_FILE", str(tmp_path / "missing.pem"))
    event = do_record_event("auth.login")
    assert event.seq == 1
    assert not AuditCheckpoint.objects.exists()
    assert "audit_key_unavailable" in caplog.text


def test_settings_out_of_range_stop_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLI_AUDIT_RETENTION_DAYS", "90")
    with pytest.raises(ConfigurationError, match="PLI_AUDIT_RETENTION_DAYS must be at least 365"):
        retention_days()
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "many")
    with pytest.raises(ConfigurationError, match="PLI_AUDIT_CHECKPOINT_EVENTS"):
        do_record_event("auth.login")


# --------------------------------------------------------------------------- tampering


@pytest.mark.requirement("REQ-TRACE")
def test_an_update_through_the_application_connection_is_refused() -> None:
    record(3)
    for sql in (
        "UPDATE audit_auditevent SET target = 'user:99' WHERE seq = 2",
        "UPDATE audit_auditcheckpoint SET event_hash = 'x'",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
    assert AuditEvent.objects.get(seq=2).target == "user:1"


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.requirement("REQ-TRACE-RETENTION")
def test_postgresql_refuses_deleting_events_younger_than_a_year(clock: Clock) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no database users: the chain is what protects it there")
    clock.advance(days=-400)
    record(1)
    clock.advance(days=400)
    record(1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=2).delete()
    with transaction.atomic():  # past the retention period: the purge may
        assert AuditEvent.objects.filter(seq=1).delete()[0] == 1


@pytest.mark.requirement("REQ-TRACE")
def test_pli_audit_verify_names_the_event_altered_in_the_database(audit_key: Path) -> None:
    record(10)
    assert verify_cli()[0] == 0

    tamper("UPDATE audit_auditevent SET target = %s WHERE seq = %s", "user:666", 6)

    exit_code, output = verify_cli()
    assert exit_code == 1
    assert output.startswith(
        "pli: error: audit_hash_mismatch: event #6: its content does not match its hash"
    )
    assert "Traceback" not in output
    # The failed verification is itself traced.
    assert AuditEvent.objects.filter(action="audit.verify", outcome="failure").exists()


@pytest.mark.requirement("REQ-TRACE")
def test_an_event_rewritten_with_its_hash_breaks_the_link_to_its_successor(
    audit_key: Path,
) -> None:
    events = record(6)
    forged = events[3]
    forged_hash = event_hash(
        forged.seq,
        micros(forged.occurred_at),
        None,
        "",
        "",
        "auth.login",
        "user:666",
        "",
        "",
        "success",
        "",
        forged.prev_hash,
    )
    tamper(
        "UPDATE audit_auditevent SET target = %s, hash = %s WHERE seq = %s",
        "user:666",
        forged_hash,
        4,
    )
    with pytest.raises(AuditHashMismatch, match="event #5: the hash it records for event #4") as e:
        verify_trail(operator_key(audit_key))
    assert e.value.seq == 5


@pytest.mark.requirement("REQ-TRACE")
def test_a_deleted_event_is_named_as_the_missing_predecessor(audit_key: Path) -> None:
    record(6)
    tamper("DELETE FROM audit_auditevent WHERE seq IN (3, 4)")
    exit_code, output = verify_cli()
    assert exit_code == 1
    assert (
        "pli: error: audit_missing_predecessor: event #5: its predecessor #4 is missing"
        " (events #3 to #4)"
    ) in output


@pytest.mark.requirement("REQ-TRACE")
def test_deleting_the_oldest_events_without_a_checkpoint_is_detected(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "4")
    record(7)  # checkpoints at 1 and 5
    tamper("DELETE FROM audit_auditevent WHERE seq < 3")
    with pytest.raises(AuditMissingPredecessor, match="event #3: the events before it"):
        verify_trail(operator_key(audit_key))


@pytest.mark.requirement("REQ-TRACE")
def test_a_chain_rewritten_from_the_genesis_without_its_checkpoints_is_refused(
    audit_key: Path,
) -> None:
    """Every link intact, every hash recomputed: only a signature could pin the old chain."""
    record(5)
    with _Trigger(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditcheckpoint")
        _rewrite_from_the_genesis(cursor)
    with pytest.raises(AuditUnsigned, match="no signed checkpoint vouches for the 5 events") as e:
        verify_trail(operator_key(audit_key))
    assert e.value.seq == 1
    exit_code, output = verify_cli()
    assert exit_code == 1
    assert "pli: error: audit_unsigned: no signed checkpoint vouches for the 5 events" in output
    # What verify cannot do: the next event (here, the failed verification's own) signs
    # whatever head it finds, so the refusal holds until then (decision 0005)...
    assert AuditCheckpoint.objects.get().event_seq == 6


@pytest.mark.requirement("REQ-TRACE")
def test_signing_a_head_after_older_unsigned_events_is_logged_as_an_error(
    audit_key: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    record(3)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # a new trail: quiet
    tamper("DELETE FROM audit_auditcheckpoint")
    record(1)  # soon after: could still be a new trail's first checkpoint
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    tamper("DELETE FROM audit_auditcheckpoint")
    clock.advance(minutes=11)  # past the policy's interval: the next signing says so
    record(1)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        (
            "audit: events #1 to #5 have no checkpoint at all: signing the head now; if"
            " checkpoints were written before, they were deleted and the chain may have been"
            " rewritten: compare it with the logged 'audit checkpoint' lines"
        )
    ]
    assert AuditCheckpoint.objects.get().event_seq == 5


def _rewrite_from_the_genesis(cursor: Any) -> None:
    """Event #3's target changed, and every hash and link after it recomputed."""
    previous = "0" * 64
    for event in AuditEvent.objects.order_by("seq"):
        target = "user:666" if event.seq == 3 else event.target
        forged = event_hash(
            event.seq,
            micros(event.occurred_at),
            event.actor_id,
            event.actor_username,
            event.actor_role,
            event.action,
            target,
            event.source_address,
            event.user_agent,
            event.outcome,
            event.detail,
            previous,
        )
        cursor.execute(
            "UPDATE audit_auditevent SET target = %s, prev_hash = %s, hash = %s WHERE seq = %s",
            [target, previous, forged, event.seq],
        )
        previous = forged


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.parametrize("what", ["signature", "hash", "other_key", "truncated"])
def test_a_bad_checkpoint_is_named(
    what: str, audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "3")
    events = record(8)  # checkpoints at 1, 4 and 7
    checkpoint = AuditCheckpoint.objects.get(event_seq=4)
    if what == "signature":
        flipped = format(int(checkpoint.signature[:2], 16) ^ 1, "02x") + checkpoint.signature[2:]
        tamper(
            "UPDATE audit_auditcheckpoint SET signature = %s WHERE id = %s", flipped, checkpoint.pk
        )
        expected = f"checkpoint {checkpoint.pk} of event #4: bad signature"
    elif what == "hash":
        tamper(
            "UPDATE audit_auditcheckpoint SET event_hash = %s WHERE id = %s",
            events[4].hash,
            checkpoint.pk,
        )
        expected = f"checkpoint {checkpoint.pk} of event #4: bad signature"
    elif what == "other_key":
        audit_key.write_bytes(generate_signing_key().pem())
        expected = "checkpoint .* of event #1: signed by an unknown key"
    else:
        tamper("DELETE FROM audit_auditevent WHERE seq >= 7")
        expected = "names event #7, which is missing .*truncated"
    with pytest.raises(AuditCheckpointInvalid, match=expected):
        verify_trail(operator_key(audit_key))


@pytest.mark.requirement("REQ-TRACE")
def test_an_auditor_verifies_with_the_public_key_alone(tmp_path: Path) -> None:
    record(3)
    result = CliRunner().invoke(main, ["audit", "public-key"])
    assert result.exit_code == 0
    public = tmp_path / "audit.pub.pem"
    public.write_text(result.output)
    assert "PRIVATE" not in result.output
    exit_code, output = verify_cli("--public-key", str(public))
    assert exit_code == 0, output
    assert "journal d'audit vérifié : 3 événement(s) (n° 1 à n° 3, depuis le premier" in output
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(generate_signing_key().verifying_key().pem())
    exit_code, output = verify_cli("--public-key", str(stranger))
    assert (exit_code, output.split(":")[:3]) == (1, ["pli", " error", " audit_bad_checkpoint"])


# --------------------------------------------------------------------------- verification in parts


def _one_pass(keys: list[VerifyingKey]) -> VerificationReport | tuple[str, int | None]:
    try:
        return verify_trail(keys, workers=1)
    except AuditChainBroken as error:
        return error.code, error.seq


def _in_parts(keys: list[VerifyingKey], parts: int) -> VerificationReport | None:
    """What the processes of a long trail's verification find, run here one after another."""
    checkpoints = chain._read_checkpoints()
    bounds = AuditEvent.objects.aggregate(first=Min("seq"), last=Max("seq"))
    results = [
        chain._verify_part(first, last, 4, frozenset(c.seq for c in checkpoints))
        for first, last in chain._split(bounds["first"], bounds["last"], parts)
    ]
    signed = chain._signatures_hold(checkpoints, {key.fingerprint: key for key in keys})
    return chain._combine(results, checkpoints) if signed else None


_BROKEN = {
    "content": "UPDATE audit_auditevent SET target = 'user:666' WHERE seq = 14",
    "time": "UPDATE audit_auditevent SET occurred_at = ("
    " SELECT occurred_at FROM audit_auditevent WHERE seq = 16) WHERE seq = 15",
    "deleted": "DELETE FROM audit_auditevent WHERE seq = 8",
    "deleted_at_a_boundary": "DELETE FROM audit_auditevent WHERE seq = 11",
    "purged_unvouched": "DELETE FROM audit_auditevent WHERE seq < 10",
    "truncated": "DELETE FROM audit_auditevent WHERE seq >= 17",
    "checkpoint": "UPDATE audit_auditcheckpoint SET event_hash = ("
    " SELECT hash FROM audit_auditevent WHERE seq = 2) WHERE event_seq = 13",
}


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.parametrize("what", ["intact", "purged", "forged", *_BROKEN])
def test_the_parts_of_a_long_trail_prove_what_the_one_pass_proves_and_nothing_else(
    what: str, audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every part alone, then joined: the same report, or nothing proved (the one pass names it)."""
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "4")
    events = record(20)  # checkpoints at 1, 5, 9, 13, 17; parts 1-7, 8-14, 15-20
    if what == "purged":  # what the retention purge does (purge_expired_events)
        tamper("DELETE FROM audit_auditevent WHERE seq < 9")
        do_record_event(
            AuditAction.AUDIT_PURGE, target="audit_event:9", detail={"events": 8, "checkpoints": 0}
        )
    elif what == "forged":  # event 11 rewritten with its own hash: the link from 12 breaks
        forged = events[10]
        forged_hash = event_hash(
            11, micros(forged.occurred_at), None, "", "", "auth.login", "user:666", "", "",
            "success", "", forged.prev_hash,
        )  # fmt: skip
        tamper(
            "UPDATE audit_auditevent SET target = 'user:666', hash = %s WHERE seq = 11",
            forged_hash,
        )
    elif what in _BROKEN:
        tamper(_BROKEN[what])
    keys = operator_key(audit_key)

    one_pass = _one_pass(keys)

    if what in {"intact", "purged"}:
        assert isinstance(one_pass, VerificationReport)
        assert _in_parts(keys, 3) == _in_parts(keys, 2) == one_pass
    else:
        assert isinstance(one_pass, tuple)
        assert _in_parts(keys, 3) is None
        assert _in_parts(keys, 2) is None


@pytest.mark.requirement("REQ-TRACE")
@pytest.mark.django_db(transaction=True)
def test_a_long_trail_is_verified_by_forked_processes_and_a_broken_one_named_by_one_pass(
    audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's test database is in memory: another process cannot read it")
    if threading.active_count() > 1:
        pytest.skip("a process with threads is not forked")
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "4")
    record(30)
    keys = operator_key(audit_key)
    joined: list[VerificationReport | None] = []
    combine = chain._combine

    def spy(*args: Any) -> VerificationReport | None:
        joined.append(combine(*args))
        return joined[-1]

    monkeypatch.setattr(chain, "_combine", spy)

    report = verify_trail(keys, workers=3, parallel_from=1, chunk=4)

    assert joined == [report]  # proved by the parts
    assert report == verify_trail(keys, workers=1)
    assert (report.events, report.last_checkpoint_seq) == (30, 29)

    tamper("UPDATE audit_auditevent SET target = 'user:666' WHERE seq = 23")
    with pytest.raises(AuditHashMismatch, match="event #23: its content") as error:
        verify_trail(keys, workers=3, parallel_from=1, chunk=4)
    assert error.value.seq == 23
    assert joined[-1] is None  # the parts proved nothing: the one pass named the event


@pytest.mark.requirement("REQ-TRACE")
def test_postgresql_prepares_the_append_when_the_session_lost_it(audit_key: Path) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite appends without prepared statements")

    def prepared() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM pg_prepared_statements WHERE from_sql")
            return {row[0] for row in cursor.fetchall()}

    record(1)
    assert {"pli_audit_append", "pli_audit_last_checkpoint"} <= prepared()
    # What psycopg does after a ROLLBACK when it prepares statements (decision 0011).
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    record(1)  # finds none, prepares them in the same round trip
    record(1)  # finds them: not prepared twice (that would fail)
    assert {"pli_audit_append", "pli_audit_last_checkpoint"} <= prepared()
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]
    assert verify_trail(operator_key(audit_key)).events == 3


@pytest.mark.requirement("REQ-TRACE")
def test_postgresql_must_hash_the_form_python_prepared(monkeypatch: pytest.MonkeyPatch) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite appends hash in Python")
    record(1)
    monkeypatch.setattr(actions, "event_body", lambda *fields: chain.event_body(*fields) + "x")
    with pytest.raises(AuditError, match="another hash"), transaction.atomic():
        do_record_event("auth.login")
    assert AuditEvent.objects.count() == 1


# --------------------------------------------------------------------------- retention


def _year_old_trail(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events 1-10 from 400 days ago, then 11-14 from today; checkpoints at 1, 5, 9, 13."""
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "4")
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_MINUTES", str(60 * 24 * 1000))
    today = clock.now
    clock.now = today - dt.timedelta(days=400)
    for _ in range(10):
        record(1)
        clock.advance(minutes=1)
    clock.now = today
    record(4)


@pytest.mark.requirement("REQ-TRACE-RETENTION")
def test_the_purge_keeps_the_chain_verifiable_from_the_oldest_kept_checkpoint(
    clock: Clock, audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _year_old_trail(clock, monkeypatch)

    result = purge_expired_events(timezone.now())

    # 1-8 go; 9 and 10 are past the retention period too, but 9 is the last checkpoint
    # before the first young event: they wait, and the chain starts at 9.
    assert (result.events, result.kept_from) == (8, 9)
    assert result.checkpoints == 2  # those of events 1 and 5
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [*range(9, 16)]
    purge = AuditEvent.objects.get(action="audit.purge")
    assert json.loads(purge.detail) == {"checkpoints": 2, "events": 8}
    report = verify_trail(operator_key(audit_key))
    assert report.from_checkpoint and (report.first_seq, report.last_seq) == (9, 15)
    exit_code, output = verify_cli()
    assert exit_code == 0, output
    assert "(n° 9 à n° 15, depuis un point de contrôle signé)" in output

    # Idempotent: a second run deletes nothing more (and says so in the trail).
    again = purge_expired_events(timezone.now())
    assert (again.events, again.checkpoints, again.kept_from) == (0, 0, 9)
    assert verify_trail(operator_key(audit_key)).first_seq == 9


@pytest.mark.requirement("REQ-TRACE")
def test_events_deleted_from_the_start_without_a_purge_break_the_proof(
    clock: Clock, audit_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _year_old_trail(clock, monkeypatch)
    # The trail purged by hand, exactly up to a kept checkpoint: every remaining link and
    # signature is intact, but no audit.purge event says where the trail now starts.
    tamper("DELETE FROM audit_auditevent WHERE seq < %s", 9)
    with pytest.raises(AuditMissingPredecessor) as broken:
        verify_trail(operator_key(audit_key))
    assert broken.value.seq == 9
    exit_code, output = verify_cli()
    assert exit_code != 0 and "audit_missing_predecessor" in output


@pytest.mark.requirement("REQ-TRACE-RETENTION")
def test_the_purge_waits_for_a_checkpoint(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_EVENTS", "100")
    monkeypatch.setenv("PLI_AUDIT_CHECKPOINT_MINUTES", str(60 * 24 * 1000))
    clock.advance(days=-400)
    record(5)  # one checkpoint, at 1
    clock.advance(days=400)
    record(1)
    assert purge_expired_events(timezone.now()).events == 0
    assert AuditEvent.objects.filter(seq=1).exists()


@pytest.mark.requirement("REQ-TRACE-RETENTION")
def test_pli_audit_purge_dry_run_deletes_nothing(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _year_old_trail(clock, monkeypatch)
    result = CliRunner().invoke(main, ["audit", "purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "seraient supprimés : 8 événement(s) et 2 point(s) de contrôle antérieurs au"
        in result.output
    )
    assert AuditEvent.objects.count() == 14
    result = CliRunner().invoke(main, ["audit", "purge"])
    assert result.exit_code == 0, result.output
    assert "supprimés : 8 événement(s) et 2 point(s) de contrôle" in result.output
    assert "le journal commence à l'événement n° 9" in result.output


# --------------------------------------------------------------------------- export


@pytest.mark.requirement("REQ-TRACE")
def test_pli_audit_export_writes_json_lines_of_the_period_and_is_traced(
    clock: Clock, tmp_path: Path
) -> None:
    clock.now = dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.UTC)  # 21 Nov, 00:30 in Paris
    record(2)
    clock.now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    record(1, "admin.change")
    clock.now = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
    output = tmp_path / "audit.jsonl"

    result = CliRunner().invoke(
        main,
        [
            "audit",
            "export",
            "--since",
            "2026-11-21",
            "--until",
            "2026-11-22",
            "--output",
            str(output),
        ],
    )

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[2]["action"] == "admin.change"
    assert lines[0]["occurred_at"] == "2026-11-20T23:30:00.000000Z"
    # An export carries what is needed to check its chain again.
    for line in lines:
        detail = json.dumps(line["detail"], sort_keys=True, separators=(",", ":"))
        assert line["hash"] == event_hash(
            line["seq"],
            line["occurred_at_us"],
            line["actor_id"],
            line["actor_username"],
            line["actor_role"],
            line["action"],
            line["target"],
            line["source_address"],
            line["user_agent"],
            line["outcome"],
            detail if line["detail"] else "",
            line["prev_hash"],
        )
    export = AuditEvent.objects.get(action="audit.export")
    assert json.loads(export.detail) == {
        "events": 3,
        "since": "2026-11-20T23:00:00Z",
        "until": "2026-11-22T23:00:00Z",
    }


def test_pli_audit_export_refuses_bad_dates() -> None:
    result = CliRunner().invoke(main, ["audit", "export", "--since", "22/11", "--until", "x"])
    assert result.exit_code == 1
    assert (
        "pli: error: audit_bad_date: --since : « 22/11 » n'est pas une date (AAAA-MM-JJ[THH:MM])"
        in result.output
    )
    result = CliRunner().invoke(
        main, ["audit", "export", "--since", "2026-11-22", "--until", "2026-11-01"]
    )
    assert "audit_bad_date: --until doit venir après --since" in result.output
    english = CliRunner().invoke(
        main,
        ["audit", "export", "--since", "22/11", "--until", "x"],
        env={"PLI_LANGUAGE": "en"},
    )
    assert "audit_bad_date: --since: '22/11' is not a date (YYYY-MM-DD[THH:MM])" in (english.output)
    assert not AuditEvent.objects.exists()


# --------------------------------------------------------------------------- hooks, admin


@pytest.mark.requirement("REQ-DATA-ADMIN")
@pytest.mark.requirement("REQ-TRACE")
def test_an_admin_change_is_traced_without_the_object_text() -> None:
    admin = User.objects.create(username="admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    mailbox = Mailbox.objects.create(address="dr.secret@pli.test", kind="PER")
    with transaction.atomic():
        LogEntry.objects.log_actions(
            admin.pk, [mailbox], CHANGE, change_message="[]", single_object=True
        )
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_username, event.actor_role) == (
        "admin.change",
        "admin@operator.pli.test",
        "operator_admin",
    )
    assert event.target == f"mailbox:{mailbox.pk}"
    assert json.loads(event.detail) == {"app": "directory", "flag": "change"}
    assert "secret" not in event.target + event.detail


def test_an_admin_change_to_an_object_with_a_text_key_is_traced_by_a_hash() -> None:
    admin = User.objects.create(username="admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    LogEntry.objects.create(
        user=admin,
        content_type=ContentType.objects.get_for_model(Mailbox),
        object_id="dr.secret@pli.test",
        object_repr="dr.secret@pli.test",
        action_flag=CHANGE,
    )
    target = AuditEvent.objects.get().target
    assert target.startswith("mailbox:sha256-") and "secret" not in target


@pytest.mark.requirement("REQ-TRACE")
def test_a_finished_directory_import_is_traced_without_its_file_name() -> None:
    run = ImportRun.objects.create(kind="rpps", file_name="PS_LibreAcces_2026.txt")
    assert not AuditEvent.objects.exists()  # started: nothing yet
    run.status, run.finished_at, run.lines, run.imported = "done", timezone.now(), 12, 10
    run.save()
    event = AuditEvent.objects.get()
    assert (event.action, event.target, event.outcome) == (
        "directory.import",
        f"import:{run.pk}",
        "success",
    )
    assert json.loads(event.detail) == {
        "kind": "rpps",
        "status": "done",
        "lines": 12,
        "imported": 10,
        "rejected": 0,
        "deactivated": 0,
    }
    assert "PS_LibreAcces" not in event.detail


@pytest.mark.requirement("REQ-TRACE")
def test_the_admin_shows_the_trail_read_only_in_french() -> None:
    from tests.accounts_support import make_account, signed_in

    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    event = do_record_event("auth.login", actor=admin, target=f"user:{admin.pk}")
    client: Client = signed_in(admin)

    listing = client.get("/admin/audit/auditevent/", HTTP_ACCEPT_LANGUAGE="fr")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "événement d&#x27;audit à afficher" in page
    assert "Connexion" in page  # the action's French label
    detail = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert detail.status_code == 200
    assert 'name="target"' not in detail.content.decode()  # read-only fields, no form inputs
    for url in (
        "/admin/audit/auditevent/add/",
        f"/admin/audit/auditevent/{event.pk}/delete/",
        "/admin/audit/auditcheckpoint/add/",
    ):
        assert client.get(url).status_code == 403, url
    response = client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"target": "user:1"})
    assert response.status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).target == f"user:{admin.pk}"


def test_the_cli_group_imports_without_django_settings() -> None:
    """``pli seal`` and friends must not need server settings (commands.py's promise)."""
    code = "import pli.server.audit.cli, sys; sys.exit('django.conf' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
