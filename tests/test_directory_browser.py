"""The directory page in a real browser: headless system Chromium driven by Playwright.

The server is pytest-django's live server on the test database; the data is
written through the ORM first (committed: the server runs in another thread).
The page is plain HTML: it works without JavaScript and fetches nothing from
anywhere but the server.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from pli.server.accounts.models import Role
from pli.server.directory.models import (
    Activity,
    Mailbox,
    MailboxType,
    Organisation,
    Professional,
    search_key,
)
from tests.accounts_support import PASSPHRASE, make_account

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
LISTED = "claire.martin@medecin.mssante.fr"
RED_LISTED = ("claire.martin.prive@medecin.mssante.fr", "paul.martin@medecin.mssante.fr")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop in this thread while it lives; Django then
    # refuses database calls here (setup, flush) unless told that no coroutine runs them.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def directory() -> None:
    clinic = Organisation.objects.create(
        technical_id="R10000000001",
        name="Centre de santé Saint-Éloi",
        postcode="34000",
        city="Montpellier",
        city_key=search_key("Montpellier"),
    )
    people = [
        ("MARTIN", "Claire", "10101010109", [(LISTED, False), (RED_LISTED[0], True)]),
        ("MARTIN", "Paul", "10101010117", [(RED_LISTED[1], True)]),
        ("DURAND", "Élise", "10101010125", [("elise.durand@medecin.mssante.fr", False)]),
    ]
    for last_name, first_name, rpps, mailboxes in people:
        professional = Professional.objects.create(
            identifier_type="8",
            identifier=rpps,
            national_id="8" + rpps,
            civil_title="Docteur",
            last_name=last_name,
            first_name=first_name,
            name_key=search_key(last_name, first_name),
            profession_code="10",
            profession="Médecin",
        )
        Activity.objects.create(
            professional=professional, organisation=clinic, activity_key=f"act-{rpps}"
        )
        for address, red_list in mailboxes:
            Mailbox.objects.create(
                address=address,
                kind=MailboxType.PERSONAL,
                professional=professional,
                red_list=red_list,
            )


def _page(browser: Browser, server_url: str, requests: list[str], **options: Any) -> Page:
    """A page signed in as a member (the directory requires authentication), on /annuaire/."""
    # A support account: no directory entry of its own to show up in the results.
    user, secret = make_account(f"member{len(_members)}@browser.pli.test", role=Role.SUPPORT)
    _members.append(user.username)
    context = browser.new_context(**options)
    page = context.new_page()
    page.on("request", lambda request: requests.append(_url(request)))
    page.goto(f"{server_url}/annuaire/")
    # Sent to the login page first; the field names hold whatever the language.
    page.wait_for_url("**/compte/connexion/**")
    page.locator("input[name=username]").fill(user.username)
    page.locator("input[name=passphrase]").fill(PASSPHRASE)
    page.locator("input[name=passphrase]").press("Enter")
    page.wait_for_url("**/compte/connexion/second-facteur/")
    code = pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    page.locator("input[name=code]").fill(code)
    page.locator("input[name=code]").press("Enter")
    page.wait_for_url("**/annuaire/")
    return page


_members: list[str] = []


def _url(request: Request) -> str:
    return request.url


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_a_professional_is_found_in_the_browser(
    browser: Browser, live_server: Any, directory: None
) -> None:
    requests: list[str] = []
    # No JavaScript at all: the form is plain HTML.
    page = _page(browser, live_server.url, requests, locale="fr-FR", java_script_enabled=False)

    assert page.locator("html").get_attribute("lang") == "fr"
    expect(page.get_by_role("heading", level=1)).to_have_text("Annuaire des professionnels")
    # The first name's prefix then the last name's, in lower case, without accents.
    page.get_by_label("Nom, prénom ou identifiant").fill("cla mart")
    page.get_by_role("button", name="Rechercher").click()
    page.wait_for_url(re.compile(r"/annuaire/\?q=cla\+mart"))

    expect(page.get_by_role("heading", level=2)).to_have_text("1 résultat")
    table = page.get_by_role("table")
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Nom", "Profession", "Lieu d'exercice", "Messagerie sécurisée"]
    )
    row = table.get_by_role("row").nth(1)
    expect(row).to_contain_text("Docteur Claire MARTIN")
    expect(row).to_contain_text("Médecin")
    expect(row).to_contain_text("34000 Montpellier")
    expect(row.locator("code.mailbox")).to_have_text([LISTED])
    html = page.content()
    assert all(address not in html for address in RED_LISTED)
    assert all(url.startswith(live_server.url) for url in requests), requests


def test_a_person_with_only_red_listed_addresses_shows_none(
    browser: Browser, live_server: Any, directory: None
) -> None:
    requests: list[str] = []
    page = _page(browser, live_server.url, requests, locale="fr-FR")

    page.get_by_label("Nom, prénom ou identifiant").fill("martin")
    page.get_by_label("Nom, prénom ou identifiant").press("Enter")
    page.wait_for_url(re.compile(r"q=martin"))

    expect(page.get_by_role("heading", level=2)).to_have_text("2 résultats")
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("Claire MARTIN")
    expect(rows.nth(2)).to_contain_text("Paul MARTIN")
    expect(rows.nth(2)).to_contain_text("Aucune adresse publiée")
    assert all(address not in page.content() for address in RED_LISTED)


def test_no_match_and_bad_input_are_said_in_french(
    browser: Browser, live_server: Any, directory: None
) -> None:
    requests: list[str] = []
    page = _page(browser, live_server.url, requests, locale="fr-FR")

    page.get_by_label("Nom, prénom ou identifiant").fill("zzz")
    page.get_by_role("button", name="Rechercher").click()
    expect(page.get_by_role("heading", level=2)).to_have_text("Aucun résultat")

    page.goto(f"{live_server.url}/annuaire/?q=martin&page=0")
    expect(page.get_by_role("alert")).to_contain_text("Le numéro de page")


def test_an_english_browser_gets_the_english_page(
    browser: Browser, live_server: Any, directory: None
) -> None:
    requests: list[str] = []
    page = _page(browser, live_server.url, requests, locale="en-US")

    assert page.locator("html").get_attribute("lang") == "en"
    expect(page.get_by_role("heading", level=1)).to_have_text("Directory of professionals")
    page.get_by_label("Name, first name or identifier").fill("elise")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", level=2)).to_have_text("1 result")
    expect(page.get_by_role("table")).to_contain_text("elise.durand@medecin.mssante.fr")
