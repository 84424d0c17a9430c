"""The inactivity lifecycle of accounts: warning, then deletion (REQ-INACTIVE-DELETE).

REQ-INACTIVE-DELETE: "A mailbox whose user has not authenticated for one year
(at most) is deleted, through an organised process (warning, then deletion)."

The clock of an account is its last complete authentication
(``User.last_authenticated_at``, written by
:func:`pli.server.accounts.sessions.complete_login`), or the day the account
was created when it never logged in. A daily job (:func:`run_lifecycle`,
``pli lifecycle run`` or ``pli jobs run-daily``) then:

* **warns** every account whose clock is older than ``PLI_INACTIVITY_WARN_DAYS``
  (default 335, about 11 months) and that has not been warned yet: a French
  e-mail to the account's address, ``inactivity_warned_at`` set, a
  ``lifecycle.warned`` audit event. A login clears the warning
  (``complete_login``), so the next period of inactivity is warned again.
* **deletes** every account warned at least ``PLI_INACTIVITY_DELETE_DAYS -
  PLI_INACTIVITY_WARN_DAYS`` days ago (30 by default) and still without a
  login: the content of its mailbox (:func:`delete_mailbox_content`, the
  messaging app's hook), the keys of its mailbox with the copies wrapped to
  its substitutes, its certificates (revoked in the operator CA, CRL
  published, and in the directory), the memberships of its mailbox; it leaves
  the shared mailboxes it belongs to through custody's action, which rotates
  their key; then the account row goes with its sessions, factors, recovery
  codes and charter acknowledgements (database cascades), and the activation
  codes and throttle counters that name its address. A ``lifecycle.deleted``
  audit event records identifiers and counts only.

Deletion always follows a warning by the full notice period, even when the job
did not run for a while (the "organised process"): with a daily run and the
defaults, an account goes on the day after its 365th day without login; later
only if the job was not running when its warning was due, because the notice
is never shortened.

What is *not* deleted: the directory entry (``Professional`` and ``Mailbox``),
national or local. It is the operator's directory, not the user's data; the
national entries come back at the next import anyway, and keeping the entry
lets the professional enrol again later by asking for a new activation code.
Without a key or a valid certificate the mailbox can no longer receive
anything sealed. Removing a local directory entry is a directory
administration act, done in the admin console.

Disabled accounts (``is_active`` false) follow the same clock: they cannot log
in, so they are warned and then deleted like the others.

Operator accounts (admin, DPO, support) follow the same rule: the requirement
speaks of mailboxes, which they do not hold, but a privileged account unused
for a year is an open door (REQ-AUTH-STRONG); one rule is also simpler to
explain and to check. One exception: the last active operator administrator
is never deleted (it is warned, and reported as kept), so that the job never
leaves the operator without anyone able to run the admin console.

Every step is idempotent (CONVENTIONS, habit 11): a warning is claimed with a
conditional update, a deletion re-reads its account under a row lock with the
same conditions, so a second run the same day, or two runs at once, change
nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from pli.server.accounts import operator_ca, throttle
from pli.server.accounts.custody import SHARED_KINDS, do_remove_mailbox_member
from pli.server.accounts.models import (
    Enrolment,
    MailboxKey,
    Membership,
    Role,
    Throttle,
    User,
    UserSession,
)
from pli.server.accounts.sessions import absolute_timeout, idle_timeout
from pli.server.audit.actions import do_record_event
from pli.server.audit.models import AuditAction
from pli.server.config import ConfigurationError, setting
from pli.server.directory.models import Mailbox, MailboxCertificate, MailboxType

logger = logging.getLogger(__name__)

WARN_DAYS_DEFAULT = 335
DELETE_DAYS_DEFAULT = 365
#: REQ-INACTIVE-DELETE: "one year (at most)": a longer period is refused at start.
DELETE_DAYS_MAX = 365

#: RFC 5280 §5.3.1: the certificate is no longer needed (its mailbox is deleted).
REVOCATION_REASON = "cessation_of_operation"

# Stable codes of the report (part of `pli lifecycle run --json`).
KEPT_LAST_OPERATOR_ADMIN = "last_operator_admin"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LifecyclePolicy:
    warn_days: int
    delete_days: int

    @property
    def notice(self) -> dt.timedelta:
        """The least time between the warning and the deletion."""
        return dt.timedelta(days=self.delete_days - self.warn_days)


def _days(name: str, default: int) -> int:
    raw = setting(name, str(default)) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"PLI_{name} must be a whole number of days, not {raw!r}"
        ) from None


def lifecycle_policy() -> LifecyclePolicy:
    """``PLI_INACTIVITY_WARN_DAYS`` and ``PLI_INACTIVITY_DELETE_DAYS``, checked (fail loudly)."""
    warn = _days("INACTIVITY_WARN_DAYS", WARN_DAYS_DEFAULT)
    delete = _days("INACTIVITY_DELETE_DAYS", DELETE_DAYS_DEFAULT)
    if delete > DELETE_DAYS_MAX:
        raise ConfigurationError(
            f"PLI_INACTIVITY_DELETE_DAYS must be at most {DELETE_DAYS_MAX}"
            " (REQ-INACTIVE-DELETE: one year at most)"
        )
    if not 1 <= warn < delete:
        raise ConfigurationError(
            "PLI_INACTIVITY_WARN_DAYS must be at least 1 and less than PLI_INACTIVITY_DELETE_DAYS"
        )
    return LifecyclePolicy(warn, delete)


# --------------------------------------------------------------------------- selection


def inactive_since(cutoff: dt.datetime) -> Q:
    """Accounts whose clock (last authentication, else creation) is at or before *cutoff*."""
    return Q(last_authenticated_at__lte=cutoff) | Q(
        last_authenticated_at__isnull=True, date_joined__lte=cutoff
    )


def accounts_to_warn(now: dt.datetime, policy: LifecyclePolicy) -> QuerySet[User]:
    return User.objects.filter(
        inactive_since(now - dt.timedelta(days=policy.warn_days)),
        inactivity_warned_at__isnull=True,
    ).order_by("pk")


def accounts_to_delete(now: dt.datetime, policy: LifecyclePolicy) -> QuerySet[User]:
    # The warning must be at least the notice period old, whenever it was sent.
    return User.objects.filter(
        inactive_since(now - dt.timedelta(days=policy.delete_days)),
        inactivity_warned_at__lte=now - policy.notice,
    ).order_by("pk")


def enrolled_mailbox(user: User) -> Mailbox | None:
    """The personal mailbox the account was enrolled for: its login is that address.

    Not every personal mailbox of the professional: the national directory also
    lists the ones other operators host, which are not Pli's to delete. Active
    or not (unlike ``custody.personal_mailbox``): a mailbox the directory import
    deactivated still has keys and content to delete.
    """
    return Mailbox.objects.filter(address=user.username, kind=MailboxType.PERSONAL).first()


def _is_operator_admin(user: User) -> bool:
    return user.role == Role.OPERATOR_ADMIN or user.is_superuser


def _other_operator_admins(user: User, leaving: Collection[int] = ()) -> bool:
    """Another active operator admin stays, *leaving* (ids a dry run would delete) apart."""
    return (
        User.objects.filter(Q(role=Role.OPERATOR_ADMIN) | Q(is_superuser=True), is_active=True)
        .exclude(pk=user.pk)
        .exclude(pk__in=list(leaving))
        .exists()
    )


# --------------------------------------------------------------------------- report


@dataclass
class LifecycleReport:
    """What a run did (or, for a dry run, would do): account ids and counts only."""

    now: dt.datetime
    dry_run: bool
    policy: LifecyclePolicy
    warned: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    #: (account id, reason code): due for deletion but kept on purpose.
    kept: list[tuple[int, str]] = field(default_factory=list)
    #: (account id, error code): the step failed and was rolled back; retried at the next run.
    failed: list[tuple[int, str]] = field(default_factory=list)
    #: Warnings whose e-mail could not be sent: undone, so retried at the next run.
    mail_failed: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.mail_failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "warn_days": self.policy.warn_days,
            "delete_days": self.policy.delete_days,
            "warned": {"count": len(self.warned), "accounts": self.warned},
            "deleted": {"count": len(self.deleted), "accounts": self.deleted},
            "kept": [{"account": pk, "reason": reason} for pk, reason in self.kept],
            "failed": [{"account": pk, "code": code} for pk, code in self.failed],
            "mail_failed": self.mail_failed,
        }

    def describe(self) -> str:
        def ids(values: list[int]) -> str:
            if not values:
                return ""
            return " " + _("(comptes %(ids)s)") % {"ids": ", ".join(map(str, values))}

        policy = {"warn": self.policy.warn_days, "delete": self.policy.delete_days}
        if self.dry_run:
            head = _(
                "cycle de vie (essai) : inactif depuis %(warn)s jours : avertir ; depuis"
                " %(delete)s jours : supprimer"
            )
            warned, deleted = _("seraient avertis : %(count)s"), _("seraient supprimés : %(count)s")
        else:
            head = _(
                "cycle de vie : inactif depuis %(warn)s jours : avertir ; depuis %(delete)s"
                " jours : supprimer"
            )
            warned, deleted = _("avertis : %(count)s"), _("supprimés : %(count)s")
        lines = [
            head % policy,
            warned % {"count": len(self.warned)} + ids(self.warned),
            deleted % {"count": len(self.deleted)} + ids(self.deleted),
        ]
        lines += [
            _("gardé : compte %(id)s : %(reason)s") % {"id": pk, "reason": reason}
            for pk, reason in self.kept
        ]
        lines += [
            _("échec : compte %(id)s : %(code)s") % {"id": pk, "code": code}
            for pk, code in self.failed
        ]
        if self.mail_failed:
            lines.append(
                _("courriel d'avertissement non envoyé, réessayé à la prochaine exécution")
                + ids(self.mail_failed)
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- warning


def _send_inactivity_warning(address: str, last_seen: dt.datetime, deletion: dt.datetime) -> None:
    # French first: the professionals' language (as the activation e-mail).
    with translation.override("fr"):
        body = render_to_string(
            "accounts/email/inactivity_warning.txt",
            {
                "last_seen": last_seen,
                "deletion": deletion,
                "base_url": settings.PLI_BASE_URL,
            },
        )
        send_mail(
            _("Pli : votre boîte aux lettres sera supprimée faute de connexion"),
            body,
            settings.DEFAULT_FROM_EMAIL,
            [address],
        )


def _warning_sent_or_undone(
    user_id: int,
    address: str,
    *,
    last_seen: dt.datetime,
    warned_at: dt.datetime,
    policy: LifecyclePolicy,
    report: LifecycleReport,
) -> None:
    """After commit: send the e-mail; if it cannot go, undo the warning so it is retried.

    A warning marked as sent but never received would let the deletion come
    without notice, which is what the requirement's "organised process" forbids.
    """
    try:
        _send_inactivity_warning(address, last_seen, warned_at + policy.notice)
    except Exception as error:  # noqa: BLE001 - SMTP fails in many ways (OSError, SMTPException…)
        # No traceback: SMTP errors quote the recipient's address (logs hold ids and codes).
        logger.error(  # noqa: TRY400
            "inactivity warning of account %s not sent: %s", user_id, type(error).__name__
        )
        with transaction.atomic():
            undone = User.objects.filter(pk=user_id, inactivity_warned_at=warned_at).update(
                inactivity_warned_at=None
            )
            if undone:
                do_record_event(
                    AuditAction.LIFECYCLE_WARNED,
                    target=f"user:{user_id}",
                    outcome="failure",
                    detail={"reason": "mail_failed"},
                )
        report.mail_failed.append(user_id)


def do_warn_inactive_account(
    user: User, now: dt.datetime, policy: LifecyclePolicy, report: LifecycleReport
) -> bool:
    """Warn *user* once (REQ-INACTIVE-DELETE); False when a login or another run came first."""
    cutoff = now - dt.timedelta(days=policy.warn_days)
    with transaction.atomic():
        # The claim: only one run warns, and not an account that logged in meanwhile.
        claimed = User.objects.filter(
            inactive_since(cutoff), pk=user.pk, inactivity_warned_at__isnull=True
        ).update(inactivity_warned_at=now)
        if not claimed:
            return False
        last_seen = user.last_authenticated_at or user.date_joined
        do_record_event(
            AuditAction.LIFECYCLE_WARNED,
            target=f"user:{user.pk}",
            detail={"inactive_days": (now - last_seen).days},
        )
        address = user.email or user.username
        transaction.on_commit(
            lambda: _warning_sent_or_undone(
                user.pk,
                address,
                last_seen=last_seen,
                warned_at=now,
                policy=policy,
                report=report,
            )
        )
    return True


# --------------------------------------------------------------------------- deletion


def delete_mailbox_content(mailbox: Mailbox) -> int:
    """Delete every message of *mailbox* (its envelopes, deliveries, folders, blobs).

    The hook of the messaging app (DESIGN: ``messaging/``): the mailbox's
    copies (every folder) and the deliveries to it go; a message nobody holds
    any more goes with its envelope blob, removed ``on_commit``, never before
    the rows are gone. Messages it sent that recipients still hold stay theirs.
    Called inside the deletion's transaction. Returns how many messages (the
    mailbox's copies) were deleted.
    """
    # Imported here: messaging depends on accounts, not the other way round.
    from pli.server.messaging.actions import (  # noqa: PLC0415
        delete_mailbox_content as delete_messages,
    )

    return delete_messages(mailbox)


def _operator_ca_present() -> bool:
    """Whether this server runs an operator CA (``pli ca init``); if it does, it must work."""
    return (operator_ca.ca_path() / "ca.p12").exists()


def _revoke_certificates(mailbox: Mailbox, now: dt.datetime) -> int:
    """Revoke the mailbox's certificates, so that nobody seals anything more to them.

    In the operator CA first, then the CRL is published (RFC 5280 §5), then in
    the directory, which senders and the certificate API read. A certificate of
    another CA the operator trusts (IGC-Santé...) is marked revoked in the
    directory only; its holder's CA is not ours to change. A server without an
    operator CA has only such certificates; one whose CA cannot be opened fails
    the deletion (``ca_not_configured``), which the next run retries.
    """
    rows = list(MailboxCertificate.objects.filter(mailbox=mailbox, revoked_at__isnull=True))
    if not rows:
        return 0
    in_ca = _operator_ca_present()
    for row in rows:
        if in_ca:
            operator_ca.revoke_serial(row.serial, REVOCATION_REASON)
        MailboxCertificate.objects.filter(pk=row.pk).update(revoked_at=now)
        do_record_event(
            AuditAction.KEYS_CERTIFICATE_REVOKED,
            target=f"mailbox:{mailbox.pk}",
            detail={"serial": row.serial, "reason": REVOCATION_REASON},
        )
    if in_ca:
        operator_ca.publish_crl()
    return len(rows)


def _leave_shared_mailboxes(user: User) -> int:
    """Remove the account from the shared mailboxes it belongs to; how many keys were rotated.

    Through custody's own action, so the mailbox key is rotated as for any
    member who leaves (DESIGN: removing a member rotates the mailbox key): a
    member in workstation custody may have kept the old one.
    """
    rotated = 0
    memberships = Membership.objects.filter(
        user=user, mailbox__kind__in=SHARED_KINDS, mailbox__active=True
    ).select_related("mailbox")
    for membership in memberships:
        if do_remove_mailbox_member(membership.mailbox, user, actor=None) is not None:
            rotated += 1
    return rotated


@dataclass(frozen=True)
class DeletionCounts:
    messages: int
    mailbox_keys: int
    certificates: int
    memberships: int
    rotated: int
    sessions: int
    factors: int

    def detail(self) -> dict[str, str | int]:
        return {
            "messages": self.messages,
            "mailbox_keys": self.mailbox_keys,
            "certificates": self.certificates,
            "memberships": self.memberships,
            "rotated": self.rotated,
            "sessions": self.sessions,
            "factors": self.factors,
        }


def do_delete_inactive_account(
    user_id: int, now: dt.datetime, policy: LifecyclePolicy
) -> DeletionCounts | str | None:
    """Delete an account warned long enough ago and still inactive (REQ-INACTIVE-DELETE).

    Returns the counts, a reason code when the account is kept on purpose, or
    None when there is nothing to do any more (a login since, or another run).
    """
    with transaction.atomic():
        user = (
            User.objects.select_for_update()
            .filter(
                inactive_since(now - dt.timedelta(days=policy.delete_days)),
                pk=user_id,
                inactivity_warned_at__lte=now - policy.notice,
            )
            .first()
        )
        if user is None:
            return None
        if _is_operator_admin(user) and not _other_operator_admins(user):
            return KEPT_LAST_OPERATOR_ADMIN

        messages = certificates = 0
        mailbox_keys = memberships = 0
        mailbox = enrolled_mailbox(user)
        if mailbox is not None:
            messages = delete_mailbox_content(mailbox)
            certificates = _revoke_certificates(mailbox, now)
            # The mailbox's keys, with the copies wrapped to its substitutes.
            mailbox_keys += MailboxKey.objects.filter(mailbox=mailbox).delete()[0]
            memberships += Membership.objects.filter(mailbox=mailbox).delete()[0]
        # What the account holds elsewhere: keys and memberships of shared mailboxes
        # (rotated), and of other personal mailboxes it substitutes for (these go
        # with the account row). Counted for the audit event.
        mailbox_keys += MailboxKey.objects.filter(user=user).count()
        memberships += Membership.objects.filter(user=user).count()
        rotated = _leave_shared_mailboxes(user)
        sessions = user.sessions.count()
        factors = (
            user.webauthn_credentials.count()
            + user.client_certificates.count()
            + int(hasattr(user, "totp"))
        )
        # Rows that name the address without a foreign key to the account.
        Enrolment.objects.filter(address=user.username).delete()
        throttle.clear(throttle.account_key(user.username))
        # Cascades: sessions, factors, recovery codes, acknowledgements, memberships, keys.
        user.delete()
        counts = DeletionCounts(
            messages=messages,
            mailbox_keys=mailbox_keys,
            certificates=certificates,
            memberships=memberships,
            rotated=rotated,
            sessions=sessions,
            factors=factors,
        )
        do_record_event(
            AuditAction.LIFECYCLE_DELETED, target=f"user:{user_id}", detail=counts.detail()
        )
    return counts


# --------------------------------------------------------------------------- the daily run


def run_lifecycle(now: dt.datetime | None = None, *, dry_run: bool = False) -> LifecycleReport:
    """One run of the lifecycle: deletions due, then warnings due. Idempotent.

    Each account is its own transaction (a savepoint when called inside one, as
    by the job runner): one that fails is rolled back, reported, and retried at
    the next run, without stopping the others. A dry run changes nothing and
    reports the same ids a real run would act on at *now*.
    """
    now = now or timezone.now()
    policy = lifecycle_policy()
    report = LifecycleReport(now=now, dry_run=dry_run, policy=policy)

    for user_id in accounts_to_delete(now, policy).values_list("pk", flat=True):
        if dry_run:
            user = User.objects.get(pk=user_id)
            if _is_operator_admin(user) and not _other_operator_admins(user, report.deleted):
                report.kept.append((user_id, KEPT_LAST_OPERATOR_ADMIN))
            else:
                report.deleted.append(user_id)
            continue
        try:
            result = do_delete_inactive_account(user_id, now, policy)
        except Exception as error:  # one account must not stop the others
            logger.exception("lifecycle: deletion of account %s failed", user_id)
            report.failed.append((user_id, getattr(error, "code", type(error).__name__)))
            continue
        if isinstance(result, DeletionCounts):
            report.deleted.append(user_id)
        elif isinstance(result, str):
            report.kept.append((user_id, result))

    for user in accounts_to_warn(now, policy):
        if dry_run:
            report.warned.append(user.pk)
            continue
        try:
            if do_warn_inactive_account(user, now, policy, report):
                report.warned.append(user.pk)
        except Exception as error:  # one account must not stop the others
            logger.exception("lifecycle: warning of account %s failed", user.pk)
            report.failed.append((user.pk, getattr(error, "code", type(error).__name__)))
    return report


# --------------------------------------------------------------------------- housekeeping


def purge_expired_records(
    now: dt.datetime | None = None, *, dry_run: bool = False
) -> dict[str, int]:
    """Delete the accounts' records that can no longer serve (a daily job), idempotent.

    * activation codes expired and never turned into an account (the address
      they name is kept no longer than the code is usable); the enrolment that
      created an account goes with the account;
    * throttle counters whose window has passed and that lock nothing;
    * session records the guard would refuse anyway (revoked, idle or past
      their lifetime: ``sessions.SessionGuardMiddleware``), and Django's
      expired sessions, which still hold the account id.

    Returns how many rows of each kind were (or, for a dry run, would be) deleted.
    """
    now = now or timezone.now()
    window = max(throttle.ACCOUNT_POLICY.window, throttle.ADDRESS_POLICY.window)
    expired = {
        "enrolments": Enrolment.objects.filter(expires_at__lt=now, user__isnull=True),
        "throttles": Throttle.objects.filter(
            Q(locked_until__isnull=True) | Q(locked_until__lt=now),
            window_started_at__lt=now - window,
        ),
        "user_sessions": UserSession.objects.filter(
            Q(revoked_at__isnull=False)
            | Q(created_at__lt=now - absolute_timeout())
            | Q(last_seen_at__lt=now - idle_timeout())
        ),
        "django_sessions": Session.objects.filter(expire_date__lt=now),
    }
    if dry_run:
        return {name: rows.count() for name, rows in expired.items()}
    with transaction.atomic():
        return {name: rows.delete()[0] for name, rows in expired.items()}
