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
def test_admin_console_goes_through_pli_login_in_french(client: Client) -> None:
    # The console's own single-factor form is replaced by Pli's login (REQ-AUTH-STRONG).
    response = client.get("/admin/login/", follow=True)
    assert response.redirect_chain[-1][0] == "/compte/connexion/"
    assert "Connexion" in response.content.decode()
