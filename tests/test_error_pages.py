"""Requests that fail outside any view get Pli's answers, never Django's own pages.

Django's pages are in English, carry an inline style that the Content-Security-
Policy blocks, and speak of cookies and DEBUG; a traceback must never reach a
user. The web pages answer in the interface's language within the layout, the
API with a stable code (``pli/server/errors.py``).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.test import Client, RequestFactory
from django.urls import get_resolver
from django.utils import translation

from pli.server import errors

pytestmark = pytest.mark.django_db

#: What Django's own error pages say, and what a traceback looks like.
DJANGO_WORDS = ("DEBUG", "Traceback", "CSRF verification failed", "cookie CSRF", "<style")


def _no_leak(page: str) -> None:
    for words in DJANGO_WORDS:
        assert words not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script either
    assert " style=" not in page


@pytest.mark.parametrize(
    ("language", "title", "text"),
    [
        ("fr", "Page introuvable", "Cette page n'existe pas, ou vous n'y avez pas accès."),
        ("en", "Page not found", "This page does not exist, or you may not see it."),
    ],
)
def test_an_unknown_page_is_pli_s_404_in_the_reader_s_language(
    language: str, title: str, text: str
) -> None:
    response = Client(headers={"accept-language": language}).get("/messagerie/inconnu/")
    page = response.content.decode()
    assert response.status_code == 404
    assert f'<html lang="{language}">' in page
    assert f"<h1>{title}</h1>" in page
    assert text in page
    _no_leak(page)


def test_an_unknown_api_path_answers_json_with_a_code() -> None:
    for language, message in (("fr", "Introuvable."), ("en", "Not found.")):
        response = Client(headers={"accept-language": language}).get("/api/nothing-here")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"code": "not_found", "message": message}


def test_a_form_with_a_stale_token_gets_a_french_page_and_nothing_technical(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(enforce_csrf_checks=True, headers={"accept-language": "fr"})
    with caplog.at_level(logging.WARNING, logger="pli.server.errors"):
        response = client.post("/compte/connexion/", {"username": "x", "password": "y"})
    page = response.content.decode()
    assert response.status_code == 403
    assert "<h1>Formulaire expiré</h1>" in page
    assert "Rien n'a été enregistré." in page
    assert '<html lang="fr">' in page
    _no_leak(page)
    # Django's reason is for the operator's log only.
    assert "CSRF cookie not set" not in page
    assert any("CSRF cookie not set" in record.getMessage() for record in caplog.records)


def test_the_english_stale_form_page() -> None:
    client = Client(enforce_csrf_checks=True, headers={"accept-language": "en"})
    response = client.post("/compte/connexion/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert "<h1>Form expired</h1>" in response.content.decode()


def test_the_handlers_are_pli_s() -> None:
    resolver = get_resolver()
    assert resolver.resolve_error_handler(400) is errors.bad_request
    assert resolver.resolve_error_handler(403) is errors.permission_denied
    assert resolver.resolve_error_handler(404) is errors.page_not_found
    assert resolver.resolve_error_handler(500) is errors.server_error


@pytest.mark.parametrize(
    ("handler", "status", "code", "title"),
    [
        (errors.bad_request, 400, "bad_request", "Requête invalide"),
        (errors.permission_denied, 403, "forbidden", "Accès refusé"),
    ],
)
def test_400_and_403_pages_and_their_api_answers(
    handler: errors.Handler, status: int, code: str, title: str
) -> None:
    factory = RequestFactory()
    with translation.override("fr"):
        page = handler(factory.get("/messagerie/"), None)
        api = handler(factory.get("/api/messages"), None)
    assert page.status_code == status
    assert f"<h1>{title}</h1>" in page.content.decode()
    _no_leak(page.content.decode())
    assert api.status_code == status
    assert api["Content-Type"] == "application/json"
    assert json.loads(api.content)["code"] == code


def test_an_unexpected_failure_shows_no_trace_in_either_form() -> None:
    """Served by Django when a view raises: the standalone page, or JSON under /api/."""
    factory = RequestFactory()
    with translation.override("fr"):
        page = errors.server_error(factory.get("/messagerie/"))
        api = errors.server_error(factory.post("/api/messages"))
    text = page.content.decode()
    assert page.status_code == 500
    assert "<h1>Erreur</h1>" in text
    assert "Une erreur inattendue s&#x27;est produite." in text
    _no_leak(text)
    assert api.status_code == 500
    assert json.loads(api.content) == {
        "code": "internal_error",
        "message": "Une erreur inattendue s'est produite.",
    }
