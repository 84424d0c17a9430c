"""The directory page in a real browser: headless system Chromium driven by Playwright.

The server is pytest-django's live server on the test database; the data is
written through the ORM first (committed: the server runs in another thread).
The page is plain HTML: it works without JavaScript and fetches nothing from
anywhere but the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from pli.server.directory.models import (
    Activity,
    Mailbox,
    MailboxType,
    Organisation,
    Professional,
    search_key,
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
    context = browser.new_context(**options)
    page = context.new_page()
    page.on("request", lambda request: requests.append(_url(request)))
    page.goto(f"{server_url}/annuaire/")
    return page


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
