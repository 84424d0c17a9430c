"""Card login in a real browser, through a real nginx terminating TLS (REQ-AUTH-CARD).

Headless system Chromium, driven by Playwright, presents a client
certificate (the ``client_certificates`` option of the browser context) to
Debian's nginx, started here unprivileged-style on 127.0.0.1 with the
configuration of docs/operations/reverse-proxy.md: TLS, a client certificate
asked for but optional, the URL-escaped PEM passed to Pli in
``X-SSL-Client-Cert`` (any such header of the client overwritten). nginx
forwards to pytest-django's live server, which trusts that header from
loopback only (PLI_TRUSTED_PROXIES) and verifies the certificate itself.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pytest_django.fixtures import Settings

from pli.crypto import Certificate, certificate_pem
from pli.server.accounts.models import UserSession
from tests.accounts_support import make_account
from tests.test_accounts_certificate import (
    BUTTON,
    HEADER,
    CardPki,
    escaped,
    free_port,
    issue_card,
    issue_server,
    key_pem,
    make_card_pki,
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

# The server block of docs/operations/reverse-proxy.md, with the test's paths and ports.
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen 127.0.0.1:{port} ssl;
        server_name 127.0.0.1;

        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;

        ssl_client_certificate {dir}/client-ca.pem;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 3;
        client_max_body_size 1100m;

        location / {{
            proxy_pass {upstream};
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
        }}
    }}
}}
"""


def _nginx() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(path, os.X_OK):  # pragma: no cover - ./run installs it
        pytest.fail("the nginx binary is required (./run installs the Debian package nginx)")
    return path


@dataclass(frozen=True)
class Front:
    url: str
    directory: Path
    cards: CardPki


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


@pytest.fixture(scope="module")
def front(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """nginx terminating TLS on 127.0.0.1 in front of the live server."""
    directory = tmp_path_factory.mktemp("nginx")
    cards = make_card_pki()
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "server.pem").write_bytes(
        certificate_pem(issue_server(cards.igc, server_key, "127.0.0.1"))
    )
    (directory / "server.key").write_bytes(key_pem(server_key))
    cards.write(directory)
    port = free_port()
    (directory / "nginx.conf").write_text(
        NGINX_CONF.format(
            dir=directory,
            port=port,
            upstream=live_server.url,
            # As root, the workers would switch to "nobody", who cannot enter the test's
            # private temporary directory.
            user="user root;" if os.geteuid() == 0 else "",
        ),
        encoding="utf-8",
    )
    log = (directory / "nginx.out").open("wb")
    process = subprocess.Popen(
        [
            _nginx(),
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            "-e",
            str(directory / "error.log"),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    errors = (directory / "nginx.out").read_text()
                    if (directory / "error.log").exists():
                        errors += (directory / "error.log").read_text()
                    pytest.fail("nginx did not start:\n" + errors[-3000:])
                time.sleep(0.1)
        yield Front(f"https://127.0.0.1:{port}", directory, cards)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
        log.close()


@pytest.fixture
def pli_behind_nginx(front: Front, settings: Settings) -> Front:
    """Pli configured as docs/operations/reverse-proxy.md says."""
    settings.PLI_CLIENT_CA_FILE = str(front.directory / "client-ca.pem")
    settings.PLI_CLIENT_CRL_FILES = [str(front.directory / "client-ca.crl.pem")]
    settings.PLI_TLS_CLIENT_CERT_HEADER = HEADER
    settings.PLI_TRUSTED_PROXIES = ["127.0.0.1", "::1"]
    # PLI_HTTPS: the proxy says the browser came over TLS (CSRF's origin check needs it).
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    return front


def _page(
    browser: Browser,
    front: Front,
    card: Certificate | None,
    **options: Any,
) -> Page:
    if card is not None:
        path = front.directory / f"card-{card.serial_number:x}.pem"
        path.write_bytes(certificate_pem(card))
        key = front.directory / "card.key"
        key.write_bytes(key_pem(front.cards.key))
        options["client_certificates"] = [
            {"origin": front.url, "certPath": str(path), "keyPath": str(key)}
        ]
    # The front's certificate comes from the test authority, which Chromium does not know.
    context = browser.new_context(locale="fr-FR", ignore_https_errors=True, **options)
    page = context.new_page()
    page.goto(f"{front.url}/compte/connexion/")
    return page


@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_an_enrolled_professional_signs_in_with_the_card(
    browser: Browser, pli_behind_nginx: Front
) -> None:
    user, _ = make_account("alice.cps@hopital.pli.test")
    assert user.professional is not None
    card = pli_behind_nginx.cards.card(user.professional.national_id)
    page = _page(browser, pli_behind_nginx, card)

    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")
    page.get_by_role("button", name=BUTTON).click()
    page.wait_for_url(re.compile(r"/messagerie/$"))
    expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()
    # One factor asked of the person: the card (and its PIN) is strong authentication.
    assert UserSession.objects.get(user=user).method == "certificate"
    page.context.close()


@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("revoked", "Ce certificat a été révoqué : connexion refusée."),
        ("untrusted", "Ce certificat n'est pas délivré par une autorité reconnue par Pli"),
    ],
)
def test_a_revoked_or_untrusted_card_is_refused_with_the_reason(
    browser: Browser, pli_behind_nginx: Front, which: str, message: str
) -> None:
    user, _ = make_account(f"bob.{which}@hopital.pli.test")
    assert user.professional is not None
    cards = pli_behind_nginx.cards
    card = (
        cards.revoked
        if which == "revoked"
        else issue_card(cards.foreign, cards.key, national_id=user.professional.national_id)
    )
    page = _page(browser, pli_behind_nginx, card)
    page.get_by_role("button", name=BUTTON).click()

    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(message)
    assert alert.get_attribute("data-code") == f"certificate_{which}"
    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")
    expect(page.get_by_role("button", name="Se déconnecter")).to_have_count(0)
    assert not UserSession.objects.filter(user=user).exists()
    page.context.close()


@pytest.mark.requirement("REQ-AUTH-CARD")
def test_without_a_card_the_normal_login_page_is_shown(
    browser: Browser, pli_behind_nginx: Front
) -> None:
    user, _ = make_account("carol.nocard@hopital.pli.test")
    assert user.professional is not None
    stolen = pli_behind_nginx.cards.card(user.professional.national_id)
    # No client certificate; the browser even sends the header itself, with somebody's
    # certificate: nginx replaces it by its own (empty) value, and drops the spelling with
    # underscores that Django would read as the same header.
    forged = escaped(stolen)
    page = _page(
        browser,
        pli_behind_nginx,
        None,
        extra_http_headers={HEADER: forged, HEADER.replace("-", "_"): forged},
    )

    expect(page.get_by_role("heading", level=1)).to_have_text("Connexion")
    expect(page.get_by_label("Adresse de messagerie")).to_be_visible()
    expect(page.get_by_label("Phrase secrète")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    page.get_by_role("button", name=BUTTON).click()
    expect(page.get_by_role("alert")).to_contain_text("Aucun certificat n'a été présenté")
    assert page.get_by_role("alert").get_attribute("data-code") == "certificate_missing"
    assert not UserSession.objects.filter(user=user).exists()
    page.context.close()


@pytest.mark.requirement("REQ-AT-REST")
def test_the_proxy_passes_a_large_body_on_without_writing_it_to_disk(front: Front) -> None:
    """The compose page receives attachments in clear: nginx must neither refuse them
    (its default limit is 1 MB) nor spool them to ``client_body_temp_path``."""
    body = os.urandom(9 * 1024 * 1024)
    context = ssl.create_default_context(cafile=str(front.directory / "client-ca.pem"))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the front's certificate is the test's own
    port = int(front.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        connection.request(
            "POST",
            "/messagerie/nouveau/",
            body=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        answer = connection.getresponse()
        answer.read()
    finally:
        connection.close()
    # Pli's own answer (to the login page: nobody is signed in), not nginx's 413.
    assert answer.status == 302, answer.status
    assert "/compte/connexion/" in (answer.getheader("Location") or "")
    log = (front.directory / "error.log").read_text(encoding="utf-8", errors="replace")
    assert "buffered to a temporary file" not in log
    assert not any((front.directory / "body").rglob("*"))
