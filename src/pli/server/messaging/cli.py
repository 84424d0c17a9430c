"""``pli envelopes move``: envelopes from the database to the blob store, or back;
``pli storage``: what each mailbox holds, and its quota.

A thin layer over :mod:`pli.server.messaging.envelopes` (decision 0013).
Django is set up only when the command runs; importing this module imports
neither Django nor models.
"""

from __future__ import annotations

import json

import click

from pli.client.i18n import N_, _
from pli.client.usage import (
    ByteSize,
    Choice,
    LocalizedCommand,
    LocalizedGroup,
    PositiveInteger,
    option,
)
from pli.server.accounts.cli import MOST_BYTES


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


# --------------------------------------------------------------------------- storage


@click.group(
    "storage",
    cls=LocalizedGroup,
    help=N_("L'espace que tient chaque boîte (chiffré), et son quota."),
)
def storage_group() -> None:
    pass


@storage_group.command(
    "quota",
    cls=LocalizedCommand,
    help=N_(
        "L'espace utilisé par la boîte ADDRESS et son quota. Sans option, les affiche ;"
        " --bytes fixe le quota de cette boîte (un laboratoire, un service d'imagerie),"
        " --default la rend au quota de l'opérateur (PLI_MAILBOX_QUOTA_BYTES). Au-delà de son"
        " quota, une boîte ne reçoit plus de messages."
    ),
)
@click.argument("address")
@option(
    "--bytes",
    "size",
    type=ByteSize(maximum=MOST_BYTES),
    help=N_("Octets au plus (chiffrés : enveloppes et pièces jointes ; ex. 50G)."),
)
@option(
    "--default",
    "to_default",
    is_flag=True,
    help=N_("Revenir au quota de l'opérateur pour cette boîte."),
)
def quota_command(address: str, size: int | None, to_default: bool) -> None:
    from pli.server.commands import ensure_data_dir, prepare_database, setup_django  # noqa: PLC0415

    if to_default and size is not None:
        raise click.UsageError(_("--default ne se combine pas avec --bytes"))
    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.directory.models import Mailbox  # noqa: PLC0415
    from pli.server.messaging.storage import (  # noqa: PLC0415
        QuotaError,
        do_set_mailbox_quota,
        storage_of,
    )

    if to_default or size is not None:
        mailbox = do_set_mailbox_quota(None, address, size)
    else:
        found = Mailbox.objects.filter(address=address.strip().lower()).first()
        if found is None:
            raise QuotaError("not_found", _("aucune boîte ne porte cette adresse"))
        mailbox = found
    storage = storage_of([mailbox.pk])[mailbox.pk]
    click.echo(
        _(
            "{address} : {used} octets utilisés sur {quota} ({percent} %, {origin})",
            address=mailbox.address,
            used=storage.used,
            quota=storage.quota,
            percent=storage.percent,
            origin=_("quota de la boîte") if storage.own else _("quota de l'opérateur"),
        )
    )


@storage_group.command(
    "largest",
    cls=LocalizedCommand,
    help=N_(
        "Les boîtes qui tiennent le plus d'espace, la plus grande d'abord, avec leur quota :"
        " pour voir celles qui approchent de leur quota."
    ),
)
@option(
    "--limit",
    type=PositiveInteger(maximum=10_000),
    default=20,
    show_default=True,
    help=N_("Combien de boîtes afficher."),
)
@option("--json", "as_json", is_flag=True, help=N_("Afficher le résultat en JSON."))
def largest_command(limit: int, as_json: bool) -> None:
    from pli.server.commands import ensure_data_dir, prepare_database, setup_django  # noqa: PLC0415

    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.messaging.storage import largest_mailboxes  # noqa: PLC0415

    rows = largest_mailboxes(limit)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"address": address, "used_bytes": s.used, "quota_bytes": s.quota}
                    for address, s in rows
                ]
            )
        )
        return
    for address, storage in rows:
        click.echo(
            _(
                "{address}  {used} / {quota} octets ({percent} %)",
                address=address,
                used=storage.used,
                quota=storage.quota,
                percent=storage.percent,
            )
        )
