"""No request but a compose view's keeps a byte of a file part (pli/server/file_uploads.py).

Django's default handlers would keep each file part in memory, then in a
temporary file, while the CSRF check reads ``request.POST`` — for anyone,
before the login is checked (found by a review). Each test watches the two
classes Django's handlers build a file part into; with the default handlers
both tests fail (seen).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files import uploadedfile
from django.test import Client
from pytest_django.fixtures import Settings

from tests.accounts_support import signed_in
from tests.conftest import Pki
from tests.test_messaging_api import MESSAGES, World, make_world

BODY = 8 * 1024 * 1024  # past Django's 2.5 MB in memory: a temporary file by default


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The file parts Django's handlers build, in memory or in a temporary file."""
    built: list[str] = []
    for name in ("InMemoryUploadedFile", "TemporaryUploadedFile"):
        kind = getattr(uploadedfile, name)
        monkeypatch.setattr(kind, "__init__", _spy(kind.__init__, built, name))
    return built


def _spy(init: Any, built: list[str], name: str) -> Any:
    def spied(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(name)
        init(self, *args, **kwargs)

    return spied


def file_part() -> io.BytesIO:
    part = io.BytesIO(b"x" * BODY)
    part.name = "big.bin"
    return part


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_an_anonymous_multipart_post_keeps_nothing_of_its_file(kept: list[str]) -> None:
    client = Client(enforce_csrf_checks=True)
    client.get("/compte/connexion/")
    token = client.cookies["csrftoken"].value
    api = client.post(MESSAGES, {"file": file_part()}, headers={"X-CSRFToken": token})
    assert api.status_code == 401
    page = client.post("/compte/connexion/", {"file": file_part(), "csrfmiddlewaretoken": token})
    assert page.status_code in (200, 400, 403)
    assert kept == []


@pytest.mark.django_db
@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_signed_in_multipart_post_to_the_api_is_refused_and_keeps_nothing(
    pki: Pki, settings: Settings, tmp_path: Path, kept: list[str]
) -> None:
    settings.BLOB_DIR = tmp_path / "blobs"
    world: World = make_world(pki, Path(settings.BLOB_DIR))
    client = signed_in(world.a, Client(enforce_csrf_checks=True))
    client.get("/messagerie/")
    token = client.cookies["csrftoken"].value
    answer = client.post(MESSAGES, {"file": file_part()}, headers={"X-CSRFToken": token})
    assert answer.status_code == 422, answer.content
    assert answer.json()["code"] == "bad_request"
    assert kept == []
