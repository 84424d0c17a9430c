"""A short name for the browser and system of a User-Agent string (the sessions page).

Pure: no Django; the page translates "<browser> sur <system>". A person
recognises "Firefox sur Windows" among their sessions, not the raw string.
Tokens are looked for in an order that tells browsers apart: every
Chromium-based browser also says ``Chrome/``, and Chrome also says
``Safari/``; every iPhone browser says ``like Mac OS X``.
"""

from __future__ import annotations

from typing import NamedTuple

#: (token, name), the first token found names the browser.
_BROWSERS = (
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("OPiOS/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
)
#: (token, name), the first token found names the system.
_SYSTEMS = (
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Linux", "Linux"),
    ("X11", "Linux"),
)


class Device(NamedTuple):
    """What a User-Agent string says of itself; None where it says nothing known."""

    browser: str | None
    system: str | None


def describe_user_agent(user_agent: str) -> Device:
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    if browser is None and "Safari/" in user_agent and "Version/" in user_agent:
        browser = "Safari"  # Safari alone says Version/ and Safari/ without another name
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    return Device(browser, system)
