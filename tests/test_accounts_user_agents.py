"""The sessions page names a session's browser and system, not its raw User-Agent."""

from __future__ import annotations

import html

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pli.server.accounts.models import UserSession
from pli.server.accounts.user_agents import Device, describe_user_agent
from tests.accounts_support import make_account, signed_in

CHROME_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"
)


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        (CHROME_LINUX, Device("Chrome", "Linux")),
        (FIREFOX_WINDOWS, Device("Firefox", "Windows")),
        (SAFARI_IPHONE, Device("Safari", "iPhone")),
        (
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
                " (KHTML, like Gecko) Version/18.1 Safari/605.1.15"
            ),
            Device("Safari", "macOS"),
        ),
        (
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
                " Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"
            ),
            Device("Edge", "Windows"),
        ),
        (
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
                " Chrome/131.0.0.0 Mobile Safari/537.36"
            ),
            Device("Chrome", "Android"),
        ),
        (
            (
                "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko)"
                " SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36"
            ),
            Device("Samsung Internet", "Android"),
        ),
        (
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15"
                " (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1"
            ),
            Device("Chrome", "iPhone"),
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
            Device("Firefox", "macOS"),
        ),
        (
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko)"
                " Chrome/131.0.0.0 Safari/537.36"
            ),
            Device("Chrome", "ChromeOS"),
        ),
        ("Python-urllib/3.11", Device(None, None)),
        ("curl/8.5.0", Device(None, None)),
        ("", Device(None, None)),
    ],
)
def test_a_user_agent_is_named_by_its_browser_and_system(user_agent: str, device: Device) -> None:
    assert describe_user_agent(user_agent) == device


@given(st.text(max_size=300))
def test_any_string_gets_known_names_or_none(user_agent: str) -> None:
    device = describe_user_agent(user_agent)
    browsers = {"Edge", "Opera", "Samsung Internet", "Firefox", "Chrome", "Chromium", "Safari"}
    systems = {"iPhone", "iPad", "Android", "ChromeOS", "Windows", "macOS", "Linux"}
    assert device.browser in browsers | {None}
    assert device.system in systems | {None}


@pytest.mark.django_db
def test_the_sessions_page_shows_the_summary_in_each_language() -> None:
    user, _secret = make_account("dr.devices@cabinet.pli.test")
    client = signed_in(user)
    UserSession.objects.filter(user=user).update(user_agent=CHROME_LINUX)
    other = UserSession.objects.get(user=user)
    for number, user_agent in enumerate((FIREFOX_WINDOWS, "Python-urllib/3.11")):
        other.pk = None
        other.key_hash = f"other-{number}"  # a hash's column: 64 characters at most
        other.user_agent = user_agent
        other.save()

    french = html.unescape(
        client.get("/compte/sessions/", HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    )
    for label in ("Chrome sur Linux", "Firefox sur Windows", "Navigateur inconnu"):
        assert f">{label}</td>" in french
    # The raw string only as the cell's title (hovered), never as the text read.
    assert f'title="{CHROME_LINUX}">Chrome sur Linux</td>' in french
    assert f">{CHROME_LINUX[:20]}" not in french

    english = client.get("/compte/sessions/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    for label in ("Chrome on Linux", "Firefox on Windows", "Unknown browser"):
        assert f">{label}</td>" in english
