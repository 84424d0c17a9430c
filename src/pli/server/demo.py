"""``pli demo``: a demo operator in the data directory, then the server.

Made once (a marker file records it): the operator's CA, a sample directory
generated in the real RPPS and MSSanté extraction formats and imported like
a real one, certificates for a few demo mailboxes, and an administrator
account for the console. Then Pli serves on http://127.0.0.1:8000.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import click

from pli.client.castore import CaDirectory, write_atomically
from pli.crypto import (
    build_certificate_request,
    certificate_pem,
    dump_pkcs12,
    generate_private_key,
)

DEMO_PERSONS = 300
DEMO_SEED = 2026
_MARKER = "demo-ready"


@dataclass(frozen=True)
class DemoInfo:
    admin_user: str
    admin_password: str
    mailboxes: list[str]


def _credentials_file(directory: Path) -> Path:
    return directory / "demo-credentials.txt"


def create_demo(directory: Path) -> DemoInfo:
    """Create the demo operator once; later calls read what the first one made."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415 - Django is set up by now

    from pli.server.directory.actions import do_publish_mailbox_certificate  # noqa: PLC0415
    from pli.server.directory.importing import import_extraction  # noqa: PLC0415
    from pli.server.directory.models import Mailbox  # noqa: PLC0415
    from pli.server.directory.sample import (  # noqa: PLC0415
        write_mssante_extraction,
        write_rpps_extraction,
    )

    credentials = _credentials_file(directory)
    if (directory / _MARKER).exists() and credentials.exists():
        lines = dict(
            line.split("=", 1) for line in credentials.read_text().splitlines() if "=" in line
        )
        return DemoInfo(
            lines["admin_user"], lines["admin_password"], lines.get("mailboxes", "").split(",")
        )

    samples = directory / "demo-extractions"
    samples.mkdir(exist_ok=True)
    rpps = write_rpps_extraction(samples, persons=DEMO_PERSONS, seed=DEMO_SEED)
    mssante = write_mssante_extraction(samples, rpps, seed=DEMO_SEED)
    import_extraction(rpps)
    import_extraction(mssante)

    # The operator's CA (passphrase kept beside it: this is a demonstration).
    ca_passphrase = secrets.token_urlsafe(24)
    ca = CaDirectory.create(directory / "ca", "Pli — opérateur de démonstration", ca_passphrase)
    keys_dir = directory / "demo-keys"
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    published: list[str] = []
    personal = Mailbox.objects.filter(kind="PER", red_list=False, professional__isnull=False)
    for mailbox in personal.select_related("professional").order_by("address")[:3]:
        professional = mailbox.professional
        if professional is None:  # pragma: no cover - excluded by the filter
            continue
        key = generate_private_key()
        csr = build_certificate_request(
            key,
            email=mailbox.address,
            common_name=f"{professional.first_name} {professional.last_name}",
            national_id=professional.national_id if professional.identifier_type in "80" else None,
        )
        certificate = ca.issue(csr)
        do_publish_mailbox_certificate(mailbox, certificate_pem(certificate).decode())
        write_atomically(
            keys_dir / f"{mailbox.address}.p12",
            dump_pkcs12(key, certificate, ca_passphrase, name=mailbox.address),
            0o600,
        )
        published.append(mailbox.address)
    ca.publish_crl()

    admin_password = secrets.token_urlsafe(12)
    user_model = get_user_model()
    if not user_model.objects.filter(username="admin").exists():
        user_model.objects.create_superuser("admin", "admin@demo.pli.test", admin_password)
    write_atomically(
        credentials,
        (
            "admin_user=admin\n"
            f"admin_password={admin_password}\n"
            f"mailboxes={','.join(published)}\n"
            f"identity_passphrase={ca_passphrase}\n"
        ).encode(),
        0o600,
    )
    (directory / _MARKER).write_text("1\n")
    return DemoInfo("admin", admin_password, published)


def print_welcome(info: DemoInfo, directory: Path, bind: str) -> None:
    url = f"http://{bind}"
    click.echo("Pli — démonstration prête / demo ready\n")
    click.echo(f"  Annuaire        : {url}/annuaire/")
    click.echo(
        f"  Console d'admin : {url}/admin/  (utilisateur {info.admin_user},"
        f" mot de passe {info.admin_password})"
    )
    click.echo(f"  API (OpenAPI)   : {url}/api/docs")
    click.echo(f"  FHIR            : {url}/fhir/Practitioner?identifier=…")
    if info.mailboxes:
        click.echo(f"  Boîtes avec certificat : {', '.join(info.mailboxes)}")
    click.echo(f"  Données         : {directory}  (identifiants dans demo-credentials.txt)\n")
