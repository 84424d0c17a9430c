"""A server (or a proxy in front of it) answering 200 with JSON of the wrong shape.

A real HTTP server on 127.0.0.1, in a thread, answers the requests ``pli inbox``,
``pli read`` and ``pli login`` make with bodies of another shape: not JSON, a
list for an object, a field missing, a field of the wrong type. The real ``pli``
(click's CliRunner) and the SDK must say ``unexpected_answer`` (``bad_response``
for a body that is not JSON at all, its code since before), naming the request
and the field in the user's language, never a value of the answer (it could be
health data), and never ``internal_error``.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner, Result

from pli.client import Client, ClientError
from pli.client.cli import main

MAILBOX = "dr.martin@hopital-a.pli.test"
MESSAGE_ID = "msg_" + "0123456789abcdef" * 2
LISTING = f"/api/mailboxes/{MAILBOX}/messages"
MESSAGE = f"/api/messages/{MESSAGE_ID}"
#: A value that must never be repeated by an error: what a patient's name would be.
SECRET = "Jeanne Dupont, née le 12/03/1950"


def summary(**changes: Any) -> dict[str, Any]:
    """One message's metadata as the server gives it, with ``changes`` (None: removed)."""
    data: dict[str, Any] = {
        "id": MESSAGE_ID,
        "mailbox": MAILBOX,
        "folder": "inbox",
        "from": "dr.durand@clinique-b.pli.test",
        "sender_person": "dr.durand@clinique-b.pli.test",
        "received_at": "2026-11-23T10:00:00+00:00",
        "size": 4096,
        "read": False,
        "flagged": False,
        "thread": "thr_" + "0" * 32,
        "in_reply_to": None,
        "recipients": [MAILBOX],
    }
    data |= changes
    return {key: value for key, value in data.items() if value is not None or key == "in_reply_to"}


def listing(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"results": [summary()], "page": 1, "has_next": False}
    data |= changes
    return {key: value for key, value in data.items() if value is not None}


class _AnswerServer(http.server.ThreadingHTTPServer):
    #: Path → the body answered with 200 (anything else: the server's 404).
    routes: dict[str, bytes]
    asked: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        server = cast("_AnswerServer", self.server)
        path = urllib.parse.urlsplit(self.path).path
        server.asked.append(f"{self.command} {path}")
        body = server.routes.get(path)
        status = 200
        if body is None:
            status, body = 404, b'{"code": "not_found", "message": "Introuvable.", "details": {}}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@dataclass
class FakeServer:
    url: str
    server: _AnswerServer

    def answer(self, path: str, body: bytes | object) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.server.routes[path] = raw


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    httpd = _AnswerServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.asked = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield FakeServer(f"http://127.0.0.1:{httpd.server_address[1]}", httpd)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def pli(fake: FakeServer, tmp_path: Path, *args: str, language: str | None = None) -> Result:
    env = {
        "PLI_LANGUAGE": language,
        "PLI_SESSION_FILE": str(tmp_path / "session.json"),
        "PLI_PASSPHRASE": "x",
        "PLI_ACCOUNT_PASSPHRASE": "x",
        "PLI_SERVER": fake.url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal_error" not in lines[0]
    assert "Jeanne" not in lines[0] and "Dupont" not in lines[0]  # no value of the answer
    return lines[0]


def _unexpected(request: str, problem: str) -> str:
    return f"unexpected_answer: réponse inattendue du serveur à {request} : {problem}"


#: (test id, path, body, the error line's code and French detail) for ``pli inbox``.
INBOX_CASES = [
    (
        "not JSON",
        LISTING,
        f"<html><body>Portail Wi-Fi : {SECRET}</body></html>".encode(),
        f"bad_response: la réponse du serveur à GET {LISTING} n'est pas du JSON",
    ),
    ("a list", LISTING, [SECRET], _unexpected(f"GET {LISTING}", "ce n'est pas un objet JSON")),
    (
        "a field missing",
        LISTING,
        {"page": 1, "has_next": False, "note": SECRET},
        _unexpected(f"GET {LISTING}", "le champ « results » manque"),
    ),
    (
        "a field of the wrong type",
        LISTING,
        listing(results=SECRET),
        _unexpected(f"GET {LISTING}", "le champ « results » n'est pas une liste JSON"),
    ),
    (
        "a boolean for a number",
        LISTING,
        listing(page=True),
        _unexpected(f"GET {LISTING}", "le champ « page » n'est pas un nombre entier"),
    ),
    (
        "an item of the wrong shape",
        LISTING,
        listing(results=[summary(), SECRET]),
        _unexpected(f"GET {LISTING}", "le champ « results[1] » n'est pas un objet JSON"),
    ),
    (
        "an item's field missing",
        LISTING,
        listing(results=[summary(size=None)]),
        _unexpected(f"GET {LISTING}", "le champ « results[0].size » manque"),
    ),
    (
        "an item's date that is not one",
        LISTING,
        listing(results=[summary(received_at=SECRET)]),
        _unexpected(
            f"GET {LISTING}", "le champ « results[0].received_at » n'est pas une date ISO 8601"
        ),
    ),
]

#: The same kinds for ``pli read`` (its first request: the message's metadata).
READ_CASES = [
    (
        "not JSON",
        MESSAGE,
        f"<html>{SECRET}</html>".encode(),
        f"bad_response: la réponse du serveur à GET {MESSAGE} n'est pas du JSON",
    ),
    ("a list", MESSAGE, [summary()], _unexpected(f"GET {MESSAGE}", "ce n'est pas un objet JSON")),
    (
        "a field missing",
        MESSAGE,
        summary(received_at=None),
        _unexpected(f"GET {MESSAGE}", "le champ « received_at » manque"),
    ),
    (
        "a field of the wrong type",
        MESSAGE,
        summary(size="4096"),
        _unexpected(f"GET {MESSAGE}", "le champ « size » n'est pas un nombre entier"),
    ),
    (
        "a text that is an object",
        MESSAGE,
        summary(**{"from": {"name": SECRET}}),
        _unexpected(f"GET {MESSAGE}", "le champ « from » n'est pas un texte"),
    ),
    (
        "a list item of the wrong type",
        MESSAGE,
        summary(recipients=[MAILBOX, 42]),
        _unexpected(f"GET {MESSAGE}", "le champ « recipients[1] » n'est pas un texte"),
    ),
    (
        "a delivery of the wrong shape",
        MESSAGE,
        summary(deliveries=[{"recipient": MAILBOX, "state": 3}]),
        _unexpected(f"GET {MESSAGE}", "le champ « deliveries[0].state » n'est pas un texte"),
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "expected"), [c[1:] for c in INBOX_CASES], ids=[c[0] for c in INBOX_CASES]
)
def test_pli_inbox_names_an_answer_of_the_wrong_shape(
    fake: FakeServer, tmp_path: Path, path: str, body: object, expected: str
) -> None:
    fake.answer(path, body)
    result = pli(fake, tmp_path, "inbox", "--mailbox", MAILBOX)
    assert error_line(result) == f"pli: error: {expected}"
    with pytest.raises(ClientError) as raised:
        Client(fake.url, session_file=tmp_path / "sdk.json").inbox(MAILBOX)
    assert f"{raised.value.code}: {raised.value.detail}" == expected


@pytest.mark.parametrize(
    ("path", "body", "expected"), [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES]
)
def test_pli_read_names_an_answer_of_the_wrong_shape(
    fake: FakeServer, tmp_path: Path, path: str, body: object, expected: str
) -> None:
    # The key is opened only once the message is fetched: these files are never read.
    identity, anchor = tmp_path / "cle.p12", tmp_path / "ca.pem"
    identity.write_bytes(b"never read")
    anchor.write_bytes(b"never read")
    fake.answer(path, body)
    keys = ["--identity", str(identity), "--trust", str(anchor)]
    result = pli(fake, tmp_path, "read", MESSAGE_ID, *keys)
    assert error_line(result) == f"pli: error: {expected}"
    with pytest.raises(ClientError) as raised:
        Client(fake.url, session_file=tmp_path / "sdk.json").read(MESSAGE_ID)
    assert f"{raised.value.code}: {raised.value.detail}" == expected
    assert fake.server.asked[-1] == f"GET {MESSAGE}"  # nothing asked after the bad answer


def test_the_mailbox_list_and_the_login_steps_are_read_the_same_way(
    fake: FakeServer, tmp_path: Path
) -> None:
    fake.answer("/api/mailboxes", {"results": [SECRET]})
    assert error_line(pli(fake, tmp_path, "inbox")) == "pli: error: " + _unexpected(
        "GET /api/mailboxes", "ce n'est pas une liste JSON"
    )
    fake.answer("/api/auth/csrf", {"token": SECRET})
    login = pli(fake, tmp_path, "login", MAILBOX, "--code", "123456")
    assert error_line(login) == "pli: error: " + _unexpected(
        "GET /api/auth/csrf", "le champ « csrf_token » manque"
    )
    fake.answer("/api/auth/csrf", {"csrf_token": "jeton"})
    fake.answer("/api/auth/login", {"next": "second_factor"})
    fake.answer("/api/auth/second-factor", {"username": MAILBOX, "method": 2, "csrf_token": "j"})
    login = pli(fake, tmp_path, "login", MAILBOX, "--code", "123456")
    assert error_line(login) == "pli: error: " + _unexpected(
        "POST /api/auth/second-factor", "le champ « method » n'est pas un texte"
    )


def test_the_detail_is_english_when_asked(fake: FakeServer, tmp_path: Path) -> None:
    fake.answer(LISTING, listing(results=[summary(read="yes")]))
    expected = (
        f"unexpected_answer: unexpected answer from the server to GET {LISTING}:"
        ' the field "results[0].read" is not a boolean'
    )
    english = pli(fake, tmp_path, "inbox", "--mailbox", MAILBOX, language="en")
    assert error_line(english) == f"pli: error: {expected}"
    with pytest.raises(ClientError) as raised:
        Client(fake.url, session_file=tmp_path / "sdk.json", language="en").inbox(MAILBOX)
    assert f"{raised.value.code}: {raised.value.detail}" == expected


def test_an_answer_of_the_right_shape_is_listed(fake: FakeServer, tmp_path: Path) -> None:
    """The same fake server with a well-formed answer: the checks refuse only what is wrong."""
    fake.answer(LISTING, listing(results=[summary(read=True, in_reply_to="msg_" + "1" * 32)]))
    result = pli(fake, tmp_path, "inbox", "--mailbox", MAILBOX)
    assert result.exit_code == 0, result.output
    assert f"  {MESSAGE_ID}  " in result.stdout and "4096 o  (réponse)" in result.stdout
    page = Client(fake.url, session_file=tmp_path / "sdk.json").inbox(MAILBOX)
    assert [item.id for item in page.results] == [MESSAGE_ID] and page.results[0].read


def test_pli_login_never_sends_the_identity_files_passphrase(
    fake: FakeServer, tmp_path: Path
) -> None:
    # A script holds PLI_PASSPHRASE for its key file; its session expires; `pli login`
    # must not send that secret to the server as the account's passphrase.
    env = {
        "PLI_LANGUAGE": "en",
        "PLI_SESSION_FILE": str(tmp_path / "session.json"),
        "PLI_PASSPHRASE": SECRET,
        "PLI_ACCOUNT_PASSPHRASE": None,
        "PLI_SERVER": fake.url,
    }
    result = CliRunner().invoke(main, ["login", MAILBOX], env=env, catch_exceptions=False)
    assert error_line(result) == (
        "pli: error: passphrase_missing: give --passphrase-file FILE or set PLI_ACCOUNT_PASSPHRASE"
    )
    assert [a for a in fake.server.asked if a.startswith("POST")] == []
