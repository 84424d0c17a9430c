"""The server starts: settings load, migrations apply, the admin and the API answer."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
def test_openapi_document_is_served(client: Client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Pli"


@pytest.mark.django_db
def test_admin_login_page_is_french(client: Client) -> None:
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert "Connexion" in response.content.decode()  # the French admin
