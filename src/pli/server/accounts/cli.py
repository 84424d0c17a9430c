"""``pli accounts``: the operator's commands on the server itself."""

from __future__ import annotations

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

#: The largest limits the database's columns hold (pli.server.accounts.actions.do_set_send_limits).
MOST_MESSAGES = 2**31 - 1
MOST_BYTES = 2**63 - 1
#: accounts.models.Role's values (the models cannot be imported before Django is set up).
ROLES = ("professional", "operator_admin", "dpo", "support")


@click.group("accounts", cls=LocalizedGroup, help=N_("Les comptes : invitations, limites d'envoi."))
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


@accounts_group.command(
    "send-limits",
    cls=LocalizedCommand,
    help=N_(
        "Les limites d'envoi quotidiennes du compte LOGIN, et ses envois du jour. Sans option,"
        " les affiche ; --messages et --bytes les fixent pour ce compte (un logiciel de"
        " laboratoire qui envoie beaucoup), --default le rend aux limites de l'opérateur"
        " (PLI_DAILY_SEND_MESSAGES, PLI_DAILY_SEND_BYTES)."
    ),
)
@click.argument("login")
@option(
    "--messages",
    type=PositiveInteger(maximum=MOST_MESSAGES),
    help=N_("Messages par jour, au plus."),
)
@option(
    "--bytes",
    "size",
    type=ByteSize(maximum=MOST_BYTES),
    help=N_("Octets par jour, au plus (chiffrés : enveloppes et pièces jointes ; ex. 20G)."),
)
@option(
    "--default",
    "to_default",
    is_flag=True,
    help=N_("Revenir aux limites de l'opérateur pour ce compte."),
)
def send_limits_command(
    login: str, messages: int | None, size: int | None, to_default: bool
) -> None:
    from pli.server.commands import ensure_data_dir, prepare_database, setup_django  # noqa: PLC0415

    if to_default and (messages is not None or size is not None):
        raise click.UsageError(_("--default ne se combine pas avec --messages ou --bytes"))
    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.accounts.actions import do_set_send_limits  # noqa: PLC0415
    from pli.server.accounts.errors import AccountError  # noqa: PLC0415
    from pli.server.accounts.models import User  # noqa: PLC0415
    from pli.server.messaging.allowance import limits_for, usage_of  # noqa: PLC0415

    user = User.objects.filter(username=login.strip().lower()).first()
    if user is None:
        raise AccountError("not_found", _("aucun compte ne porte cet identifiant"))
    if to_default or messages is not None or size is not None:
        if not to_default:
            # An option left out keeps the account's current value.
            messages = messages or user.daily_send_messages
            size = size or user.daily_send_bytes
        user = do_set_send_limits(None, login, messages=messages, size=size)
    limits, used = limits_for(user), usage_of(user)
    own = user.daily_send_messages is not None or user.daily_send_bytes is not None
    click.echo(
        _(
            "{login} : par jour au plus, messages : {messages}, octets : {bytes} ({origin})",
            login=user.get_username(),
            messages=limits.messages,
            bytes=limits.bytes,
            origin=_("limites du compte") if own else _("limites de l'opérateur"),
        )
    )
    click.echo(
        _(
            "envoyés aujourd'hui, messages : {messages}, octets : {bytes}",
            messages=used.messages,
            bytes=used.bytes,
        )
    )
