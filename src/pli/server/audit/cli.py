"""``pli audit``: verify, export and purge the audit trail (REQ-TRACE, REQ-TRACE-RETENTION).

A thin layer: the work is in :mod:`pli.server.audit.chain` and
:mod:`pli.server.audit.actions`. Errors carry a stable code, which ``pli``'s
main group prints as one line with a non-zero exit. Django is configured only
when a command runs; importing this module imports neither Django nor models.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import click


def _setup() -> None:
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415 - cycle

    ensure_data_dir()
    setup_django()


def _parse_bound(value: str, option: str, *, end: bool) -> dt.datetime:
    """A date (the start of that day, or for --until its end) or a date and time.

    Without a time zone, the server's (TIME_ZONE, Europe/Paris) is meant.
    """
    from django.utils import timezone  # noqa: PLC0415 - Django is set up by now

    from pli.server.audit.errors import AuditBadDate  # noqa: PLC0415

    try:
        if len(value) == len("2026-11-22"):
            day = dt.date.fromisoformat(value)
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        else:
            moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise AuditBadDate(f"{option}: {value!r} is not a date (YYYY-MM-DD[THH:MM])") from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


@click.group("audit")
def audit_group() -> None:
    """The audit trail: verify its chain, export it, purge what is past retention."""


@audit_group.command("verify")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key(s) (PEM) of the checkpoints; default: the operator audit key's.",
)
def verify_command(public_keys: tuple[Path, ...]) -> None:
    """Prove the hash chain and the checkpoint signatures; name the first broken link."""
    _setup()
    from pli.server.audit.chain import verify_trail  # noqa: PLC0415
    from pli.server.audit.errors import AuditChainBroken  # noqa: PLC0415
    from pli.server.audit.keys import (  # noqa: PLC0415
        operator_verifying_key,
        verifying_key_from_file,
    )
    from pli.server.audit.models import AuditCheckpoint  # noqa: PLC0415

    if public_keys:
        keys = [verifying_key_from_file(path) for path in public_keys]
    elif AuditCheckpoint.objects.exists():
        keys = [operator_verifying_key()]
    else:
        keys = []  # nothing signed yet (a new trail): no key is needed, and none is made
    # Catch-up (decision 0010): events committed but not chained yet (a process that
    # stopped between a commit and its sequencer) take their place before the proof.
    from pli.server.audit.actions import pending_events, sequence_now  # noqa: PLC0415

    sequence_now()
    try:
        report = verify_trail(keys)
    except AuditChainBroken:
        _record_verification("failure", None)
        raise
    _record_verification("success", report.events)
    click.echo(report.describe())
    waiting = pending_events()
    if waiting:
        click.echo(f"{waiting} event(s) still waiting for the sequencer (not chained yet)")


def _record_verification(outcome: str, events: int | None) -> None:
    from pli.server.audit.actions import do_record_event  # noqa: PLC0415

    do_record_event(
        "audit.verify",
        outcome=outcome,
        detail={"events": events} if events is not None else None,
    )


@audit_group.command("export")
@click.option("--since", required=True, help="First day (YYYY-MM-DD) or moment, included.")
@click.option("--until", required=True, help="Last day (YYYY-MM-DD), included; or a moment.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write (default: standard output).",
)
def export_command(since: str, until: str, output: Path | None) -> None:
    """Write the events of a period as JSON lines (one event a line, in chain order)."""
    _setup()
    from pli.server.audit.actions import do_record_export, write_events  # noqa: PLC0415
    from pli.server.audit.errors import AuditBadDate  # noqa: PLC0415

    start = _parse_bound(since, "--since", end=False)
    end = _parse_bound(until, "--until", end=True)
    if end <= start:
        raise AuditBadDate("--until must come after --since")
    if output is None:
        count = write_events(start, end, sys.stdout)
        sys.stdout.flush()
    else:
        # Owner-only from the start: the trail holds logins and addresses (personal data).
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            count = write_events(start, end, handle)
    try:
        do_record_export(count, start, end)
    except BaseException:
        # An export that could not be traced is not left behind (REQ-TRACE).
        if output is not None:
            output.unlink(missing_ok=True)
        raise
    if output is not None:
        click.echo(f"{count} events written to {output}", err=True)


@audit_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
def purge_command(dry_run: bool) -> None:
    """Delete events past retention (PLI_AUDIT_RETENTION_DAYS, 365), up to a checkpoint."""
    _setup()
    from pli.server.audit.actions import purge_expired_events  # noqa: PLC0415

    result = purge_expired_events(dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    kept = f"; the trail starts at event #{result.kept_from}" if result.kept_from else ""
    click.echo(
        f"{verb} {result.events} events and {result.checkpoints} checkpoints older than"
        f" {result.cutoff.isoformat(timespec='seconds')}{kept}"
    )


@audit_group.command("public-key")
def public_key_command() -> None:
    """Print the operator audit key's public key (PEM), for an auditor's `verify --public-key`."""
    _setup()
    from pli.server.audit.keys import operator_signing_key  # noqa: PLC0415

    click.echo(operator_signing_key().verifying_key().pem().decode("ascii"), nl=False)
