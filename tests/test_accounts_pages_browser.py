"""The account pages as a person sees them, in headless Chromium (Playwright).

What the UI review of the demo found: the key-unlock page said "unlocked" over a
form to unlock; the locked-key notice of the inbox looked like a success; the
header's logout button dropped to a second line as a grey native button; the
account pages were unstyled; there was no way to switch language. Set
``PLI_SCREENSHOT_DIR`` to keep a PNG of each page checked, at each width.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from pli.server.accounts.models import User
from tests.accounts_support import PASSPHRASE
from tests.test_accounts_browser import (  # noqa: F401 - fixtures, used by name
    CSP_WATCH,
    Watched,
    base_url,
    browser,
    next_code,
)
from tests.test_webmail import (  # noqa: F401 - fixtures, used by name
    A,
    ca_directory,
    key_pool,
    operator,
    vault_account,
)

pytestmark = pytest.mark.django_db(transaction=True)

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
#: pli.css: --brand, the colour of every button of the web mail and the account pages.
BRAND = "rgb(18, 53, 91)"
#: pli.css: .notice.warning and .notice.success.
WARNING_BACKGROUND = "rgb(255, 248, 225)"
SUCCESS_BACKGROUND = "rgb(238, 246, 238)"


def screenshot(page: Page, name: str) -> None:
    """For the reviewer's eyes (not asserted): PLI_SCREENSHOT_DIR/<name>-<width>.png."""
    directory = os.environ.get("PLI_SCREENSHOT_DIR")
    if directory:
        width = page.viewport_size["width"] if page.viewport_size else 0
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{directory}/{name}-{width}.png", full_page=True)


def new_page(chromium: Browser, url: str, viewport: ViewportSize) -> Watched:
    context = chromium.new_context(locale="fr-FR", base_url=url, viewport=viewport)
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    watched = Watched(page=page, context=context)
    page.on(
        "console",
        lambda message: (
            watched.errors.append(message.text)
            if "CSP violation" in message.text or "Content Security Policy" in message.text
            else None
        ),
    )
    return watched


@pytest.fixture
def desktop(browser: Browser, base_url: str) -> Iterator[Watched]:  # noqa: F811
    watched = new_page(browser, base_url, DESKTOP)
    yield watched
    watched.context.close()


@pytest.fixture
def phone(browser: Browser, base_url: str) -> Iterator[Watched]:  # noqa: F811
    watched = new_page(browser, base_url, PHONE)
    yield watched
    watched.context.close()


def professional() -> tuple[User, str]:
    """An enrolled professional whose mailbox key is in the server's vault."""
    return vault_account(A, organisation="Hôpital A", last_name="Martin", profession="Médecin")


def log_in(page: Page, user: User, secret: str) -> None:
    page.goto("/compte/connexion/")
    screenshot(page, "login")
    page.get_by_label("Adresse de messagerie").fill(user.username)
    page.get_by_label("Phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url("**/compte/connexion/second-facteur/")
    screenshot(page, "second-factor")
    page.get_by_label("Code à 6 chiffres").fill(next_code(secret))
    page.get_by_role("button", name="Valider").click()
    page.wait_for_url("**/messagerie/")


def test_the_unlock_page_shows_one_state_and_the_locked_notice_warns(desktop: Watched) -> None:
    page = desktop.page
    user, secret = professional()
    log_in(page, user, secret)  # the login passphrase unlocks the key

    page.goto("/compte/cle/deverrouiller/")
    screenshot(page, "unlock-unlocked")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ma clé de messagerie")
    notice = page.locator("[data-code=vault_unlocked]")
    expect(notice).to_have_text("Votre clé est déverrouillée pour cette session.")
    expect(notice).to_have_css("background-color", SUCCESS_BACKGROUND)
    # Nothing to fill in: no passphrase field, no unlock button.
    expect(page.get_by_role("button", name="Déverrouiller")).to_have_count(0)
    expect(page.locator("input[type=password]")).to_have_count(0)
    page.get_by_role("link", name="Retour à la messagerie").click()
    page.wait_for_url("**/messagerie/")

    # The key's cookie gone (as in another browser window): the inbox warns, not congratulates.
    page.context.clear_cookies(name="pli_vault")
    page.reload()
    locked = page.locator("[data-code=vault_locked]")
    expect(locked).to_contain_text("Votre clé est verrouillée")
    expect(locked).to_have_css("background-color", WARNING_BACKGROUND)
    screenshot(page, "inbox-locked")

    locked.get_by_role("link", name="Déverrouiller ma clé").click()
    page.wait_for_url("**/compte/cle/deverrouiller/?next=*")
    screenshot(page, "unlock-locked")
    expect(page.get_by_role("heading", level=1)).to_have_text("Déverrouiller ma clé de messagerie")
    expect(page.locator("[data-code=vault_unlocked]")).to_have_count(0)
    page.get_by_label("Phrase secrète de connexion").fill(PASSPHRASE)
    page.get_by_role("button", name="Déverrouiller").click()
    page.wait_for_url("**/messagerie/**")
    expect(page.locator("[data-code=vault_locked]")).to_have_count(0)
    desktop.assert_clean()


def _header_on_one_line(page: Page) -> None:
    header = page.locator("body > header")
    logout = page.get_by_role("button", name="Se déconnecter")
    brand = header.locator(".brand")
    header_box, logout_box, brand_box = (
        header.bounding_box(),
        logout.bounding_box(),
        brand.bounding_box(),
    )
    assert header_box and logout_box and brand_box
    # One line: the logout button sits level with the brand, the header no taller than it.
    assert (
        abs(
            (logout_box["y"] + logout_box["height"] / 2)
            - (brand_box["y"] + brand_box["height"] / 2)
        )
        < brand_box["height"] / 2
    ), (logout_box, brand_box)
    assert header_box["height"] < 2.5 * brand_box["height"], header_box


def _logout_reads_as_a_link(page: Page) -> None:
    logout = page.get_by_role("button", name="Se déconnecter")
    expect(logout).to_be_visible()
    expect(logout).to_have_css("background-color", "rgba(0, 0, 0, 0)")
    expect(logout).to_have_css("color", "rgb(255, 255, 255)")
    expect(logout).to_have_css("border-top-width", "0px")


def _styled_like_the_mailbox(page: Page, button: str) -> None:
    expect(page.get_by_role("button", name=button).first).to_have_css("background-color", BRAND)
    for field in page.locator("main input[type=password], main input[type=text]").all():
        expect(field).to_have_css("border-radius", "4px")


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_the_header_and_the_account_pages_are_laid_out_at_each_width(
    width: str, request: pytest.FixtureRequest
) -> None:
    watched: Watched = request.getfixturevalue(width)
    page = watched.page
    user, secret = professional()

    page.goto("/compte/connexion/")
    _styled_like_the_mailbox(page, "Continuer")
    log_in(page, user, secret)
    screenshot(page, "inbox")
    _logout_reads_as_a_link(page)
    if width == "desktop":
        _header_on_one_line(page)

    for path, name, button in [
        ("/compte/facteurs/", "factors", "Générer de nouveaux codes"),
        ("/compte/sessions/", "sessions", "Fermer"),
    ]:
        page.goto(path)
        screenshot(page, name)
        _logout_reads_as_a_link(page)
        _styled_like_the_mailbox(page, button)
        if width == "desktop":
            _header_on_one_line(page)
        # Nothing wider than the screen (no sideways scrolling on a phone).
        viewport = page.viewport_size
        assert viewport is not None
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    expect(page.locator("table.sessions")).to_be_visible()
    watched.assert_clean()


def test_the_footer_switches_the_language_and_the_choice_stays(desktop: Watched) -> None:
    page = desktop.page
    page.goto("/compte/connexion/?next=/messagerie/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")
    assert page.locator("html").get_attribute("lang") == "fr"
    switch = page.get_by_role("group", name="Langue :")
    expect(switch.get_by_role("button")).to_have_text(["English"])  # French is the current one

    switch.get_by_role("button", name="English").click()
    # Back on the same page, query string included, now in English.
    page.wait_for_url("**/compte/connexion/?next=/messagerie/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Login")
    assert page.locator("html").get_attribute("lang") == "en"
    screenshot(page, "login-english")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "pli_language"]
    assert cookie["value"] == "en" and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["expires"] > time.time() + 300 * 86400  # kept beyond this browser session

    # The next page too, although the browser still asks for French.
    page.goto("/compte/inscription/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Request access")
    page.get_by_role("group", name="Language:").get_by_role("button", name="Français").click()
    page.wait_for_url("**/compte/inscription/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Demander un accès")
    page.goto("/compte/connexion/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")

    # A 404 does not echo the path it was asked (the same page for every path): the
    # switch goes back by the Referer, which Pli's same-origin policy sends.
    desktop.allow_failed_request("/nulle-part/")
    page.goto("/nulle-part/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Page introuvable")
    page.get_by_role("button", name="English").click()
    page.wait_for_url("**/nulle-part/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    desktop.assert_clean()
