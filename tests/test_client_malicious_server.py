"""A server that lies about a message's routing cannot make the workstation write to it.

DESIGN: the server never reads a message. The SDK and ``pli`` open, verify and
answer messages on the workstation, but the metadata they are given (who sent
a copy, which mailbox holds it) comes from the server. A real HTTP server on
127.0.0.1, in a thread, serves a genuine envelope (signed by A, sealed for B)
with routing of its choosing; the client under test is B's. Whatever the server
says, no read receipt and no reply may be sealed for a mailbox the signed
content does not name, and a copy said to be in a mailbox whose key did not
open it is not opened.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner

from pli.client import Client, ClientError, sdk
from pli.client.castore import CaDirectory
from pli.client.cli import main
from pli.crypto import (
    NotARecipient,
    SenderMismatch,
    SoftwareKey,
    build_certificate_request,
    certificate_pem,
    dump_pkcs12,
    generate_private_key,
    seal,
    wrap_private_key_to,
)
from pli.crypto.smime import decrypt_envelope
from pli.mime import Draft, build_inner_message

A = "dr.martin@hopital-a.pli.test"
B = "dr.durand@clinique-b.pli.test"
EVE = "eve@hopital-a.pli.test"
C = "dr.petit@clinique-b.pli.test"
WARD = "secretariat@clinique-b.pli.test"
MESSAGE_ID = "msg_" + "0123456789abcdef" * 2
PASSPHRASE = "correct horse battery staple"
SUBJECT = "Avis cardiologique"


@dataclass
class Pki:
    ca_dir: Path
    keys: dict[str, SoftwareKey]
    identity: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """An operator CA, and genuine certificates for A, B, C and Eve (an insider)."""
    root = tmp_path_factory.mktemp("pki")
    ca = CaDirectory.create(root / "ca", "Pli test CA", PASSPHRASE)
    keys = {}
    for name, address in (("A", A), ("B", B), ("Eve", EVE), ("C", C)):
        private = generate_private_key()
        certificate = ca.issue(build_certificate_request(private, email=address, common_name=name))
        keys[address] = SoftwareKey(private, certificate)
    ca.publish_crl()
    identity = root / "b.p12"
    b = keys[B]
    identity.write_bytes(
        dump_pkcs12(
            b.private_key, b.certificate, PASSPHRASE, chain=[ca.certificate], iterations=1000
        )
    )
    identity.chmod(0o600)
    return Pki(root / "ca", keys, identity)


class _Server(http.server.ThreadingHTTPServer):
    summary: dict[str, Any]
    envelope: bytes
    certificates: dict[str, str]
    #: An organisational mailbox's keys as the server hands them to B, by address.
    shared_keys: dict[str, list[dict[str, Any]]]
    #: (method, path, JSON body) of every POST.
    posted: list[tuple[str, str, dict[str, Any]]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server = cast("_Server", self.server)
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if parts.path == "/api/auth/csrf":
            self._json(200, {"csrf_token": "t" * 32})
        elif parts.path == "/api/uploads/limits":
            self._json(
                200,
                {
                    "max_attachment_bytes": 1 << 30,
                    "max_upload_bytes": 1 << 30,
                    "chunk_bytes": 8 << 20,
                    "max_envelope_bytes": 10 << 20,
                    "inline_attachment_bytes": 5 << 20,
                    "allowed_types": ["application/pdf"],
                },
            )
        elif parts.path == "/api/directory/certificates":
            pem = server.certificates.get(query.get("address", ""))
            self._json(200, {"certificates": [{"pem": pem}] if pem else []})
        elif (
            parts.path == "/api/accounts/keys/shared" and query.get("address") in server.shared_keys
        ):
            self._json(200, {"keys": server.shared_keys[query["address"]]})
        elif parts.path == f"/api/messages/{MESSAGE_ID}":
            self._json(200, server.summary)
        elif parts.path == f"/api/messages/{MESSAGE_ID}/envelope":
            self.send_response(200)
            self.send_header("Content-Type", "application/pkcs7-mime")
            self.send_header("Content-Length", str(len(server.envelope)))
            self.end_headers()
            self.wfile.write(server.envelope)
        else:  # no shared mailbox keys, nothing else
            self._json(404, {"code": "not_found", "message": "Introuvable.", "details": {}})

    def do_POST(self) -> None:
        server = cast("_Server", self.server)
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        server.posted.append(("POST", path, body))
        if path == f"/api/messages/{MESSAGE_ID}/read":
            receipt = "msg_" + "f" * 32 if body.get("receipt") else None
            self._json(200, {"id": MESSAGE_ID, "read": True, "receipt": receipt})
        elif path == "/api/messages":
            deliveries = [
                {"recipient": r, "state": "delivered", "delivered_at": None, "read_at": None}
                for r in body["recipients"]
            ]
            answer = {"id": "msg_" + "e" * 32, "thread": "thr_" + "0" * 32}
            self._json(201, answer | {"deliveries": deliveries})
        else:
            self._json(404, {"code": "not_found", "message": "Introuvable.", "details": {}})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


@dataclass
class Lying:
    """The lying server and B's client of it."""

    server: _Server
    client: Client
    keys: dict[str, SoftwareKey]
    posted: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def serve(self, envelope: bytes, **routing: Any) -> None:
        summary: dict[str, Any] = {
            "id": MESSAGE_ID,
            "mailbox": B,
            "folder": "inbox",
            "from": A,
            "sender_person": A,
            "received_at": "2026-11-24T10:00:00+00:00",
            "size": len(envelope),
            "read": False,
            "flagged": False,
            "thread": "thr_" + "0" * 32,
            "in_reply_to": None,
            "recipients": [B],
        }
        self.server.summary = summary | routing
        self.server.envelope = envelope

    def readers(self, envelope_b64: str) -> set[str]:
        """Whose keys open this envelope, among A, B, C and Eve."""
        envelope = base64.b64decode(envelope_b64)
        found = set()
        for address, key in self.keys.items():
            try:
                decrypt_envelope(envelope, key)
            except Exception:  # noqa: BLE001, S112 - not a recipient: any refusal
                continue
            found.add(address)
        return found


@pytest.fixture
def lying(pki: Pki, tmp_path: Path) -> Iterator[Lying]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.certificates = {a: certificate_pem(k.certificate).decode() for a, k in pki.keys.items()}
    server.shared_keys = {}
    server.posted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = Client(
        f"http://127.0.0.1:{server.server_address[1]}",
        identity=pki.identity,
        passphrase=PASSPHRASE,
        trust=[pki.ca_dir / "ca.pem"],
        crl=[pki.ca_dir / "crl.pem"],
        session_file=tmp_path / "session.json",
    )
    try:
        yield Lying(server, client, pki.keys, server.posted)
    finally:
        server.shutdown()
        server.server_close()


def letter(keys: dict[str, SoftwareKey], *, to: list[str], sealed_for: list[str]) -> bytes:
    """A genuine letter from A, signed by A, sealed for ``sealed_for``."""
    inner = build_inner_message(
        Draft(
            from_address=A,
            to=to,
            subject=SUBJECT,
            body_text="Compte rendu : le patient va bien.\n",
            patient_id="nir:185057800608491",
        )
    )
    return seal(inner, keys[A], [keys[address].certificate for address in sealed_for])


@pytest.mark.requirement("REQ-E2E")
def test_an_honest_routing_gets_a_receipt_and_a_reply_for_the_signed_sender_only(
    lying: Lying,
) -> None:
    lying.serve(letter(lying.keys, to=[B], sealed_for=[B, A]))
    read = lying.client.read(MESSAGE_ID)
    assert (read.subject, read.signature.warnings) == (SUBJECT, [])
    [(_, path, body)] = lying.posted
    assert path.endswith("/read") and lying.readers(body["receipt"]) == {A, B}
    lying.client.reply(MESSAGE_ID, "Merci, bien reçu.\n")
    (_, path, sent) = lying.posted[-1]
    assert (path, sent["from"], sent["recipients"]) == ("/api/messages", B, [A])
    assert lying.readers(sent["envelope"]) == {A, B}


@pytest.mark.requirement("REQ-E2E")
def test_a_server_naming_another_sender_gets_neither_receipt_nor_reply(lying: Lying) -> None:
    # The genuine signer as "sending person", the insider as the sending mailbox: a
    # receipt (with the subject) and a reply would have been sealed for Eve.
    lying.serve(letter(lying.keys, to=[B], sealed_for=[B, A]), **{"from": EVE})
    with pytest.raises(SenderMismatch):
        lying.client.read(MESSAGE_ID)
    with pytest.raises(SenderMismatch):
        lying.client.reply(MESSAGE_ID, "Réponse sur le patient.\n")
    assert lying.posted == []  # not marked read, no receipt, nothing sent


@pytest.mark.requirement("REQ-E2E")
def test_a_copy_said_to_be_in_another_mailbox_is_not_opened(lying: Lying) -> None:
    # B's own key opens the envelope; the server says the copy is in Eve's mailbox, so a
    # reply would go out from Eve's mailbox, sealed for Eve's certificate.
    lying.serve(letter(lying.keys, to=[B], sealed_for=[B, A]), mailbox=EVE)
    with pytest.raises(NotARecipient):
        lying.client.read(MESSAGE_ID)
    with pytest.raises(NotARecipient):
        lying.client.reply(MESSAGE_ID, "Réponse sur le patient.\n")
    assert lying.posted == []
    # Asked for B's copy, answered for another mailbox's.
    with pytest.raises(ClientError) as refused:
        lying.client.read(MESSAGE_ID, mailbox=B)
    assert refused.value.code == "routing_mismatch"
    assert lying.posted == []


def test_a_letter_re_encrypted_for_someone_it_was_not_addressed_to_is_flagged(
    lying: Lying,
) -> None:
    # Signed by A for C, then sealed for B (by C, say): genuine, but not addressed to B.
    lying.serve(letter(lying.keys, to=[C], sealed_for=[B]))
    read = lying.client.read(MESSAGE_ID, mark_read=False)
    assert read.signature.warnings == ["not_addressed_to_you"]
    assert lying.posted == []


def test_no_escape_sequence_of_the_server_reaches_the_terminal(
    lying: Lying, pki: Pki, tmp_path: Path
) -> None:
    # An unknown folder code is printed as it comes: "\x1b[8m" would hide every line
    # after it (the warnings included) on a terminal.
    lying.serve(letter(lying.keys, to=[B], sealed_for=[B, A]), folder="\x1b[8minbox")
    env = {
        "PLI_SERVER": lying.client.base_url,
        "PLI_SESSION_FILE": str(tmp_path / "session.json"),
        "PLI_IDENTITY": str(pki.identity),
        "PLI_PASSPHRASE": PASSPHRASE,
        "PLI_TRUST": str(pki.ca_dir / "ca.pem"),
        "PLI_CRL": str(pki.ca_dir / "crl.pem"),
        "PLI_LANGUAGE": "fr",
    }
    result = CliRunner().invoke(main, ["read", MESSAGE_ID], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert SUBJECT in result.output and "[8minbox" in result.output
    assert "\x1b" not in result.output


def test_an_endless_answer_is_not_read_into_memory(
    lying: Lying, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelope = letter(lying.keys, to=[B], sealed_for=[B, A])
    monkeypatch.setattr(sdk, "MAX_ANSWER_BYTES", len(envelope) - 1)  # one byte short
    lying.serve(envelope)
    with pytest.raises(ClientError) as refused:
        lying.client.read(MESSAGE_ID)
    assert refused.value.code == "answer_too_large"
    assert lying.posted == []
    monkeypatch.setattr(sdk, "MAX_ANSWER_BYTES", len(envelope))  # just enough
    assert lying.client.read(MESSAGE_ID).subject == SUBJECT


def test_an_older_mailbox_key_the_operator_did_not_issue_proves_nothing(
    lying: Lying, pki: Pki, tmp_path: Path
) -> None:
    # B is a member of the secretariat's mailbox. The server hands B its genuine current
    # key and, as an "older" one, a key of the server's own making that names the
    # mailbox; a copy sealed for that key would pass for one in the secretariat's
    # mailbox, and the reply would go out from it.
    ca = CaDirectory.open(pki.ca_dir, PASSPHRASE)
    rogue = CaDirectory.create(tmp_path / "rogue", "Pli test CA", PASSPHRASE)  # same name
    ward: dict[str, SoftwareKey] = {}
    for name, issuer in (("genuine", ca), ("rogue", rogue)):
        private = generate_private_key()
        request = build_certificate_request(private, email=WARD, common_name="Secrétariat")
        ward[name] = SoftwareKey(private, issuer.issue(request))
    b = pki.keys[B].certificate
    lying.server.shared_keys[WARD] = [
        {
            "certificate": certificate_pem(key.certificate).decode(),
            "wrapped_key": base64.b64encode(wrap_private_key_to(key.private_key, b)).decode(),
            "current": name == "genuine",
        }
        for name, key in ward.items()
    ]
    sealed_for = {"genuine": ward["genuine"].certificate, "rogue": ward["rogue"].certificate}

    def letter_for(name: str) -> bytes:
        inner = build_inner_message(
            Draft(from_address=A, to=[WARD], subject=SUBJECT, body_text="Compte rendu.\n")
        )
        return seal(inner, pki.keys[A], [sealed_for[name]])

    lying.serve(letter_for("genuine"), mailbox=WARD, recipients=[WARD])
    assert lying.client.read(MESSAGE_ID, mark_read=False).subject == SUBJECT
    assert [k.certificate for k in lying.client.mailbox_keys(WARD)] == [sealed_for["genuine"]]
    lying.serve(letter_for("rogue"), mailbox=WARD, recipients=[WARD])
    with pytest.raises(NotARecipient):
        lying.client.read(MESSAGE_ID)
    with pytest.raises(NotARecipient):
        lying.client.reply(MESSAGE_ID, "Réponse du secrétariat.\n")
    assert lying.posted == []
