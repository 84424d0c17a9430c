"""End to end: two professionals of two organisations, the command line and the web mail.

The messaging issue's Must-show, on pytest-django's live server, every step over HTTP:

- A, a cardiologist of Hôpital A, keeps their key on the workstation (a PKCS#12
  file, certificate from the operator CA): ``pli login``, ``pli send --attach``,
  ``pli inbox``, ``pli read --save-attachments`` (click's runner, in this
  process, speaking HTTP like the installed command); their practice software
  (the SDK) on the same session for what the commands do not print (REQ-LPS).
- B, a doctor of Clinique B, keeps their key in the vault and uses the web
  mail in headless Chromium: the login (passphrase, TOTP) unlocks it.
- C, a nurse of Cabinet C, is logged in too, and must learn nothing.

A sends with an attachment; B reads it (valid signature, A's identity),
downloads the attachment, answers with one of their own; A reads the answer.
Each first reading sends the sender a signed read receipt (RFC 8098 MDN)
that lands in their inbox, genuine and signed by the reader; the Sent copies
open with their senders' keys; every delivery ends ``read``. C gets the same
404 body for every identifier of these messages, on every endpoint of the API
and every URL of the web mail, as for identifiers that do not exist, and
changes nothing (REQ-E2E, REQ-SIGNATURE).

The first tests check the MDN format itself (pli.mime.mdn), without a server.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import (
    APIRequestContext,
    APIResponse,
    Browser,
    FilePayload,
    Page,
    expect,
)
from pytest_django.fixtures import Settings

from pli import __version__
from pli.client import Client
from pli.client.castore import CaDirectory
from pli.crypto import PrivateKey, TrustStore, generate_private_key, load_crl, open_envelope
from pli.mime import (
    Disposition,
    Draft,
    MimeError,
    build_inner_message,
    build_mdn,
    is_mdn,
    parse_inner_message,
    parse_mdn,
)
from pli.server.accounts import custody, operator_ca
from pli.server.accounts.models import User
from pli.server.messaging.actions import read_envelope
from pli.server.messaging.models import Delivery, Message, MessageCopy
from pli.server.messaging.uploads import MessageBlob
from tests.accounts_support import ensure_charter
from tests.conftest import Pki
from tests.test_client_cli_messaging import Workstation
from tests.test_client_sdk import (
    IDENTITY_PASSPHRASE,
    NIR,
    Persona,
    Server,
    workstation_persona,
)
from tests.test_webmail import vault_account, vault_key
from tests.test_webmail_browser import Watched, browser, log_in, watch

__all__ = ["browser"]  # a fixture, shared with the web mail's browser tests

CA_PASSPHRASE = "operator CA passphrase for the end-to-end test"
A = "dr.martin@hopital-a.pli.test"
B = "dr.durand@clinique-b.pli.test"
C = "inf.petit@cabinet-c.pli.test"
NOBODY = "personne@nulle-part.pli.test"
SUBJECT = "Avis cardiologique réf. 2026-117"
LETTER = "Chère consœur,\nvoici le compte rendu de l'échographie.\n"
REPORT = b"%PDF-1.4\n% compte rendu d'echographie\n" + bytes(range(256)) * 4
ANSWER_TEXT = "Merci, voici le bilan biologique."
ANSWER = b"Bilan biologique\nCRP 3 mg/L\n"
MISSING = "msg_" + "0" * 32
MISSING_BLOB = "f" * 64
READING = re.compile(r"/messagerie/message/msg_[0-9a-f]{32}/\?boite=")
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
DISPLAYED = Disposition("manual-action", "MDN-sent-automatically", "displayed")


# --------------------------------------------------------------------------- the MDN format


def test_a_read_receipt_is_an_rfc_8098_report_that_reads_back() -> None:
    data = build_mdn(
        from_address=B,
        to=A,
        original_message_id="<lettre.1@hopital-a.pli.test>",
        original_subject=SUBJECT,
        original_date=dt.datetime(2026, 11, 22, 14, 3, tzinfo=dt.UTC),
        references=["<racine@hopital-a.pli.test>"],
        reporting_ua="pli.example.org; Pli web mail",
    )
    assert is_mdn(data)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"multipart/report" in head and b'report-type="disposition-notification"' in head
    assert b"Disposition-Notification-To" not in head  # never asked by an MDN (RFC 8098)
    assert b"Content-Type: message/disposition-notification\r\n" in body
    assert b"Final-Recipient: rfc822; " + B.encode() + b"\r\n" in body
    assert b"Original-Message-ID: <lettre.1@hopital-a.pli.test>\r\n" in body
    assert b"Disposition: manual-action/MDN-sent-automatically; displayed\r\n" in body

    notice = parse_mdn(data)
    assert (notice.from_address, notice.to, notice.final_recipient) == (B, [A], B)
    assert notice.original_message_id == "<lettre.1@hopital-a.pli.test>"
    assert notice.in_reply_to == "<lettre.1@hopital-a.pli.test>"
    assert notice.disposition == DISPLAYED
    assert notice.reporting_ua == "pli.example.org; Pli web mail"
    assert notice.subject == f"Accusé de lecture : {SUBJECT}"
    assert "a été affiché par son destinataire" in notice.text
    # Any Pli reader shows it as an ordinary message: a subject and a text, no attachment.
    inner = parse_inner_message(data)
    assert inner.references == ["<racine@hopital-a.pli.test>", "<lettre.1@hopital-a.pli.test>"]
    assert inner.body_text == notice.text and inner.attachments == []


def test_a_read_receipt_gives_the_original_date_in_the_zone_it_is_told_naming_it() -> None:
    late = dt.datetime(2026, 11, 23, 23, 3, tzinfo=dt.UTC)
    paris = parse_mdn(
        build_mdn(
            from_address=B,
            to=A,
            original_message_id="<lettre.1@hopital-a.pli.test>",
            original_subject=SUBJECT,
            original_date=late,
            zone=ZoneInfo("Europe/Paris"),
        )
    )
    assert f"Le message « {SUBJECT} » du 24 novembre 2026 à 00:03 (Europe/Paris)" in paris.text
    utc = parse_mdn(
        build_mdn(
            from_address=B,
            to=A,
            original_message_id="<lettre.1@hopital-a.pli.test>",
            original_date=late,
        )
    )
    assert "Le message du 23 novembre 2026 à 23:03 (UTC) adressé à" in utc.text
    # Then the same in English: the reader's agent does not know the sender's language.
    assert (
        f"The message “{SUBJECT}” of 24 November 2026 at 00:03 (Europe/Paris) sent to {B}"
        " was displayed by its recipient." in paris.text
    )
    assert "The message of 23 November 2026 at 23:03 (UTC) sent to" in utc.text
    french, english = paris.text.split("\n\n")
    assert "ne garantit pas" in french and "does not guarantee" in english


def test_a_notification_from_another_agent_is_read_as_the_rfc_writes_it() -> None:
    # Folded fields, other capitalisation, an Original-Recipient, a modifier, no Reporting-UA.
    data = (
        f"From: {B}\r\nTo: {A}\r\nDate: Sun, 22 Nov 2026 14:03:11 +0000\r\n"
        "Message-ID: <mdn.7@clinique-b.pli.test>\r\nSubject: Read: Avis\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=disposition-notification;\r\n"
        ' boundary="RAA14128.773615765/clinique-b.pli.test"\r\n\r\n'
        "--RAA14128.773615765/clinique-b.pli.test\r\n\r\n"
        "The message has been processed, with an error.\r\n\r\n"
        "--RAA14128.773615765/clinique-b.pli.test\r\n"
        "Content-Type: message/disposition-notification\r\n\r\n"
        f"Original-Recipient: rfc822;{B}\r\n"
        f"Final-Recipient: RFC822; {B}\r\n"
        "Original-Message-ID: <lettre.1@hopital-a.pli.test>\r\n"
        "Disposition: Automatic-Action /\r\n MDN-Sent-Automatically; processed/error\r\n\r\n"
        "--RAA14128.773615765/clinique-b.pli.test--\r\n"
    ).encode()
    notice = parse_mdn(data)
    assert notice.disposition == Disposition(
        "automatic-action", "MDN-sent-automatically", "processed", ("error",)
    )
    assert str(notice.disposition) == "automatic-action/MDN-sent-automatically; processed/error"
    assert (notice.original_recipient, notice.final_recipient) == (B, B)
    assert notice.reporting_ua is None

    def refused(old: str, new: str) -> str:
        with pytest.raises(MimeError) as error:
            parse_mdn(data.replace(old.encode(), new.encode()))
        return error.value.code

    assert refused("Subject:", "Disposition-Notification-To: x@y.test\r\nSubject:") == (
        "malformed_notification"  # an MDN never asks for one
    )
    assert refused("Final-Recipient: RFC822", "X-Final: RFC822") == "missing_header"
    assert refused("processed/error", "lu") == "bad_disposition"
    # A blank line inside the fields leaves text after them.
    assert refused("Automatic-Action /", "Automatic-Action /\r\n") == "malformed_notification"
    assert (
        refused(
            "Original-Message-ID: <lettre.1",
            "Original-Message-ID: <lettre.1>\r\nOriginal-Message-ID: <lettre.2",
        )
        == "duplicate_header"
    )
    assert refused(f"RFC822; {B}", f"x400; {B}") == "bad_address"
    assert refused("report-type=disposition-notification", "report-type=delivery-status") == (
        "not_a_notification"
    )


def test_an_ordinary_message_is_not_a_notification_and_a_receipt_needs_its_original() -> None:
    letter = build_inner_message(Draft(from_address=A, to=[B], subject=SUBJECT, body_text="x"))
    assert not is_mdn(letter)
    with pytest.raises(MimeError) as error:
        parse_mdn(letter)
    assert error.value.code == "not_a_notification"
    with pytest.raises(MimeError) as bad:
        build_mdn(from_address=B, to=A, original_message_id="lettre.1@hopital-a.pli.test")
    assert bad.value.code == "bad_message_id"
    with pytest.raises(MimeError) as mode:
        Disposition(sending_mode="MDN-sent-by-magic")
    assert mode.value.code == "bad_disposition"


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def e2e_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator CA of this module: A's workstation certificate and the vault keys."""
    path = tmp_path_factory.mktemp("e2e-operator-ca") / "ca"
    CaDirectory.create(path, "Pli End-to-End Test CA", CA_PASSPHRASE)
    return path


@pytest.fixture
def stage(
    live_server: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    e2e_ca: Path,
    tmp_path: Path,
    pki: Pki,
) -> Server:
    # The live server runs in this process: these settings are its settings.
    url = str(live_server.url)
    settings.PLI_CA_DIR = e2e_ca
    settings.BLOB_DIR = tmp_path / "blobs"
    settings.PLI_BASE_URL = url
    monkeypatch.setenv("PLI_CA_PASSPHRASE", CA_PASSPHRASE)
    # The vault keys of B and C: the session's test keys, not two more RSA-3072 generations.
    pool: list[PrivateKey] = [pki.keys["bob"], pki.keys["carol"]]
    monkeypatch.setattr(
        custody, "generate_private_key", lambda: pool.pop(0) if pool else generate_private_key()
    )
    ensure_charter()  # transactional tests flush the migration's charter
    return Server(url, operator_ca.operator_ca(), tmp_path)


def dress(user: User, *, title: str, profession: str) -> None:
    professional = user.professional
    assert professional is not None
    professional.civil_title, professional.profession = title, profession
    professional.save()


def practice_software(stage: Server, shell: Workstation) -> Client:
    """A's SDK on the session the commands logged in (the same session file)."""
    return Client(
        stage.url,
        identity=shell.persona.identity,
        passphrase=IDENTITY_PASSPHRASE,
        trust=[stage.trust],
        crl=[stage.crl],
        session_file=shell.session,
    )


def unread_ids(listing: str) -> list[str]:
    return re.findall(r"^\* (msg_[0-9a-f]{32}) ", listing, re.MULTILINE)


def state() -> list[tuple[Any, ...]]:
    """Every copy's folder and marks, and every delivery's state: what C must not change."""
    copies = MessageCopy.objects.order_by("pk").values_list(
        "message__public_id", "mailbox__address", "folder", "read", "flagged"
    )
    deliveries = Delivery.objects.order_by("pk").values_list(
        "message__public_id", "recipient_address", "state", "read_at"
    )
    return [*copies, *deliveries]


# --------------------------------------------------------------------------- the steps


def a_sends_from_the_command_line(shell: Workstation, tmp_path: Path) -> tuple[str, str]:
    logged = shell.login()
    assert logged.exit_code == 0, logged.output
    assert f"logged in as {A} (passphrase+totp)" in logged.stdout
    report = tmp_path / "compte-rendu.pdf"
    report.write_bytes(REPORT)
    letter = tmp_path / "lettre.txt"
    letter.write_text(LETTER, encoding="utf-8")
    sent = shell.run(
        "send",
        "--from",
        A,
        "--to",
        B,
        "--subject",
        SUBJECT,
        "--patient-ins",
        NIR,
        "--body-file",
        str(letter),
        "--attach",
        str(report),
        *shell.key_options(),
    )
    assert sent.exit_code == 0, sent.output
    found = re.search(r"^sent (msg_[0-9a-f]{32}) \(thread (thr_[0-9a-f]{32})\)$", sent.stdout, re.M)
    assert found, sent.stdout
    assert f"  {B}: delivered" in sent.stdout
    return found.group(1), found.group(2)


def b_reads_in_the_web_mail(b: Page, a: Persona, tmp_path: Path) -> None:
    """One unread message; A's valid signature and identity; the attachment, byte for byte."""
    b.goto("/messagerie/")
    expect(b.get_by_role("link", name=re.compile("Boîte de réception")).first).to_contain_text(
        "1 non lu"
    )
    b.get_by_role("link", name=re.compile(re.escape(SUBJECT))).click()
    b.wait_for_url(READING)
    signature = b.get_by_role("region", name="Signature valide")
    professional = a.user.professional
    assert professional is not None
    expect(signature).to_contain_text("Dr Alice Martin")
    expect(signature).to_contain_text("Cardiologue")
    expect(signature).to_contain_text(f"RPPS {professional.identifier}")
    expect(signature).to_contain_text(A)
    expect(signature.get_by_role("note")).to_have_count(0)  # no warning (identity, revocation)
    expect(b.locator("pre.body")).to_have_text(LETTER)
    # As people read it (NIR is 185057800608491).
    expect(b.locator("dl.headers")).to_contain_text("NIR 1 85 05 78 006 084 91")
    with b.expect_download() as download_info:
        b.get_by_role("link", name="compte-rendu.pdf").click()
    download = download_info.value
    assert download.suggested_filename == "compte-rendu.pdf"
    saved = tmp_path / "b-downloaded.pdf"
    download.save_as(saved)
    assert saved.read_bytes() == REPORT


def b_answers_with_an_attachment(b: Page, tmp_path: Path) -> str:
    """A wrote first: no confirmation. The page after sending is B's Sent copy, opened,
    its attachment downloaded from it."""
    b.get_by_role("link", name="Répondre").click()
    b.wait_for_url("**/repondre/**")
    expect(b.get_by_label("À", exact=True)).to_have_value(A)
    expect(b.get_by_label("Objet")).to_have_value(f"RE : {SUBJECT}")
    expect(b.locator('#recipient-check input[name="confirm"]')).to_have_count(0)
    b.get_by_label("Message", exact=True).fill(ANSWER_TEXT + "\n")
    b.get_by_label("Pièces jointes").set_input_files(
        [FilePayload(name="bilan.txt", mimeType="text/plain", buffer=ANSWER)]
    )
    b.get_by_role("button", name="Signer, chiffrer et envoyer").click()
    b.wait_for_url(READING)
    expect(b.get_by_role("status")).to_contain_text("Message envoyé.")
    expect(b.get_by_role("region", name="Signature valide")).to_contain_text("Dr Alice Durand")
    expect(b.locator("pre.body")).to_contain_text(ANSWER_TEXT)
    with b.expect_download() as download_info:
        b.get_by_role("link", name="bilan.txt").click()
    saved = tmp_path / "b-sent-copy.txt"
    download_info.value.save_as(saved)
    assert saved.read_bytes() == ANSWER
    expect(b.locator(f'tr[data-recipient="{A}"]')).to_have_attribute("data-state", "delivered")
    found = MESSAGE_ID.search(b.url)
    assert found, b.url
    return found.group(0)


def a_reads_the_answer_and_the_receipt(
    shell: Workstation, tmp_path: Path, *, reply_id: str, receipt_id: str
) -> None:
    listing = shell.run("inbox")
    assert listing.exit_code == 0, listing.output
    assert unread_ids(listing.stdout) == [reply_id, receipt_id]  # newest first
    saved = tmp_path / "a-received"
    read = shell.run("read", reply_id, "--save-attachments", str(saved), *shell.key_options())
    assert read.exit_code == 0, read.output
    assert f"From: {B}" in read.stdout
    assert f"Subject: RE : {SUBJECT}" in read.stdout
    assert f"Patient: nir:{NIR}" in read.stdout
    assert f"Signature: valid, signed by {B}" in read.stdout
    assert ANSWER_TEXT in read.stdout
    assert read.stderr == ""  # revocation checked against the operator's CRL
    [attachment] = list(saved.iterdir())
    assert (attachment.name, attachment.read_bytes()) == ("bilan.txt", ANSWER)

    notice = shell.run("read", receipt_id, *shell.key_options())
    assert notice.exit_code == 0, notice.output
    assert f"From: {B}" in notice.stdout
    assert f"Subject: Accusé de lecture : {SUBJECT}" in notice.stdout
    assert f"Signature: valid, signed by {B}" in notice.stdout
    assert "a été affiché par son destinataire" in notice.stdout
    assert unread_ids(shell.run("inbox").stdout) == []


def a_opens_the_sent_copy(shell: Workstation, tmp_path: Path, first_id: str) -> None:
    saved = tmp_path / "a-sent"
    own = shell.run("read", first_id, "--save-attachments", str(saved), *shell.key_options())
    assert own.exit_code == 0, own.output
    assert f"Message: {first_id} in {A} (sent)" in own.stdout
    assert f"Signature: valid, signed by {A}" in own.stdout
    assert f"Subject: {SUBJECT}" in own.stdout
    assert LETTER in own.stdout
    assert [p.read_bytes() for p in saved.iterdir()] == [REPORT]


def a_checks_the_receipts_with_the_sdk(
    stage: Server,
    shell: Workstation,
    *,
    first_id: str,
    thread: str,
    receipts: tuple[str, str],
    reply_id: str,
) -> str:
    """What the commands do not print: the receipts' fields and the delivery states.

    Returns the answer's inner Message-ID.
    """
    receipt_b_id, receipt_a_id = receipts
    practice = practice_software(stage, shell)
    original = practice.read(first_id)  # A's Sent copy, with its deliveries
    assert original.summary.folder == "sent" and original.signature.signer_emails == [A]
    assert [(a.filename, a.data) for a in original.attachments] == [("compte-rendu.pdf", REPORT)]
    [delivery] = original.summary.deliveries or []
    assert (delivery.recipient, delivery.state) == (B, "read") and delivery.read_at
    notice = practice.read(receipt_b_id)
    assert notice.signature.status == "valid" and notice.signature.signer_emails == [B]
    assert notice.signature.revocation_checked
    assert (notice.summary.from_, notice.summary.sender_person) == (B, B)
    assert (notice.summary.in_reply_to, notice.summary.thread) == (first_id, thread)
    assert notice.notification is not None
    assert notice.notification.original_message_id == original.message_id
    assert notice.notification.final_recipient == B
    assert notice.notification.disposition == DISPLAYED
    host = stage.url.split("://", 1)[1]
    assert notice.notification.reporting_ua == f"{host}; Pli web mail {__version__}"
    answer = practice.read(reply_id)
    own_receipt = practice.read(receipt_a_id)  # A's Sent copy of A's own receipt
    assert own_receipt.summary.folder == "sent"
    assert own_receipt.signature.signer_emails == [A]
    assert own_receipt.notification is not None
    assert own_receipt.notification.original_message_id == answer.message_id
    assert own_receipt.notification.final_recipient == A
    assert own_receipt.notification.disposition == DISPLAYED
    assert own_receipt.notification.reporting_ua == f"Pli SDK; pli {__version__}"
    return answer.message_id


def b_reads_the_receipt_and_the_sent_folder(b: Page, reply_url: str) -> None:
    # A read the answer: B's Sent copy says so.
    b.goto(reply_url)
    expect(b.locator(f'tr[data-recipient="{A}"]')).to_have_attribute("data-state", "read")
    expect(b.locator(f'tr[data-recipient="{A}"]')).to_contain_text("Lu")
    # A's receipt, in B's inbox: genuine, signed by A.
    b.goto("/messagerie/")
    b.get_by_role("link", name=re.compile(re.escape(f"Accusé de lecture : RE : {SUBJECT}"))).click()
    b.wait_for_url(READING)
    receipt = b.get_by_role("region", name="Signature valide")
    expect(receipt).to_contain_text("Dr Alice Martin")
    expect(receipt).to_contain_text(A)
    expect(b.locator("pre.body")).to_contain_text("a été affiché par son destinataire")
    # B's own receipt, in B's Sent folder, opens with B's key.
    b.goto(f"/messagerie/?boite={B}&dossier=sent")
    b.get_by_role("link", name=re.compile(re.escape(f"Accusé de lecture : {SUBJECT}"))).click()
    b.wait_for_url(READING)
    expect(b.get_by_role("region", name="Signature valide")).to_contain_text("Dr Alice Durand")
    expect(b.locator(f'tr[data-recipient="{A}"]')).to_have_attribute("data-state", "read")


# --------------------------------------------------------------------------- the outsider


class Outsider:
    """C's browser session (vault unlocked), used for plain requests with its cookies."""

    def __init__(self, watched: Watched, base: str) -> None:
        self.http: APIRequestContext = watched.context.request
        self.base = base
        self.token = next(k["value"] for k in watched.context.cookies() if k["name"] == "csrftoken")

    def get(self, path: str) -> APIResponse:
        return self.http.get(self.base + path)

    def api(self, method: str, path: str, body: Any = None) -> APIResponse:
        return self.http.fetch(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json", "X-CSRFToken": self.token},
        )

    def post_form(self, path: str, form: dict[str, str | float | bool]) -> APIResponse:
        return self.http.post(self.base + path, form=form, headers={"X-CSRFToken": self.token})


def c_gets_404_everywhere(c: Outsider, ids: list[str], blobs: list[str]) -> None:
    """Every identifier, every endpoint, every web mail URL: the answer to what does not exist."""
    api: list[tuple[str, str, Any]] = [
        ("GET", "/api/messages/{id}", None),
        ("GET", f"/api/messages/{{id}}?mailbox={A}", None),
        ("GET", f"/api/messages/{{id}}?mailbox={B}", None),
        ("GET", f"/api/messages/{{id}}?mailbox={C}", None),
        ("GET", "/api/messages/{id}/envelope", None),
        ("GET", f"/api/messages/{{id}}/envelope?mailbox={B}", None),
        ("GET", "/api/messages/{id}/blobs/{blob}", None),
        ("POST", "/api/messages/{id}/read", {}),
        ("POST", "/api/messages/{id}/read", {"receipt": "MA=="}),
        ("POST", "/api/messages/{id}/move", {"folder": "archive"}),
        ("POST", "/api/messages/{id}/flag", {"flagged": True}),
        ("DELETE", "/api/messages/{id}", None),
        ("DELETE", f"/api/messages/{{id}}?mailbox={A}", None),
    ]
    for method, template, body in api:
        reference = c.api(method, template.format(id=MISSING, blob=MISSING_BLOB), body)
        assert reference.status == 404, (method, template, reference.text())
        assert reference.json()["code"] == "not_found"
        for message_id in ids:
            for blob in (MISSING_BLOB, *blobs):
                answer = c.api(method, template.format(id=message_id, blob=blob), body)
                assert (answer.status, answer.body()) == (404, reference.body()), template
    # A reply to any of them is refused as a reply to nothing.
    attempt = {"from": C, "recipients": [A], "envelope": "MA=="}
    nothing = c.api("POST", "/api/messages", {**attempt, "in_reply_to": MISSING})
    assert nothing.status == 422 and nothing.json()["code"] == "in_reply_to_not_found"
    for message_id in ids:
        answer = c.api("POST", "/api/messages", {**attempt, "in_reply_to": message_id})
        assert (answer.status, answer.body()) == (422, nothing.body())
    # Their mailboxes; C's own lists hold nothing of theirs.
    nobody = c.get(f"/api/mailboxes/{NOBODY}/messages")
    assert nobody.status == 404
    for address in (A, B):
        for folder in ("inbox", "sent"):
            answer = c.get(f"/api/mailboxes/{address}/messages?folder={folder}")
            assert (answer.status, answer.body()) == (404, nobody.body())
    assert [m["address"] for m in c.get("/api/mailboxes").json()] == [C]
    for folder in ("inbox", "sent"):
        assert c.get(f"/api/mailboxes/{C}/messages?folder={folder}").json()["results"] == []
    c_gets_the_web_mails_404(c, ids)


def c_gets_the_web_mails_404(c: Outsider, ids: list[str]) -> None:
    """The web mail: the same page for each, whatever mailbox is named."""
    reference = without_tokens_text(c.get(f"/messagerie/message/{MISSING}/"))
    pages = [
        "/",
        "/repondre/",
        "/transferer/",
        "/pieces-jointes/0/",
        "/pieces-jointes/1/",
        "/pieces-volumineuses/0/",
        "/supprimer/",
    ]
    posts: list[tuple[str, dict[str, str | float | bool]]] = [
        ("/deplacer/", {"folder": "archive"}),
        ("/supprimer/", {}),
        ("/repondre/", {"sender": C, "recipients": A, "subject": "x", "body": "x"}),
        ("/transferer/", {"sender": C, "recipients": A, "subject": "x", "body": "x"}),
    ]
    for message_id in ids:
        for suffix in pages:
            for mailbox in ("", f"?boite={A}", f"?boite={B}", f"?boite={C}"):
                answer = c.get(f"/messagerie/message/{message_id}{suffix}{mailbox}")
                assert answer.status == 404, (message_id, suffix, mailbox)
                assert without_tokens_text(answer) == reference
        for suffix, form in posts:
            answer = c.post_form(
                f"/messagerie/message/{message_id}{suffix}?boite={B}", {**form, "action": "send"}
            )
            assert answer.status == 404, (message_id, suffix)
            assert without_tokens_text(answer) == reference
    nobody = without_tokens_text(c.get(f"/messagerie/?boite={NOBODY}"))
    for address in (A, B):
        for folder in ("inbox", "sent"):
            answer = c.get(f"/messagerie/?boite={address}&dossier={folder}")
            assert answer.status == 404
            assert without_tokens_text(answer) == nobody


def without_tokens_text(response: APIResponse) -> str:
    """The page without its CSRF tokens, which are masked anew for each response."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.text())


# --------------------------------------------------------------------------- the test


@pytest.mark.django_db(transaction=True)
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
@pytest.mark.requirement("REQ-LPS")
def test_a_letter_from_the_command_line_is_read_and_answered_in_the_web_mail(
    stage: Server, pki: Pki, browser: Browser, tmp_path: Path
) -> None:
    a = workstation_persona(stage, A, pki.keys["alice"], organisation="Hôpital A")
    dress(a.user, title="Dr", profession="Cardiologue")
    user_b, secret_b = vault_account(
        B, organisation="Clinique B", last_name="Durand", profession="Médecin"
    )
    user_c, secret_c = vault_account(
        C, organisation="Cabinet C", last_name="Petit", profession="Infirmier"
    )
    shell = Workstation(stage, a)
    watched_b, watched_c = watch(browser, stage.url), watch(browser, stage.url)
    try:
        b = watched_b.page
        log_in(b, B, secret_b)

        # 1. A sends from the command line, with an attachment.
        first_id, thread = a_sends_from_the_command_line(shell, tmp_path)

        # 2. B reads it in the web mail: the first reading sends A a signed receipt.
        b_reads_in_the_web_mail(b, a, tmp_path)
        [receipt_b] = Message.objects.filter(sender_address=B)
        receipt_b_id = receipt_b.public_id
        assert (receipt_b.in_reply_to_id, receipt_b.thread_id) == (
            Message.objects.get(public_id=first_id).pk,
            thread,
        )

        # 3. B answers with an attachment.
        reply_id = b_answers_with_an_attachment(b, tmp_path)
        reply_url = b.url
        assert Message.objects.get(public_id=reply_id).thread_id == thread

        # 4. A reads the answer, then B's receipt, from the command line; reading the
        #    answer sends B a receipt in turn, reading the receipt sends none (RFC 8098).
        a_reads_the_answer_and_the_receipt(
            shell, tmp_path, reply_id=reply_id, receipt_id=receipt_b_id
        )
        [receipt_a] = Message.objects.filter(sender_address=A, in_reply_to__public_id=reply_id)
        receipt_a_id = receipt_a.public_id
        assert receipt_a.thread_id == thread

        # 5. A's Sent copy opens with A's key, from the command line.
        a_opens_the_sent_copy(shell, tmp_path, first_id)

        # 6. A's practice software, on the same session: the receipts' RFC 8098 fields,
        #    genuine and signed by their readers; the delivery states.
        answer_id = a_checks_the_receipts_with_the_sdk(
            stage,
            shell,
            first_id=first_id,
            thread=thread,
            receipts=(receipt_b_id, receipt_a_id),
            reply_id=reply_id,
        )
        # What B's vault key opens of A's receipt: the same, genuine, signed by A.
        opened = open_envelope(
            read_envelope(MessageCopy.objects.get(message=receipt_a, mailbox__address=B)),
            vault_key(user_b),
            TrustStore([stage.ca.certificate], [load_crl(stage.crl.read_bytes())]),
        )
        assert opened.signer.emails == [A]
        assert parse_mdn(opened.mime).original_message_id == answer_id

        # 7. B sees A's receipt and the read states; B's own receipt is in B's Sent folder.
        b_reads_the_receipt_and_the_sent_folder(b, reply_url)

        # Four messages in one thread, each read by its recipient; no receipt of a receipt.
        messages = {m.public_id: m for m in Message.objects.all()}
        assert set(messages) == {first_id, receipt_b_id, reply_id, receipt_a_id}
        assert {m.thread_id for m in messages.values()} == {thread}
        assert sorted(
            Delivery.objects.values_list("message__public_id", "recipient_address", "state")
        ) == sorted(
            [
                (first_id, B, "read"),
                (receipt_b_id, A, "read"),
                (reply_id, A, "read"),
                (receipt_a_id, B, "read"),
            ]
        )

        # 8. C, logged in at Cabinet C, learns nothing and changes nothing.
        log_in(watched_c.page, C, secret_c)
        before = state()
        c_gets_404_everywhere(
            Outsider(watched_c, stage.url),
            list(messages),
            # The identifiers the server gives these messages' ciphertexts: the envelopes'
            # digests and blob ids (when in the blob store), the attachments' digests.
            [
                *(v for m in messages.values() for v in (m.envelope_sha256, m.envelope_blob) if v),
                *MessageBlob.objects.filter(message__in=messages.values()).values_list(
                    "sha256", flat=True
                ),
            ],
        )
        assert state() == before
        assert Message.objects.count() == 4
        assert user_c.pk not in {m.sender_user_id for m in messages.values()}

        watched_b.assert_clean()
        watched_c.assert_clean()
    finally:
        watched_b.context.close()
        watched_c.context.close()
