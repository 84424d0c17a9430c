"""Large attachments in the web mail: listed, downloaded decrypted, never served when altered.

Practice software sends a document too large for the envelope (the SDK
streams it: RFC 8188 records under a key that travels in the signed message,
decision 0003). The recipient, whose key is in the vault, finds it in the web
mail beside the ordinary attachments and downloads it in headless Chromium:
the server decrypts it as it sends it, holding nothing but the ciphertext.
A stored blob altered by one bit gives a failed download, never a file that
looks whole; a forward names the large part it cannot carry; someone else gets
the web mail's ordinary 404 for its address.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from django.http import StreamingHttpResponse
from playwright.sync_api import Browser, Download, Locator, expect

from pli.mime import ExternalPart
from pli.server.audit.models import AuditEvent
from pli.server.messaging.uploads import MessageBlob
from pli.server.webmail.opening import DecryptedDownload
from tests.accounts_support import PASSPHRASE
from tests.conftest import Pki
from tests.test_client_sdk import NIR, Server, workstation_persona
from tests.test_messaging_e2e import (  # noqa: F401 - fixtures, used by name
    MISSING,
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


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.requirement("REQ-LPS")
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

        # The forward cannot carry it, and says so by name.
        b.get_by_role("link", name="Transférer").click()
        b.wait_for_url("**/transferer/**")
        left_out = b.locator("[data-code=large_attachments_not_forwarded]")
        expect(left_out).to_contain_text("scanner-thorax.pdf")

        # One bit changed in the middle record: the browser's download fails, and the
        # bytes it did receive never reach the end of the file.
        b.goto(f"/messagerie/message/{sent.id}/?boite={B}")
        altered = bytearray(stored.read_bytes())
        altered[1_500_000] ^= 1
        stored.write_bytes(bytes(altered))
        failed = download(
            b.get_by_role("region", name="Pièces jointes").get_by_role(
                "link", name="scanner-thorax.pdf"
            ),
            tmp_path / "b-altered.pdf",
        )
        assert failed.failure() is not None
        assert not (tmp_path / "b-altered.pdf").exists()

        # C, logged in elsewhere: the web mail's 404 for this address, as for none.
        c = watched_c.page
        log_in(c, C, secret_c)
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
