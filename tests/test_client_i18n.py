"""The ``pli`` messaging commands and the SDK speak French first, English on demand.

The catalogue tests read the source (every text marked for translation) and
the committed English catalogue (its ``.po`` and compiled ``.mo``): a text
added without its translation, left fuzzy or empty, or a ``.mo`` not compiled
again, fails here. The behaviour tests run the real ``pli`` (click's CliRunner,
and the installed console script under a terminal for the prompts) and the SDK,
against pytest-django's ``live_server`` where a server is needed.
"""

from __future__ import annotations

import ast
import contextlib
import gettext
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pli.client import Client, ClientError, PolicyRefused
from pli.client.cli import main
from pli.client.i18n import DOMAIN, LOCALE_DIR, is_english, translate
from tests.test_client_cli_messaging import Workstation, error_line
from tests.test_client_sdk import (
    NIR,
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

_SRC = Path(__file__).parents[1] / "src" / "pli"
#: The client, and the server's command modules, which share its catalogue (pli.client.i18n).
CLIENT_SOURCES = sorted(
    [
        *(_SRC / "client").glob("*.py"),
        _SRC / "server" / "commands.py",
        _SRC / "server" / "lifecycle_cli.py",
        *(_SRC / "server").glob("*/cli.py"),
    ]
)
PO_FILE = LOCALE_DIR / "en" / "LC_MESSAGES" / f"{DOMAIN}.po"
MO_FILE = LOCALE_DIR / "en" / "LC_MESSAGES" / f"{DOMAIN}.mo"
#: The markers of pli.client.i18n, and the position of the French text in their arguments.
MARKERS = {"_": 0, "N_": 0, "translate": 1}
#: The modules of ``pli``'s commands: every help text follows PLI_LANGUAGE.
COMMAND_MODULES = ("messaging_cli.py", "cli.py", "commands.py", "lifecycle_cli.py")
#: Errors whose detail people read: it must always be a translated text.
ERRORS = {
    "ClientError",
    "CliError",
    "NotARecipient",
    "SenderMismatch",
    "CertificateAuthorityError",
    "UnknownCertificate",
    "InvalidCertificate",
}


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Marked:
    text: str
    where: str


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _calls() -> Iterator[tuple[ast.Call, str]]:
    for path in CLIENT_SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield node, f"{path.name}:{node.lineno}"


def marked_texts() -> list[Marked]:
    """Every literal text given to a marker in src/pli/client."""
    found = []
    for call, where in _calls():
        position = MARKERS.get(_name(call.func) or "")
        if position is None or len(call.args) <= position:
            continue
        argument = call.args[position]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            found.append(Marked(argument.value, where))
    return found


@dataclass(frozen=True)
class Entry:
    msgid: str
    msgstr: str
    fuzzy: bool


def _unquote(line: str) -> str:
    value = ast.literal_eval(line)
    assert isinstance(value, str)
    return value


def read_po(path: Path) -> list[Entry]:
    """The entries of a .po file (single forms: this catalogue has no plurals)."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line]
        flags = [line for line in lines if line.startswith("#,")]
        fields: dict[str, str] = {}
        key = None
        for line in lines:
            if line.startswith("#"):
                continue
            if line.startswith(("msgid ", "msgstr ")):
                key, _, rest = line.partition(" ")
                fields[key] = _unquote(rest)
            else:
                assert key is not None, block
                fields[key] += _unquote(line)
        assert set(fields) == {"msgid", "msgstr"}, f"unexpected entry: {block}"
        if fields["msgid"]:  # not the header
            entries.append(
                Entry(fields["msgid"], fields["msgstr"], any("fuzzy" in f for f in flags))
            )
    return entries


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{[^{}]*\}", text))


class _Missing(gettext.NullTranslations):
    """The .mo's fallback: a text the compiled catalogue lacks is an error, not French."""

    def gettext(self, message: str) -> str:
        raise KeyError(message)


def test_every_text_of_the_client_has_its_english_translation() -> None:
    marked = marked_texts()
    assert len(marked) > 100  # the markers are found: this test reads the source
    entries = {entry.msgid: entry for entry in read_po(PO_FILE)}
    for text in marked:
        entry = entries.get(text.text)
        assert entry is not None, f"{text.where}: not in {PO_FILE.name}: {text.text!r}"
        assert entry.msgstr.strip(), f"{text.where}: empty translation of {text.text!r}"
        assert not entry.fuzzy, f"{text.where}: fuzzy translation of {text.text!r}"
        assert placeholders(entry.msgstr) == placeholders(entry.msgid), entry
    stale = set(entries) - {text.text for text in marked}
    assert not stale, f"entries no source text uses any more: {sorted(stale)}"


def test_the_compiled_catalogue_is_the_po_file() -> None:
    with MO_FILE.open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    compiled.add_fallback(_Missing())
    for entry in read_po(PO_FILE):
        assert compiled.gettext(entry.msgid) == entry.msgstr, "compile the .po again (msgfmt)"


def test_texts_people_read_are_marked_where_they_are_written() -> None:
    """No f-string nor concatenation given to a marker; no error detail, help or prompt
    left as a plain English string: a text added later cannot skip the catalogue."""
    for call, where in _calls():
        name = _name(call.func)
        if name in MARKERS and len(call.args) > MARKERS[name]:
            argument = call.args[MARKERS[name]]
            # A variable holds a text marked with N_ elsewhere; anything else cannot be looked up.
            assert isinstance(argument, ast.Constant | ast.Name | ast.Attribute | ast.Subscript), (
                f"{where}: a marker needs the text itself"
            )
        if name in ERRORS and call.args:
            detail = call.args[-1]
            assert isinstance(detail, ast.Call | ast.Name | ast.IfExp), (
                f"{where}: {name}'s detail must be a translated text"
            )
            if isinstance(detail, ast.Call):
                assert _name(detail.func) in MARKERS, f"{where}: {name}'s detail is not translated"
        # click.option(…), main.command(…), ca_group.command(…): each needs its class.
        declares = isinstance(call.func, ast.Attribute) and name in ("option", "command", "group")
        if where.startswith(COMMAND_MODULES) and declares:
            assert any(keyword.arg == "cls" for keyword in call.keywords), (
                f"{where}: use usage.option / cls=, whose help follows PLI_LANGUAGE"
            )
        if name == "prompt":
            # _secret(file, _("…")) passes its prompt on.
            text = call.args[0]
            assert isinstance(text, ast.Name) or (
                isinstance(text, ast.Call) and _name(text.func) == "_"
            ), f"{where}: prompt(_(…))"
        for keyword in call.keywords:
            if keyword.arg == "help" and where.startswith(COMMAND_MODULES):
                # _("…") would be translated once, at import, whatever PLI_LANGUAGE says then.
                value = keyword.value
                deferred = isinstance(value, ast.Call) and (
                    _name(value.func) == "N_"
                    or (_name(value.func) == "_" and not isinstance(value.args[0], ast.Constant))
                )
                assert isinstance(value, ast.Name) or deferred, f"{where}: help=N_(…)"


def test_the_language_is_english_only_when_asked() -> None:
    assert [is_english(value) for value in ("en", "en-GB", "EN_us.UTF-8", " en")] == [True] * 4
    assert [is_english(value) for value in ("fr", "fr-BE", "", None, "de")] == [False] * 5
    assert translate("de", "la phrase secrète est vide") == "la phrase secrète est vide"
    assert translate("en-GB", "la phrase secrète est vide") == "the passphrase is empty"


# --------------------------------------------------------------------------- without a server


def pli(*args: str, language: str | None) -> Result:
    """``pli ARGS`` in a clean environment; ``language`` None: PLI_LANGUAGE unset."""
    env = {
        "PLI_LANGUAGE": language,
        "PLI_PASSPHRASE": None,
        "PLI_ACCOUNT_PASSPHRASE": None,
        "PLI_SERVER": None,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="pli")


@pytest.fixture
def key_files(tmp_path: Path) -> list[str]:
    """Key options naming files that exist: these checks stop before a key is opened."""
    identity = tmp_path / "cle.p12"
    identity.write_bytes(b"not read")
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(b"not read")
    return ["--identity", str(identity), "--trust", str(anchor)]


def test_local_errors_are_french_by_default_and_english_on_demand(
    tmp_path: Path, key_files: list[str]
) -> None:
    session = ["--session-file", str(tmp_path / "session.json")]
    latin1 = tmp_path / "lettre-latin1.txt"
    latin1.write_bytes("Résultats normaux.\n".encode("cp1252"))
    letter = tmp_path / "lettre.txt"
    letter.write_text("Résultats normaux.\n", encoding="utf-8")

    def send(subject: str, body: Path) -> list[str]:
        return [
            "send", "--server", "http://127.0.0.1:9", *session, "--from", A, "--to", B,
            "--subject", subject, "--body-file", str(body), *key_files,
        ]  # fmt: skip

    cases = [
        (
            ["inbox", *session],
            "server_missing",
            "indiquez --server URL (ou PLI_SERVER), puis lancez pli login",
            "give --server URL (or PLI_SERVER), then pli login",
        ),
        (
            send("Avis", latin1),
            "not_utf8",
            f"{latin1} n'est pas un texte en UTF-8 : enregistrez-le de nouveau en UTF-8 (Unicode)",
            f"{latin1} is not UTF-8 text: save it again as UTF-8 (Unicode)",
        ),
        (
            ["read", "../../etc/passwd", "--server", "http://127.0.0.1:9", *session, *key_files],
            "bad_message_id",
            "un identifiant de message s'écrit msg_ suivi de 32 chiffres hexadécimaux",
            "a message id looks like msg_ and 32 hex digits",
        ),
        (
            # pli.policy's own French and English, the code unchanged.
            send(f"Bilan {NIR}", letter),
            "subject_contains_patient_id",
            (
                "L'objet contient un numéro d'identification de patient (NIR/INS) : retirez-le,"
                " l'objet doit rester pseudonymisé."
            ),
            (
                "The subject contains a patient identification number (NIR/INS): remove it,"
                " the subject must stay pseudonymised."
            ),
        ),
        (
            ["login", *session, "--server", "http://127.0.0.1:9"],
            "username_missing",
            "indiquez USERNAME (votre adresse de messagerie)",
            "give USERNAME (your mailbox address)",
        ),
    ]
    for args, code, french, english in cases:
        assert error_line(pli(*args, language=None)) == f"pli: error: {code}: {french}", args
        assert error_line(pli(*args, language="fr")) == f"pli: error: {code}: {french}", args
        assert error_line(pli(*args, language="en")) == f"pli: error: {code}: {english}", args


def test_an_identity_passphrase_missing_is_said_in_french_by_default(
    tmp_path: Path, key_files: list[str]
) -> None:
    """cli.py's shared passphrase reading, as ``pli seal`` uses it."""
    args = ["seal", *key_files[:2], "--to", key_files[3], "--in", key_files[3], "--out", "x"]
    assert error_line(pli(*args, language=None)).endswith(
        "passphrase_missing: indiquez --passphrase-file FICHIER ou définissez PLI_PASSPHRASE"
    )
    assert error_line(pli(*args, language="en")).endswith(
        "passphrase_missing: give --passphrase-file FILE or set PLI_PASSPHRASE"
    )


def test_help_of_the_messaging_commands_is_french_by_default() -> None:
    french = pli("send", "--help", language=None)
    assert french.exit_code == 0
    assert "Utilisation : pli send [OPTIONS]" in french.output
    assert "Vérifier l'objet et les destinataires, signer et chiffrer sur ce poste" in (
        french.output.replace("\n ", "").replace("  ", " ")
    )
    assert "La boîte d'envoi.  [obligatoire]" in french.output
    assert "Afficher cette aide et quitter." in french.output
    assert "required" not in french.output and "Usage:" not in french.output
    english = pli("send", "--help", language="en")
    assert "Usage: pli send [OPTIONS]" in english.output
    assert "The sending mailbox.  [required]" in english.output
    assert "Show this message and exit." in english.output
    assert "obligatoire" not in english.output
    inbox = pli("inbox", "--help", language=None).output
    flat = " ".join(inbox.split())
    assert "(les plus récents). [par défaut : 1]" in flat and "[par défaut : inbox]" in flat
    assert "--session-file FICHIER" in flat and "--server TEXTE" in flat
    flat_english = " ".join(pli("inbox", "--help", language="en").output.split())
    assert (
        "(most recent first). [default: 1]" in flat_english
        and "--session-file FILE" in flat_english
    )
    listing = pli("--help", language=None).output
    assert re.search(r"^  login +Se connecter", listing, re.MULTILINE)
    assert re.search(r"^  login +Log in", pli("--help", language="en").output, re.MULTILINE)


def test_help_of_the_key_and_authority_commands_is_french_by_default() -> None:
    french = " ".join(pli("ca", "init", "--help", language=None).output.split())
    assert "Utilisation : pli ca init [OPTIONS]" in french
    assert "Créer la clé racine et son certificat dans le dossier." in french
    assert "Durée de validité, en jours. [par défaut : 3650]" in french
    assert "--passphrase-file FICHIER" in french and "Usage:" not in french
    english = " ".join(pli("ca", "init", "--help", language="en").output.split())
    assert "Usage: pli ca init [OPTIONS]" in english
    assert "Validity, in days. [default: 3650]" in english
    listing = pli("--help", language=None).output
    assert re.search(r"^  ca +L'autorité de certification", listing, re.MULTILINE)
    assert re.search(r"^  seal +Signer un message", listing, re.MULTILINE)
    assert re.search(r"^  audit +Le journal d'audit", listing, re.MULTILINE)
    assert re.search(r"^  jobs +Les tâches quotidiennes", listing, re.MULTILINE)
    server = " ".join(pli("jobs", "run-daily", "--help", language=None).output.split())
    assert "Lancer seulement cette tâche (répétable)." in server and "--only [" in server
    assert "Run only this job (repeatable)." in " ".join(
        pli("jobs", "run-daily", "--help", language="en").output.split()
    )
    assert re.search(
        r"^  ca +The operator's certificate", pli("--help", language="en").output, re.M
    )
    # click's own refusals are rebuilt in the command line's language, with their code.
    refused = pli("ca", "revoke", "--dir", "x", "--reason", "oubli", language=None)
    assert refused.exit_code == 2
    assert "pli: error: bad_value: valeur refusée pour --reason : « oubli » n'est pas l'un de" in (
        refused.output
    )
    days = pli("ca", "init", "--dir", "x", "--name", "Op", "--days", "dix", language=None)
    assert "pli: error: bad_value: valeur refusée pour --days : « dix » n'est pas un nombre" in (
        days.output
    )


def test_the_sdk_errors_follow_the_clients_language(tmp_path: Path) -> None:
    session = tmp_path / "session.json"
    with pytest.raises(ClientError) as french:
        Client("ftp://pli.example", session_file=session)
    assert french.value.detail == "ce n'est pas une URL http(s) : 'ftp://pli.example'"
    with pytest.raises(ClientError) as english:
        Client("ftp://pli.example", session_file=session, language="en")
    assert english.value.detail == "not an http(s) URL: 'ftp://pli.example'"
    assert (french.value.code, english.value.code) == ("bad_server_url", "bad_server_url")
    for language, expected in (
        ("fr", "un identifiant de message s'écrit msg_"),
        ("en", "a message id looks like msg_"),
    ):
        client = Client("http://127.0.0.1:9", session_file=session, language=language)
        with pytest.raises(ClientError) as refused:
            client.read("../etc/passwd")
        assert refused.value.code == "bad_message_id"
        assert refused.value.detail.startswith(expected)
        with pytest.raises(PolicyRefused) as policy:
            client.send(A, [B], f"Bilan {NIR}", "Bonjour.\n", patient_id=NIR)
        assert policy.value.detail == policy.value.findings[0].message(language)
        assert policy.value.detail.startswith(("L'objet", "The subject")[language == "en"])


# --------------------------------------------------------------------------- prompts


def _read_until(fd: int, wanted: str, timeout: float = 20.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never asked {wanted!r}: {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the other side closed (EIO on Linux)
                chunk = b""
            assert chunk, f"ended before asking {wanted!r}: {seen.decode(errors='replace')!r}"
            seen += chunk
    return seen.decode()


@contextlib.contextmanager
def login_at_a_terminal(
    language: str | None, tmp_path: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The installed ``pli login`` at a real terminal (a pty), against no server.

    Yields the terminal's controlling side (to read prompts and type) and the
    process; both are closed and waited for on leaving.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    if language:
        env["PLI_LANGUAGE"] = language
    command = [
        str(Path(sys.executable).with_name("pli")),
        "login",
        "--server",
        "http://127.0.0.1:9",
    ]
    command += ["--session-file", str(tmp_path / "session.json")]
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True
    ) as process:
        os.close(terminal)
        try:
            yield controller, process
        finally:
            os.close(controller)


@pytest.mark.parametrize(
    ("language", "prompts"),
    [(None, ("Adresse : ", "Phrase secrète : ")), ("en", ("Address: ", "Passphrase: "))],
)
def test_pli_login_asks_in_french_by_default_at_a_terminal(
    language: str | None, prompts: tuple[str, str], tmp_path: Path
) -> None:
    """The installed ``pli`` at a real terminal (a pty): prompts, then the error line."""
    with login_at_a_terminal(language, tmp_path) as (terminal, process):
        _read_until(terminal, prompts[0])
        os.write(terminal, b"dr.martin@hopital-a.pli.test\n")
        _read_until(terminal, prompts[1])
        os.write(terminal, b"une phrase\n")
        end = _read_until(terminal, "server_unreachable")
    assert process.wait(timeout=20) == 1
    assert "pli: error: server_unreachable" in end


# --------------------------------------------------------------------------- with a server


@pytest.mark.django_db(transaction=True)
def test_pli_send_inbox_and_read_print_french_by_default(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    doctor, colleague = Workstation(server, alice), Workstation(server, bob)
    logged = doctor.login(language=None)
    assert f"Connecté en tant que {A} (passphrase+totp) sur {server.url}" in logged.stdout
    assert colleague.login(language=None).exit_code == 0
    letter = tmp_path / "lettre.txt"
    letter.write_text("Cher confrère,\nvoici mon avis.\n", encoding="utf-8")
    send = ["send", "--from", A, "--to", B, "--body-file", str(letter), *doctor.key_options()]
    # A number that may be a NIR: a warning, which pli.policy words in French too.
    subject = "Avis 1 23 45 678 901 23"
    sent = doctor.run(*send, "--subject", subject, language=None)
    assert sent.exit_code == 0, sent.output
    found = re.search(
        r"^Message (msg_[0-9a-f]{32}) envoyé \(fil thr_[0-9a-f]{32}\)$", sent.stdout, re.M
    )
    assert found, sent.stdout
    message_id = found.group(1)
    assert f"  {B} : distribué\n" in sent.stdout
    assert sent.stderr.startswith(
        "warning: subject_may_contain_patient_id: L'objet contient un long numéro"
    )

    listing = colleague.run("inbox", language=None)
    line = rf"^\* {message_id}  \S+ \S+  {re.escape(A)}  \d+ o$"
    assert re.search(line, listing.stdout, re.MULTILINE), listing.stdout
    read = colleague.run("read", message_id, *colleague.key_options(), language=None)
    assert read.exit_code == 0, read.output
    for line in (
        f"De : {A}",
        f"À : {B}",
        f"Objet : {subject}",
        f"Message : {message_id} dans {B} (Boîte de réception)",
        f"Signature : valide, signée par {A}",
        "Empreinte SHA-256 du certificat : ",
    ):
        assert line in read.stdout, line
    assert "Cher confrère,\nvoici mon avis.\n" in read.stdout
    assert colleague.run("inbox", "--folder", "trash", language=None).stdout == (
        "Le dossier « Corbeille » est vide.\n"
    )

    # The same in English, as before this catalogue existed.
    again = doctor.run(*send, "--subject", subject, language="en")
    assert re.search(r"^sent msg_[0-9a-f]{32} \(thread thr_[0-9a-f]{32}\)$", again.stdout, re.M)
    assert f"  {B}: delivered\n" in again.stdout
    assert again.stderr.startswith(
        "warning: subject_may_contain_patient_id: The subject contains a long number"
    )
    english = colleague.run("read", message_id, *colleague.key_options(), language="en")
    assert f"From: {A}" in english.stdout and f"Signature: valid, signed by {A}" in english.stdout
    assert f"Message: {message_id} in {B} (inbox)" in english.stdout
    assert (
        colleague.run("inbox", "--folder", "trash", language="en").stdout == "no message in trash\n"
    )
