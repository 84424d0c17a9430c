"""``pli envelopes move``: envelopes from the database to the blob store, or back.

A thin layer over :mod:`pli.server.messaging.envelopes` (decision 0013).
Django is set up only when the command runs; importing this module imports
neither Django nor models.
"""

from __future__ import annotations

import json

import click


@click.group("envelopes")
def envelopes_group() -> None:
    """Where the messages' envelopes (ciphertext) are kept: the database or the blob store."""


@envelopes_group.command("move")
@click.option(
    "--to",
    "to",
    type=click.Choice(["blob-store", "database"]),
    required=True,
    help="blob-store: every envelope kept in the database; database: those of the blob"
    " store within PLI_ENVELOPE_IN_DATABASE_BYTES.",
)
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def move_command(to: str, dry_run: bool, as_json: bool) -> None:
    """Move the envelopes already stored, after a change of PLI_ENVELOPE_IN_DATABASE_BYTES.

    One envelope per transaction, each checked against its recorded SHA-256:
    it can run beside the server, and be stopped and run again. Exit status 1
    when an envelope failed its check (left where it was, named in the log).
    """
    from pli.server.commands import ensure_data_dir, setup_django  # noqa: PLC0415 - cycle

    ensure_data_dir()
    setup_django()
    from pli.server.messaging.envelopes import do_move_envelopes  # noqa: PLC0415

    result = do_move_envelopes(to_database=to == "database", dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(vars(result)))
    else:
        verb = "would move" if dry_run else "moved"
        click.echo(f"{verb} {result.moved} envelopes ({result.bytes} bytes) to {to}")
        if result.damaged:
            click.echo(f"{result.damaged} envelopes failed their check and stayed", err=True)
    if result.damaged:
        raise click.exceptions.Exit(1)
