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

from pli.client.i18n import N_, _
from pli.client.usage import LocalizedCommand, LocalizedGroup, LocalizedPath, option


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
        raise AuditBadDate(
            _(
                "{option} : « {value} » n'est pas une date (AAAA-MM-JJ[THH:MM])",
                option=option,
                value=value,
            )
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


@click.group(
    "audit",
    cls=LocalizedGroup,
    help=N_(
        "Le journal d'audit : vérifier sa chaîne, l'exporter, purger ce qui a passé sa durée"
        " de conservation."
    ),
)
def audit_group() -> None:
    pass


@audit_group.command(
    "verify",
    cls=LocalizedCommand,
    help=N_(
        "Prouver la chaîne de hachage et les signatures des points de contrôle ; nommer le"
        " premier maillon rompu."
    ),
)
@option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=LocalizedPath(exists=True, dir_okay=False, path_type=Path),
    help=N_(
        "Clé(s) publique(s) (PEM) des points de contrôle ; par défaut, celle de la clé d'audit"
        " de l'opérateur."
    ),
)
def verify_command(public_keys: tuple[Path, ...]) -> None:
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
        click.echo(
            _(
                "{count} événement(s) attendent encore le séquenceur (pas encore chaînés)",
                count=waiting,
            )
        )


def _record_verification(outcome: str, events: int | None) -> None:
    from pli.server.audit.actions import do_record_event  # noqa: PLC0415

    do_record_event(
        "audit.verify",
        outcome=outcome,
        detail={"events": events} if events is not None else None,
    )


@audit_group.command(
    "export",
    cls=LocalizedCommand,
    help=N_(
        "Écrire les événements d'une période en lignes JSON (un événement par ligne, dans"
        " l'ordre de la chaîne)."
    ),
)
@option(
    "--since",
    required=True,
    help=N_("Le premier jour (AAAA-MM-JJ) ou moment, inclus."),
)
@option(
    "--until",
    required=True,
    help=N_("Le dernier jour (AAAA-MM-JJ), inclus ; ou un moment."),
)
@option(
    "--output",
    type=LocalizedPath(dir_okay=False, path_type=Path),
    default=None,
    help=N_("Le fichier à écrire (par défaut : la sortie standard)."),
)
def export_command(since: str, until: str, output: Path | None) -> None:
    _setup()
    from pli.server.audit.actions import do_record_export, write_events  # noqa: PLC0415
    from pli.server.audit.errors import AuditBadDate  # noqa: PLC0415

    start = _parse_bound(since, "--since", end=False)
    end = _parse_bound(until, "--until", end=True)
    if end <= start:
        raise AuditBadDate(_("--until doit venir après --since"))
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
        click.echo(_("{count} événement(s) écrits dans {path}", count=count, path=output), err=True)


@audit_group.command(
    "purge",
    cls=LocalizedCommand,
    help=N_(
        "Supprimer les événements au-delà de la durée de conservation"
        " (PLI_AUDIT_RETENTION_DAYS, 365), jusqu'à un point de contrôle."
    ),
)
@option(
    "--dry-run",
    is_flag=True,
    help=N_("Dire ce qui serait supprimé ; ne rien supprimer."),
)
def purge_command(dry_run: bool) -> None:
    _setup()
    from pli.server.audit.actions import purge_expired_events  # noqa: PLC0415

    result = purge_expired_events(dry_run=dry_run)
    text = (
        N_(
            "seraient supprimés : {events} événement(s) et {checkpoints} point(s) de contrôle"
            " antérieurs au {cutoff}"
        )
        if dry_run
        else N_(
            "supprimés : {events} événement(s) et {checkpoints} point(s) de contrôle"
            " antérieurs au {cutoff}"
        )
    )
    line = _(
        text,
        events=result.events,
        checkpoints=result.checkpoints,
        cutoff=result.cutoff.isoformat(timespec="seconds"),
    )
    if result.kept_from:
        line += _(" ; le journal commence à l'événement n° {seq}", seq=result.kept_from)
    click.echo(line)


@audit_group.command(
    "public-key",
    cls=LocalizedCommand,
    help=N_(
        "Afficher la clé publique (PEM) de la clé d'audit de l'opérateur, pour le"
        " « verify --public-key » d'un auditeur."
    ),
)
def public_key_command() -> None:
    _setup()
    from pli.server.audit.keys import operator_signing_key  # noqa: PLC0415

    click.echo(operator_signing_key().verifying_key().pem().decode("ascii"), nl=False)
