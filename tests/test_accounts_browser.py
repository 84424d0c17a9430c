"""Enrolment and login in a real browser: headless system Chromium driven by Playwright.

The issue's "Must show": the full enrolment and login, with TOTP and with
WebAuthn, through the real pages. The server is pytest-django's live server
(http://localhost:<port>: a secure context, and a valid WebAuthn RP ID, which
an IP address is not); ``PLI_BASE_URL`` is set to it, so the RP ID and the
origin the server expects are the page's. The passkey lives on a Chromium
*virtual authenticator* (DevTools protocol ``WebAuthn`` domain), which signs
exactly like a platform authenticator. Every page must load without a console
error and without a Content-Security-Policy violation.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings as django_settings
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    ConsoleMessage,
    Page,
    Route,
    expect,
    sync_playwright,
)
from pytest_django.fixtures import Settings

from pli.server.accounts.actions import do_invite_account
from pli.server.accounts.models import Role, User, UserSession, WebAuthnCredential
from pli.server.accounts.sessions import AUTH_AT, REAUTH_SECONDS
from pli.server.audit.models import AuditEvent
from tests.accounts_support import (
    PASSPHRASE,
    ensure_charter,
    make_account,
    make_professional,
    outbox_codes,
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
VERIFY_LOGIN = "/compte/connexion/cle-de-securite/"

# Injected before any page script (DevTools, so the page's CSP does not apply to it):
# a CSP violation becomes a console error the test sees, whatever its source.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " " + event.blockedURI);
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # As in test_directory_browser: Playwright's sync API keeps an event loop in this
    # thread, and Django refuses database calls here unless told no coroutine makes them.
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
    assert url.startswith("http://localhost:"), url  # an IP address is no RP ID (§5.1.3)
    settings.PLI_BASE_URL = url
    ensure_charter()  # the enrolment ends on it; transactional tests flush the migration's
    return url


@dataclass
class Watched:
    """A page and what its console said."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    def allow_failed_request(self, path: str) -> None:
        """A refused request to *path* (a 4xx the test provokes) is logged by Chromium."""
        self.expected.append(path)

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture
def watched(browser: Browser, base_url: str) -> Iterator[Watched]:
    context = browser.new_context(locale="fr-FR", base_url=base_url)
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    result = Watched(page=page, context=context)
    # Chromium asks for /favicon.ico by itself and Pli has none yet (base.html links no
    # icon): that 404 is not a fault of the pages under test.
    result.allow_failed_request("/favicon.ico")

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "CSP violation" in text:
            result.errors.append(text)
        elif message.type == "error":
            where = message.location.get("url", "")
            if text.startswith("Failed to load resource") and any(
                where.endswith(path) for path in result.expected
            ):
                return
            result.errors.append(f"{text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: result.errors.append(f"page error: {error}"))
    try:
        yield result
    finally:
        context.close()


def virtual_authenticator(page: Page) -> tuple[CDPSession, str]:
    """A CTAP2 platform authenticator with resident keys and user verification."""
    session = page.context.new_cdp_session(page)
    session.send("WebAuthn.enable", {"enableUI": False})
    added = session.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return session, str(added["authenticatorId"])


def next_code(secret: str) -> str:
    """The code of the next time step: the current one may have been used (RFC 6238 §5.2)."""
    return pyotp.TOTP(secret).at(time.time() + 30)


def log_in_with_passphrase(page: Page, username: str) -> None:
    page.goto("/compte/connexion/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")
    page.get_by_label("Adresse de messagerie").fill(username)
    page.get_by_label("Phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url("**/compte/connexion/second-facteur/")


def age_the_authentication(context: BrowserContext) -> None:
    """As if the login were older than REAUTH_SECONDS: sensitive actions ask again."""
    (cookie,) = [c for c in context.cookies() if c["name"] == django_settings.SESSION_COOKIE_NAME]
    store = import_module(django_settings.SESSION_ENGINE).SessionStore(session_key=cookie["value"])
    store[AUTH_AT] = int(time.time()) - REAUTH_SECONDS - 1
    store.save()


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Se déconnecter").click()
    page.wait_for_url("**/compte/connexion/")


@pytest.mark.requirement("REQ-AUTH-STRONG")
@pytest.mark.requirement("REQ-INFO-PRO")
def test_enrolment_from_the_invitation_then_login_with_totp(watched: Watched) -> None:
    page = watched.page
    admin, _ = make_account("admin.browser@operator.pli.test", role=Role.OPERATOR_ADMIN)
    address = "dr.browser@hopital.pli.test"
    make_professional(address)
    do_invite_account(admin, address)
    (code,) = outbox_codes(address)

    page.goto("/compte/activation/")
    assert page.locator("html").get_attribute("lang") == "fr"
    page.get_by_label("Adresse de messagerie").fill(address)
    page.get_by_label("Code d'activation reçu par message").fill(code)
    page.get_by_role("button", name="Activer").click()

    page.wait_for_url("**/compte/inscription/phrase-secrete/")
    expect(page.get_by_text("Étape 1 sur 4")).to_be_visible()
    page.get_by_label("Nouvelle phrase secrète").fill(PASSPHRASE)
    page.get_by_label("Confirmez la phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Continuer").click()

    page.wait_for_url("**/compte/inscription/authentificateur/")
    expect(page.get_by_text("Étape 2 sur 4")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    # The passkey alternative is offered on the same step (shown by the script).
    expect(
        page.get_by_role("button", name="Enregistrer une clé de sécurité ou une clé d'accès")
    ).to_be_visible()
    page.get_by_label("Code à 6 chiffres").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Valider").click()

    page.wait_for_url("**/compte/inscription/codes-de-secours/")
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    page.get_by_role("button", name="Je les ai conservés").click()

    page.wait_for_url("**/compte/inscription/charte/")
    page.get_by_label("J'ai pris connaissance de la charte").check()
    page.get_by_role("button", name="Valider").click()

    page.wait_for_url("**/messagerie/")
    expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()
    user = User.objects.get(username=address)
    assert user.enrolled_at is not None
    assert UserSession.objects.filter(user=user, method="enrolment").exists()

    log_out(page)
    log_in_with_passphrase(page, address)
    # TOTP only: the page offers the code and no key.
    expect(page.get_by_role("button", name="Utiliser ma clé de sécurité")).to_have_count(0)
    page.get_by_label("Code à 6 chiffres").fill(next_code(secret))
    page.get_by_role("button", name="Valider").click()
    page.wait_for_url("**/messagerie/")
    assert UserSession.objects.filter(user=user, method="passphrase+totp").exists()
    watched.assert_clean()


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_passkey_registered_from_the_factors_page_logs_in(watched: Watched) -> None:
    page = watched.page
    user, secret = make_account("dr.passkey.browser@cabinet.pli.test")
    cdp, authenticator = virtual_authenticator(page)

    log_in_with_passphrase(page, user.username)
    page.get_by_label("Code à 6 chiffres").fill(next_code(secret))
    page.get_by_role("button", name="Valider").click()
    page.wait_for_url("**/messagerie/")

    age_the_authentication(page.context)
    page.get_by_role("link", name="Sécurité").click()
    page.wait_for_url("**/compte/facteurs/")
    expect(page.get_by_text("Aucune clé enregistrée.")).to_be_visible()
    page.get_by_role("link", name="Ajouter une clé de sécurité ou une clé d'accès").click()
    # A sensitive action: the passphrase again first (re-authentication).
    page.wait_for_url("**/compte/reauthentification/**")
    page.get_by_label("Phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Confirmer").click()
    page.wait_for_url("**/compte/facteurs/cles-de-securite/ajouter/")
    page.get_by_label("Nom de la clé").fill("Ordinateur du cabinet")
    page.get_by_role("button", name="Enregistrer une clé de sécurité ou une clé d'accès").click()
    page.wait_for_url("**/compte/facteurs/")
    expect(page.locator("ul.passkeys strong")).to_have_text(["Ordinateur du cabinet"])
    expect(page.get_by_role("button", name="Supprimer Ordinateur du cabinet")).to_be_visible()

    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(stored) == 1 and stored[0]["rpId"] == "localhost"
    row = WebAuthnCredential.objects.get(user=user)
    assert base64.b64decode(stored[0]["credentialId"]) == bytes(row.credential_id)
    assert AuditEvent.objects.filter(
        action="accounts.factor_added", detail='{"factor":"webauthn"}'
    ).exists()

    log_out(page)
    log_in_with_passphrase(page, user.username)
    page.get_by_role("button", name="Utiliser ma clé de sécurité").click()
    page.wait_for_url("**/messagerie/")
    assert UserSession.objects.filter(user=user, method="passphrase+webauthn").exists()
    assert WebAuthnCredential.objects.get(pk=row.pk).last_used_at is not None
    watched.assert_clean()


def _p256_pkcs8() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode()


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_wrong_or_unknown_key_is_refused(watched: Watched) -> None:
    page = watched.page
    user, secret = make_account("dr.wrongkey.browser@cabinet.pli.test")
    cdp, authenticator = virtual_authenticator(page)
    log_in_with_passphrase(page, user.username)
    page.get_by_label("Code à 6 chiffres").fill(next_code(secret))
    page.get_by_role("button", name="Valider").click()
    page.wait_for_url("**/messagerie/")
    age_the_authentication(page.context)
    page.goto("/compte/facteurs/cles-de-securite/ajouter/")
    page.get_by_label("Phrase secrète").fill(PASSPHRASE)
    page.get_by_role("button", name="Confirmer").click()
    page.get_by_role("button", name="Enregistrer une clé de sécurité ou une clé d'accès").click()
    page.wait_for_url("**/compte/facteurs/")
    (good,) = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    log_out(page)
    watched.allow_failed_request(VERIFY_LOGIN)

    # 1. The registered credential ID, but another private key: the signature fails.
    cdp.send(
        "WebAuthn.removeCredential",
        {"authenticatorId": authenticator, "credentialId": good["credentialId"]},
    )
    cdp.send(
        "WebAuthn.addCredential",
        {
            "authenticatorId": authenticator,
            "credential": {**good, "privateKey": _p256_pkcs8(), "signCount": 50},
        },
    )
    log_in_with_passphrase(page, user.username)
    page.get_by_role("button", name="Utiliser ma clé de sécurité").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("Clé de sécurité non reconnue.")
    assert page.url.endswith("/compte/connexion/second-facteur/")

    # 2. A key the server never saw (a discoverable credential of another account on
    # this device), offered by a client that ignores allowCredentials.
    cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator})
    cdp.send(
        "WebAuthn.addCredential",
        {
            "authenticatorId": authenticator,
            "credential": {
                "credentialId": base64.b64encode(os.urandom(32)).decode(),
                "isResidentCredential": True,
                "rpId": "localhost",
                "privateKey": _p256_pkcs8(),
                "userHandle": base64.b64encode(os.urandom(32)).decode(),
                "signCount": 0,
            },
        },
    )

    def without_allow_list(route: Route) -> None:
        response = route.fetch()
        options = response.json()
        options["allowCredentials"] = []
        route.fulfill(response=response, json=options)

    page.route(re.compile(r"/connexion/cle-de-securite/options/$"), without_allow_list)
    page.get_by_role("button", name="Utiliser ma clé de sécurité").click()
    expect(alert).to_have_text("Clé de sécurité non reconnue.")

    # 3. The browser finds no key for the site (the list is honoured): nothing is sent.
    page.unroute(re.compile(r"/connexion/cle-de-securite/options/$"))
    cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator})
    page.get_by_role("button", name="Utiliser ma clé de sécurité").click()
    expect(alert).to_have_text("L'opération a été annulée ou a expiré. Réessayez.")

    assert not UserSession.objects.filter(user=user, method="passphrase+webauthn").exists()
    failed = AuditEvent.objects.filter(
        action="auth.login_failed", actor_id=user.pk, detail='{"factor":"webauthn"}'
    )
    assert failed.count() == 2
    watched.assert_clean()
