"""``pli accounts``: the operator's commands on the server itself."""

from __future__ import annotations

import click

from pli.client.i18n import N_, _
from pli.client.usage import Choice, LocalizedCommand, LocalizedGroup, option

#: accounts.models.Role's values (the models cannot be imported before Django is set up).
ROLES = ("professional", "operator_admin", "dpo", "support")


@click.group("accounts", cls=LocalizedGroup, help=N_("Les comptes : invitations."))
def accounts_group() -> None:
    pass


@accounts_group.command(
    "invite",
    cls=LocalizedCommand,
    help=N_(
        "Inviter ADDRESS : un code d'activation lui est envoyé par courriel et affiché ici."
        " Un professionnel doit avoir une boîte personnelle à cette adresse dans l'annuaire."
    ),
)
@click.argument("address")
@option(
    "--role",
    type=Choice(list(ROLES)),
    default="professional",
    show_default=True,
    help=N_("operator_admin pour créer le premier administrateur."),
)
def invite_command(address: str, role: str) -> None:
    from pli.server.commands import ensure_data_dir, prepare_database, setup_django  # noqa: PLC0415

    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.accounts.actions import invite_with_code  # noqa: PLC0415

    # A refusal (AccountError) is shown by pli's group as "pli: error: <code>: <text>".
    enrolment, code = invite_with_code(None, address, role)
    click.echo(
        _(
            "invitation {id} pour {address} ({role})",
            id=enrolment.pk,
            address=enrolment.address,
            role=role,
        )
    )
    click.echo(_("code d'activation : {code}  (valable 72 h, sur /compte/activation/)", code=code))
