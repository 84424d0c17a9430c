"""``pli accounts``: the operator's commands on the server itself."""

from __future__ import annotations

import click

#: accounts.models.Role's values (the models cannot be imported before Django is set up).
ROLES = ("professional", "operator_admin", "dpo", "support")


@click.group("accounts")
def accounts_group() -> None:
    """Accounts: invitations."""


@accounts_group.command("invite")
@click.argument("address")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="professional",
    show_default=True,
    help="operator_admin to bootstrap the first administrator.",
)
def invite_command(address: str, role: str) -> None:
    """Invite ADDRESS: an activation code is mailed to it and printed here.

    Professionals must have a personal mailbox at ADDRESS in the directory.
    """
    from pli.server.commands import ensure_data_dir, prepare_database, setup_django  # noqa: PLC0415

    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.accounts.actions import invite_with_code  # noqa: PLC0415
    from pli.server.accounts.errors import AccountError  # noqa: PLC0415

    try:
        enrolment, code = invite_with_code(None, address, role)
    except AccountError as error:
        raise click.ClickException(f"{error.code}: {error.message}") from None
    click.echo(f"invitation {enrolment.pk} for {enrolment.address} ({role})")
    click.echo(f"activation code: {code}  (valid 72 h, at /compte/activation/)")
