"""The web mail with the keyboard alone and a screen reader's view, in a real browser.

tests/test_webmail_browser.py proves the whole exchange with the mouse (and the
first suggestion taken with Down then Enter). Here each page is used as a
professional who cannot or does not use a mouse would: Tab, Shift+Tab, the arrow
keys, Enter and Space only; each focused control must show its focus ring; what
a screen reader is given (Playwright's ARIA snapshot, accessible names and
descriptions, alert and status roles) is asserted. Errors must be announced, in
French by default and in English when the browser asks for it, never as a
stack trace; no page may break the Content-Security-Policy.

Sessions are opened as after the login page (the vault unlocked) by the Django
test client, whose cookies the browser takes: the login pages themselves are
proved by tests/test_webmail_browser.py and tests/test_accounts_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import Browser, ConsoleMessage, Page, expect
from pytest_django.fixtures import Settings

from pli.server.accounts.models import User
from pli.server.messaging.models import Message, MessageCopy
from tests.accounts_support import PASSPHRASE, ensure_charter, signed_in
from tests.test_webmail import (  # noqa: F401 - fixtures, used by name
    A,
    B,
    D,
    ca_directory,
    compose,
    key_pool,
    operator,
    sent_id,
    unlocked,
    vault_user,
)
from tests.test_webmail_browser import CSP_WATCH, READING, browser  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)

SUBJECT = "Avis cardiologique réf. 2026-117"
#: A role in an ARIA snapshot line with no accessible name after it.
UNNAMED = re.compile(
    r"^\s*- (textbox|searchbox|combobox|checkbox|radio|button|link|region|navigation)"
    r"(?=$|:|\s\[)",
    re.MULTILINE,
)


@pytest.fixture
def base_url(live_server: Any, settings: Settings) -> str:
    settings.PLI_BASE_URL = str(live_server.url)
    ensure_charter()  # transactional tests flush the migration's charter
    return str(live_server.url)


@pytest.fixture
def people() -> dict[str, User]:
    """A writes; B and D (two "Dur…" of Clinique B) are found in the directory."""
    return {
        "a": vault_user(A, organisation="Hôpital A", last_name="Martin", profession="Cardiologue"),
        "b": vault_user(B, organisation="Clinique B", last_name="Durand", profession="Médecin"),
        "d": vault_user(D, organisation="Clinique B", last_name="Duroc", profession="Infirmier"),
    }


class Tab:
    """A browser tab signed in as one user, every console error and CSP violation kept."""

    def __init__(self, chromium: Browser, base_url: str, client: Client, locale: str) -> None:
        self.context = chromium.new_context(locale=locale, base_url=base_url)
        self.context.add_init_script(CSP_WATCH)
        host = base_url.split("//", 1)[1].split(":", 1)[0]
        self.context.add_cookies(
            [
                {"name": name, "value": morsel.value, "domain": host, "path": "/"}
                for name, morsel in client.cookies.items()
            ]
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        text, where = message.text, message.location.get("url", "")
        if "Content Security Policy" in text or "CSP violation" in text:
            self.errors.append(text)
        elif message.type == "error":
            # A refused form answers 400 on purpose; Chromium asks for /favicon.ico itself.
            if "status of 400" in text or where.endswith("/favicon.ico"):
                return
            self.errors.append(f"{text} ({where})")

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture
def tabs(browser: Browser, base_url: str) -> Iterator[Any]:  # noqa: F811 - the fixture
    opened: list[Tab] = []

    def open_tab(client: Client, locale: str = "fr-FR") -> Tab:
        tab = Tab(browser, base_url, client, locale)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.context.close()
    for tab in opened:
        tab.assert_clean()


def focused(page: Page) -> dict[str, str]:
    """What has the focus, and whether its focus ring is drawn."""
    result: dict[str, str] = page.evaluate(
        """() => { const e = document.activeElement; const s = getComputedStyle(e);
        return {tag: e.tagName, id: e.id, name: e.getAttribute("name") || "",
                text: (e.innerText || e.value || "").trim().slice(0, 80),
                outline: s.outlineStyle, width: s.outlineWidth}; }"""
    )
    return result


def assert_focus_ring(page: Page) -> None:
    now = focused(page)
    assert now["outline"] != "none" and now["width"] != "0px", now


def tab_to(page: Page, locator: Any, *, limit: int = 40, back: bool = False) -> None:
    """Press Tab (or Shift+Tab) until ``locator`` has the focus; every stop shows its ring."""
    for _ in range(limit):
        if locator.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Shift+Tab" if back else "Tab")
        assert_focus_ring(page)
    raise AssertionError(f"not reached with the keyboard: {locator}; last {focused(page)}")


def press_and_load(page: Page, key: str = "Enter") -> None:
    """Press a key that submits a form or follows a link, and wait for the next page."""
    with page.expect_navigation():
        page.keyboard.press(key)


def assert_every_control_named(page: Page) -> None:
    snapshot = page.locator("body").aria_snapshot()
    assert UNNAMED.findall(snapshot) == [], snapshot


# --------------------------------------------------------------------------- compose


def assert_active_option(search: Any, listbox: Any, option: Any) -> None:
    """The focus never leaves the combobox: it points at the active option, the one selected and
    outlined."""
    expect(search).to_be_focused()
    expect(search).to_have_attribute("aria-activedescendant", option.get_attribute("id"))
    expect(option).to_have_attribute("aria-selected", "true")
    assert listbox.locator("[aria-selected=true]").count() == 1
    outline = option.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline != "none", outline


def take_d_from_the_directory_with_the_keyboard(a: Page) -> None:
    """The directory search is an ARIA combobox: announced, walked with the arrows, Enter takes."""
    # From the top of the page, Tab alone reaches the directory search.
    search = a.get_by_role("combobox", name="Nom, prénom ou adresse")
    tab_to(a, search)
    expect(search).to_have_attribute("aria-expanded", "false")
    a.keyboard.type("dur")
    status = a.locator("#directory-status")
    expect(status).to_have_text("2 correspondants trouvés")
    expect(status).to_have_attribute("role", "status")
    listbox = a.get_by_role("listbox", name="Correspondants proposés")
    expect(search).to_have_attribute("aria-expanded", "true")
    expect(search).to_have_attribute("aria-controls", "directory-listbox")
    expect(listbox).to_have_attribute("id", "directory-listbox")
    durand = listbox.get_by_role("option", name=re.compile("Dr Alice Durand Médecin Clinique B"))
    duroc = listbox.get_by_role("option", name=re.compile("Dr Alice Duroc Infirmier Clinique B"))

    def active_is(option: Any) -> None:
        assert_active_option(search, listbox, option)

    # Down and Up move through the suggestions and back to the text; Escape closes them.
    a.keyboard.press("ArrowDown")
    active_is(durand)
    a.keyboard.press("ArrowDown")
    active_is(duroc)
    a.keyboard.press("ArrowDown")  # the last one stays
    active_is(duroc)
    a.keyboard.press("ArrowUp")
    active_is(durand)
    a.keyboard.press("ArrowUp")
    expect(search).to_be_focused()
    expect(search).not_to_have_attribute("aria-activedescendant", re.compile(".*"))
    expect(listbox.locator("[aria-selected=true]")).to_have_count(0)
    a.keyboard.press("Escape")
    expect(durand).to_have_count(0)
    expect(search).to_have_attribute("aria-expanded", "false")
    expect(status).to_have_text("")
    expect(search).to_have_value("dur")  # Escape on a closed list empties the field
    a.keyboard.press("Escape")
    expect(search).to_have_value("")
    # Enter with no active option searches in place (never sends); Down, Down, Enter takes Duroc.
    a.keyboard.type("dur")
    a.keyboard.press("Enter")
    expect(durand).to_be_visible()
    assert Message.objects.count() == 0
    a.keyboard.press("ArrowDown")
    a.keyboard.press("ArrowDown")
    a.keyboard.press("Enter")
    assert Message.objects.count() == 0
    to = a.get_by_role("textbox", name="À", exact=True)
    expect(to).to_have_value(D)
    expect(to).to_be_focused()
    expect(status).to_have_text(f"Destinataire ajouté : {D}")
    expect(search).to_have_attribute("aria-expanded", "false")


@pytest.mark.requirement("REQ-VERIFY-RECIPIENT")
def test_a_message_is_written_and_sent_with_the_keyboard_alone(
    people: dict[str, User], tabs: Any
) -> None:
    a = tabs(unlocked(people["a"])).page
    a.goto("/messagerie/nouveau/")
    expect(a.locator("html")).to_have_attribute("lang", "fr")
    assert_every_control_named(a)
    take_d_from_the_directory_with_the_keyboard(a)
    # REQ-VERIFY-RECIPIENT: who D is, and the first-time confirmation, reached by Tab.
    check = a.get_by_role("region", name="Vérification des destinataires")
    expect(check).to_contain_text("Dr Alice Duroc, Infirmier")
    confirmation = a.get_by_role(
        "checkbox", name="J'ai vérifié : Dr Alice Duroc est bien le destinataire voulu"
    )
    tab_to(a, confirmation)
    a.keyboard.press("Space")
    expect(confirmation).to_be_checked()
    tab_to(a, a.get_by_role("textbox", name="Objet"))
    a.keyboard.type(SUBJECT)
    tab_to(a, a.get_by_role("textbox", name="Message", exact=True))
    a.keyboard.type("Cher confrère,")
    a.keyboard.press("Enter")  # a new line in the body, not a submission
    a.keyboard.type("voici mon avis.")
    send = a.get_by_role("button", name="Signer, chiffrer et envoyer")
    tab_to(a, send)
    a.keyboard.press("Enter")
    a.wait_for_url(READING)
    expect(a.get_by_role("status")).to_have_text("Message envoyé.")
    expect(a.get_by_role("heading", level=1)).to_have_text(SUBJECT)
    expect(a.locator("pre.body")).to_have_text("Cher confrère,\nvoici mon avis.")
    assert Message.objects.get().sender_address == A


def test_compose_errors_are_announced_tied_to_their_field_and_in_french(
    people: dict[str, User], tabs: Any
) -> None:
    a = tabs(unlocked(people["a"])).page
    a.goto(f"/messagerie/nouveau/?a={B}")
    # Sent with no subject, and a tab pasted into the patient's name (a control character).
    a.get_by_role("textbox", name="Nom du patient", exact=True).fill("Lefèvre\tJeanne")
    send = a.get_by_role("button", name="Signer, chiffrer et envoyer")
    send.focus()
    press_and_load(a)
    # The page comes back with the summary of what to correct, focused, as an alert.
    summary = a.get_by_role("alert")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("Objet : Ce champ est obligatoire.")
    expect(summary).to_contain_text(
        "Nom du patient : Ce champ contient des caractères non admis (retour à la ligne, contrôle)."
    )
    # Each field carries its own error, read with it; the summary's links lead to it.
    subject = a.get_by_role("textbox", name="Objet")
    expect(subject).to_have_attribute("aria-invalid", "true")
    expect(subject).to_have_accessible_description(re.compile("Ce champ est obligatoire"))
    expect(
        a.get_by_role("textbox", name="Nom du patient", exact=True)
    ).to_have_accessible_description(re.compile("caractères non admis"))
    tab_to(a, summary.get_by_role("link", name="Objet"))
    a.keyboard.press("Enter")
    expect(subject).to_be_focused()
    a.keyboard.type(SUBJECT)

    # An address outside the directory: refused in words, with nothing sent nor kept.
    to = a.get_by_role("textbox", name="À", exact=True)
    to.fill("nobody@nowhere.pli.test")
    a.get_by_role("textbox", name="Nom du patient", exact=True).fill("")
    send.focus()
    press_and_load(a)
    alert = a.get_by_role("alert")
    expect(alert).to_be_focused()
    expect(alert).to_have_text(
        "Ces destinataires ne sont pas dans l'annuaire : nobody@nowhere.pli.test."
    )
    expect(a.get_by_role("region", name="Vérification des destinataires")).to_contain_text(
        "Cette adresse n'est pas une boîte active de l'annuaire."
    )
    assert "Traceback" not in a.content()
    assert Message.objects.count() == 0


def test_compose_errors_are_in_english_when_the_browser_asks(
    people: dict[str, User], tabs: Any
) -> None:
    a = tabs(unlocked(people["a"]), "en-GB").page
    a.goto(f"/messagerie/nouveau/?a={B}")
    expect(a.locator("html")).to_have_attribute("lang", "en")
    assert_every_control_named(a)
    a.get_by_role("button", name="Sign, encrypt and send").focus()
    press_and_load(a)
    summary = a.get_by_role("alert")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("Subject: This field is required.")
    expect(a.get_by_role("textbox", name="Subject")).to_have_accessible_description(
        re.compile("This field is required")
    )


# --------------------------------------------------------------------------- reading


def a_wrote_to_b(people: dict[str, User]) -> str:
    return sent_id(
        compose(unlocked(people["a"]), files=(("cr.pdf", b"%PDF-1.4 test", "application/pdf"),))
    )


def test_the_skip_link_goes_past_the_folder_list(people: dict[str, User], tabs: Any) -> None:
    a_wrote_to_b(people)
    b = tabs(unlocked(people["b"])).page
    b.goto("/messagerie/")
    b.keyboard.press("Tab")
    skip = b.get_by_role("link", name="Aller au contenu")
    expect(skip).to_be_focused()
    b.keyboard.press("Enter")
    # The next Tab is the first message, not "Nouveau message" and every folder again.
    b.keyboard.press("Tab")
    expect(b.get_by_role("link", name=f"Non lu : {SUBJECT}")).to_be_focused()


@pytest.mark.requirement("REQ-AFTER-SEND")
def test_a_message_is_read_forwarded_archived_and_deleted_with_the_keyboard(
    people: dict[str, User], tabs: Any
) -> None:
    message_id = a_wrote_to_b(people)
    b = tabs(unlocked(people["b"])).page
    b.goto("/messagerie/")
    inbox = b.get_by_role("link", name="Boîte de réception 1 non lu")
    expect(inbox).to_have_attribute("aria-current", "page")
    row = b.get_by_role("link", name=f"Non lu : {SUBJECT}")
    tab_to(b, row)
    b.keyboard.press("Enter")
    b.wait_for_url(READING)
    assert_every_control_named(b)
    expect(b.get_by_role("article", name=SUBJECT)).to_be_visible()
    expect(b.get_by_role("region", name="Signature valide")).to_contain_text(
        "Signé par Dr Alice Martin, Cardiologue"
    )
    # Read: the inbox link no longer counts it.
    expect(b.get_by_role("link", name="Boîte de réception", exact=True)).to_be_visible()

    # REQ-AFTER-SEND: forwarding asks for the patient's agreement, reached and ticked by keys.
    tab_to(b, b.get_by_role("link", name="Transférer"))
    b.keyboard.press("Enter")
    b.wait_for_url("**/transferer/**")
    expect(b.get_by_role("heading", level=1)).to_have_text("Transférer un message")
    b.get_by_role("textbox", name="À", exact=True).fill(A)
    send = b.get_by_role("button", name="Signer, chiffrer et envoyer")
    send.focus()
    press_and_load(b)
    refused = b.get_by_role("alert")
    expect(refused).to_be_focused()
    expect(refused).to_contain_text("accord du patient")
    consent = b.get_by_role("checkbox", name="Le patient a donné son accord à ce transfert.")
    tab_to(b, consent)
    b.keyboard.press("Space")
    tab_to(b, send)
    b.keyboard.press("Enter")
    b.wait_for_url(READING)
    expect(b.get_by_role("status")).to_have_text("Message envoyé.")
    assert Message.objects.filter(sender_address=B, in_reply_to__isnull=True).count() == 1

    # Archive, then delete twice (trash, then for good), each step announced as a status.
    b.goto(f"/messagerie/message/{message_id}/?boite={B}")
    for button, said, folder in (
        ("Archiver", "Message déplacé vers « Archives ».", "archive"),
        ("Supprimer", "Message mis à la corbeille.", "trash"),
    ):
        tab_to(b, b.get_by_role("button", name=button, exact=True))
        press_and_load(b)
        expect(b.get_by_role("status")).to_have_text(said)
        assert (
            MessageCopy.objects.get(mailbox__address=B, message__public_id=message_id).folder
            == folder
        )
        b.goto(f"/messagerie/message/{message_id}/?boite={B}")
    tab_to(b, b.get_by_role("button", name="Supprimer définitivement"))
    press_and_load(b)
    # Irreversible: a question first, its confirmation reached by keys.
    expect(b.get_by_role("heading", level=1)).to_have_text("Supprimer définitivement ce message ?")
    assert MessageCopy.objects.filter(mailbox__address=B, message__public_id=message_id)
    tab_to(b, b.get_by_role("button", name="Confirmer la suppression définitive"))
    press_and_load(b)
    expect(b.get_by_role("status")).to_have_text("Message supprimé définitivement.")
    assert not MessageCopy.objects.filter(mailbox__address=B, message__public_id=message_id)


def test_the_vault_prompt_refuses_a_wrong_passphrase_in_words(
    people: dict[str, User], tabs: Any
) -> None:
    message_id = a_wrote_to_b(people)
    reading = f"/messagerie/message/{message_id}/?boite={B}"
    for locale, label, refusal, lang in (
        ("fr-FR", "Phrase secrète de connexion", "Cette phrase n'ouvre pas votre clé.", "fr"),
        ("en-GB", "Login passphrase", "This passphrase does not open your key.", "en"),
    ):
        b = tabs(signed_in(people["b"]), locale).page  # signed in, the vault still locked
        b.goto(reading)
        b.wait_for_url("**/compte/cle/deverrouiller/**")
        expect(b.locator("html")).to_have_attribute("lang", lang)
        field = b.get_by_label(label)
        tab_to(b, field)
        b.keyboard.type("pas la bonne phrase")
        press_and_load(b)
        expect(b.get_by_role("alert")).to_have_text(refusal)
        assert "Traceback" not in b.content()
        tab_to(b, b.get_by_label(label))
        b.keyboard.type(PASSPHRASE)
        b.keyboard.press("Enter")
        b.wait_for_url(READING)
        expect(b.get_by_role("heading", level=1)).to_have_text(SUBJECT)
