"""The daily jobs: what must happen once a day, whatever else runs (``pli jobs run-daily``).

A small registry, not a task queue (see docs/decisions/0006-background-jobs.md):
the operator's scheduler (a systemd timer or cron) runs ``pli jobs run-daily``
once a day. Every job is idempotent (CONVENTIONS, habit 11): running it twice
the same day, or after a crash half-way, does nothing more than once.

Each job runs in its own transaction: a job that fails is rolled back,
logged and reported, and the next jobs still run. A dry run runs every job
in a transaction that is always rolled back, so that nothing changes even if
a job forgot its own dry-run branch; the jobs still report what they would do.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    """What one job did: a line for people, JSON-able data, and whether all went well."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)
    #: False when the job ran but some of its work failed (and will be retried).
    ok: bool = True


#: A job: (now, dry_run) -> its summary, or a function that gives it once the job's
#: transaction has committed (work done ``on_commit``, such as e-mails, can still fail).
#: It must be idempotent.
JobFunction = Callable[[dt.datetime, bool], JobSummary | Callable[[], JobSummary]]


@dataclass(frozen=True)
class DailyJob:
    #: What it does, for people: ``pli jobs list`` (pli.server.lifecycle_cli.JOB_HELP).
    name: str
    run: JobFunction
    #: The job commits as it goes (one transaction per account): a real run is not
    #: wrapped in one transaction of its own, so that the audit chain's lock, taken by
    #: the first event a transaction appends, is released after each account instead
    #: of being held for the whole run (logins and sends wait for it). A dry run is
    #: still wrapped, and rolled back.
    own_transactions: bool = False


@dataclass(frozen=True)
class JobResult:
    name: str
    #: "ok", or "failed": the job raised (rolled back) or reported failures.
    status: str
    summary: JobSummary | None
    #: ``<code>: <detail>`` of the error that stopped the job (details in the log).
    error: str | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.name,
            "status": self.status,
            "summary": self.summary.text if self.summary else None,
            "data": self.summary.data if self.summary else None,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- the jobs


def _lifecycle(now: dt.datetime, dry_run: bool) -> Callable[[], JobSummary]:
    from pli.server.accounts.lifecycle import run_lifecycle  # noqa: PLC0415 - needs Django set up

    report = run_lifecycle(now, dry_run=dry_run)
    # Read after the commit: the warnings' e-mails go then, and a failed one is reported.
    return lambda: JobSummary(report.describe(), report.as_dict(), ok=report.ok)


def _account_records(now: dt.datetime, dry_run: bool) -> JobSummary:
    from pli.server.accounts.lifecycle import purge_expired_records  # noqa: PLC0415

    counts = purge_expired_records(now, dry_run=dry_run)
    listed = ", ".join(f"{name} {count}" for name, count in counts.items())
    text = (_("seraient supprimés : %(list)s") if dry_run else _("supprimés : %(list)s")) % {
        "list": listed
    }
    return JobSummary(text, dict(counts))


def _audit_retention(now: dt.datetime, dry_run: bool) -> JobSummary:
    from pli.server.audit.actions import purge_expired_events, retention_days  # noqa: PLC0415

    result = purge_expired_events(now, dry_run=dry_run)
    text = (
        _(
            "seraient supprimés : %(events)s événement(s) et %(checkpoints)s point(s) de"
            " contrôle de plus de %(days)s jours (avant le %(cutoff)s)"
        )
        if dry_run
        else _(
            "supprimés : %(events)s événement(s) et %(checkpoints)s point(s) de contrôle de"
            " plus de %(days)s jours (avant le %(cutoff)s)"
        )
    ) % {
        "events": result.events,
        "checkpoints": result.checkpoints,
        "days": retention_days(),
        "cutoff": f"{result.cutoff:%Y-%m-%d}",
    }
    return JobSummary(
        text,
        {
            "events": result.events,
            "checkpoints": result.checkpoints,
            "kept_from": result.kept_from,
            "cutoff": result.cutoff.isoformat(),
        },
    )


def _audit_checkpoint(now: dt.datetime, dry_run: bool) -> JobSummary:
    from django.db.models import Max  # noqa: PLC0415

    from pli.server.audit.actions import do_write_checkpoint  # noqa: PLC0415
    from pli.server.audit.models import AuditCheckpoint, AuditEvent  # noqa: PLC0415

    del now  # a checkpoint signs the head as it is
    head = AuditEvent.objects.aggregate(seq=Max("seq"))["seq"]
    signed = AuditCheckpoint.objects.aggregate(seq=Max("event_seq"))["seq"]
    if head is None or head == signed:
        return JobSummary(_("rien à signer"), {"event": None})
    if dry_run:
        # Not even a rolled-back signature: reading the key may create its file.
        return JobSummary(
            _("signerait : point de contrôle à l'événement n° %(seq)s") % {"seq": head},
            {"event": head},
        )
    checkpoint = do_write_checkpoint()
    if checkpoint is None and AuditCheckpoint.objects.filter(event_seq__gte=head).exists():
        return JobSummary(_("rien à signer (signé entre-temps)"), {"event": None})
    if checkpoint is None:
        # do_write_checkpoint logs why (the operator audit key cannot be read).
        return JobSummary(
            _("non signé : la clé d'audit est indisponible (voir le journal)"), ok=False
        )
    return JobSummary(
        _("signé : point de contrôle à l'événement n° %(seq)s") % {"seq": checkpoint.event_seq},
        {"event": checkpoint.event_seq},
    )


def _upload_cleanup(now: dt.datetime, dry_run: bool) -> JobSummary:
    from pli.server.messaging.uploads import upload_cleanup_job  # noqa: PLC0415

    return upload_cleanup_job(now, dry_run)


def _send_usage(now: dt.datetime, dry_run: bool) -> JobSummary:
    """The daily send counters of past days go (pli.server.messaging.allowance): only
    today's count; yesterday's is kept, so that a run just after midnight in another
    time zone than the server's never removes the day still counting."""
    from pli.server.messaging.models import SendUsage  # noqa: PLC0415

    before = timezone.localdate(now) - dt.timedelta(days=1)
    past = SendUsage.objects.filter(day__lt=before)
    if dry_run:
        count = past.count()
        return JobSummary(
            _("seraient supprimés : %(rows)s compteur(s) d'envois passés") % {"rows": count},
            {"rows": count},
        )
    deleted, _counts = past.delete()
    return JobSummary(
        _("supprimés : %(rows)s compteur(s) d'envois passés") % {"rows": deleted},
        {"rows": deleted},
    )


def _mailbox_storage(now: dt.datetime, dry_run: bool) -> JobSummary:
    """Every mailbox's storage counted again from its copies (pli.server.messaging.storage):
    any drift of the counts kept by sends and deletions is corrected."""
    from pli.server.messaging.storage import recount_storage  # noqa: PLC0415

    del now
    recount = recount_storage(dry_run=dry_run)
    data = {"mailboxes": recount.mailboxes, "corrected": recount.corrected}
    if dry_run:
        return JobSummary(
            _("%(mailboxes)s boîte(s) comptée(s), %(corrected)s seraient corrigée(s)") % data,
            data,
        )
    return JobSummary(
        _("%(mailboxes)s boîte(s) comptée(s), %(corrected)s corrigée(s)") % data, data
    )


def _operator_crl(now: dt.datetime, dry_run: bool) -> JobSummary:
    """A fresh CRL every day: readers fail closed once it expires (RFC 5280 section 5.1.2.5)."""
    from pli.server.accounts import operator_ca  # noqa: PLC0415

    del now
    if not (operator_ca.ca_path() / "ca.pem").exists():
        return JobSummary(_("pas d'autorité de l'opérateur ici"), {"published": False})
    if dry_run:
        return JobSummary(
            _("publierait la liste de révocation de l'opérateur"), {"published": False}
        )
    crl = operator_ca.publish_crl()
    return JobSummary(
        _("liste de révocation de l'opérateur publiée (prochaine mise à jour le %(date)s)")
        % {"date": f"{crl.next_update_utc:%Y-%m-%d}"},
        {"published": True},
    )


#: In this order: the lifecycle and the clean-up record audit events, which the
#: retention never touches (they are new) and the checkpoint then signs.
DAILY_JOBS: tuple[DailyJob, ...] = (
    DailyJob(
        "lifecycle",
        _lifecycle,
        own_transactions=True,
    ),
    DailyJob(
        "account_records",
        _account_records,
    ),
    DailyJob(
        "upload_cleanup",
        _upload_cleanup,
    ),
    DailyJob(
        "send_usage",
        _send_usage,
    ),
    DailyJob(
        "mailbox_storage",
        _mailbox_storage,
        own_transactions=True,
    ),
    DailyJob(
        "operator_crl",
        _operator_crl,
    ),
    DailyJob(
        "audit_retention",
        _audit_retention,
    ),
    DailyJob(
        "audit_checkpoint",
        _audit_checkpoint,
    ),
)


def job_names(jobs: Iterable[DailyJob] = DAILY_JOBS) -> list[str]:
    return [job.name for job in jobs]


# --------------------------------------------------------------------------- the runner


def _error_line(error: Exception) -> str:
    code = getattr(error, "code", None)
    if isinstance(code, str) and code.isidentifier():
        # Domain errors (configuration, audit) carry a stable code and a safe detail.
        return f"{code}: {getattr(error, 'detail', None) or error}"
    return "internal_error: unexpected failure (see the server log)"


def run_job(job: DailyJob, now: dt.datetime, *, dry_run: bool = False) -> JobResult:
    """Run one job in its own transaction; never raises (the error is in the result)."""
    started = time.perf_counter()
    try:
        if job.own_transactions and not dry_run:
            outcome = job.run(now, dry_run)
        else:
            with transaction.atomic():
                outcome = job.run(now, dry_run)
                if dry_run:
                    # Whatever the job did, a dry run leaves the database as it was.
                    transaction.set_rollback(True)
        summary = outcome if isinstance(outcome, JobSummary) else outcome()
    except Exception as error:  # one failing job must not stop the others
        line = _error_line(error)
        if line.startswith("internal_error"):
            logger.exception("daily job %s failed", job.name)
        else:  # a domain error says what to fix; its traceback would only add noise
            logger.error("daily job %s failed: %s", job.name, line)  # noqa: TRY400
        return JobResult(job.name, "failed", None, line, time.perf_counter() - started)
    status = "ok" if summary.ok else "failed"
    if not summary.ok:
        logger.error("daily job %s reported failures", job.name)
    return JobResult(job.name, status, summary, None, time.perf_counter() - started)


def run_daily(
    now: dt.datetime | None = None,
    *,
    dry_run: bool = False,
    only: Sequence[str] | None = None,
    jobs: Sequence[DailyJob] = DAILY_JOBS,
) -> list[JobResult]:
    """Run the daily jobs (or those named in *only*), in order, each on its own."""
    now = now or timezone.now()
    unknown = set(only or ()) - set(job_names(jobs))
    if unknown:
        raise ValueError(f"unknown job(s): {', '.join(sorted(unknown))}")
    selected = [job for job in jobs if only is None or job.name in only]
    return [run_job(job, now, dry_run=dry_run) for job in selected]
