"""Large attachments in the web mail: listed, downloaded decrypted, never served when altered.

Practice software sends a document too large for the envelope (the SDK
streams it: RFC 8188 records under a key that travels in the signed message,
decision 0003). The recipient, whose key is in the vault, finds it in the web
mail beside the ordinary attachments and downloads it in headless Chromium:
the server decrypts it as it sends it, holding nothing but the ciphertext.
A stored blob altered by one bit gives a failed download, never a file that
looks whole; a forward carries the large part (a copy of its blob); someone
else gets the web mail's ordinary 404 for its address.

The other way: a professional attaches a scan too large for the envelope in
the web mail; it is encrypted as it arrives (never in clear on a disk) and
read byte for byte on the workstation. What the operator does not accept, a
file too large and a form cut short are refused, and leave nothing stored.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from django.http import StreamingHttpResponse
from playwright.sync_api import Browser, Download, Locator, Page, expect

from pli.client import Client, SendResult
from pli.client import sdk as messaging_sdk
from pli.mime import Attachment, ExternalPart
from pli.server.audit.models import AuditEvent
from pli.server.messaging.access import MessagingError
from pli.server.messaging.models import Message
from pli.server.messaging.uploads import MessageBlob, Upload, UploadState, access_upload
from pli.server.webmail.opening import DecryptedDownload
from tests.accounts_support import PASSPHRASE
from tests.conftest import Pki
from tests.test_client_sdk import NIR, Server, workstation_persona
from tests.test_messaging_e2e import (  # noqa: F401 - fixtures, used by name
    MISSING,
    READING,
    A,
    B,
    C,
    e2e_ca,
    stage,
    without_tokens_text,
)
from tests.test_webmail import vault_account
from tests.test_webmail_browser import browser, log_in, watch  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)

#: Three records of the default 1 MiB: the first two are given as they
#: authenticate, the last one only once the whole stream has matched.
SCAN = b"%PDF-1.7\n% scanner thoracique\n" + os.urandom(2_600_000)


def download(link: Locator, save_to: Path) -> Download:
    """Click ``link``; the file is saved to ``save_to`` only if the download succeeded."""
    with link.page.expect_download() as info:
        link.click()
    found = info.value
    if found.failure() is None:
        found.save_as(save_to)
    return found


def scan_link(page: Page) -> Locator:
    return page.get_by_role("region", name="Pièces jointes").get_by_role(
        "link", name="scanner-thorax.pdf"
    )


def forward_to_c(b: Page) -> str:
    """From the open message: forward it to C, confirmed, with the patient's agreement."""
    b.get_by_role("link", name="Transférer").click()
    b.wait_for_url("**/transferer/**")
    expect(b.get_by_role("checkbox", name=re.compile("scanner-thorax.pdf"))).to_be_checked()
    recipients = b.get_by_role("textbox", name="À", exact=True)
    recipients.fill(C)
    recipients.press("Tab")  # the recipient check runs on change
    b.wait_for_load_state("networkidle")
    b.locator(f'#recipient-check input[name="confirm"][value="{C}"]').check()
    b.get_by_role("checkbox", name="Le patient a donné son accord à ce transfert.").check()
    b.get_by_role("button", name="Signer, chiffrer et envoyer").click()
    b.wait_for_url(READING)
    expect(b.get_by_role("status").first).to_contain_text("Message envoyé.")
    return b.url.split("/messagerie/message/")[1].split("/")[0]


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-AFTER-SEND")
def test_a_large_attachment_is_downloaded_decrypted_from_the_web_mail(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    tmp_path: Path,
) -> None:
    a = workstation_persona(stage, A, pki.keys["alice"], organisation="Hôpital A")
    _, secret_b = vault_account(
        B, organisation="Clinique B", last_name="Durand", profession="Médecin"
    )
    _, secret_c = vault_account(
        C, organisation="Cabinet C", last_name="Petit", profession="Infirmier"
    )
    scan = tmp_path / "scanner-thorax.pdf"
    scan.write_bytes(SCAN)
    # Practice software (the SDK) streams anything above 1 KB, in 256 KiB chunks.
    software = stage.client(a, "alice", inline_threshold=1000, chunk_bytes=256 * 1024)
    software.login(A, PASSPHRASE, a.code())
    sent = software.send(A, [B], "Imagerie", "Voici le scanner.\n", NIR, [scan])
    [blob] = MessageBlob.objects.filter(message__public_id=sent.id)
    stored = stage.tmp / "blobs" / blob.blob_id[:2] / blob.blob_id
    assert SCAN[:4096] not in stored.read_bytes()

    watched_b, watched_c = watch(browser, stage.url), watch(browser, stage.url)
    try:
        b = watched_b.page
        log_in(b, B, secret_b)
        b.goto(f"/messagerie/message/{sent.id}/?boite={B}")
        attachments = b.get_by_role("region", name="Pièces jointes")
        expect(attachments).to_contain_text("pièce volumineuse")
        link = attachments.get_by_role("link", name="scanner-thorax.pdf")

        # Byte for byte, under its own name, decrypted as it went.
        received = download(link, tmp_path / "b-scan.pdf")
        assert received.failure() is None
        assert received.suggested_filename == "scanner-thorax.pdf"
        assert (tmp_path / "b-scan.pdf").read_bytes() == SCAN
        opened = AuditEvent.objects.filter(action="messages.opened")
        assert blob.sha256 in {json.loads(e.detail).get("blob") for e in opened}

        # B forwards it to C, with the patient's agreement: the forward carries the scan.
        forward_id = forward_to_c(b)
        [forwarded] = MessageBlob.objects.filter(message__public_id=forward_id)
        assert forwarded.sha256 == blob.sha256 and forwarded.blob_id != blob.blob_id

        # One bit changed in the middle record: the browser's download fails, and the
        # bytes it did receive never reach the end of the file.
        b.goto(f"/messagerie/message/{sent.id}/?boite={B}")
        altered = bytearray(stored.read_bytes())
        altered[1_500_000] ^= 1
        stored.write_bytes(bytes(altered))
        failed = download(scan_link(b), tmp_path / "b-altered.pdf")
        assert failed.failure() is not None
        assert not (tmp_path / "b-altered.pdf").exists()

        # C, logged in elsewhere, downloads the forwarded scan from its own blob.
        c = watched_c.page
        log_in(c, C, secret_c)
        c.goto(f"/messagerie/message/{forward_id}/?boite={C}")
        assert download(scan_link(c), tmp_path / "c-scan.pdf").failure() is None
        assert (tmp_path / "c-scan.pdf").read_bytes() == SCAN
        # The original itself: the web mail's 404 for this address, as for none.
        path = f"/messagerie/message/{sent.id}/pieces-volumineuses/0/"
        answers = [c.request.get(f"{path}?boite={box}", max_redirects=0) for box in (B, C, A)] + [
            c.request.get(f"/messagerie/message/{MISSING}/pieces-volumineuses/0/?boite={C}")
        ]
        assert {r.status for r in answers} == {404}
        assert len({without_tokens_text(r) for r in answers}) == 1

        watched_b.assert_clean()
        watched_c.assert_clean()
    finally:
        watched_b.context.close()
        watched_c.context.close()


@pytest.mark.django_db
def test_a_download_dropped_before_its_body_closes_the_blob() -> None:
    """Django closes the answer's content (PEP 3333) even when no byte of it was sent."""
    blob = io.BytesIO(b"not read")
    part = ExternalPart("scan.pdf", "application/pdf", "0" * 64, b"k" * 32, 8, 0, 1024)
    response = StreamingHttpResponse(DecryptedDownload(blob, part, MISSING))
    assert not blob.closed
    response.close()
    assert blob.closed


#: A phrase inside the scan sent from the web mail: it must never be on a disk.
PHRASE = b"opacite lobaire inferieure droite, controle a trois mois"
WEB_SCAN = b"%PDF-1.7\n% " + PHRASE + b"\n" + os.urandom(2_600_000) + PHRASE


def _stored_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _reply_with(page: Page, message_id: str, files: list[Path]) -> None:
    page.goto(f"/messagerie/message/{message_id}/repondre/?boite={B}")
    page.get_by_label("Message", exact=True).fill("Le scanner est joint.\n")
    page.get_by_label("Pièces jointes").set_input_files(files)
    page.get_by_role("button", name="Signer, chiffrer et envoyer").click()


def a_asks_b_for_the_scan(server: Server, pki: Pki) -> tuple[Client, SendResult, str]:
    """A (practice software) writes to B (web mail, vault): B's answer needs no confirmation.

    (A's client, A's message, the seed of B's TOTP.)
    """
    a = workstation_persona(server, A, pki.keys["alice"], organisation="Hôpital A")
    _, secret_b = vault_account(
        B, organisation="Clinique B", last_name="Durand", profession="Médecin"
    )
    software = server.client(a, "alice")
    software.login(A, PASSPHRASE, a.code())
    asked = software.send(A, [B], "Imagerie", "Pouvez-vous m'envoyer le scanner ?\n", NIR)
    return software, asked, secret_b


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
def test_a_large_attachment_is_sent_from_the_web_mail_encrypted_as_it_arrives(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An envelope of 1 MiB holds about 400 KiB of attachments: the scan goes beside it.
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(1024 * 1024))
    software, asked, secret_b = a_asks_b_for_the_scan(stage, pki)
    scan = tmp_path / "scanner-thorax.pdf"
    scan.write_bytes(WEB_SCAN)
    note = tmp_path / "note.txt"
    note.write_bytes(b"Compte rendu joint.\n")
    blobs = stage.tmp / "blobs"

    watched = watch(browser, stage.url)
    try:
        b = watched.page
        log_in(b, B, secret_b)
        _reply_with(b, asked.id, [scan, note])
        b.wait_for_url(READING)
        expect(b.get_by_role("status")).to_contain_text("Message envoyé.")
        attachments = b.get_by_role("region", name="Pièces jointes")
        expect(attachments.get_by_role("link", name="note.txt")).to_be_visible()
        expect(attachments).to_contain_text("pièce volumineuse")
        sent_id = b.url.split("/messagerie/message/")[1].split("/")[0]
        watched.assert_clean()
    finally:
        watched.context.close()

    # The scan is one blob of the message, its ciphertext; nothing of it in clear anywhere.
    [blob] = MessageBlob.objects.filter(message__public_id=sent_id)
    assert not Upload.objects.exists()
    stored = _stored_files(blobs)
    assert [name for name in stored if "/" not in name] == []  # no temporary file left
    for name, content in stored.items():
        assert PHRASE not in content, name
        assert WEB_SCAN[20_000:20_064] not in content, name
    assert blob.blob_id in {Path(name).name for name in stored}

    # A, on the workstation: signed by B, both attachments byte for byte.
    read = software.read(sent_id)
    assert read.signature.status == "valid" and B in read.signature.signer_emails
    assert [p.filename for p in read.external_parts] == ["scanner-thorax.pdf"]
    saved = read.save_attachments(tmp_path / "a-received")
    assert {p.name: p.read_bytes() for p in saved} == {
        "note.txt": b"Compte rendu joint.\n",
        "scanner-thorax.pdf": WEB_SCAN,
    }


EXE = b"MZ\x90\x00"
LARGE_PDF = b"%PDF-1.7\n" + bytes(600_000)


@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.parametrize(
    ("files", "code", "status"),
    [
        # Above what the envelope holds: refused on its first bytes, before any is stored.
        ({"programme.exe": EXE + bytes(600_000)}, "attachment_type_not_allowed", 400),
        ({"resultats.pdf": EXE + bytes(600_000)}, "attachment_content_mismatch", 400),
        # Small enough for the envelope: refused when the message is checked.
        ({"resultats.pdf": EXE + bytes(1000)}, "attachment_content_mismatch", 400),
        # A large scan encrypted and stored, then the message refused: the scan goes too.
        (
            {"scanner.pdf": LARGE_PDF, "resultats.pdf": EXE + bytes(1000)},
            "attachment_content_mismatch",
            400,
        ),
        # Past PLI_MAX_ATTACHMENT_BYTES: the upload stops where it passes the limit.
        ({"scanner.pdf": b"%PDF-1.7\n" + bytes(1_300_000)}, "attachments_too_large", 413),
    ],
)
def test_the_web_mail_refuses_what_the_operator_does_not_accept_and_keeps_nothing(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    code: str,
    status: int,
) -> None:
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(1024 * 1024))
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", str(1_000_000))
    _software, asked, secret_b = a_asks_b_for_the_scan(stage, pki)
    before = _stored_files(stage.tmp / "blobs")
    messages = Message.objects.count()
    paths = []
    for name, content in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)

    watched = watch(browser, stage.url)
    try:
        b = watched.page
        log_in(b, B, secret_b)
        with b.expect_response(lambda r: r.request.method == "POST") as answer:
            _reply_with(b, asked.id, paths)
        assert answer.value.status == status
        refusal = b.locator(f"#compose-errors [data-code={code}]")
        expect(refusal).to_be_visible()
        if code != "attachments_too_large":
            expect(refusal).to_contain_text(paths[-1].name)
        expect(b.locator("[data-code=attachments_not_kept]")).to_be_visible()
        # What was typed stays; the attachment is asked for again.
        expect(b.get_by_label("Message", exact=True)).to_have_value("Le scanner est joint.\n")
    finally:
        watched.context.close()
    assert Message.objects.count() == messages
    assert not Upload.objects.exists()
    assert _stored_files(stage.tmp / "blobs") == before


def _multipart(fields: list[tuple[str, str]], file_name: str, content: bytes) -> tuple[bytes, str]:
    boundary = "pli-test-" + os.urandom(8).hex()
    out = bytearray()
    for key, value in fields:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachments"; '
        f'filename="{file_name}"\r\nContent-Type: application/pdf\r\n\r\n'
    ).encode()
    out += content + b"\r\n"
    out += f'--{boundary}\r\nContent-Disposition: form-data; name="end"\r\n\r\n1\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), boundary


def _reply_form(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    asked_id: str,
    secret_b: str,
) -> tuple[str, str, list[tuple[str, str]]]:
    """B's reply page, as a browser gets it: its path, B's cookies and the form's fields."""
    watched = watch(browser, stage.url)
    try:
        b = watched.page
        log_in(b, B, secret_b)
        path = f"/messagerie/message/{asked_id}/repondre/?boite={B}"
        b.goto(path)
        token = b.locator("form.compose input[name=csrfmiddlewaretoken]").input_value()
        cookies = "; ".join(f"{c['name']}={c['value']}" for c in watched.context.cookies())
    finally:
        watched.context.close()
    fields = [
        ("csrfmiddlewaretoken", token),
        ("sender", B),
        ("recipients", A),
        ("subject", "RE : Imagerie"),
        ("body", "Le scanner est joint.\n"),
        ("action", "send"),
    ]
    return path, cookies, fields


@pytest.mark.requirement("REQ-AT-REST")
def test_an_upload_cut_short_sends_nothing_and_keeps_nothing(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection drops while the scan is being encrypted into the store."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(1024 * 1024))
    _software, asked, secret_b = a_asks_b_for_the_scan(stage, pki)
    blobs = stage.tmp / "blobs"
    before = _stored_files(blobs)
    messages = Message.objects.count()

    path, cookies, fields = _reply_form(stage, browser, asked.id, secret_b)
    body, boundary = _multipart(fields, "scanner-thorax.pdf", WEB_SCAN)
    host, port = stage.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookies}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        connection.sendall(body[:1_500_000])
        # The scan passed what the envelope holds: its ciphertext is being written.
        deadline = time.monotonic() + 20
        while not any(p.name.startswith(".part-") for p in blobs.glob("*")):
            assert time.monotonic() < deadline, "the server never began to store the scan"
            time.sleep(0.05)
    # Connection closed, half the scan sent: the request ends; nothing of it remains.
    deadline = time.monotonic() + 20
    while any(p.name.startswith(".part-") for p in blobs.glob("*")) or Upload.objects.exists():
        assert time.monotonic() < deadline, "what the cut request stored is still there"
        time.sleep(0.05)
    time.sleep(0.5)  # and nothing comes after
    assert Message.objects.count() == messages
    assert not Upload.objects.exists()
    assert _stored_files(blobs) == before


def _compose_request(
    host: str, port: str, path: str, cookies: str, body: bytes, boundary: str
) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookies}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()


def _answer(connection: socket.socket) -> tuple[int, str]:
    """The status and body of the answer on a ``Connection: close`` request."""
    received = bytearray()
    while piece := connection.recv(65536):
        received += piece
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


def test_the_attachments_the_web_mail_is_encrypting_count_against_the_persons_uploads(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PLI_MAX_PENDING_UPLOADS bounds one person's unsent attachments whichever way they
    come: a scan the web mail is still encrypting is one of them, from its first byte
    stored, and not an upload the API may write to."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(1024 * 1024))
    monkeypatch.setenv("PLI_MAX_PENDING_UPLOADS", "1")
    _software, asked, secret_b = a_asks_b_for_the_scan(stage, pki)
    blobs = stage.tmp / "blobs"
    before = _stored_files(blobs)

    path, cookies, fields = _reply_form(stage, browser, asked.id, secret_b)
    body, boundary = _multipart(fields, "scanner-thorax.pdf", WEB_SCAN)
    second, second_boundary = _multipart(fields, "scanner-abdomen.pdf", LARGE_PDF + LARGE_PDF)
    host, port = stage.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as first:
        first.sendall(_compose_request(host, port, path, cookies, body, boundary))
        first.sendall(body[:1_500_000])
        deadline = time.monotonic() + 20
        # The upload first, then its ciphertext being written.
        while not (
            Upload.objects.filter(state=UploadState.SEALING).exists() and any(blobs.glob(".part-*"))
        ):
            assert time.monotonic() < deadline, "the scan never became an upload"
            time.sleep(0.05)
        [sealing] = Upload.objects.all()
        assert sealing.state == UploadState.SEALING and sealing.blob_id == ""
        assert sealing.owner is not None and sealing.owner.email == B
        # Not the API's: its chunks and its status answer as for an unknown upload.
        with pytest.raises(MessagingError) as hidden:
            access_upload(sealing.owner, sealing.public_id)
        assert hidden.value.code == "not_found"
        parts = {p.name for p in blobs.glob(".part-*")}
        assert len(parts) == 1

        # A second message with a large scan, meanwhile: refused, nothing of it stored.
        with socket.create_connection((host, int(port)), timeout=30) as other:
            other.sendall(_compose_request(host, port, path, cookies, second, second_boundary))
            other.sendall(second)
            status, page = _answer(other)
        assert status == 400, status
        assert 'data-code="too_many_uploads"' in page
        assert {p.name for p in blobs.glob(".part-*")} == parts
        assert list(Upload.objects.values_list("public_id", flat=True)) == [sealing.public_id]

        # The first goes on to the end: sent, its scan the message's blob, no upload left.
        first.sendall(body[1_500_000:])
        status, _page = _answer(first)
    assert status == 302, status
    sent = Message.objects.filter(blobs__isnull=False).get()
    assert MessageBlob.objects.filter(message=sent).count() == 1
    assert not Upload.objects.exists()
    assert not list(blobs.glob(".part-*"))
    assert len(_stored_files(blobs)) == len(before) + 1


@pytest.mark.requirement("REQ-AT-REST")
def test_the_web_mail_does_not_hand_over_what_the_allow_list_refuses(
    stage: Server,  # noqa: F811 - the end-to-end tests' fixture
    pki: Pki,
    browser: Browser,  # noqa: F811 - the browser tests' fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender's software that skipped the allow-list: the web mail applies it on reading."""
    a = workstation_persona(stage, A, pki.keys["alice"], organisation="Hôpital A")
    _, secret_b = vault_account(
        B, organisation="Clinique B", last_name="Durand", profession="Médecin"
    )
    software = stage.client(a, "alice", inline_threshold=1000)
    software.login(A, PASSPHRASE, a.code())
    with monkeypatch.context() as patched:
        # The sender's modified software: every type passes its own check.
        patched.setattr(
            messaging_sdk, "check_attachment_type", lambda name, kind, *_, **__: kind.lower()
        )
        sent = software.send(
            A,
            [B],
            "Pièces",
            "Voir.\n",
            NIR,
            [
                Attachment("note.txt", "text/plain", b"Note courte.\n"),
                Attachment("bilan.pdf", "application/pdf", b"MZ\x90\x00" + bytes(200)),
                Attachment("setup.exe", "application/x-msdownload", b"MZ\x90\x00" + bytes(5000)),
            ],
        )
    watched = watch(browser, stage.url)
    try:
        b = watched.page
        log_in(b, B, secret_b)
        b.goto(f"/messagerie/message/{sent.id}/?boite={B}")
        attachments = b.get_by_role("region", name="Pièces jointes")
        expect(attachments.get_by_role("link")).to_have_count(1)  # the note only
        expect(attachments.get_by_role("link", name="note.txt")).to_be_visible()
        expect(attachments.locator("[data-code=attachment_content_mismatch]")).to_contain_text(
            "bilan.pdf"
        )
        expect(attachments.locator("[data-code=attachment_type_not_allowed]")).to_contain_text(
            "setup.exe"
        )
        # Asked for by its address all the same: back to the message, which says why.
        for path in ("pieces-jointes/1", "pieces-volumineuses/0"):
            b.goto(f"/messagerie/message/{sent.id}/{path}/?boite={B}")
            b.wait_for_url(READING)
            # A fixed text: the decrypted name does not travel in the messages' cookie.
            expect(b.locator(".flash .error")).to_have_text(
                "Cette pièce jointe n'est pas téléchargeable : "
                "la raison est indiquée à côté d'elle."
            )
        watched.assert_clean()
    finally:
        watched.context.close()
