"""Login through the national identity provider (OpenID Connect), against a real local provider.

The provider of tests/oidc_provider.py runs on 127.0.0.1 in a thread; Django's
test client plays the browser, going from Pli to the provider's authorization
endpoint and back. Pli's server side talks to the provider over real HTTP
(discovery, JWKS, token, UserInfo): nothing is patched.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import runpy
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from pli.server.accounts import oidc
from pli.server.accounts.models import User, UserSession
from pli.server.audit.models import AuditEvent
from pli.server.config import ConfigurationError
from tests.accounts_support import make_account, make_professional
from tests.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    LocalOidcProvider,
    Misbehaviour,
    national_subject,
    new_provider,
)

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

START = "/compte/connexion/oidc/"
CALLBACK = "/compte/connexion/oidc/retour/"
LOGIN = "/compte/connexion/"
SETTINGS_FILE = Path(__file__).resolve().parents[1] / "src/pli/server/settings.py"


@pytest.fixture(scope="module")
def running_provider() -> Iterator[LocalOidcProvider]:
    with new_provider().running() as provider:
        yield provider


@pytest.fixture
def provider(running_provider: LocalOidcProvider, settings: Settings) -> LocalOidcProvider:
    """Pli configured as the provider's client, its caches empty."""
    running_provider.reset({}, Misbehaviour.NONE)
    settings.PLI_OIDC_ISSUER = running_provider.issuer
    settings.PLI_OIDC_CLIENT_ID = CLIENT_ID
    settings.PLI_OIDC_CLIENT_SECRET = CLIENT_SECRET
    settings.PLI_OIDC_SCOPES = "openid scope_all"
    settings.PLI_OIDC_ID_CLAIMS = ["SubjectNameID", "preferred_username"]
    settings.PLI_BASE_URL = "http://testserver"
    oidc.reset_caches()
    return running_provider


def _error_code(response: Response) -> str | None:
    match = re.search(r'data-code="([a-z0-9_]+)"', response.content.decode())
    return match.group(1) if match else None


def _at_provider(url: str) -> str:
    """The browser at the provider's authorization endpoint: where it is sent back to."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        assert response.status == 302, response.read()
        return response.getheader("Location") or ""
    finally:
        connection.close()


def _callback_path(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == "http://testserver"
    assert parts.path == CALLBACK
    return f"{parts.path}?{parts.query}"


def _login(client: Client) -> Response:
    """The whole round trip: Pli, the provider, back to Pli."""
    start = client.get(START)
    assert start.status_code == 302, start.content
    return client.get(_callback_path(_at_provider(start["Location"])))


def _signed_in_as(client: Client) -> str | None:
    response = client.get("/api/accounts/me")
    return response.json()["username"] if response.status_code == 200 else None


def _last_failure() -> dict[str, Any]:
    event = AuditEvent.objects.filter(action="auth.login_failed").order_by("-seq").first()
    assert event is not None
    assert event.outcome == "failure"
    detail: dict[str, Any] = json.loads(event.detail)
    return detail


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_professional_logs_in_through_the_national_identity_provider(
    provider: LocalOidcProvider,
) -> None:
    user, _ = make_account("alice.oidc@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.NONE)
    client = Client()

    start = client.get(START)
    assert start.status_code == 302
    authorize = urllib.parse.urlsplit(start["Location"])
    query = dict(urllib.parse.parse_qsl(authorize.query))
    assert start["Location"].startswith(provider.issuer + "/protocol/openid-connect/auth?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == "http://testserver" + CALLBACK
    assert query["scope"] == "openid scope_all"
    # RFC 7636: S256 only; OpenID Connect Core §3.1.2.1: state and nonce, unguessable.
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43
    verifier = client.session[oidc.SESSION_KEY]["verifier"]
    assert verifier not in start["Location"]

    response = client.get(_callback_path(_at_provider(start["Location"])))
    assert response.status_code == 302 and response["Location"] == "/messagerie/"
    assert _signed_in_as(client) == "alice.oidc@hopital.pli.test"
    assert provider.token_requests == 1 and provider.token_refusals == []
    # The flow's secrets are gone; nothing of the tokens is kept.
    assert oidc.SESSION_KEY not in client.session
    session = UserSession.objects.get(user=user)
    assert session.method == "oidc"
    login = AuditEvent.objects.filter(action="auth.login").order_by("-seq").first()
    assert login is not None and json.loads(login.detail) == {"method": "oidc"}
    assert login.actor_id == user.pk
    user.refresh_from_db()
    assert user.last_authenticated_at is not None


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_the_identifier_may_come_from_userinfo_as_pro_sante_connect_gives_it(
    provider: LocalOidcProvider,
) -> None:
    user, _ = make_account("bob.oidc@hopital.pli.test")
    assert user.professional is not None
    provider.reset(
        national_subject(user.professional.national_id), Misbehaviour.IDENTIFIER_IN_USERINFO
    )
    client = Client()
    response = _login(client)
    assert response.status_code == 302, response.content
    assert _signed_in_as(client) == "bob.oidc@hopital.pli.test"
    assert provider.userinfo_requests == 1


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_an_es256_id_token_is_accepted(provider: LocalOidcProvider) -> None:
    user, _ = make_account("carol.oidc@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.ES256)
    client = Client()
    assert _login(client).status_code == 302
    assert _signed_in_as(client) == "carol.oidc@hopital.pli.test"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
@pytest.mark.parametrize(
    "misbehaviour",
    [
        Misbehaviour.WRONG_NONCE,
        Misbehaviour.WRONG_AUDIENCE,
        Misbehaviour.WRONG_ISSUER,
        Misbehaviour.EXPIRED,
        Misbehaviour.BAD_SIGNATURE,
        Misbehaviour.HS256_CONFUSION,
        Misbehaviour.UNSIGNED,
        Misbehaviour.WRONG_AT_HASH,
        Misbehaviour.USERINFO_OTHER_SUBJECT,
    ],
)
def test_an_id_token_that_fails_a_check_is_refused(
    provider: LocalOidcProvider, misbehaviour: Misbehaviour
) -> None:
    user, _ = make_account(f"{misbehaviour.value.replace('_', '.')}@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), misbehaviour)
    client = Client()
    response = _login(client)
    assert response.status_code == 403
    assert _error_code(response) == "oidc_token_invalid"
    assert "connexion refusée" in response.content.decode()
    assert _signed_in_as(client) is None
    assert not UserSession.objects.filter(user=user).exists()
    assert _last_failure() == {"factor": "oidc", "reason": "oidc_token_invalid"}


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_valid_token_for_somebody_without_an_account_is_refused(
    provider: LocalOidcProvider,
) -> None:
    # In the directory, but never enrolled: the identity provider alone creates nothing.
    mailbox = make_professional("dan.noaccount@hopital.pli.test")
    assert mailbox.professional is not None
    provider.reset(national_subject(mailbox.professional.national_id), Misbehaviour.NONE)
    users = User.objects.count()
    response = _login(Client())
    assert response.status_code == 403
    assert _error_code(response) == "oidc_unknown_professional"
    assert "Aucun compte Pli" in response.content.decode()
    assert User.objects.count() == users
    assert _last_failure() == {"factor": "oidc", "reason": "oidc_unknown_professional"}
    # Nobody of that identifier in the directory at all: the same answer.
    provider.reset(national_subject("810000000002"), Misbehaviour.NONE)
    assert _error_code(_login(Client())) == "oidc_unknown_professional"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_an_inactive_account_is_refused(provider: LocalOidcProvider) -> None:
    user, _ = make_account("eve.inactive@hopital.pli.test")
    assert user.professional is not None
    User.objects.filter(pk=user.pk).update(is_active=False)
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.NONE)
    response = _login(Client())
    assert response.status_code == 403 and _error_code(response) == "account_inactive"
    event = AuditEvent.objects.filter(action="auth.login_failed").order_by("-seq").first()
    assert event is not None and event.target == f"user:{user.pk}"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_the_user_cancelling_at_the_provider_is_said_so(provider: LocalOidcProvider) -> None:
    provider.reset(national_subject("810000000002"), Misbehaviour.ACCESS_DENIED)
    response = _login(Client())
    assert response.status_code == 403 and _error_code(response) == "oidc_refused"
    assert provider.token_requests == 0


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_forged_or_replayed_callback_is_refused(provider: LocalOidcProvider) -> None:
    user, _ = make_account("frank.state@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.NONE)

    # A callback with no flow started in this browser (login CSRF, RFC 6749 §10.12).
    response = Client().get(CALLBACK + "?code=abc&state=xyz")
    assert response.status_code == 403 and _error_code(response) == "oidc_state_mismatch"
    assert _last_failure() == {"factor": "oidc", "reason": "oidc_state_mismatch"}

    # The right code with a tampered state.
    client = Client()
    start = client.get(START)
    location = _callback_path(_at_provider(start["Location"]))
    tampered = re.sub(r"state=[^&]+", "state=tampered", location)
    response = client.get(tampered)
    assert _error_code(response) == "oidc_state_mismatch"
    assert provider.token_requests == 0
    # The flow was used up by that attempt: the genuine answer now fails too (one use).
    response = client.get(location)
    assert _error_code(response) == "oidc_state_mismatch"
    assert _signed_in_as(client) is None

    # A successful callback cannot be replayed.
    client = Client()
    start = client.get(START)
    location = _callback_path(_at_provider(start["Location"]))
    assert client.get(location).status_code == 302
    client.logout()
    assert _error_code(client.get(location)) == "oidc_state_mismatch"


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_a_stolen_code_is_useless_without_the_pkce_verifier(provider: LocalOidcProvider) -> None:
    user, _ = make_account("grace.pkce@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.NONE)
    victim, attacker = Client(), Client()
    stolen = urllib.parse.parse_qs(
        urllib.parse.urlsplit(_at_provider(victim.get(START)["Location"])).query
    )["code"][0]
    # The attacker injects the victim's code into a flow of their own (RFC 7636 §1).
    own = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(attacker.get(START)["Location"]).query))
    response = attacker.get(CALLBACK, {"code": stolen, "state": own["state"]})
    assert response.status_code == 403 and _error_code(response) == "oidc_code_rejected"
    assert provider.token_refusals == ["pkce"]
    assert _signed_in_as(attacker) is None


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-CARD")
def test_an_unreachable_provider_is_said_unavailable(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more.
    settings.PLI_OIDC_ISSUER = f"http://127.0.0.1:{port}/realms/sante"
    settings.PLI_OIDC_CLIENT_ID = CLIENT_ID
    settings.PLI_OIDC_CLIENT_SECRET = CLIENT_SECRET
    oidc.reset_caches()
    response = Client().get(START)
    assert response.status_code == 503 and _error_code(response) == "oidc_unavailable"
    assert "ne répond pas" in response.content.decode()
    assert _last_failure() == {"factor": "oidc", "reason": "oidc_unavailable"}


@pytest.mark.django_db
def test_without_configuration_there_is_no_button_and_no_page(settings: Settings) -> None:
    settings.PLI_OIDC_ISSUER = ""
    client = Client()
    assert client.get(START).status_code == 404
    assert client.get(CALLBACK + "?code=a&state=b").status_code == 404
    assert "Pro Santé Connect" not in client.get(LOGIN).content.decode()


@pytest.mark.django_db
def test_the_login_page_offers_the_provider(provider: LocalOidcProvider) -> None:
    page = Client().get(LOGIN).content.decode()
    assert "Se connecter avec Pro Santé Connect" in page
    assert f'href="{START}"' in page


def _load_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith(("PLI_OIDC_", "PLI_CLIENT_", "PLI_TLS_", "PLI_TRUSTED_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


def test_the_client_secret_may_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "oidc-secret"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    loaded = _load_settings(
        monkeypatch,
        PLI_OIDC_ISSUER="https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet",
        PLI_OIDC_CLIENT_ID="pli",
        PLI_OIDC_CLIENT_SECRET_FILE=str(secret_file),
    )
    assert loaded["PLI_OIDC_CLIENT_SECRET"] == "from-a-file"
    assert loaded["PLI_OIDC_ID_CLAIMS"] == ["SubjectNameID", "preferred_username"]
    assert loaded["PLI_OIDC_SCOPES"] == "openid"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLI_OIDC_ISSUER": "https://idp.example"}, "PLI_OIDC_CLIENT_ID"),
        (
            {"PLI_OIDC_ISSUER": "https://idp.example", "PLI_OIDC_CLIENT_ID": "pli"},
            "PLI_OIDC_CLIENT_SECRET",
        ),
        (
            {
                "PLI_OIDC_ISSUER": "http://idp.example",
                "PLI_OIDC_CLIENT_ID": "pli",
                "PLI_OIDC_CLIENT_SECRET": "s",
            },
            "https://",
        ),
        (
            {
                "PLI_OIDC_ISSUER": "https://idp.example",
                "PLI_OIDC_CLIENT_ID": "pli",
                "PLI_OIDC_CLIENT_SECRET": "s",
                "PLI_OIDC_SCOPES": "profile",
            },
            "openid",
        ),
        ({"PLI_OIDC_CLIENT_ID": "pli"}, "PLI_OIDC_ISSUER"),
    ],
)
def test_an_incomplete_oidc_configuration_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _load_settings(monkeypatch, **env)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_forged_callbacks_lock_the_address_for_a_while(provider: LocalOidcProvider) -> None:
    """Twenty refused callbacks from one address: the next start waits, audited."""
    user, _ = make_account("gina.flood@hopital.pli.test")
    assert user.professional is not None
    provider.reset(national_subject(user.professional.national_id), Misbehaviour.NONE)
    flooder = Client(REMOTE_ADDR="198.51.100.20")
    for attempt in range(20):
        response = flooder.get(f"{CALLBACK}?code=c{attempt}&state=s{attempt}")
        assert _error_code(response) == "oidc_state_mismatch"
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1
    response = flooder.get(START)
    assert response.status_code == 403 and _error_code(response) == "locked"
    assert provider.token_requests == 0
    # Another address logs in as usual.
    other = Client(REMOTE_ADDR="198.51.100.21")
    assert _login(other).status_code == 302
    assert _signed_in_as(other) == "gina.flood@hopital.pli.test"
