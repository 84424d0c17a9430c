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

from pli.client.i18n import N_, _
from pli.client.usage import Choice, LocalizedCommand, LocalizedGroup, UsageProblem, option

if TYPE_CHECKING:
    from pli.server.jobs import JobResult

#: The registry's jobs, in its order, with what each does for people (``pli jobs list``);
#: repeated here so that --only is checked before Django starts (tests/test_jobs.py checks
#: that both lists agree).
JOB_HELP = {
    "lifecycle": N_(
        "Avertir, puis supprimer, les comptes sans authentification depuis un an"
        " (REQ-INACTIVE-DELETE)."
    ),
    "account_records": N_(
        "Supprimer les codes d'activation, compteurs de tentatives et sessions expirés."
    ),
    "upload_cleanup": N_(
        "Retirer les dépôts de pièces jointes expirés et inachevés, et leurs octets."
    ),
    "send_usage": N_("Supprimer les compteurs d'envois quotidiens des jours passés."),
    "mailbox_storage": N_(
        "Recompter l'espace utilisé par chaque boîte depuis ses messages, et corriger les"
        " compteurs."
    ),
    "operator_crl": N_(
        "Publier une nouvelle liste de révocation de l'autorité de l'opérateur avant que"
        " l'actuelle n'expire."
    ),
    "audit_retention": N_(
        "Supprimer les événements d'audit au-delà de la durée de conservation"
        " (REQ-TRACE-RETENTION)."
    ),
    "audit_checkpoint": N_(
        "Signer la tête du journal d'audit si elle n'a pas encore de point de contrôle (REQ-TRACE)."
    ),
}
JOB_NAMES = tuple(JOB_HELP)


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
        raise _bad_now(
            _("« {value} » n'est ni une date ni une date et heure ISO 8601", value=value)
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    if moment > timezone.now() and not dry_run:
        raise _bad_now(_("une date future demande --dry-run (la tâche agirait avant l'heure)"))
    return moment


def _bad_now(reason: str) -> UsageProblem:
    """A refused --now, as click's own refusals are shown (code ``bad_value``, exit 2)."""
    return UsageProblem(
        "bad_value",
        _("valeur refusée pour {name} : {reason}", name="--now", reason=reason),
        click.get_current_context(silent=True),
    )


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
                click.echo("    " + _("erreur : {error}", error=result.error))
    if any(result.status != "ok" for result in results):
        raise click.exceptions.Exit(1)


_dry_run_option = option(
    "--dry-run",
    is_flag=True,
    help=N_("Dire ce qui serait fait ; ne rien changer."),
)
_now_option = option(
    "--now",
    "now_text",
    default=None,
    metavar="ISO-DATE",
    help=N_("Faire comme si l'on était à cette date (pour les tests et les répétitions)."),
)
_json_option = option(
    "--json",
    "as_json",
    is_flag=True,
    help=N_("Afficher le compte rendu en JSON."),
)


@click.group(
    "lifecycle",
    cls=LocalizedGroup,
    help=N_(
        "Les comptes inactifs : avertissement à 11 mois, suppression à 12 (REQ-INACTIVE-DELETE)."
    ),
)
def lifecycle_group() -> None:
    pass


@lifecycle_group.command(
    "run",
    cls=LocalizedCommand,
    help=N_(
        "Avertir, puis supprimer, les comptes sans authentification (la tâche quotidienne, seule)."
    ),
)
@_dry_run_option
@_now_option
@_json_option
def lifecycle_run_command(dry_run: bool, now_text: str | None, as_json: bool) -> None:
    _setup()
    from pli.server.jobs import run_daily  # noqa: PLC0415

    _report(
        run_daily(_parse_now(now_text, dry_run=dry_run), dry_run=dry_run, only=["lifecycle"]),
        as_json=as_json,
        dry_run=dry_run,
    )


@click.group(
    "jobs",
    cls=LocalizedGroup,
    help=N_(
        "Les tâches quotidiennes (à lancer une fois par jour, par un minuteur systemd ou cron)."
    ),
)
def jobs_group() -> None:
    pass


@jobs_group.command(
    "run-daily",
    cls=LocalizedCommand,
    help=N_(
        "Lancer chaque tâche quotidienne, chacune dans sa transaction ; code de sortie 1 si"
        " l'une a échoué."
    ),
)
@_dry_run_option
@_now_option
@_json_option
@option(
    "--only",
    multiple=True,
    type=Choice(list(JOB_NAMES)),
    help=N_("Lancer seulement cette tâche (répétable)."),
)
def run_daily_command(
    dry_run: bool, now_text: str | None, as_json: bool, only: tuple[str, ...]
) -> None:
    _setup()
    from pli.server.jobs import run_daily  # noqa: PLC0415

    _report(
        run_daily(_parse_now(now_text, dry_run=dry_run), dry_run=dry_run, only=list(only) or None),
        as_json=as_json,
        dry_run=dry_run,
    )


@jobs_group.command(
    "list",
    cls=LocalizedCommand,
    help=N_("Lister les tâches quotidiennes, dans l'ordre où elles tournent."),
)
def list_command() -> None:
    for name, text in JOB_HELP.items():
        click.echo(f"{name}: {_(text)}")
