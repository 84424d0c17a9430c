"""`pli demo` brings up the server from nothing; headless Chromium logs in and searches.

The real thing end to end: the console script in a subprocess (gunicorn, a
fresh data directory, the sample extraction imported, the demo accounts
enrolled), and the system Chromium driven by Playwright, logging in with a
demo professional's passphrase and TOTP code from ``demo-credentials.txt``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from pli.server.demo import current_demo_code, read_credentials

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


PLI = Path(sys.executable).with_name("pli")


def demo_environment(data: Path) -> dict[str, str]:
    """A clean environment: no test settings module, no PLI_* of the test run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PLI_") and k != "DJANGO_SETTINGS_MODULE"
    }
    env.update({"PLI_DATA_DIR": str(data), "PLI_WORKERS": "1"})
    return env


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("demo-data")
    port = free_port()
    env = demo_environment(data)
    log = (data / "demo.log").open("wb")
    process = subprocess.Popen(
        [str(PLI), "demo", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("pli demo did not come up:\n" + (data / "demo.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, data
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
        log.close()


def a_listed_professional(data: Path) -> tuple[str, str, str]:
    """Someone of the demo directory with a listed mailbox: (first name, last name, address)."""
    with sqlite3.connect(data / "pli.sqlite3") as database:
        row = database.execute(
            "SELECT p.first_name, p.last_name, m.address FROM directory_professional p"
            " JOIN directory_mailbox m ON m.professional_id = p.id"
            " WHERE m.red_list = 0 AND m.kind = 'PER' AND p.active = 1 ORDER BY p.id LIMIT 1"
        ).fetchone()
    assert row is not None, "the demo directory has no listed personal mailbox"
    return row[0], row[1], row[2]


def test_demo_is_made_once_with_enrolled_accounts(demo_server: tuple[str, Path]) -> None:
    _url, data = demo_server
    credentials = data / "demo-credentials.txt"
    assert credentials.stat().st_mode & 0o777 == 0o600
    accounts = read_credentials(data)
    roles = [account.role for account in accounts]
    assert roles.count("operator_admin") == 1 and roles.count("professional") >= 3
    assert all(a.totp_uri.startswith("otpauth://totp/") for a in accounts)
    with sqlite3.connect(data / "pli.sqlite3") as database:
        enrolled = {
            row[0]
            for row in database.execute(
                "SELECT username FROM accounts_user WHERE enrolled_at IS NOT NULL"
            )
        }
        sealed = database.execute(
            "SELECT COUNT(*) FROM accounts_mailboxkey WHERE wrapping = 'passphrase'"
        ).fetchone()[0]
    assert {a.address for a in accounts} <= enrolled
    assert sealed == roles.count("professional")  # one vault key each, certified by the demo CA
    assert current_demo_code(data, accounts[0].address).isdigit()

    # A second run reads what the first made: the same accounts, their secrets not printed again.
    before = credentials.read_bytes()
    again = subprocess.run(
        [str(PLI), "demo", "--no-serve"],
        env=demo_environment(data),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert credentials.read_bytes() == before
    for account in accounts:
        assert account.address in again.stdout and account.passphrase not in again.stdout


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_demo_directory_is_searchable_in_chromium(demo_server: tuple[str, Path]) -> None:
    url, data = demo_server
    first_name, last_name, address = a_listed_professional(data)
    professional = next(a for a in read_credentials(data) if a.role == "professional")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="fr-FR")
            page.goto(f"{url}/compte/connexion/")
            assert page.locator("html").get_attribute("lang") == "fr"
            page.fill("input[name=username]", professional.address)
            page.fill("input[name=passphrase]", professional.passphrase)
            page.click("button[type=submit]")
            page.wait_for_url("**/compte/connexion/second-facteur/")
            page.fill("input[name=code]", current_demo_code(data, professional.address))
            page.click("form button[type=submit]")
            page.wait_for_url("**/messagerie/")  # a professional logs in to read mail
            # The login unlocked the vault for this session (a cookie the page cannot read).
            vault = [c for c in page.context.cookies() if c["name"] == "pli_vault"]
            assert vault and vault[0]["httpOnly"] and vault[0]["sameSite"] == "Strict"
            page.goto(f"{url}/annuaire/")
            # Two word prefixes, in the other order, in lower case.
            page.fill("input[name=q]", f"{first_name[:3].lower()} {last_name[:4].lower()}")
            page.keyboard.press("Enter")
            page.wait_for_load_state("networkidle")
            body = page.inner_text("body")
            assert last_name in body
            assert address in body
        finally:
            browser.close()
