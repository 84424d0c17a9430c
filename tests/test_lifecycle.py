"""The inactivity lifecycle: a warning at 11 months, deletion at 12 (REQ-INACTIVE-DELETE)."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import pyotp
import pytest
from click.testing import CliRunner
from django.core import mail
from django.test import Client, override_settings
from django.utils import dateformat, timezone, translation

from pli.client.castore import CaDirectory
from pli.client.cli import main
from pli.crypto import build_certificate_request, certificate_pem, load_crl
from pli.server.accounts import lifecycle, throttle
from pli.server.accounts.actions import do_request_access
from pli.server.accounts.lifecycle import (
    KEPT_LAST_OPERATOR_ADMIN,
    LifecycleReport,
    lifecycle_policy,
    run_lifecycle,
)
from pli.server.accounts.models import (
    Enrolment,
    MailboxKey,
    Membership,
    MembershipRole,
    Role,
    Throttle,
    TotpDevice,
    User,
    UserSession,
)
from pli.server.audit.models import AuditEvent
from pli.server.config import ConfigurationError
from pli.server.directory.actions import do_publish_mailbox_certificate
from pli.server.directory.models import Mailbox, Professional
from tests.accounts_support import PASSPHRASE, make_account, signed_in
from tests.conftest import ALICE, BOB, Pki

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def days_later(days: int) -> dt.datetime:
    return timezone.now() + days * DAY


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def run(now: dt.datetime, capture: Any, **kwargs: bool) -> LifecycleReport:
    """A run whose commit callbacks (the e-mails) are executed, as after a real commit."""
    with capture(execute=True):
        return run_lifecycle(now, **kwargs)


def login(client: Client, address: str, secret: str) -> None:
    response = client.post("/compte/connexion/", {"username": address, "passphrase": PASSPHRASE})
    assert response.status_code == 302, response.content
    # The next time step: make_account used the current one to confirm the factor.
    code = pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    response = client.post("/compte/connexion/second-facteur/", {"code": code})
    assert response.status_code == 302, response.content


# --------------------------------------------------------------------------- warning


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_an_account_is_warned_once_in_french_after_eleven_months(
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, _ = make_account(ALICE)
    make_account(BOB)
    User.objects.filter(pk=alice.pk).update(last_authenticated_at=timezone.now())

    assert run(days_later(334), django_capture_on_commit_callbacks).warned == []
    assert mail.outbox == []

    at = days_later(336)
    report = run(at, django_capture_on_commit_callbacks)
    # Bob never logged in: his clock is the day his account was made, the same day.
    assert sorted(report.warned) == sorted([alice.pk, User.objects.get(username=BOB).pk])
    warning = next(m for m in mail.outbox if m.to == [ALICE])
    assert warning.subject == "Pli : votre boîte aux lettres sera supprimée faute de connexion"
    with translation.override("fr"):
        deletion = dateformat.format(timezone.localtime(at + 30 * DAY), "j F Y")
    assert f"Sans connexion de votre part avant le {deletion}," in warning.body
    assert "/compte/connexion/" in warning.body
    alice.refresh_from_db()
    assert alice.inactivity_warned_at == at
    event = next(e for e in events("lifecycle.warned") if e.target == f"user:{alice.pk}")
    assert (event.outcome, event.detail) == ("success", '{"inactive_days":336}')
    assert ALICE not in f"{event.target} {event.detail} {event.actor_username}"

    # Idempotent: the same day, and the days after, nothing is sent again.
    for later in (at, at + DAY):
        again = run(later, django_capture_on_commit_callbacks)
        assert (again.warned, again.deleted) == ([], [])
    assert len(mail.outbox) == 2
    assert len(events("lifecycle.warned")) == 2


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_a_login_after_the_warning_restarts_the_clock(
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, secret = make_account(ALICE)
    User.objects.filter(pk=alice.pk).update(last_authenticated_at=timezone.now() - 340 * DAY)
    assert run(timezone.now(), django_capture_on_commit_callbacks).warned == [alice.pk]

    login(Client(), ALICE, secret)
    alice.refresh_from_db()
    assert alice.inactivity_warned_at is None
    assert alice.last_authenticated_at is not None
    assert timezone.now() - alice.last_authenticated_at < dt.timedelta(minutes=1)

    # 31 days after the warning: no deletion, the account is fresh again.
    report = run(days_later(31), django_capture_on_commit_callbacks)
    assert (report.warned, report.deleted) == ([], [])
    assert User.objects.filter(pk=alice.pk).exists()


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_a_warning_that_cannot_be_mailed_is_undone_and_retried(
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, _ = make_account(ALICE)
    with socket.socket() as probe:  # a port where nothing listens: the SMTP server is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": port,
        "EMAIL_USE_TLS": False,
        "EMAIL_TIMEOUT": 5,
    }
    at = days_later(336)
    with override_settings(**smtp):
        report = run(at, django_capture_on_commit_callbacks)
    assert report.warned == [alice.pk]
    assert report.mail_failed == [alice.pk]
    assert not report.ok
    alice.refresh_from_db()
    assert alice.inactivity_warned_at is None
    assert [(e.outcome, e.detail) for e in events("lifecycle.warned")] == [
        ("success", '{"inactive_days":336}'),
        ("failure", '{"reason":"mail_failed"}'),
    ]
    # The next day the mail server is back: the warning goes, and the notice starts then.
    report = run(at + DAY, django_capture_on_commit_callbacks)
    assert report.warned == [alice.pk]
    assert [m.to for m in mail.outbox] == [[ALICE]]
    assert run(at + 31 * DAY, django_capture_on_commit_callbacks).deleted == [alice.pk]


# --------------------------------------------------------------------------- deletion


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_after_twelve_months_the_mailbox_content_keys_and_account_are_deleted(
    pki: Pki, django_capture_on_commit_callbacks: Any
) -> None:
    alice, _ = make_account(ALICE)
    bob, _ = make_account(BOB)
    mailbox = Mailbox.objects.get(address=ALICE)
    shared = Mailbox.objects.create(address="secretariat@pli.test", kind="ORG")
    # Alice's key, and its copy for Bob, her substitute.
    for holder in (alice, bob):
        MailboxKey.objects.create(
            user=holder, mailbox=mailbox, certificate_fingerprint="a" * 64, wrapped_key=b"k"
        )
    Membership.objects.create(user=bob, mailbox=mailbox, role=MembershipRole.SUBSTITUTE)
    # Alice is a member of a shared mailbox, as Bob is.
    for member in (alice, bob):
        Membership.objects.create(user=member, mailbox=shared, role=MembershipRole.MEMBER)
        MailboxKey.objects.create(
            user=member, mailbox=shared, certificate_fingerprint="b" * 64, wrapped_key=b"k"
        )
    certificate = do_publish_mailbox_certificate(
        mailbox, certificate_pem(pki.alice.certificate).decode()
    )
    signed_in(alice)
    throttle.record_failure(throttle.account_key(ALICE))
    User.objects.filter(pk=bob.pk).update(last_authenticated_at=days_later(360))

    assert run(days_later(336), django_capture_on_commit_callbacks).warned == [alice.pk]
    # The deletion waits for the full notice after the warning.
    assert run(days_later(365), django_capture_on_commit_callbacks).deleted == []
    deleted_at = days_later(366)
    report = run(deleted_at, django_capture_on_commit_callbacks)
    assert (report.deleted, report.failed, report.kept) == ([alice.pk], [], [])

    assert not User.objects.filter(pk=alice.pk).exists()
    assert not MailboxKey.objects.filter(mailbox=mailbox).exists()
    assert not Membership.objects.filter(mailbox=mailbox).exists()
    assert list(MailboxKey.objects.filter(mailbox=shared).values_list("user", flat=True)) == [
        bob.pk
    ]
    assert list(Membership.objects.filter(mailbox=shared).values_list("user", flat=True)) == [
        bob.pk
    ]
    certificate.refresh_from_db()
    assert certificate.revoked_at == deleted_at
    assert not UserSession.objects.filter(user_id=alice.pk).exists()
    assert not TotpDevice.objects.filter(user_id=alice.pk).exists()
    assert not Throttle.objects.filter(key=throttle.account_key(ALICE)).exists()
    # The directory entry stays: it is public directory data, not the user's.
    assert Mailbox.objects.filter(address=ALICE, active=True).exists()
    assert Professional.objects.filter(mailboxes=mailbox).exists()

    (event,) = events("lifecycle.deleted")
    assert event.target == f"user:{alice.pk}"
    assert json.loads(event.detail) == {
        "messages": 0,
        "mailbox_keys": 3,
        "certificates": 1,
        "memberships": 2,
        "rotated": 0,
        "sessions": 1,
        "factors": 1,
    }
    assert "@" not in f"{event.target} {event.detail} {event.actor_username}"
    (revoked,) = events("keys.certificate_revoked")
    assert (revoked.target, json.loads(revoked.detail)) == (
        f"mailbox:{mailbox.pk}",
        {"serial": certificate.serial, "reason": "cessation_of_operation"},
    )
    # Alice left the shared mailbox through custody's action (which rotates a shared key).
    (unshared,) = events("keys.unshared")
    assert unshared.target == f"mailbox:{shared.pk}"

    # Idempotent: a second run the same day changes nothing more.
    again = run(deleted_at, django_capture_on_commit_callbacks)
    assert (again.warned, again.deleted) == ([], [])
    assert len(events("lifecycle.deleted")) == 1
    # The professional may enrol again: the directory still knows the mailbox.
    do_request_access(ALICE, None)
    assert Enrolment.objects.filter(address=ALICE, used_at__isnull=True).exists()


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_certificates_of_the_operator_ca_are_revoked_in_its_crl(
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    ca_dir = tmp_path / "ca"
    ca = CaDirectory.create(ca_dir, "Opérateur de test", "ca passphrase")
    alice, _ = make_account(ALICE)
    csr = build_certificate_request(pki.keys["alice"], email=ALICE, common_name="Alice Martin")
    certificate = ca.issue(csr)
    row = do_publish_mailbox_certificate(
        Mailbox.objects.get(address=ALICE), certificate_pem(certificate)
    )
    with override_settings(PLI_CA_DIR=ca_dir):
        run(days_later(336), django_capture_on_commit_callbacks)
        # A CA that is there but cannot be opened: the deletion waits, with a code.
        monkeypatch.setenv("PLI_CA_PASSPHRASE", "not the passphrase")
        failed = run(days_later(366), django_capture_on_commit_callbacks)
        assert (failed.deleted, failed.failed) == ([], [(alice.pk, "ca_not_configured")])
        assert User.objects.filter(pk=alice.pk).exists()

        monkeypatch.setenv("PLI_CA_PASSPHRASE", "ca passphrase")
        report = run(days_later(367), django_capture_on_commit_callbacks)
    assert (report.deleted, report.failed) == ([alice.pk], [])
    crl = load_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None
    row.refresh_from_db()
    assert row.revoked_at is not None


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_an_account_found_late_is_warned_first_and_deleted_after_the_notice(
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, _ = make_account(ALICE)
    User.objects.filter(pk=alice.pk).update(last_authenticated_at=timezone.now() - 400 * DAY)
    now = timezone.now()
    first = run(now, django_capture_on_commit_callbacks)
    assert (first.warned, first.deleted) == ([alice.pk], [])
    assert run(now + 29 * DAY, django_capture_on_commit_callbacks).deleted == []
    assert run(now + 30 * DAY, django_capture_on_commit_callbacks).deleted == [alice.pk]


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_a_failing_deletion_is_rolled_back_and_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    alice, _ = make_account(ALICE)
    bob, _ = make_account(BOB)
    MailboxKey.objects.create(
        user=alice,
        mailbox=Mailbox.objects.get(address=ALICE),
        certificate_fingerprint="a" * 64,
        wrapped_key=b"k",
    )

    def refuse_alice(mailbox: Mailbox) -> int:
        if mailbox.address == ALICE:
            raise RuntimeError("the messaging store is unavailable")
        return 0

    # The hook the messaging app fills: its failure must leave the account whole.
    monkeypatch.setattr(lifecycle, "delete_mailbox_content", refuse_alice)
    run(days_later(336), django_capture_on_commit_callbacks)
    report = run(days_later(366), django_capture_on_commit_callbacks)
    assert report.deleted == [bob.pk]
    assert report.failed == [(alice.pk, "RuntimeError")]
    assert User.objects.filter(pk=alice.pk).exists()
    assert MailboxKey.objects.filter(user=alice).exists()
    assert [e.target for e in events("lifecycle.deleted")] == [f"user:{bob.pk}"]


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_the_last_operator_admin_is_warned_but_kept(
    django_capture_on_commit_callbacks: Any,
) -> None:
    first, _ = make_account("admin1@pli.test", role=Role.OPERATOR_ADMIN)
    second, _ = make_account("admin2@pli.test", role=Role.OPERATOR_ADMIN)
    dpo, _ = make_account("dpo@pli.test", role=Role.DPO)
    warned = run(days_later(336), django_capture_on_commit_callbacks).warned
    assert sorted(warned) == sorted([first.pk, second.pk, dpo.pk])

    dry = run(days_later(366), django_capture_on_commit_callbacks, dry_run=True)
    assert (dry.deleted, dry.kept) == ([first.pk, dpo.pk], [(second.pk, KEPT_LAST_OPERATOR_ADMIN)])
    report = run(days_later(366), django_capture_on_commit_callbacks)
    assert (report.deleted, report.kept) == (dry.deleted, dry.kept)
    assert list(User.objects.values_list("pk", flat=True)) == [second.pk]
    # Reported every day, until another administrator exists or it logs in.
    assert run(days_later(367), django_capture_on_commit_callbacks).kept == dry.kept


# --------------------------------------------------------------------------- dry run, settings, CLI


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_a_dry_run_reports_the_same_accounts_and_changes_nothing(
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, _ = make_account(ALICE)
    bob, _ = make_account(BOB)
    User.objects.filter(pk=bob.pk).update(
        last_authenticated_at=timezone.now() - 366 * DAY,
        inactivity_warned_at=timezone.now() - 31 * DAY,
    )
    User.objects.filter(pk=alice.pk).update(last_authenticated_at=timezone.now() - 340 * DAY)
    before = (list(User.objects.order_by("pk").values()), AuditEvent.objects.count())

    dry = run(timezone.now(), django_capture_on_commit_callbacks, dry_run=True)
    assert (dry.warned, dry.deleted, dry.dry_run) == ([alice.pk], [bob.pk], True)
    assert (list(User.objects.order_by("pk").values()), AuditEvent.objects.count()) == before
    assert mail.outbox == []

    real = run(timezone.now(), django_capture_on_commit_callbacks)
    assert (real.warned, real.deleted) == (dry.warned, dry.deleted)


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_the_periods_come_from_the_settings_and_stay_within_a_year(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = lifecycle_policy()
    assert (policy.warn_days, policy.delete_days, policy.notice) == (335, 365, 30 * DAY)
    monkeypatch.setenv("PLI_INACTIVITY_WARN_DAYS", "300")
    monkeypatch.setenv("PLI_INACTIVITY_DELETE_DAYS", "330")
    assert lifecycle_policy().notice == 30 * DAY
    for warn, delete, named in (
        ("335", "400", "PLI_INACTIVITY_DELETE_DAYS"),  # REQ-INACTIVE-DELETE: one year at most
        ("365", "365", "PLI_INACTIVITY_WARN_DAYS"),
        ("0", "365", "PLI_INACTIVITY_WARN_DAYS"),
        ("onze mois", "365", "PLI_INACTIVITY_WARN_DAYS"),
    ):
        monkeypatch.setenv("PLI_INACTIVITY_WARN_DAYS", warn)
        monkeypatch.setenv("PLI_INACTIVITY_DELETE_DAYS", delete)
        with pytest.raises(ConfigurationError, match=named):
            lifecycle_policy()


@pytest.mark.requirement("REQ-INACTIVE-DELETE")
def test_pli_lifecycle_run_reports_ids_and_counts() -> None:
    alice, _ = make_account(ALICE)
    at = days_later(336).date().isoformat() + "T12:00:00"
    runner = CliRunner()

    dry = runner.invoke(main, ["lifecycle", "run", "--dry-run", "--now", at, "--json"])
    assert dry.exit_code == 0, dry.output
    (job,) = json.loads(dry.stdout)["jobs"]
    assert (job["job"], job["status"]) == ("lifecycle", "ok")
    assert job["data"]["warned"] == {"count": 1, "accounts": [alice.pk]}
    assert job["data"]["dry_run"] is True
    assert ALICE not in dry.output
    alice.refresh_from_db()
    assert alice.inactivity_warned_at is None

    # A date in the future, for real: refused (it would warn and delete before time).
    early = runner.invoke(main, ["lifecycle", "run", "--now", at])
    assert early.exit_code == 2
    assert "bad_value: valeur refusée pour --now : une date future demande --dry-run" in (
        early.output
    )
    alice.refresh_from_db()
    assert alice.inactivity_warned_at is None

    # For real, the same account once its 336 days have passed.
    User.objects.filter(pk=alice.pk).update(
        last_authenticated_at=timezone.now() - dt.timedelta(days=336),
        date_joined=timezone.now() - dt.timedelta(days=400),
    )
    real = runner.invoke(main, ["lifecycle", "run"])
    assert real.exit_code == 0, real.output
    assert "[ok] lifecycle" in real.output
    assert f"avertis : 1 (comptes {alice.pk})" in real.output
    assert "supprimés : 0" in real.output
    assert User.objects.filter(pk=alice.pk, inactivity_warned_at__isnull=False).exists()

    bad = runner.invoke(main, ["lifecycle", "run", "--now", "bientôt"])
    assert bad.exit_code == 2
    assert (
        "pli: error: bad_value: valeur refusée pour --now : « bientôt » n'est ni une date"
        in bad.output
    )
