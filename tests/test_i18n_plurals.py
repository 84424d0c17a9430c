"""Counted texts take the plural form of their language: French treats 0 as singular
("0 code restant"), English does not ("0 codes left")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.utils import translation

from pli.server.accounts import factors
from pli.server.accounts.models import RecoveryCode
from tests.accounts_support import make_account, signed_in

LOCALE = Path(__file__).resolve().parents[1] / "src" / "pli" / "server" / "locale"
_PLURAL = re.compile(r'^msgid "(.*)"\nmsgid_plural "(.*)"\n', re.MULTILINE)


def plural_entries(language: str) -> list[tuple[str, str]]:
    """(singular, plural) msgids of a catalogue's plural entries (each on one line)."""
    text = (LOCALE / language / "LC_MESSAGES" / "django.po").read_text(encoding="utf-8")
    return _PLURAL.findall(text)


def _remaining(client: Client, language: str) -> str:
    page = client.get("/compte/facteurs/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    (line,) = re.findall(r"<p>(\d+ codes? (?:restants?|left)\.)</p>", page)
    return str(line)


@pytest.mark.django_db
def test_the_recovery_codes_left_read_right_in_french_and_english() -> None:
    user, _secret = make_account("dr.plurals@cabinet.pli.test")
    client = signed_in(user)
    seen = {}
    for count in (0, 1, 2):
        factors.new_recovery_codes(user)
        kept = list(RecoveryCode.objects.filter(user=user).values_list("pk", flat=True))[:count]
        RecoveryCode.objects.filter(user=user).exclude(pk__in=kept).delete()
        assert factors.remaining_recovery_codes(user) == count
        seen[count] = (_remaining(client, "fr"), _remaining(client, "en"))
    assert seen == {
        0: ("0 code restant.", "0 codes left."),
        1: ("1 code restant.", "1 code left."),
        2: ("2 codes restants.", "2 codes left."),
    }


def test_every_counted_text_has_its_french_plural_forms() -> None:
    english = plural_entries("en")
    assert len(english) >= 5  # the entries are found: this test reads the catalogue
    assert set(english) <= set(plural_entries("fr")), "add the entry to locale/fr too"
    for singular, plural in english:
        with translation.override("fr"):
            assert translation.ngettext(singular, plural, 0) == singular
            assert translation.ngettext(singular, plural, 1) == singular
            assert translation.ngettext(singular, plural, 2) == plural
