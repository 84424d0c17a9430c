"""``pli login``, ``send``, ``inbox``, ``read``, ``reply`` against a real server over HTTP.

The commands run through click's CliRunner, in this process, but every one of
them speaks HTTP to pytest-django's ``live_server``: nothing is called
directly. The personas and their workstation keys come from
tests/test_client_sdk.py.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pli.client.cli import main
from pli.server.directory.models import Mailbox, Professional
from pli.server.messaging.models import Message
from tests.accounts_support import PASSPHRASE
from tests.test_client_sdk import (
    IDENTITY_PASSPHRASE,
    NIR,
    UNKNOWN,
    A,
    B,
    Persona,
    Server,
    actions,
    alice,
    bob,
    ca_directory,
    server,
)

__all__ = ["alice", "bob", "ca_directory", "server"]  # fixtures, shared with the SDK tests

pytestmark = pytest.mark.django_db(transaction=True)


class Workstation:
    """One person's shell: their session file, key and trust anchors."""

    def __init__(self, server: Server, persona: Persona) -> None:
        self.server = server
        self.persona = persona
        self.session = server.tmp / f"cli-{persona.address.split('@', maxsplit=1)[0]}.json"
        self.runner = CliRunner()

    def run(
        self, *args: str, passphrase: str = IDENTITY_PASSPHRASE, language: str | None = "en"
    ) -> Result:
        """``pli ARGS``; in English unless told (these tests check behaviour, not wording:
        tests/test_client_i18n.py checks the French default). ``None``: no PLI_LANGUAGE."""
        env = {
            "PLI_SESSION_FILE": str(self.session),
            "PLI_PASSPHRASE": passphrase,
            "PLI_ACCOUNT_PASSPHRASE": passphrase,
            "PLI_LANGUAGE": language,
        }
        return self.runner.invoke(main, list(args), env=env, catch_exceptions=False)

    def key_options(self) -> list[str]:
        return [
            "--identity",
            str(self.persona.identity),
            "--trust",
            str(self.server.trust),
            "--crl",
            str(self.server.crl),
        ]

    def login(self, language: str | None = "en") -> Result:
        return self.run(
            "login",
            self.persona.address,
            "--server",
            self.server.url,
            "--code",
            self.persona.code(),
            passphrase=PASSPHRASE,
            language=language,
        )


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_send_read_reply_between_two_workstations(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    # A's practice software sends through the SDK, with an attachment.
    report = tmp_path / "compte-rendu.pdf"
    report.write_bytes(b"%PDF-1.4 compte rendu\n")
    practice = server.logged_in(alice)
    sent = practice.send(
        A, [B], "Avis — réf. 2026-117", "Cher confrère,\nvoici mon avis.\n", NIR, [report]
    )

    # B, in a shell.
    shell = Workstation(server, bob)
    logged = shell.login()
    assert logged.exit_code == 0, logged.output
    assert f"logged in as {B} (passphrase+totp)" in logged.stdout
    assert stat.S_IMODE(shell.session.stat().st_mode) == 0o600

    listing = shell.run("inbox")
    assert listing.exit_code == 0, listing.output
    assert f"* {sent.id}" in listing.stdout and A in listing.stdout

    saved = tmp_path / "received"
    read = shell.run("read", sent.id, "--save-attachments", str(saved), *shell.key_options())
    assert read.exit_code == 0, read.output
    out = read.stdout
    assert f"From: {A}" in out
    assert "Subject: Avis — réf. 2026-117" in out
    assert f"Patient: nir:{NIR}" in out
    assert f"Signature: valid, signed by {A}" in out
    # The signer as the directory publishes them (REQ-SIGNATURE), beside the certificate.
    person = alice.user.professional
    assert person is not None
    assert f"Directory: {person.first_name} {person.last_name}" in out
    assert f"national identifier {person.national_id}" in out
    assert "Cher confrère,\nvoici mon avis.\n" in out
    assert "Deliveries:" not in out  # a recipient's copy: no one else's state
    [attachment] = list(saved.iterdir())
    assert attachment.name == "compte-rendu.pdf"
    assert attachment.read_bytes() == report.read_bytes()
    assert stat.S_IMODE(attachment.stat().st_mode) == 0o600
    assert read.stderr == ""  # revocation checked against the CRL: no warning
    assert f"  {sent.id}" in shell.run("inbox").stdout  # now read: no star

    answer = tmp_path / "answer.txt"
    answer.write_text("Merci, je le vois demain.\n", encoding="utf-8")
    replied = shell.run("reply", sent.id, "--body-file", str(answer), *shell.key_options())
    assert replied.exit_code == 0, replied.output
    reply_id = replied.stdout.split()[1]
    assert f"{A}: delivered" in replied.stdout

    # A's software reads the answer: genuine, signed by B, in the same thread.
    back = practice.read(reply_id)
    assert back.signature.signer_emails == [B] and back.signature.status == "valid"
    assert back.subject == "Re: Avis — réf. 2026-117"
    assert back.body == "Merci, je le vois demain.\n"
    assert back.in_reply_to_header == sent.message_id
    assert back.summary.thread == sent.thread

    # A, in a shell on the practice software's session: the Sent copy shows B read it.
    own = Workstation(server, alice)
    own.session = server.tmp / f"{A.split('@')[0]}-session.json"
    mine = own.run("read", sent.id, *own.key_options())
    assert mine.exit_code == 0, mine.output
    assert re.search(rf"^Deliveries:\n  {re.escape(B)}: read, read on \d{{4}}-", mine.stdout, re.M)


@pytest.mark.requirement("REQ-LPS")
def test_flag_move_and_delete_from_the_command_line(
    server: Server, alice: Persona, bob: Persona
) -> None:
    """What the web mail does to a copy, from a shell (the SDK's move, flag and delete)."""
    practice = server.logged_in(alice)
    sent = practice.send(A, [B], "Avis", "Cher confrère.\n", NIR)
    shell = Workstation(server, bob)
    assert shell.login().exit_code == 0

    flagged = shell.run("flag", sent.id, language=None)
    assert flagged.exit_code == 0, flagged.output
    assert flagged.stdout == f"Message {sent.id} marqué à suivre\n"
    assert re.search(rf"^\* {sent.id} .*  \[flagged\]$", shell.run("inbox").stdout, re.M)
    assert shell.run("flag", sent.id, "--off").stdout == f"Message {sent.id}: flag removed\n"
    assert "[flagged]" not in shell.run("inbox").stdout

    moved = shell.run("move", sent.id, "archive")
    assert moved.stdout == f"Message {sent.id} moved to archive\n", moved.output
    assert sent.id not in shell.run("inbox").stdout
    assert sent.id in shell.run("inbox", "--folder", "archive").stdout
    # A received copy cannot go to "sent": the server's code, nothing moved.
    refused = shell.run("move", sent.id, "sent")
    assert error_line(refused).startswith("pli: error: bad_folder: ")
    assert sent.id in shell.run("inbox", "--folder", "archive").stdout

    assert shell.run("delete", sent.id).stdout == f"Message {sent.id} moved to the trash\n"
    assert sent.id in shell.run("inbox", "--folder", "trash").stdout
    # Repeated, it stays in the trash: deleting for good is asked for explicitly.
    again = shell.run("delete", sent.id)
    assert again.stdout == f"Message {sent.id} moved to the trash\n", again.output
    assert sent.id in shell.run("inbox", "--folder", "trash").stdout
    gone = shell.run("delete", sent.id, "--permanent")
    assert gone.stdout == f"Message {sent.id} deleted for good\n", gone.output
    assert error_line(shell.run("read", sent.id, *shell.key_options())).startswith(
        "pli: error: not_found: "
    )
    # A's own copy is untouched, and still says that B read nothing.
    [delivery] = practice.message(sent.id).deliveries or []
    assert (delivery.recipient, delivery.state) == (B, "delivered")


@pytest.mark.requirement("REQ-SIGNATURE")
def test_pli_read_warns_when_the_directory_no_longer_vouches_for_the_signer(
    server: Server, alice: Persona, bob: Persona
) -> None:
    """A valid signature, but the directory disagrees: said, without hiding the message."""
    practice = server.logged_in(alice)
    first = practice.send(A, [B], "Avis", "Premier.\n", NIR)
    second = practice.send(A, [B], "Avis", "Second.\n", NIR)
    shell = Workstation(server, bob)
    assert shell.login().exit_code == 0

    # The directory now gives another national identifier than A's certificate.
    person = alice.user.professional
    assert person is not None
    certified = person.national_id
    Professional.objects.filter(pk=person.pk).update(national_id="810000000002")
    read = shell.run("read", first.id, *shell.key_options())
    assert read.exit_code == 0, read.output
    assert "Premier." in read.stdout
    assert read.stderr.strip() == (
        "warning: signer_directory_mismatch: the certificate's national identifier"
        f" ({certified}) is not the directory's (810000000002)"
    )

    # A's mailbox is closed: the directory no longer knows the signer.
    Mailbox.objects.filter(address=A).update(active=False)
    read = shell.run("read", second.id, *shell.key_options(), language=None)
    assert read.exit_code == 0, read.output
    assert "Second." in read.stdout and "Annuaire :" not in read.stdout
    assert read.stderr.strip() == (
        f"warning: signer_not_in_directory: {A} n'a pas (ou plus) de boîte active dans l'annuaire"
    )


@pytest.mark.requirement("REQ-SUBJECT")
def test_pli_send_refuses_a_subject_with_a_nir_before_sending(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    shell = Workstation(server, alice)
    assert shell.login().exit_code == 0
    body = tmp_path / "body.txt"
    body.write_text("Bonjour.\n", encoding="utf-8")
    result = shell.run(
        "send",
        "--from",
        A,
        "--to",
        B,
        "--subject",
        f"Résultats {NIR[:5]} {NIR[5:]}",
        "--body-file",
        str(body),
        *shell.key_options(),
    )
    assert error_line(result).startswith("pli: error: subject_contains_patient_id: ")
    assert Message.objects.count() == 0
    assert actions("messages.sent") == []


def test_pli_send_to_an_unknown_address_gets_the_servers_code(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    shell = Workstation(server, alice)
    assert shell.login().exit_code == 0
    body = tmp_path / "body.txt"
    body.write_text("Bonjour.\n", encoding="utf-8")
    result = shell.run(
        "send",
        "--from",
        A,
        "--to",
        UNKNOWN,
        "--subject",
        "Avis",
        "--body-file",
        str(body),
        *shell.key_options(),
    )
    assert error_line(result).startswith("pli: error: recipient_not_in_directory: ")
    assert Message.objects.count() == 0


def test_commands_without_a_session_or_with_a_wrong_code_say_so(
    server: Server, alice: Persona
) -> None:
    shell = Workstation(server, alice)
    assert error_line(shell.run("inbox", "--server", server.url)).startswith(
        "pli: error: not_logged_in: "
    )
    wrong = shell.run("login", A, "--server", server.url, "--code", "000000", passphrase=PASSPHRASE)
    assert error_line(wrong).startswith("pli: error: bad_code: ")
    assert error_line(shell.run("inbox")).startswith("pli: error: server_missing: ")
