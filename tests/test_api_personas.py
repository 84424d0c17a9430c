"""Every API endpoint, three personas: the owner, a colleague elsewhere, an outsider.

Issue "accounts", item 4: every endpoint requires authentication except the
ones that must not (health check, public FHIR metadata); what belongs to
someone else answers exactly like what does not exist.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from pli.server.accounts.models import UserSession
from tests.accounts_support import make_account, signed_in

pytestmark = pytest.mark.django_db

#: Endpoints answered without authentication, on purpose.
PUBLIC = {
    ("get", "/api/health"),
    ("get", "/api/openapi.json"),
    ("get", "/api/docs"),
    # The API clients' login steps answer without a session (they open one).
    ("get", "/api/auth/csrf"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/second-factor"),
}


def _operations() -> list[tuple[str, str]]:
    schema = Client().get("/api/openapi.json").json()
    found = []
    for path, methods in schema["paths"].items():
        for method in methods:
            found.append((method, path))
    return found


def _concrete(path: str) -> str:
    samples = {"session_id": "1", "address": "someone@elsewhere.pli.test"}
    return re.sub(r"\{(\w+)\}", lambda m: samples.get(m.group(1), "1"), path)


def test_the_api_lists_its_operations() -> None:
    operations = _operations()
    assert ("get", "/api/health") in operations
    assert ("get", "/api/accounts/me") in operations
    assert len(operations) >= 6


def test_every_endpoint_but_the_public_ones_refuses_an_outsider() -> None:
    outsider = Client()
    checked = 0
    for method, path in _operations():
        if (method, path) in PUBLIC:
            continue
        response = getattr(outsider, method)(_concrete(path))
        assert response.status_code == 401, (method, path, response.status_code)
        checked += 1
    assert checked >= 5
    assert outsider.get("/api/health").json() == {"status": "ok"}


def test_public_fhir_metadata_only() -> None:
    outsider = Client()
    assert outsider.get("/fhir/metadata").status_code == 200
    response = outsider.get("/fhir/Practitioner")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def _personas() -> dict[str, Any]:
    owner, _ = make_account("dr.owner@hopital-a.pli.test", organisation="Hôpital A")
    colleague, _ = make_account("dr.colleague@clinique-b.pli.test", organisation="Clinique B")
    return {
        "owner": signed_in(owner),
        "colleague": signed_in(colleague),
        "outsider": Client(),
        "owner_user": owner,
        "colleague_user": colleague,
    }


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_sessions_belong_to_their_owner_only() -> None:
    p = _personas()
    owner_session = UserSession.objects.get(user=p["owner_user"])
    missing = p["colleague"].delete(f"/api/accounts/sessions/{owner_session.pk + 10_000}")
    not_yours = p["colleague"].delete(f"/api/accounts/sessions/{owner_session.pk}")
    assert missing.status_code == not_yours.status_code == 404
    assert missing.json() == not_yours.json()
    assert p["outsider"].delete(f"/api/accounts/sessions/{owner_session.pk}").status_code == 401
    owner_list = p["owner"].get("/api/accounts/sessions").json()
    colleague_list = p["colleague"].get("/api/accounts/sessions").json()
    assert [s["id"] for s in owner_list] == [owner_session.pk]
    assert owner_session.pk not in [s["id"] for s in colleague_list]
    assert p["owner"].delete(f"/api/accounts/sessions/{owner_session.pk}").status_code == 204
    assert p["owner"].get("/api/accounts/me").status_code == 401


def test_me_tells_each_persona_who_they_are() -> None:
    p = _personas()
    assert p["owner"].get("/api/accounts/me").json()["username"] == "dr.owner@hopital-a.pli.test"
    assert (
        p["colleague"].get("/api/accounts/me").json()["username"]
        == "dr.colleague@clinique-b.pli.test"
    )
    assert p["outsider"].get("/api/accounts/me").status_code == 401


@pytest.mark.requirement("REQ-DIRECTORY")
def test_directory_search_and_certificates_need_a_member() -> None:
    p = _personas()
    for persona in ("owner", "colleague"):
        found = p[persona].get("/api/directory/search", {"q": "martin"})
        assert found.status_code == 200
    assert p["outsider"].get("/api/directory/search", {"q": "martin"}).status_code == 401
    address = "dr.owner@hopital-a.pli.test"
    assert (
        p["colleague"].get("/api/directory/certificates", {"address": address}).status_code == 200
    )
    assert p["outsider"].get("/api/directory/certificates", {"address": address}).status_code == 401
