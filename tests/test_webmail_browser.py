"""The web mail in a real browser: headless system Chromium driven by Playwright.

Two professionals, each in their own browser context, log in through the login
page (passphrase, then TOTP: the login unlocks the vault) on pytest-django's
live server. A writes to B with an attachment, finding B in the directory by
keyboard and confirming this first recipient; B reads it, sees a valid
signature and A's identity, downloads the attachment and answers with one of
their own; A sees that B read the message and reads the answer. Every page
must load without a console error and without a Content-Security-Policy
violation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    FilePayload,
    Page,
    Route,
    expect,
    sync_playwright,
)
from pytest_django.fixtures import Settings

from pli.server.messaging.models import Delivery, Message
from tests.accounts_support import PASSPHRASE, ensure_charter
from tests.test_webmail import (  # noqa: F401 - fixtures, used by name
    A,
    B,
    ca_directory,
    key_pool,
    operator,
    vault_account,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Injected before any page script (DevTools, so the page's CSP does not apply to it).
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " " + event.blockedURI);
});
"""
REPORT = b"%PDF-1.4\n% echographie cardiaque\n" + bytes(range(256)) * 4
ANSWER = b"Bilan biologique\nCRP 3 mg/L\n"
READING = re.compile(r"/messagerie/message/msg_[0-9a-f]{32}/\?boite=")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop in this thread; Django then refuses
    # database calls here unless told that no coroutine makes them.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def base_url(live_server: Any, settings: Settings) -> str:
    url = str(live_server.url)
    settings.PLI_BASE_URL = url
    ensure_charter()  # transactional tests flush the migration's charter
    return url


@dataclass
class Watched:
    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors


def watch(browser: Browser, base_url: str) -> Watched:
    context = browser.new_context(locale="fr-FR", base_url=base_url, accept_downloads=True)
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    watched = Watched(page=page, context=context)

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        where = message.location.get("url", "")
        if "Content Security Policy" in text or "CSP violation" in text:
            watched.errors.append(text)
        elif message.type == "error":
            # Chromium asks for /favicon.ico by itself; Pli has none (not a page's fault).
            if text.startswith("Failed to load resource") and where.endswith("/favicon.ico"):
                return
            watched.errors.append(f"{text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    return watched


@pytest.fixture
def two(browser: Browser, base_url: str) -> Iterator[tuple[Watched, Watched]]:
    first, second = watch(browser, base_url), watch(browser, base_url)
    try:
        yield first, second
    finally:
        first.context.close()
        second.context.close()


def log_in(page: Page, address: str, secret: str) -> None:
    """Passphrase, then the TOTP of the next time step (the current one was used at enrolment)."""
    page.goto("/compte/connexion/")
    page.get_by_label("Adresse de messagerie").fill(address)
    page.get_by_label("Phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url("**/compte/connexion/second-facteur/")
    page.get_by_label("Code à 6 chiffres").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Valider").click()
    page.wait_for_url("**/messagerie/")


def a_writes_to_b(a: Page) -> str:
    """A finds B in the directory with the keyboard, checks who it is, confirms, sends."""
    a.goto("/messagerie/nouveau/")
    expect(a.get_by_role("heading", level=1)).to_have_text("Nouveau message")
    search = a.get_by_label("Nom, prénom ou adresse")
    search.fill("durand")
    suggestion = a.get_by_role("option", name=re.compile("Dr Alice Durand"))
    expect(suggestion).to_contain_text("Médecin")
    expect(suggestion).to_contain_text("Clinique B")
    expect(a.locator("#directory-status")).to_have_text("1 correspondant trouvé")
    search.press("ArrowDown")
    expect(suggestion).to_have_attribute("aria-selected", "true")
    expect(search).to_be_focused()
    a.keyboard.press("Enter")
    expect(a.get_by_label("À", exact=True)).to_have_value(B)
    # The mouse takes an option too; an address already there is not added twice.
    search.fill("durand")
    suggestion.click()
    expect(a.locator("#directory-status")).to_have_text(f"Destinataire ajouté : {B}")
    expect(suggestion).to_have_count(0)
    expect(a.get_by_label("À", exact=True)).to_have_value(B)
    # REQ-VERIFY-RECIPIENT: the first message to B asks to confirm who B is.
    confirmation = a.get_by_label("J'ai vérifié : Dr Alice Durand est bien le destinataire voulu")
    expect(confirmation).to_be_visible()
    confirmation.check()
    a.get_by_label("Objet").fill("Avis cardiologique réf. 2026-117")
    a.get_by_label("Message", exact=True).fill("Chère consœur,\nvoici le compte rendu.\n")
    a.get_by_label("Pièces jointes").set_input_files(
        [FilePayload(name="échographie.pdf", mimeType="application/pdf", buffer=REPORT)]
    )
    a.get_by_role("button", name="Signer, chiffrer et envoyer").click()
    a.wait_for_url(READING)
    expect(a.get_by_role("status")).to_contain_text("Message envoyé.")
    expect(a.get_by_role("heading", name="Signature valide")).to_be_visible()
    expect(a.locator(f'tr[data-recipient="{B}"]')).to_contain_text("Distribué")
    return a.url


def b_reads_and_downloads(b: Page, rpps: str, tmp_path: Path) -> None:
    """B: one unread message; a valid signature, A's identity; the attachment downloads."""
    b.goto("/messagerie/")
    expect(b.get_by_role("link", name=re.compile("Boîte de réception")).first).to_contain_text(
        "1 non lu"
    )
    b.get_by_role("link", name=re.compile("Avis cardiologique réf. 2026-117")).click()
    b.wait_for_url(READING)
    signature = b.get_by_role("region", name="Signature valide")
    expect(signature).to_contain_text("Dr Alice Martin")
    expect(signature).to_contain_text("Cardiologue")
    expect(signature).to_contain_text(f"RPPS {rpps}")
    expect(b.locator("pre.body")).to_have_text("Chère consœur,\nvoici le compte rendu.\n")
    with b.expect_download() as download_info:
        b.get_by_role("link", name="échographie.pdf").click()
    download = download_info.value
    assert download.suggested_filename == "échographie.pdf"
    saved = tmp_path / "downloaded.pdf"
    download.save_as(saved)
    assert saved.read_bytes() == REPORT


def b_answers(b: Page) -> None:
    """A wrote first: answering asks no confirmation. The answer carries a file too."""
    b.get_by_role("link", name="Répondre").click()
    b.wait_for_url("**/repondre/**")
    expect(b.get_by_label("À", exact=True)).to_have_value(A)
    expect(b.get_by_label("Objet")).to_have_value("RE : Avis cardiologique réf. 2026-117")
    expect(b.locator("#recipient-check")).to_contain_text("Dr Alice Martin")
    expect(b.locator('#recipient-check input[name="confirm"]')).to_have_count(0)
    b.get_by_label("Message", exact=True).fill("Merci, voici le bilan.\n")
    b.get_by_label("Pièces jointes").set_input_files(
        [FilePayload(name="bilan.txt", mimeType="text/plain", buffer=ANSWER)]
    )
    b.get_by_role("button", name="Signer, chiffrer et envoyer").click()
    b.wait_for_url(READING)
    expect(b.get_by_role("status")).to_contain_text("Message envoyé.")


def a_sees_the_read_state_and_reads_the_answer(a: Page, sent_url: str) -> None:
    a.goto(sent_url)
    expect(a.locator(f'tr[data-recipient="{B}"]')).to_contain_text("Lu")
    a.get_by_role("link", name=re.compile("Boîte de réception")).first.click()
    a.get_by_role("link", name=re.compile("RE : Avis cardiologique")).click()
    a.wait_for_url(READING)
    answer = a.get_by_role("region", name="Signature valide")
    expect(answer).to_contain_text("Dr Alice Durand")
    expect(answer).to_contain_text("Médecin")
    expect(a.locator("pre.body")).to_contain_text("Merci, voici le bilan.")
    expect(a.get_by_role("link", name="bilan.txt")).to_be_visible()


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
@pytest.mark.requirement("REQ-VERIFY-RECIPIENT")
def test_a_writes_to_b_who_reads_downloads_and_answers(
    two: tuple[Watched, Watched], tmp_path: Path
) -> None:
    watched_a, watched_b = two
    a, b = watched_a.page, watched_b.page
    user_a, secret_a = vault_account(
        A, organisation="Hôpital A", last_name="Martin", profession="Cardiologue"
    )
    _user_b, secret_b = vault_account(
        B, organisation="Clinique B", last_name="Durand", profession="Médecin"
    )
    log_in(a, A, secret_a)
    log_in(b, B, secret_b)
    assert user_a.professional is not None

    sent_url = a_writes_to_b(a)
    b_reads_and_downloads(b, user_a.professional.identifier, tmp_path)
    b_answers(b)
    a_sees_the_read_state_and_reads_the_answer(a, sent_url)

    # Each first reading also sent a signed read receipt (RFC 8098), in the same thread.
    original, receipt_a = Message.objects.filter(sender_address=A).order_by("created_at")
    receipt_b, reply = Message.objects.filter(sender_address=B).order_by("created_at")
    assert reply.in_reply_to == original and reply.thread_id == original.thread_id
    assert receipt_b.in_reply_to == original and receipt_a.in_reply_to == reply
    assert Delivery.objects.get(message=original).state == "read"
    assert Delivery.objects.get(message=reply).state == "read"
    watched_a.assert_clean()
    watched_b.assert_clean()


@pytest.mark.requirement("REQ-VERIFY-RECIPIENT")
def test_a_confirmation_ticked_while_a_check_is_on_its_way_stays_ticked(
    two: tuple[Watched, Watched],
) -> None:
    """The recipient check answers from the ticks it was sent with: an answer arriving
    after the person ticked the box must not untick it (they would send, and be refused)."""
    watched_a, _ = two
    a = watched_a.page
    _user_a, secret_a = vault_account(
        A, organisation="Hôpital A", last_name="Martin", profession="Cardiologue"
    )
    vault_account(B, organisation="Clinique B", last_name="Durand", profession="Médecin")
    log_in(a, A, secret_a)
    a.goto("/messagerie/nouveau/")
    recipients = a.get_by_label("À", exact=True)
    recipients.fill(B)
    recipients.press("Tab")  # its change checks it now, not when the box is clicked
    confirmation = a.get_by_label("J'ai vérifié : Dr Alice Durand est bien le destinataire voulu")
    expect(confirmation).to_be_visible()
    a.wait_for_load_state("networkidle")
    a.evaluate("document.querySelector('#recipient-check input[name=confirm]').dataset.old = '1'")

    # The next check is held on its way; the box is ticked meanwhile.
    held: list[Route] = []

    def hold(route: Route) -> None:  # Playwright takes a function, not a bound builtin
        held.append(route)

    a.route("**/messagerie/destinataires/**", hold)
    recipients.dispatch_event("change")
    for _ in range(100):
        if held:
            break
        a.wait_for_timeout(50)
    assert held, "the page did not check the recipients again"
    confirmation.check()
    with a.expect_response(lambda r: "/messagerie/destinataires/" in r.url):
        held[0].continue_()
    # The answer replaced the list: its box is ticked still.
    fresh = a.locator("#recipient-check input[name=confirm]:not([data-old])")
    expect(fresh).to_have_count(1)
    expect(fresh).to_be_checked()
    watched_a.assert_clean()
