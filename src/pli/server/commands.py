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

from pli.server.accounts.cli import accounts_group
from pli.server.audit.cli import audit_group
from pli.server.config import data_dir, setting
from pli.server.lifecycle_cli import jobs_group, lifecycle_group
from pli.server.messaging.cli import envelopes_group


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pli.server.settings")
    import django  # noqa: PLC0415 - configured only for server commands

    django.setup()


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
        raise click.ClickException("the database could not be prepared (see above)")


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


@click.command("init")
def init_command() -> None:
    """Create the data directory, its secret key and the database."""
    directory = ensure_data_dir()
    setup_django()
    prepare_database()
    click.echo(f"data directory ready: {directory}")


@click.command("serve")
@click.option(
    "--bind", default=None, help="Address to listen on (PLI_BIND, default 127.0.0.1:8000)."
)
@click.option(
    "--workers", default=None, type=int, help="Worker processes (PLI_WORKERS, default 2)."
)
def serve_command(bind: str | None, workers: int | None) -> None:
    """Apply migrations, then serve Pli with gunicorn."""
    ensure_data_dir()
    prepare_in_child()
    run_server(
        bind or setting("BIND", "127.0.0.1:8000") or "",
        workers or int(setting("WORKERS", "2") or 2),
    )


@click.command("manage", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def manage_command(args: tuple[str, ...]) -> None:
    """Django's management commands (createsuperuser, migrate, ...)."""
    ensure_data_dir()
    setup_django()
    from django.core.management import execute_from_command_line  # noqa: PLC0415

    execute_from_command_line(["pli manage", *args])


@click.group("directory")
def directory_group() -> None:
    """The professionals' directory."""


@directory_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the rejected lines (default: FILE.rejects.txt).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import even an extraction older than the last one imported of its kind, or one"
    " that deactivates more than 10% of the directory (a file cut short, otherwise).",
)
def directory_import_command(file: Path, rejects: Path | None, force: bool) -> None:
    """Import an RPPS (personne-activité) or MSSanté correspondence extraction, or its zip."""
    ensure_data_dir()
    setup_django()
    prepare_database()
    from pli.server.directory.importing import import_extraction  # noqa: PLC0415

    summary = import_extraction(
        file, rejects_path=rejects, progress=sys.stderr.isatty(), force=force
    )
    click.echo(summary.describe())
    if summary.rejected:
        click.echo(f"rejected lines: {summary.rejects_file}")


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
]
