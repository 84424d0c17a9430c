"""``pli envelopes move``: envelopes from the database to the blob store, or back.

A thin layer over :mod:`pli.server.messaging.envelopes` (decision 0013).
Django is set up only when the command runs; importing this module imports
neither Django nor models.
"""

from __future__ import annotations

import json

import click

from pli.client.i18n import N_, _
from pli.client.usage import Choice, LocalizedCommand, LocalizedGroup, option


@click.group(
    "envelopes",
    cls=LocalizedGroup,
    help=N_(
        "Où sont gardées les enveloppes des messages (chiffrées) : la base de données ou le"
        " stockage de fichiers."
    ),
)
def envelopes_group() -> None:
    pass


@envelopes_group.command(
    "move",
    cls=LocalizedCommand,
    help=N_(
        "Déplacer les enveloppes déjà enregistrées, après un changement de"
        " PLI_ENVELOPE_IN_DATABASE_BYTES. Une enveloppe par transaction, chacune vérifiée"
        " contre son SHA-256 enregistré : la commande peut tourner à côté du serveur, être"
        " arrêtée et relancée. Code de sortie 1 si une enveloppe a échoué à sa vérification"
        " (laissée en place, nommée dans le journal)."
    ),
)
@option(
    "--to",
    "to",
    type=Choice(["blob-store", "database"]),
    required=True,
    help=N_(
        "blob-store : toutes les enveloppes gardées dans la base ; database : celles du"
        " stockage de fichiers qui tiennent dans PLI_ENVELOPE_IN_DATABASE_BYTES."
    ),
)
@option(
    "--dry-run",
    is_flag=True,
    help=N_("Compter ce qui serait déplacé ; ne rien changer."),
)
@option(
    "--json",
    "as_json",
    is_flag=True,
    help=N_("Afficher le résultat en JSON."),
)
def move_command(to: str, dry_run: bool, as_json: bool) -> None:
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415 - cycle

    ensure_data_dir()
    setup_django()
    from pli.server.messaging.envelopes import do_move_envelopes  # noqa: PLC0415

    result = do_move_envelopes(to_database=to == "database", dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(vars(result)))
    else:
        text = (
            N_("{count} enveloppe(s) ({bytes} octets) seraient déplacées vers {to}")
            if dry_run
            else N_("{count} enveloppe(s) ({bytes} octets) déplacées vers {to}")
        )
        click.echo(_(text, count=result.moved, bytes=result.bytes, to=to))
        if result.damaged:
            click.echo(
                _(
                    "{count} enveloppe(s) ont échoué à leur vérification et sont restées en place",
                    count=result.damaged,
                ),
                err=True,
            )
    if result.damaged:
        raise click.exceptions.Exit(1)
