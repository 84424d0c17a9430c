"""The pure packages' error codes, as the ``pli`` commands show them: French first.

``pli.crypto``, ``pli.mime`` and ``pli.identifiers`` give a stable code and an
English technical detail; ``pli.client.reasons`` shows each code's meaning in
the command line's language. Every code those packages can raise must have
one (read from their source, so a new code without a text fails here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from pli.client.reasons import TEXTS, raised_by_a_pure_package, reason
from pli.identifiers import IdentifierError, parse_identifier
from pli.mime import MimeError
from tests.test_client_cli_messaging import Workstation, error_line
from tests.test_client_sdk import (
    NIR,
    A,
    B,
    Persona,
    Server,
    alice,
    ca_directory,
    server,
)

__all__ = ["alice", "ca_directory", "server"]  # fixtures

SOURCE = Path(__file__).parents[1] / "src" / "pli"


def codes_raised_by_the_pure_packages() -> set[str]:
    codes = set(
        re.findall(r'^\s+code = "([a-z_]+)"', (SOURCE / "crypto" / "errors.py").read_text(), re.M)
    )
    for package in ("mime", "identifiers"):
        for path in (SOURCE / package).rglob("*.py"):
            codes |= set(
                re.findall(r'(?:MimeError|IdentifierError)\(\s*"([a-z_]+)"', path.read_text())
            )
    return codes


def test_every_code_of_the_pure_packages_has_its_meaning() -> None:
    codes = codes_raised_by_the_pure_packages()
    assert len(codes) > 40  # the reading of the source found them
    assert sorted(codes - set(TEXTS)) == []


def test_only_errors_raised_inside_a_pure_package_are_rewritten() -> None:
    with pytest.raises(IdentifierError) as inside:
        parse_identifier("810000000x", "rpps")
    assert raised_by_a_pure_package(inside.value)
    assert (
        reason(None, inside.value.code, inside.value.detail, inside.value)
        == TEXTS[inside.value.code]
    )
    assert reason("en", "bad_characters", "x", inside.value) == (
        "the identifier must hold digits only"
    )
    # The client's own error with the same code keeps the detail it wrote.
    with pytest.raises(MimeError) as outside:
        raise MimeError("bad_address", "l'adresse « x » de --to est invalide")
    assert not raised_by_a_pure_package(outside.value)
    assert reason(None, "bad_address", outside.value.detail, outside.value) == (
        "l'adresse « x » de --to est invalide"
    )


def send_from_a_shell(
    server: Server, alice: Persona, tmp_path: Path, patient: str, **run: Any
) -> Result:
    """``pli send`` of a short letter from A to B, logged in from a shell."""
    shell = Workstation(server, alice)
    assert shell.login().exit_code == 0
    body = tmp_path / "lettre.txt"
    body.write_text("Bonjour.\n", encoding="utf-8")
    return shell.run(
        "send",
        "--from",
        A,
        "--to",
        B,
        "--subject",
        "Avis",
        "--patient-ins",
        patient,
        "--body-file",
        str(body),
        *shell.key_options(),
        **run,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("language", "expected"),
    [
        (None, "wrong_passphrase: la phrase secrète n'ouvre pas ce fichier de clé"),
        ("en", "wrong_passphrase: the passphrase does not open this key file"),
    ],
)
def test_a_wrong_identity_passphrase_reads_in_the_commands_language(
    server: Server, alice: Persona, tmp_path: Path, language: str | None, expected: str
) -> None:
    wrong = "pas la bonne"  # a wrong passphrase, on purpose
    sent = send_from_a_shell(server, alice, tmp_path, NIR, passphrase=wrong, language=language)
    assert error_line(sent) == f"pli: error: {expected}"


@pytest.mark.django_db(transaction=True)
def test_a_bad_patient_identifier_reads_in_french(
    server: Server, alice: Persona, tmp_path: Path
) -> None:
    sent = send_from_a_shell(server, alice, tmp_path, "185057800608492", language=None)
    line = error_line(sent)
    assert line.startswith("pli: error: bad_patient_id: ")
    assert "NIR/INS" in line and "not a valid" not in line
