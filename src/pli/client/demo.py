"""``pli demo``: a sealed round trip between two demo professionals.

Creates a demo operator CA, a general practitioner and a cardiologist (with
valid RPPS numbers), seals a letter from one to the other, shows what a
relay or the server sees, then opens it as the recipient.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import click

from pli.client.castore import CaDirectory, write_atomically
from pli.crypto import (
    SoftwareKey,
    TrustStore,
    build_certificate_request,
    certificate_pem,
    envelope_to_smime,
    generate_private_key,
    open_envelope,
    seal,
)
from pli.identifiers import luhn_complete
from pli.mime import Draft, build_inner_message, build_outer_message, parse_inner_message

DEMO_PASSPHRASE = "demo-passphrase-not-secret"  # noqa: S105 - demo data, printed to the user


def _professional(ca: CaDirectory, email: str, name: str, rpps: str) -> SoftwareKey:
    key = generate_private_key()
    csr = build_certificate_request(key, email=email, common_name=name, national_id="8" + rpps)
    return SoftwareKey(key, ca.issue(csr))


def run_demo(directory: Path | None) -> None:
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="pli-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    echo = click.echo
    echo("Pli — démonstration d'un échange scellé / sealed exchange demo\n")

    ca_dir = directory / "ca"
    ca = (
        CaDirectory.open(ca_dir, DEMO_PASSPHRASE)
        if (ca_dir / "ca.p12").exists()
        else CaDirectory.create(ca_dir, "Pli Demo Operator", DEMO_PASSPHRASE)
    )
    echo(f"1. Autorité de certification de l'opérateur : {ca_dir / 'ca.pem'}")

    martin = _professional(
        ca, "claire.martin@demo.pli.test", "Dr Claire Martin", luhn_complete("1010000001")
    )
    durand = _professional(
        ca, "paul.durand@demo.pli.test", "Dr Paul Durand", luhn_complete("1010000002")
    )
    for who in (martin, durand):
        name = who.certificate.subject.rfc4514_string()
        echo(f"2. Professionnel : {name}")
        write_atomically(
            directory / f"{who.certificate.serial_number:x}.pem", certificate_pem(who.certificate)
        )
    crl = ca.publish_crl()

    draft = Draft(
        from_address="claire.martin@demo.pli.test",
        from_name="Dr Claire Martin",
        to=["paul.durand@demo.pli.test"],
        subject="Avis cardiologique — patient réf. 2026-117",
        body_text=(
            "Cher confrère,\n\nJe vous adresse ce patient pour un avis sur une dyspnée d'effort.\n"
            "ECG joint.\n\nBien confraternellement,\nDr Claire Martin\n"
        ),
        patient_id="2 85 05 78 006 084 41",
    )
    inner = build_inner_message(draft, date=dt.datetime.now(dt.UTC))
    envelope = seal(inner, martin, [durand.certificate])
    outer = build_outer_message(
        envelope_to_smime(envelope), from_address=draft.from_address, to=draft.to
    )
    write_atomically(directory / "message.eml", outer)
    echo(f"\n3. Message scellé (signé puis chiffré) : {len(envelope)} octets DER")
    echo("   Ce que voit un relais ou le serveur :")
    for line in outer.split(b"\r\n\r\n", 1)[0].decode().splitlines():
        if line.split(":", 1)[0] in ("From", "To", "Subject", "Content-Type"):
            echo(f"     {line}")

    opened = open_envelope(envelope, durand, TrustStore([ca.certificate], [crl]))
    message = parse_inner_message(opened.mime)
    echo("\n4. Ouvert par le destinataire :")
    echo(f"   signature valide, signée par {opened.signer.common_name} <{opened.signer.emails[0]}>")
    echo(
        f"   identifiant national {opened.signer.national_id}, révocation vérifiée : "
        f"{'oui' if opened.details.revocation_checked else 'non'}"
    )
    echo(f"   objet réel : {message.subject}")
    echo(f"   patient : {message.patient_id}")
    echo(f"\nFichiers de la démonstration : {directory}")
