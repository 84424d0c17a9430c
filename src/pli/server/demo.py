"""``pli demo``: a demo operator in the data directory, then the server.

Made once, then read back (a second run changes nothing):

- a sample directory generated in the real RPPS and MSSanté extraction
  formats and imported like a real one;
- the operator's CA in ``PLI_CA_DIR`` (``<data dir>/ca``), its passphrase in
  ``<CA dir>/passphrase`` (0600): this is a demonstration;
- a few professionals of that directory with accounts fully enrolled through
  the accounts' own actions (invitation, activation, passphrase, TOTP, charter),
  each with a vault key certified by the demo CA and published;
- an operator administrator (role ``operator_admin``, staff and superuser) with a
  passphrase and TOTP.

The passphrases are random; they and the TOTP seeds (``otpauth://`` URIs) are
printed once and kept in ``demo-credentials.txt`` (0600). The six-digit code of
the moment comes from :func:`current_demo_code`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import pyotp

from pli.client.castore import CaDirectory, write_atomically

DEMO_PERSONS = 300
DEMO_SEED = 2026
#: How many professionals of the sample directory get an account.
DEMO_PROFESSIONALS = 3
DEMO_ADMIN = "admin@demo.pli.test"
_MARKER = "demo-ready"
_CA_NAME = "Pli — opérateur de démonstration"
_HEADER = (
    "# Pli — comptes de démonstration / demo accounts. Not for production.\n"
    "# Log in at /compte/connexion/ with the address and the passphrase, then the\n"
    "# six-digit code of an authenticator app given the totp URI (or `pli demo-code ADDRESS`).\n"
)


@dataclass(frozen=True)
class DemoAccount:
    role: str
    address: str
    passphrase: str
    totp_uri: str

    def code(self) -> str:
        """The TOTP code of the current time step (RFC 6238)."""
        otp = pyotp.parse_uri(self.totp_uri)
        if not isinstance(otp, pyotp.TOTP):
            raise DemoError(f"{self.address}: not a TOTP URI")
        return str(otp.now())


@dataclass(frozen=True)
class DemoInfo:
    admin_user: str
    admin_password: str
    mailboxes: list[str]
    accounts: list[DemoAccount] = field(default_factory=list)
    #: True on the run that made the accounts: only that run prints their secrets.
    created: bool = False


class DemoError(click.ClickException):
    """The demo data directory is in a state ``pli demo`` cannot complete."""


def _credentials_file(directory: Path) -> Path:
    return directory / "demo-credentials.txt"


def _format_credentials(accounts: list[DemoAccount]) -> bytes:
    blocks = [_HEADER]
    for account in accounts:
        blocks.append(
            "[account]\n"
            f"role={account.role}\n"
            f"address={account.address}\n"
            f"passphrase={account.passphrase}\n"
            f"totp={account.totp_uri}\n"
        )
    return "\n".join(blocks).encode()


def read_credentials(directory: Path) -> list[DemoAccount]:
    """The accounts of ``demo-credentials.txt`` (none if absent or from an older demo)."""
    try:
        text = _credentials_file(directory).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    accounts = []
    for block in text.split("[account]")[1:]:
        values = dict(
            line.split("=", 1) for line in block.splitlines() if "=" in line and line[0] != "#"
        )
        try:
            accounts.append(
                DemoAccount(values["role"], values["address"], values["passphrase"], values["totp"])
            )
        except KeyError:
            continue
    return accounts


def current_demo_code(directory: Path, address: str) -> str:
    """The six-digit TOTP code of a demo account now (``pli demo-code ADDRESS``).

    A code is accepted once (RFC 6238 §5.2): for a second login, wait for the next one.
    """
    wanted = address.strip().lower()
    for account in read_credentials(directory):
        if account.address == wanted:
            return account.code()
    raise DemoError(f"{address} is not a demo account of {directory}")


def _info(accounts: list[DemoAccount], *, created: bool) -> DemoInfo:
    admin = next((a for a in accounts if a.role == "operator_admin"), None)
    return DemoInfo(
        admin_user=admin.address if admin else "",
        admin_password=admin.passphrase if admin else "",
        mailboxes=[a.address for a in accounts if a.role == "professional"],
        accounts=accounts,
        created=created,
    )


def _old_ca_passphrase(directory: Path) -> str | None:
    """The CA passphrase an earlier ``pli demo`` kept in its credentials file."""
    try:
        text = _credentials_file(directory).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("identity_passphrase="):
            return line.split("=", 1)[1]
    return None


def _demo_ca(directory: Path) -> None:
    """The operator CA the server issues from, made once, its passphrase where it reads it."""
    from pli.server.accounts import operator_ca  # noqa: PLC0415 - Django is set up by now
    from pli.server.config import ConfigurationError, secret  # noqa: PLC0415

    path = operator_ca.ca_path()
    try:
        passphrase = secret("CA_PASSPHRASE", fallback_file=path / "passphrase")
    except ConfigurationError:
        passphrase = _old_ca_passphrase(directory) or secrets.token_urlsafe(24)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path / "passphrase", f"{passphrase}\n".encode(), 0o600)
    if not (path / "ca.p12").exists():
        CaDirectory.create(path, _CA_NAME, passphrase)
    operator_ca.operator_ca()  # fails now, naming the setting, rather than at the first login


def _import_directory(directory: Path) -> None:
    from pli.server.directory.importing import import_extraction  # noqa: PLC0415
    from pli.server.directory.models import Mailbox  # noqa: PLC0415
    from pli.server.directory.sample import (  # noqa: PLC0415
        write_mssante_extraction,
        write_rpps_extraction,
    )

    if Mailbox.objects.exists():
        return
    samples = directory / "demo-extractions"
    samples.mkdir(exist_ok=True)
    rpps = write_rpps_extraction(samples, persons=DEMO_PERSONS, seed=DEMO_SEED)
    mssante = write_mssante_extraction(samples, rpps, seed=DEMO_SEED)
    import_extraction(rpps)
    import_extraction(mssante)


def _demo_addresses() -> list[tuple[str, str]]:
    """(role, address) of every demo account: the first listed professionals, and the admin."""
    from pli.server.accounts.actions import registered_mailbox  # noqa: PLC0415
    from pli.server.directory.models import Mailbox  # noqa: PLC0415

    chosen: list[tuple[str, str]] = []
    candidates = Mailbox.objects.filter(
        kind="PER", red_list=False, active=True, professional__active=True
    ).order_by("address")
    for mailbox in candidates.iterator():
        if len(chosen) == DEMO_PROFESSIONALS:
            break
        if registered_mailbox(mailbox.address) is not None:
            chosen.append(("professional", mailbox.address))
    return [*chosen, ("operator_admin", DEMO_ADMIN)]


def _passphrase() -> str:
    # Four groups of six URL-safe characters: about 140 bits, easy to copy.
    return "-".join(secrets.token_urlsafe(5)[:6] for _ in range(4))


def _enrol(role: str, address: str) -> DemoAccount:
    """One account, through the steps a real one goes through (accounts' actions)."""
    from django.http import HttpRequest  # noqa: PLC0415

    from pli.server.accounts import factors  # noqa: PLC0415
    from pli.server.accounts.actions import (  # noqa: PLC0415
        current_charter,
        do_acknowledge_charter,
        do_activate_enrolment,
        do_finish_enrolment,
        do_record_factor,
        do_set_passphrase,
        invite_with_code,
    )
    from pli.server.accounts.custody import do_create_vault_key  # noqa: PLC0415

    _enrolment, code = invite_with_code(None, address, role)
    user = do_activate_enrolment(address, code, HttpRequest())
    passphrase = _passphrase()
    do_set_passphrase(user, passphrase, None)
    do_create_vault_key(user, passphrase, None)
    seed = factors.new_totp_seed()
    # Confirmed with the previous time step's code, so that the current one still
    # logs in right away (a code is accepted once, RFC 6238 §5.2).
    totp = pyotp.TOTP(seed, interval=factors.TOTP_PERIOD)
    previous = totp.at(time.time() - factors.TOTP_PERIOD)
    if not factors.confirm_totp(user, seed, previous):  # pragma: no cover
        raise DemoError(f"the TOTP seed of {address} was not confirmed")
    do_record_factor(user, "totp", True, None)
    charter = current_charter()
    if charter is not None:
        do_acknowledge_charter(user, charter.version, None)
    do_finish_enrolment(user, None)
    return DemoAccount(role, address, passphrase, factors.provisioning_uri(user, seed))


def create_demo(directory: Path) -> DemoInfo:
    """Create the demo operator once; later calls read what the first one made."""
    from django.db import transaction  # noqa: PLC0415

    from pli.server.accounts.models import User  # noqa: PLC0415

    known = read_credentials(directory)
    addresses = {account.address for account in known}
    enrolled = set(
        User.objects.filter(username__in=addresses, enrolled_at__isnull=False).values_list(
            "username", flat=True
        )
    )
    if (directory / _MARKER).exists() and known and addresses == enrolled:
        return _info(known, created=False)

    _import_directory(directory)
    _demo_ca(directory)
    wanted = _demo_addresses()
    kept = {account.address: account for account in known if account.address in enrolled}
    strays = [
        address
        for _role, address in wanted
        if address not in kept and User.objects.filter(username=address).exists()
    ]
    if strays:
        raise DemoError(
            f"accounts {', '.join(strays)} exist without their demo credentials:"
            " start from a new data directory (PLI_DATA_DIR)"
        )
    with transaction.atomic():
        accounts = [kept.get(address) or _enrol(role, address) for role, address in wanted]
        # Written before the commit: if the commit fails, the next run makes them again.
        write_atomically(_credentials_file(directory), _format_credentials(accounts), 0o600)
    (directory / _MARKER).write_text("2\n")
    return _info(accounts, created=any(a.address not in kept for a in accounts))


def print_welcome(info: DemoInfo, directory: Path, bind: str) -> None:
    host, _, port = bind.rpartition(":")
    # localhost rather than 127.0.0.1: browsers refuse an IP address as WebAuthn relying party.
    url = f"http://localhost:{port}" if host in ("127.0.0.1", "localhost") else f"http://{bind}"
    click.echo("Pli — démonstration prête / demo ready\n")
    click.echo(f"  Connexion       : {url}/compte/connexion/")
    click.echo(f"  Annuaire        : {url}/annuaire/")
    click.echo(f"  Console d'admin : {url}/admin/")
    click.echo(f"  API (OpenAPI)   : {url}/api/docs")
    click.echo(f"  FHIR            : {url}/fhir/Practitioner?identifier=…")
    credentials = _credentials_file(directory)
    click.echo("\n  Comptes de démonstration :")
    for account in info.accounts:
        label = "administrateur" if account.role == "operator_admin" else "professionnel"
        click.echo(f"    {account.address}  ({label})")
        if info.created:  # secrets are printed once; later runs point to the file
            click.echo(f"      phrase secrète : {account.passphrase}")
            click.echo(f"      TOTP           : {account.totp_uri}")
    click.echo(
        "\n  Phrases secrètes et graines TOTP (otpauth://, pour l'application"
        f" d'authentification) : {credentials}"
    )
    click.echo("  Code TOTP du moment : pli demo-code ADRESSE")
    click.echo(f"  Données         : {directory}\n")
