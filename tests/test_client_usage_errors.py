"""Usage errors of ``pli``: French first, English on demand, each with a stable code.

click's own usage errors are English and carry no code ("Error: Missing option
'--to'."); ``pli.client.usage`` rebuilds each from what the exception holds.
These tests run the real command (click's CliRunner; a pty for Ctrl-D at a
prompt) and read what a person or a script sees: the usage line, the hint,
one ``pli: error: <code>: <detail>`` line, and click's exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pli.client.cli import _stdout_closed, main
from tests.test_client_i18n import _read_until, login_at_a_terminal


def pli(*args: str, language: str | None = None) -> Result:
    env = {"PLI_LANGUAGE": language, "PLI_PASSPHRASE": None, "PLI_SERVER": None}
    for name in ("PLI_IDENTITY", "PLI_TRUST", "PLI_CRL", "PLI_SESSION_FILE"):
        env[name] = None
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="pli")


def refusal(result: Result) -> tuple[str, str]:
    """The code and detail of the one error line; the usage line and hint before it."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("pli: error: ")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0]
    code, _, detail = errors[0].removeprefix("pli: error: ").partition(": ")
    return code, detail


@pytest.mark.parametrize(
    ("args", "code", "french", "english"),
    [
        (
            ["send", "--from", "a@x.test"],
            "missing_option",
            "option obligatoire absente : --to",
            "missing option: --to",
        ),
        (
            ["send", "--form", "a@x.test"],
            "unknown_option",
            "option inconnue : --form ; vouliez-vous dire --from, --to ?",
            "no such option: --form; did you mean --from, --to?",
        ),
        (
            ["inbox", "--folder", "boite"],
            "bad_value",
            (
                "valeur refusée pour --folder : « boite » n'est pas l'un de :"
                " inbox, sent, archive, trash"
            ),
            "invalid value for --folder: 'boite' is not one of: inbox, sent, archive, trash",
        ),
        (
            ["inbox", "--page", "0"],
            "bad_value",
            "valeur refusée pour --page : 0 est inférieur à 1",
            "invalid value for --page: 0 is less than 1",
        ),
        (
            ["inbox", "--page", "deux"],
            "bad_value",
            "valeur refusée pour --page : « deux » n'est pas un nombre entier",
            "invalid value for --page: 'deux' is not a whole number",
        ),
        (
            ["inbox", "--session-file"],
            "option_value_missing",
            "l'option --session-file attend une valeur",
            "option --session-file needs a value",
        ),
        (
            ["read"],
            "missing_argument",
            "argument obligatoire absent : MESSAGE_ID",
            "missing argument: MESSAGE_ID",
        ),
        (
            ["read", "msg_1"],
            "missing_option",
            "option obligatoire absente : --identity (ou la variable PLI_IDENTITY)",
            "missing option: --identity (or the variable PLI_IDENTITY)",
        ),
        (
            ["logout", "en-trop"],
            "unexpected_argument",
            "en trop : en-trop",
            "unexpected: en-trop",
        ),
        (
            ["sned"],
            "unknown_command",
            "commande inconnue : sned ; vouliez-vous dire send ?",
            "no such command: sned; did you mean send?",
        ),
        (["--debug"], "missing_command", "indiquez une commande", "give a command"),
    ],
)
def test_usage_errors_have_a_code_and_read_in_french_by_default(
    args: list[str], code: str, french: str, english: str
) -> None:
    in_french = pli(*args)
    assert refusal(in_french) == (code, french)
    assert "Essayez « pli" in in_french.stderr and "--help » pour l'aide." in in_french.stderr
    assert in_french.stderr.startswith("Utilisation : pli")
    assert "Error" not in in_french.stderr and "Usage" not in in_french.stderr
    in_english = pli(*args, language="en")
    assert refusal(in_english) == (code, english)
    assert in_english.stderr.startswith("Usage: pli") and "Try 'pli" in in_english.stderr


def test_file_options_say_what_is_wrong_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pdf"
    assert refusal(pli("send", "--attach", str(missing))) == (
        "bad_value",
        f"valeur refusée pour --attach : « {missing} » n'existe pas",
    )
    assert refusal(pli("send", "--attach", str(tmp_path))) == (
        "bad_value",
        f"valeur refusée pour --attach : « {tmp_path} » est un dossier, pas un fichier",
    )
    a_file = tmp_path / "note.txt"
    a_file.write_text("x", encoding="utf-8")
    assert refusal(pli("read", "msg_1", "--save-attachments", str(a_file))) == (
        "bad_value",
        f"valeur refusée pour --save-attachments : « {a_file} » n'est pas un dossier",
    )


def test_the_help_still_shows_and_good_values_pass(tmp_path: Path) -> None:
    """The localized parsing changes errors only: help, and values that are right."""
    shown = pli("inbox", "--help")
    assert shown.exit_code == 0 and "Utilisation : pli inbox [OPTIONS]" in shown.output
    # Parsed, then stopped further on for want of a server: not a usage error.
    listing = pli("inbox", "--folder", "archive", "--page", "2")
    assert listing.exit_code == 1
    assert listing.stderr.startswith("pli: error: server_missing: ")
    top = pli()
    assert top.exit_code in {0, 2} and "Commandes" in top.output


@pytest.mark.parametrize(
    ("language", "said"), [(None, "pli: interrompu"), ("en", "pli: interrupted")]
)
def test_the_end_of_input_at_a_prompt_is_said_in_the_same_language(
    language: str | None, said: str, tmp_path: Path
) -> None:
    """Ctrl-D at ``pli login``'s first prompt, at a real terminal: no English "Aborted!"."""
    with login_at_a_terminal(language, tmp_path) as (terminal, process):
        _read_until(terminal, "Adresse : " if language is None else "Address: ")
        os.write(terminal, b"\x04")
        end = _read_until(terminal, said)
    assert process.wait(timeout=20) == 1
    assert "Aborted" not in end


def test_a_reader_that_went_away_is_not_reported_as_an_error() -> None:
    """``pli … | head``: the pipe closed before ``pli`` wrote; nothing on standard error."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        finished = subprocess.run(
            [str(Path(sys.executable).with_name("pli")), "id", "check", "185057800608491"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert finished.stderr == b""
    assert finished.returncode == 1


def test_only_a_closed_standard_output_is_taken_for_a_reader_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another broken pipe (an output file that is a FIFO) stays an error."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert not _stdout_closed()  # a reader is there
        os.close(read_end)
        assert _stdout_closed()
