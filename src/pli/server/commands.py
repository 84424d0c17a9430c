"""Server-side `pli` commands: init, serve, manage, directory import.

Django is configured only when one of these runs, so that the workstation
commands (seal, open, keys) never need server settings.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import click

from pli.client.i18n import N_, _, cli_language, is_english
from pli.client.usage import (
    CliError,
    LocalizedCommand,
    LocalizedGroup,
    LocalizedPath,
    PositiveInteger,
    option,
)
from pli.server.accounts.cli import accounts_group
from pli.server.audit.cli import audit_group
from pli.server.config import data_dir, setting
from pli.server.lifecycle_cli import jobs_group, lifecycle_group
from pli.server.messaging.cli import envelopes_group, storage_group


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pli.server.settings")
    import django  # noqa: PLC0415 - configured only for server commands

    django.setup()
    from django.utils import translation  # noqa: PLC0415

    # The server's own texts (its refusals, the jobs' and the audit's reports) in the
    # command line's language, as the commands' help and lines (pli.client.i18n).
    translation.activate("en" if is_english(cli_language()) else "fr")


def ensure_data_dir() -> Path:
    """The data directory, with a secret key made once (0600) if none is configured."""
    directory = data_dir()
    # Owner-only: the database, the keys and the blobs live here.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = directory / "secret_key"
    if not setting("SECRET_KEY") and not setting("SECRET_KEY_FILE") and not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return directory


def prepare_database() -> None:
    """Apply migrations and gather static files: what a start needs, idempotent."""
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)


def prepare_in_child() -> None:
    """Migrations and static files in a process of their own (``pli serve``).

    So that gunicorn's master never imports Django: it only forks and watches
    the workers, and stays small (the 200 MB memory target of the messaging
    benchmark counts every process of the server, ``benchmarks/README.md``).
    """
    completed = subprocess.run(  # this interpreter, our own function
        [sys.executable, "-c", "from pli.server.commands import _prepare; _prepare()"],
        check=False,
    )
    if completed.returncode != 0:
        raise CliError(
            "database_not_prepared",
            _("la base de données n'a pas pu être préparée (voir plus haut)"),
        )


def _prepare() -> None:
    setup_django()
    prepare_database()


def run_server(bind: str, workers: int) -> None:
    """Replace this process with gunicorn's master (:mod:`pli.server.serve`).

    ``exec``, not a child: the process id a supervisor (or a benchmark)
    started stays the server's, and the modules this process loaded (the
    command line's, Django's after ``pli demo``) are not carried into the
    master.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    # glibc raises its mmap threshold each time a large block is freed (up to 32 MiB):
    # after the first 1 MiB body read is released, every later one comes from the
    # threads' heaps, which keep the freed space. A 1 GiB upload then left a worker
    # 60 MB larger; with the threshold fixed at glibc's default (128 KiB), large blocks
    # go back to the system when freed (issue 5's memory target). Read by glibc when a
    # process starts, hence set for the master and its workers before the exec; an
    # operator's own value wins.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    command = [sys.executable, "-m", "pli.server.serve", "--bind", bind, "--workers", str(workers)]
    os.execv(sys.executable, command)  # noqa: S606 - this interpreter, our own module


@click.command(
    "init",
    cls=LocalizedCommand,
    help=N_("Créer le dossier de données, sa clé secrète et la base de données."),
)
def init_command() -> None:
    directory = ensure_data_dir()
    setup_django()
    prepare_database()
    click.echo(_("dossier de données prêt : {path}", path=directory))


@click.command(
    "serve",
    cls=LocalizedCommand,
    help=N_("Appliquer les migrations, puis servir Pli avec gunicorn."),
)
@option(
    "--bind",
    default=None,
    help=N_("L'adresse d'écoute (PLI_BIND, par défaut 127.0.0.1:8000)."),
)
@option(
    "--workers",
    default=None,
    type=PositiveInteger(),
    help=N_("Le nombre de processus de travail (PLI_WORKERS, par défaut 2)."),
)
def serve_command(bind: str | None, workers: int | None) -> None:
    ensure_data_dir()
    prepare_in_child()
    run_server(
        bind or setting("BIND", "127.0.0.1:8000") or "",
        workers or int(setting("WORKERS", "2") or 2),
    )


@click.command(
    "manage",
    cls=LocalizedCommand,
    context_settings={"ignore_unknown_options": True},
    help=N_("Les commandes d'administration de Django (migrate, createsuperuser…)."),
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def manage_command(args: tuple[str, ...]) -> None:
    ensure_data_dir()
    setup_django()
    from django.core.management import execute_from_command_line  # noqa: PLC0415

    execute_from_command_line(["pli manage", *args])


@click.group("directory", cls=LocalizedGroup, help=N_("L'annuaire des professionnels."))
def directory_group() -> None:
    pass


@directory_group.command(
    "import",
    cls=LocalizedCommand,
    help=N_(
        "Importer une extraction RPPS (personne-activité) ou de correspondance MSSanté, ou son zip."
    ),
)
@click.argument("file", type=LocalizedPath(exists=True, dir_okay=False, path_type=Path))
@option(
    "--rejects",
    type=LocalizedPath(dir_okay=False, path_type=Path),
    default=None,
    help=N_("Où écrire les lignes rejetées (par défaut : FILE.rejects.txt)."),
)
@option(
    "--force",
    is_flag=True,
    help=N_(
        "Importer même une extraction plus ancienne que la dernière importée de son type, ou"
        " qui désactive plus de 10 % de l'annuaire (sinon, un fichier tronqué)."
    ),
)
def directory_import_command(file: Path, rejects: Path | None, force: bool) -> None:
    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.directory.importing import import_extraction  # noqa: PLC0415

    summary = import_extraction(
        file, rejects_path=rejects, progress=sys.stderr.isatty(), force=force
    )
    click.echo(summary.describe())
    if summary.rejected:
        click.echo(_("lignes rejetées : {path}", path=summary.rejects_file))


def demo_server(bind: str, *, serve: bool = True) -> None:
    """``pli demo``: the demo operator (made once), then the server."""
    directory = ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.demo import create_demo, print_welcome  # noqa: PLC0415

    info = create_demo(directory)
    print_welcome(info, directory, bind)
    if serve:
        run_server(bind, int(setting("WORKERS", "2") or 2))


SERVER_COMMANDS = [
    init_command,
    serve_command,
    manage_command,
    directory_group,
    audit_group,
    accounts_group,
    jobs_group,
    lifecycle_group,
    envelopes_group,
    storage_group,
]
