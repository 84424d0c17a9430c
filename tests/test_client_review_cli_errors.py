"""``pli`` and the SDK on bad input and bad conditions: one line with a code, nothing half-done.

Every command runs against pytest-django's ``live_server`` as in
tests/test_client_cli_messaging.py, whose workstations and personas it reuses.
A broken server is a local HTTP server answering what a misconfigured proxy
would; a broken network during an upload is the SDK's transport failing, as
in tests/test_messaging_uploads.py.
"""

from __future__ import annotations

import http.server
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pli.client import Client, ClientError
from pli.client.cli import main
from pli.mime import Attachment
from pli.server.messaging.models import Delivery, Message
from pli.server.messaging.uploads import Upload
from tests.test_client_cli_messaging import Workstation, error_line
from tests.test_client_sdk import (
    NIR,
    UNKNOWN,
    A,
    B,
    Persona,
    Server,
    alice,
    bob,
    ca_directory,
    server,
)

__all__ = ["alice", "bob", "ca_directory", "server"]  # fixtures, shared with the SDK tests


def pdf(size: int) -> bytes:
    """A PDF-looking file of ``size`` bytes."""
    return b"%PDF-1.7\n" + os.urandom(size - 9)


def run_cli(session: Path, *args: str) -> Result:
    """``pli ARGS`` with its own session file, no workstation needed."""
    env = {
        "PLI_SESSION_FILE": str(session),
        "PLI_PASSPHRASE": "x",
        "PLI_ACCOUNT_PASSPHRASE": "x",
        "PLI_LANGUAGE": "en",
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def send_args(body: Path, *extra: str, to: str = B) -> list[str]:
    return ["send", "--from", A, "--to", to, "--subject", "Avis", "--body-file", str(body), *extra]


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "lettre.txt"
    path.write_text("Cher confrère,\n", encoding="utf-8")
    return path


@pytest.fixture
def shell(server: Server, alice: Persona) -> Workstation:
    """Alice's shell, logged in."""
    workstation = Workstation(server, alice)
    assert workstation.login().exit_code == 0
    return workstation


# --------------------------------------------------------------------------- bad input


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_bad_input_to_pli_send_and_read_gets_one_line_with_its_code(
    shell: Workstation, bob: Persona, body: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = shell.key_options()
    setup = tmp_path / "setup.exe"
    setup.write_bytes(b"MZ\x90\x00" + b"\x00" * 100)
    disguised = tmp_path / "compte-rendu.pdf"
    disguised.write_bytes(b"\x7fELF" + b"\x00" * 100)
    cases: list[tuple[list[str], str, str | None]] = [
        (send_args(body, "--patient-ins", "1850578006084"), "bad_patient_id", None),
        (send_args(body, "--attach", str(setup)), "attachment_type_not_allowed", None),
        (send_args(body, "--attach", str(disguised)), "attachment_content_mismatch", None),
        (send_args(body), "wrong_passphrase", "not the identity's passphrase"),
        (["read", "../../etc/passwd"], "bad_message_id", None),
        (["read", "msg_" + "0" * 32], "not_found", None),
    ]
    for args, code, passphrase in cases:
        options = {"passphrase": passphrase} if passphrase else {}
        result = shell.run(*args, *keys, **options)
        assert error_line(result).startswith(f"pli: error: {code}: "), args
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", "1000")
    big = tmp_path / "scanner.pdf"
    big.write_bytes(pdf(2000))
    too_large = shell.run(*send_args(body, "--attach", str(big)), *keys)
    assert error_line(too_large).startswith("pli: error: attachment_too_large: scanner.pdf: ")
    assert not Message.objects.exists() and not Upload.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_a_body_or_passphrase_file_not_in_utf8_is_named_in_the_error(
    shell: Workstation, bob: Persona, body: Path, tmp_path: Path
) -> None:
    # What Windows' Notepad long saved: Latin-1 (cp1252) text.
    letter = tmp_path / "lettre-latin1.txt"
    letter.write_bytes("Résultats normaux.\n".encode("cp1252"))
    result = shell.run(*send_args(letter), *shell.key_options())
    line = error_line(result)
    assert line.startswith("pli: error: not_utf8: ") and str(letter) in line
    secret = tmp_path / "phrase.txt"
    secret.write_bytes("clé de poste\n".encode("cp1252"))
    result = shell.run(
        *send_args(body),
        *shell.key_options(),
        "--passphrase-file",
        str(secret),
    )
    assert error_line(result).startswith(f"pli: error: not_utf8: {secret} ")
    assert not Message.objects.exists()
    operator = run_cli(
        tmp_path / "session.json",
        *("ca", "init", "--dir", str(tmp_path / "ca"), "--name", "Opérateur"),
        *("--passphrase-file", str(secret)),
    )
    assert error_line(operator).startswith(f"pli: error: not_utf8: {secret} ")
    assert not (tmp_path / "ca").exists()


def test_a_malformed_server_url_is_refused_with_its_code(tmp_path: Path) -> None:
    with pytest.raises(ClientError) as refused:
        Client("http://[::1", session_file=tmp_path / "session.json")
    assert refused.value.code == "bad_server_url"
    result = run_cli(tmp_path / "session.json", "inbox", "--server", "http://[::1")
    assert error_line(result).startswith("pli: error: bad_server_url: ")


# --------------------------------------------------------------------------- bad conditions


class _Broken(http.server.BaseHTTPRequestHandler):
    """What a proxy in front of a failed server answers: a status and an HTML page."""

    answer: tuple[int, bytes] = (500, b"<html>Internal Server Error</html>")

    def do_GET(self) -> None:
        status, page = self.answer
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_POST(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def broken_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.requirement("REQ-LPS")
def test_an_unreachable_or_failing_server_gets_one_line_with_its_code(
    broken_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "session.json"
    refused = f"http://127.0.0.1:{free_port()}"
    expected: list[tuple[str, tuple[int, bytes], str]] = [
        (refused, (500, b""), "server_unreachable"),
        (broken_server, (500, b"<html>Internal Server Error</html>"), "http_500"),
        (broken_server, (502, b"<html>Bad Gateway</html>"), "http_502"),
        (broken_server, (200, b"<html>Wi-Fi login</html>"), "bad_response"),
    ]
    for url, answer, code in expected:
        monkeypatch.setattr(_Broken, "answer", answer)
        for args in (["inbox", "--server", url], ["login", A, "--server", url, "--code", "1"]):
            result = run_cli(session, *args)
            assert error_line(result).startswith(f"pli: error: {code}: "), (args, answer)
        with pytest.raises(ClientError) as raised:
            Client(url, session_file=session).mailboxes()
        assert raised.value.code == code
    assert not session.exists()


# --------------------------------------------------------------------------- nothing half-done


def _work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the CLI's SDK keeps ciphertext while it uploads (the system's temporary dir)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return work


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_a_send_the_server_refuses_leaves_no_upload_behind(
    shell: Workstation, body: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))  # the scan is streamed
    work = _work_dir(tmp_path, monkeypatch)
    scan = tmp_path / "irm.pdf"
    scan.write_bytes(pdf(400_000))
    result = shell.run(*send_args(body, "--attach", str(scan), to=UNKNOWN), *shell.key_options())
    assert error_line(result).startswith("pli: error: recipient_not_in_directory: ")
    assert not Message.objects.exists() and not Upload.objects.exists()
    assert list(work.iterdir()) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_an_upload_cut_off_in_pli_send_leaves_nothing_to_clean_up(
    shell: Workstation, bob: Persona, body: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI cannot resume an upload (the SDK can): it gives it up and says to send again."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))
    work = _work_dir(tmp_path, monkeypatch)
    scan = tmp_path / "irm.pdf"
    scan.write_bytes(pdf(400_000))
    original = Client._send_request

    def network_down_for_chunks(self: Client, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT":
            raise ClientError("server_unreachable", "the network is down")
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(Client, "_send_request", network_down_for_chunks)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the SDK's retry back-off
    result = shell.run(*send_args(body, "--attach", str(scan)), *shell.key_options())
    line = error_line(result)
    assert line.startswith("pli: error: upload_interrupted: ")
    assert "resume" not in line  # no command resumes it
    assert not Message.objects.exists() and not Upload.objects.exists()
    assert list(work.iterdir()) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_an_attachment_directory_that_cannot_be_made_leaves_the_message_unread(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    sent = server.logged_in(alice).send(
        A, [B], "Avis", "Voir.\n", NIR, [Attachment("cr.pdf", "application/pdf", pdf(500))]
    )
    shell = Workstation(server, bob)
    assert shell.login().exit_code == 0
    not_a_directory = tmp_path / "notes.txt"
    not_a_directory.write_text("x", encoding="utf-8")
    result = shell.run(
        "read", sent.id, "--save-attachments", str(not_a_directory / "pj"), *shell.key_options()
    )
    line = error_line(result)
    assert line.startswith("pli: error: save_directory_unusable: ")
    # Neither read nor answered by a receipt: the user has seen nothing yet.
    assert Delivery.objects.get(message__public_id=sent.id).read_at is None
    assert Message.objects.count() == 1


# --------------------------------------------------------------------------- file names


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
def test_received_attachment_names_never_write_outside_the_chosen_directory(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    hostile = [
        "../../evil.pdf",
        "/etc/cron.d/evil.pdf",
        "..\\..\\win.pdf",
        "sous/dossier.pdf",
        "nul\x00.pdf",
        "..",
        # Within 200 characters, but 400 bytes: more than a file name may hold (255).
        "é" * 196 + ".pdf",
    ]
    attachments = [
        Attachment(name, "application/pdf", pdf(100 + i)) for i, name in enumerate(hostile)
    ]
    sent = server.logged_in(alice).send(A, [B], "Pièces", "Voir.\n", attachments=attachments)
    shell = Workstation(server, bob)
    assert shell.login().exit_code == 0
    root = tmp_path / "sandbox"
    chosen = root / "a" / "b" / "pj"
    result = shell.run("read", sent.id, "--save-attachments", str(chosen), *shell.key_options())
    assert result.exit_code == 0, result.output
    written = sorted(p for p in root.rglob("*") if p.is_file())
    assert all(p.parent == chosen for p in written)
    assert sorted(p.read_bytes() for p in written) == sorted(a.data for a in attachments)
    names = {p.name for p in written}
    assert {"evil.pdf", "evil (2).pdf", "win.pdf", "dossier.pdf", "nul.pdf"} <= names
    [long] = [n for n in names if n.startswith("é")]
    assert long.endswith(".pdf") and len(os.fsencode(long)) <= 255


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_a_file_whose_name_is_not_utf8_can_be_attached(
    shell: Workstation, bob: Persona, body: Path, tmp_path: Path, server: Server
) -> None:
    # Copied from an old USB stick: the name's bytes are Latin-1.
    report = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sultats.pdf"))
    report.write_bytes(pdf(300))
    result = shell.run(*send_args(body, "--attach", str(report)), *shell.key_options())
    assert result.exit_code == 0, result.output
    sent_id = result.stdout.split()[1]
    [attachment] = server.logged_in(bob).read(sent_id).attachments
    assert attachment.filename == "r_sultats.pdf"
    assert attachment.data == report.read_bytes()


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-LPS")
def test_the_sdk_names_an_attachment_it_cannot_read_before_anything_is_sent(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    """Practice software passes what its user picked: a file gone, or a folder."""
    sender = server.logged_in(alice)
    for path in (tmp_path / "parti.pdf", tmp_path):
        with pytest.raises(ClientError) as refused:
            sender.send(A, [B], "Avis", "Voir.\n", attachments=[path])
        assert refused.value.code == "attachment_unreadable"
        assert str(path) in refused.value.detail
    assert not Message.objects.exists() and not Upload.objects.exists()
