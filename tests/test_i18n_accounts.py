"""The public account pages are French first, with a complete English translation.

Each page is read twice, with the browser asking for French and then for English:
the French page shows its French labels, the English page their translation and none
of the French left over (an untranslated or fuzzy catalogue entry falls back to French).
"""

from __future__ import annotations

import html
import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/compte/connexion/"
REQUEST_ACCESS = "/compte/inscription/"
ACTIVATION = "/compte/activation/"

#: Labels shared by every page (the layout of base.html for a visitor).
LAYOUT = [
    ("Aller au contenu", "Skip to content"),
    ("Messagerie sécurisée de santé", "Secure health messaging"),
    ("Navigation principale", "Main navigation"),
    ("Annuaire", "Directory"),
    ("Se connecter", "Log in"),
]

#: (French source, English translation) of the labels each page shows.
PAGES = {
    LOGIN: [
        ("Connexion", "Login"),
        ("Adresse de messagerie", "Mailbox address"),
        ("Phrase secrète", "Passphrase"),
        ("Continuer", "Continue"),
        (
            "Première connexion : demander un code d'activation",
            "First login: request an activation code",
        ),
        ("J'ai reçu un code d'activation", "I have received an activation code"),
    ],
    REQUEST_ACCESS: [
        ("Demander un accès", "Request access"),
        (
            "Un code d'activation est envoyé à l'adresse que l'annuaire enregistre pour vous",
            "An activation code is sent to the address the directory holds for you",
        ),
        (
            "Votre adresse de messagerie inscrite à l'annuaire",
            "Your mailbox address as listed in the directory",
        ),
        ("Recevoir un code", "Receive a code"),
    ],
    ACTIVATION: [
        ("Activer votre compte", "Activate your account"),
        ("Adresse de messagerie", "Mailbox address"),
        ("Code d'activation reçu par message", "Activation code received by message"),
        ("Activer", "Activate"),
    ],
}


def _text(content: bytes) -> str:
    """The page as a reader sees it (entities such as &#x27; decoded)."""
    return html.unescape(content.decode())


def _get(url: str, language: str) -> str:
    response = Client().get(url, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200
    page = _text(response.content)
    assert f'<html lang="{language}">' in page
    return page


def _post_refused(url: str, data: dict[str, str], language: str) -> str:
    response = Client().post(url, data, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 400
    page = _text(response.content)
    assert f'<html lang="{language}">' in page
    return page


def _shows(page: str, label: str) -> bool:
    """Whether the page shows the label as whole words ("Continue" is not in "Continuer")."""
    return re.search(rf"(?<!\w){re.escape(label)}(?!\w)", page) is not None


def _assert_translated(french: str, english: str, labels: list[tuple[str, str]]) -> None:
    for source, translation in labels:
        assert _shows(french, source), f"missing from the French page: {source}"
        assert not _shows(french, translation), f"English on the French page: {translation}"
        assert _shows(english, translation), f"missing from the English page: {translation}"
        assert not _shows(english, source), f"left in French on the English page: {source}"


@pytest.mark.parametrize("url", list(PAGES))
def test_public_account_pages_are_french_first_and_translated(url: str) -> None:
    french = _get(url, "fr")
    english = _get(url, "en")
    _assert_translated(french, english, PAGES[url] + LAYOUT)


def test_a_browser_without_preference_gets_french() -> None:
    page = _text(Client().get(LOGIN).content)
    assert '<html lang="fr">' in page
    assert "Phrase secrète" in page
    assert "Passphrase" not in page


def test_the_code_sent_notice_is_translated() -> None:
    french = _get(ACTIVATION + "?sent=1", "fr")
    english = _get(ACTIVATION + "?sent=1", "en")
    notice = [
        (
            "Si cette adresse figure dans l'annuaire, un code d'activation vient d'y être envoyé.",
            "If this address is in the directory, an activation code has just been sent to it.",
        )
    ]
    _assert_translated(french, english, notice)


def test_the_wrong_activation_code_message_is_translated() -> None:
    attempt = {"address": "nobody@pli.test", "code": "WRONG-CODE"}
    french = _post_refused(ACTIVATION, attempt, "fr")
    english = _post_refused(ACTIVATION, attempt, "en")
    message = [("Code d'activation incorrect ou expiré.", "Incorrect or expired activation code.")]
    _assert_translated(french, english, message)


def test_the_wrong_passphrase_message_is_translated() -> None:
    attempt = {"username": "nobody@pli.test", "passphrase": "not the right passphrase"}
    french = _post_refused(LOGIN, attempt, "fr")
    english = _post_refused(LOGIN, attempt, "en")
    message = [("Adresse ou phrase secrète incorrecte.", "Incorrect address or passphrase.")]
    _assert_translated(french, english, message)
