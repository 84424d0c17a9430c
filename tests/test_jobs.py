"""The daily job runner: each job on its own, idempotent, a dry run that changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone

from pli.client.cli import main
from pli.server.accounts import lifecycle, throttle
from pli.server.accounts.models import Enrolment, Throttle, User, UserSession
from pli.server.audit.actions import CHAIN_LOCK, do_record_event
from pli.server.audit.models import AuditAction, AuditCheckpoint, AuditEvent
from pli.server.config import ConfigurationError
from pli.server.jobs import DAILY_JOBS, DailyJob, JobSummary, job_names, run_daily, run_job
from pli.server.lifecycle_cli import JOB_NAMES
from tests.accounts_support import make_account

pytestmark = pytest.mark.django_db

HOUR = dt.timedelta(hours=1)


def write_throttle(key: str) -> JobSummary:
    Throttle.objects.create(key=key, window_started_at=timezone.now())
    return JobSummary(f"wrote {key}", {"key": key})


def test_the_cli_knows_every_job_of_the_registry() -> None:
    assert tuple(job_names()) == JOB_NAMES
    listing = CliRunner().invoke(main, ["jobs", "list"])
    assert listing.exit_code == 0, listing.output
    assert [line.split(":")[0] for line in listing.output.splitlines()] == list(JOB_NAMES)


def test_a_failing_job_is_rolled_back_and_the_others_still_run() -> None:
    def half_done_then_broken(now: dt.datetime, dry_run: bool) -> JobSummary:
        write_throttle("first")
        raise RuntimeError("disk full")

    def misconfigured(now: dt.datetime, dry_run: bool) -> JobSummary:
        write_throttle("second")
        raise ConfigurationError("PLI_SOMETHING must be a whole number")

    jobs = [
        DailyJob("broken", half_done_then_broken),
        DailyJob("misconfigured", misconfigured),
        DailyJob("fine", lambda now, dry_run: write_throttle("third")),
    ]
    results = run_daily(jobs=jobs)
    assert [(r.name, r.status) for r in results] == [
        ("broken", "failed"),
        ("misconfigured", "failed"),
        ("fine", "ok"),
    ]
    # An unexpected error says nothing of itself (see the log); a domain error says its code.
    assert results[0].error == "internal_error: unexpected failure (see the server log)"
    assert results[1].error == "configuration_error: PLI_SOMETHING must be a whole number"
    assert list(Throttle.objects.values_list("key", flat=True)) == ["third"]


def test_a_dry_run_changes_nothing_even_if_a_job_writes() -> None:
    careless = DailyJob("careless", lambda now, dry_run: write_throttle("dry"))
    (result,) = run_daily(dry_run=True, jobs=[careless])
    assert (result.status, result.summary) == ("ok", JobSummary("wrote dry", {"key": "dry"}))
    assert not Throttle.objects.exists()


def test_a_job_that_reports_failures_is_failed() -> None:
    partial = DailyJob("partial", lambda now, dry_run: JobSummary("2 of 3", ok=False))
    (result,) = run_daily(jobs=[partial])
    assert (result.status, result.error) == ("failed", None)


def test_unknown_job_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown job"):
        run_daily(only=["nightly_backup"])


def test_expired_account_records_are_deleted_once() -> None:
    now = timezone.now()
    user, _ = make_account("alice.martin@pli.test")

    def enrolment(address: str, expires_at: dt.datetime) -> Enrolment:
        return Enrolment.objects.create(
            address=address, channel="request", code_hash=address, expires_at=expires_at
        )

    enrolment("expired@pli.test", now - HOUR)
    enrolment("pending@pli.test", now + HOUR)
    used = enrolment("alice.martin@pli.test", now - 48 * HOUR)
    Enrolment.objects.filter(pk=used.pk).update(user=user, used_at=now - 50 * HOUR)
    Throttle.objects.create(key="address:192.0.2.1", window_started_at=now - 2 * HOUR)
    Throttle.objects.create(
        key="account:locked@pli.test",
        window_started_at=now - 2 * HOUR,
        locked_until=now + HOUR,
    )
    throttle.record_failure("address:192.0.2.2")  # a window still open

    def session(key: str, created: dt.datetime, seen: dt.datetime, revoked: bool) -> None:
        UserSession.objects.create(
            user=user,
            key_hash=key,
            method="test",
            created_at=created,
            last_seen_at=seen,
            revoked_at=now if revoked else None,
        )

    session("live", now - HOUR, now, revoked=False)
    session("revoked", now - HOUR, now, revoked=True)
    session("idle", now - 2 * HOUR, now - HOUR, revoked=False)
    session("too-old", now - 13 * HOUR, now, revoked=False)
    old = SessionStore()
    old.set_expiry(1)
    old.create()
    Session.objects.filter(session_key=old.session_key).update(expire_date=now - HOUR)
    SessionStore().create()

    expected = {"enrolments": 1, "throttles": 1, "user_sessions": 3, "django_sessions": 1}
    (dry,) = run_daily(dry_run=True, only=["account_records"])
    assert dry.summary is not None
    assert dry.summary.data == expected
    assert Enrolment.objects.count() == 3

    (real,) = run_daily(only=["account_records"])
    assert real.summary is not None
    assert real.summary.data == expected
    assert real.summary.text.startswith("supprimés : enrolments 1, throttles 1, user_sessions 3")
    assert sorted(Enrolment.objects.values_list("address", flat=True)) == [
        "alice.martin@pli.test",
        "pending@pli.test",
    ]
    assert sorted(Throttle.objects.values_list("key", flat=True)) == [
        "account:locked@pli.test",
        "address:192.0.2.2",
    ]
    assert list(UserSession.objects.values_list("key_hash", flat=True)) == ["live"]
    assert Session.objects.count() == 1

    (again,) = run_daily(only=["account_records"])
    assert again.summary is not None
    assert set(again.summary.data.values()) == {0}


@pytest.mark.requirement("REQ-TRACE-RETENTION")
def test_the_audit_jobs_purge_and_sign_through_the_audit_app() -> None:
    do_record_event(AuditAction.ADMIN_CHANGE, target="user:1")
    do_record_event(AuditAction.ADMIN_CHANGE, target="user:2")

    retention, checkpoint = run_daily(only=["audit_retention", "audit_checkpoint"])
    assert (retention.status, checkpoint.status) == ("ok", "ok")
    assert retention.summary is not None
    # Nothing is a year old here: nothing goes, the chain is untouched.
    assert (retention.summary.data["events"], retention.summary.data["checkpoints"]) == (0, 0)
    assert "de plus de 365 jours" in retention.summary.text
    # The head (the purge's own event, if it wrote one) is signed.
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True)[0]
    assert checkpoint.summary is not None
    assert checkpoint.summary.data["event"] == head
    assert checkpoint.summary.text == f"signé : point de contrôle à l'événement n° {head}"
    assert AuditCheckpoint.objects.filter(event_seq=head).exists()

    (again,) = run_daily(only=["audit_checkpoint"])
    assert again.summary is not None
    assert again.summary.text == "rien à signer"


def test_the_whole_daily_run_twice_does_nothing_the_second_time() -> None:
    make_account("alice.martin@pli.test")
    do_record_event(AuditAction.ADMIN_CHANGE, target="user:1")
    first = run_daily()
    assert [(r.name, r.status) for r in first] == [(name, "ok") for name in JOB_NAMES]
    seen = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True)[0]
    second = run_daily()
    assert [r.status for r in second] == ["ok"] * len(DAILY_JOBS)
    second_lifecycle = second[0].summary
    assert second_lifecycle is not None
    assert second_lifecycle.data["warned"]["count"] == 0
    assert second_lifecycle.data["deleted"]["count"] == 0
    # Only the retention's own record that it ran (with zero counts) is new.
    new = AuditEvent.objects.filter(seq__gt=seen)
    assert set(new.values_list("action", flat=True)) <= {AuditAction.AUDIT_PURGE}
    assert all(event.detail == '{"checkpoints":0,"events":0}' for event in new)


def test_pli_jobs_run_daily_prints_a_summary_and_exits_1_when_a_job_fails() -> None:
    runner = CliRunner()
    dry = runner.invoke(main, ["jobs", "run-daily", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    for name in JOB_NAMES:
        assert f"[ok] {name}" in dry.output
    assert "seraient supprimés" in dry.output

    as_json = runner.invoke(main, ["jobs", "run-daily", "--json", "--only", "account_records"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert [job["job"] for job in report["jobs"]] == ["account_records"]

    # REQ-INACTIVE-DELETE: a period over a year is refused; the other jobs run all the same.
    broken = runner.invoke(main, ["jobs", "run-daily"], env={"PLI_INACTIVITY_DELETE_DAYS": "400"})
    assert broken.exit_code == 1, broken.output
    assert "[failed] lifecycle" in broken.output
    assert "erreur : configuration_error: PLI_INACTIVITY_DELETE_DAYS must be at most 365" in (
        broken.output
    )
    assert "[ok] account_records" in broken.output
    assert "[ok] audit_retention" in broken.output


@pytest.mark.django_db
def test_the_operator_crl_is_republished_daily(settings: Any, tmp_path: Any) -> None:
    from pli.client.castore import CaDirectory
    from pli.crypto import load_crl
    from pli.server.jobs import _operator_crl

    settings.PLI_CA_DIR = tmp_path / "ca"
    now = timezone.now()
    assert _operator_crl(now, False).data == {"published": False}  # no CA: nothing to do
    CaDirectory.create(tmp_path / "ca", "Test operator", "a long enough passphrase")
    (tmp_path / "ca" / "passphrase").write_text("a long enough passphrase")
    assert _operator_crl(now, True).data == {"published": False}
    summary = _operator_crl(now, False)
    assert summary.data == {"published": True}
    crl = load_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None and crl.next_update_utc > now


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_the_lifecycle_job_lets_go_of_the_audit_chain_between_accounts() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's advisory lock (SQLite serialises its writers anyway)")
    first, _ = make_account("dr.first@cabinet.pli.test")
    second, _ = make_account("dr.second@cabinet.pli.test")
    long_ago = timezone.now() - dt.timedelta(days=340)
    User.objects.filter(pk__in=[first.pk, second.pk]).update(
        last_authenticated_at=long_ago, date_joined=long_ago
    )
    free_meanwhile: list[bool] = []
    real = lifecycle.do_warn_inactive_account

    def warn(user: User, *args: Any) -> bool:
        if user.pk == second.pk:
            # The first account is done (its warning event appended): can a login, on
            # another connection, take the chain's lock now?
            settings = connection.settings_dict
            with psycopg.connect(
                host=settings["HOST"],
                port=settings["PORT"] or 5432,
                user=settings["USER"],
                dbname=settings["NAME"],
                autocommit=True,
            ) as other:
                row = other.execute("SELECT pg_try_advisory_lock(%s)", [CHAIN_LOCK]).fetchone()
                free_meanwhile.append(bool(row and row[0]))
                other.execute("SELECT pg_advisory_unlock_all()")
        return real(user, *args)

    job = next(job for job in DAILY_JOBS if job.name == "lifecycle")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lifecycle, "do_warn_inactive_account", warn)
        result = run_job(job, timezone.now())
    assert result.status == "ok", result.error
    assert sorted(result.summary.data["warned"]["accounts"]) == sorted([first.pk, second.pk])  # type: ignore[union-attr]
    assert free_meanwhile == [True]
