"""``pli lifecycle run`` and ``pli jobs run-daily``: the daily jobs, from the command line.

A thin layer over :mod:`pli.server.jobs` (CONVENTIONS: the CLI on top of the
library). Django is set up only when a command runs; importing this module
imports neither Django nor models. Exit status 1 when a job failed, so that
the scheduler (systemd, cron) reports it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pli.server.jobs import JobResult

#: The registry's names, repeated here so that --only is checked before Django starts
#: (tests/test_jobs.py checks that both lists agree).
JOB_NAMES = (
    "lifecycle",
    "account_records",
    "upload_cleanup",
    "operator_crl",
    "audit_retention",
    "audit_checkpoint",
)


def _setup() -> None:
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415 - cycle

    ensure_data_dir()
    setup_django()


def _parse_now(value: str | None, *, dry_run: bool) -> dt.datetime | None:
    """``--now``: an ISO 8601 date or date and time; without an offset, in Pli's time zone.

    A date in the future only with ``--dry-run``: run for real, it would warn and
    delete accounts before their time (REQ-INACTIVE-DELETE counts real months).
    """
    if value is None:
        return None
    from django.utils import timezone  # noqa: PLC0415 - Django is set up by now

    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or date and time", param_hint="--now"
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    if moment > timezone.now() and not dry_run:
        raise click.BadParameter(
            "a date in the future needs --dry-run (it would act before its time)",
            param_hint="--now",
        )
    return moment


def _report(results: list[JobResult], *, as_json: bool, dry_run: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {"dry_run": dry_run, "jobs": [result.as_dict() for result in results]},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for result in results:
            click.echo(f"[{result.status}] {result.name} ({result.seconds:.2f} s)")
            if result.summary is not None:
                for line in result.summary.text.splitlines():
                    click.echo(f"    {line}")
            if result.error is not None:
                click.echo(f"    error: {result.error}")
    if any(result.status != "ok" for result in results):
        raise click.exceptions.Exit(1)


_dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Report what would be done; change nothing."
)
_now_option = click.option(
    "--now",
    "now_text",
    default=None,
    metavar="ISO-DATE",
    help="Run as if it were this date (for tests and rehearsals).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


@click.group("lifecycle")
def lifecycle_group() -> None:
    """Inactive accounts: warning at 11 months, deletion at 12 (REQ-INACTIVE-DELETE)."""


@lifecycle_group.command("run")
@_dry_run_option
@_now_option
@_json_option
def lifecycle_run_command(dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Warn, then delete, the accounts without authentication (the daily job, alone)."""
    _setup()
    from pli.server.jobs import run_daily  # noqa: PLC0415

    _report(
        run_daily(_parse_now(now_text, dry_run=dry_run), dry_run=dry_run, only=["lifecycle"]),
        as_json=as_json,
        dry_run=dry_run,
    )


@click.group("jobs")
def jobs_group() -> None:
    """The daily jobs (run them once a day from a systemd timer or cron)."""


@jobs_group.command("run-daily")
@_dry_run_option
@_now_option
@_json_option
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(JOB_NAMES),
    help="Run only this job (repeatable).",
)
def run_daily_command(
    dry_run: bool, now_text: str | None, as_json: bool, only: tuple[str, ...]
) -> None:
    """Run every daily job, each in its own transaction; exit 1 if one failed."""
    _setup()
    from pli.server.jobs import run_daily  # noqa: PLC0415

    _report(
        run_daily(_parse_now(now_text, dry_run=dry_run), dry_run=dry_run, only=list(only) or None),
        as_json=as_json,
        dry_run=dry_run,
    )


@jobs_group.command("list")
def list_command() -> None:
    """List the daily jobs, in the order they run."""
    from pli.server.jobs import DAILY_JOBS  # noqa: PLC0415 - imports no model

    for job in DAILY_JOBS:
        click.echo(f"{job.name}: {job.help}")
