"""WebAuthn (passkeys) as a second factor, without a browser (REQ-AUTH-STRONG).

A small software authenticator stands in for the browser and the key: it
makes real attestation objects ("none" format, W3C WebAuthn Level 2 §8.7)
and real ECDSA P-256 assertions (§6.1, §6.3.3), so py_webauthn verifies
them exactly as it would a security key's. tests/test_accounts_browser.py
drives the same endpoints from Chromium with a virtual authenticator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.sessions.backends.cache import SessionStore
from django.test import Client, RequestFactory
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from pli.server.accounts import passkeys, throttle
from pli.server.accounts.actions import do_invite_account, has_second_factor
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import Role, TotpDevice, User, UserSession, WebAuthnCredential
from pli.server.audit.models import AuditEvent
from tests.accounts_support import (
    PASSPHRASE,
    make_account,
    make_professional,
    outbox_codes,
    signed_in,
)

BASE_URL = "https://pli.example.test"
RP_ID = "pli.example.test"
LOGIN = "/compte/connexion/"
SECOND = "/compte/connexion/second-facteur/"
REAUTH = "/compte/reauthentification/"
LOGIN_OPTIONS = "/compte/connexion/cle-de-securite/options/"
LOGIN_VERIFY = "/compte/connexion/cle-de-securite/"
ADD_PAGE = "/compte/facteurs/cles-de-securite/ajouter/"
ADD_OPTIONS = "/compte/facteurs/cles-de-securite/options/"
ADD_VERIFY = "/compte/facteurs/cles-de-securite/enregistrer/"
ENROL_OPTIONS = "/compte/inscription/cle-de-securite/options/"
ENROL_VERIFY = "/compte/inscription/cle-de-securite/"

# Authenticator data flags (§6.1): user present, user verified, attested credential data.
UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """One credential on a software authenticator (P-256, COSE alg -7)."""

    def __init__(self, origin: str = BASE_URL) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.origin = origin
        self.sign_count = 0
        self.user_handle: bytes | None = None

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        # RFC 9053 §7.1.1 EC2 key: kty 2, alg -7 (ES256), crv 1 (P-256), x, y.
        return bytes(
            cbor2.dumps(
                {
                    1: 2,
                    3: -7,
                    -1: 1,
                    -2: numbers.x.to_bytes(32, "big"),
                    -3: numbers.y.to_bytes(32, "big"),
                }
            )
        )

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False}
        ).encode()

    def create(self, options: dict[str, Any]) -> dict[str, Any]:
        """What navigator.credentials.create() would answer (RegistrationResponseJSON)."""
        self.user_handle = unb64url(options["user"]["id"])
        client_data = self._client_data("webauthn.create", options["challenge"])
        auth_data = (
            hashlib.sha256(options["rp"]["id"].encode()).digest()
            + bytes([UP | UV | AT])
            + self.sign_count.to_bytes(4, "big")
            + bytes(16)  # AAGUID: none (§6.5.1)
            + len(self.credential_id).to_bytes(2, "big")
            + self.credential_id
            + self._cose_key()
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["usb"],
            },
        }

    def get(
        self, options: dict[str, Any], *, sign_count: int | None = None, rp_id: str | None = None
    ) -> dict[str, Any]:
        """What navigator.credentials.get() would answer (AuthenticationResponseJSON)."""
        self.sign_count = self.sign_count + 1 if sign_count is None else sign_count
        client_data = self._client_data("webauthn.get", options["challenge"])
        auth_data = (
            hashlib.sha256((rp_id or options["rpId"]).encode()).digest()
            + bytes([UP | UV])
            + self.sign_count.to_bytes(4, "big")
        )
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        response = {
            "clientDataJSON": b64url(client_data),
            "authenticatorData": b64url(auth_data),
            "signature": b64url(signature),
        }
        if self.user_handle is not None:
            response["userHandle"] = b64url(self.user_handle)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
            "response": response,
        }


@pytest.fixture(autouse=True)
def relying_party(settings: Settings) -> None:
    settings.PLI_BASE_URL = BASE_URL


def post_json(client: Client, url: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(url, data=json.dumps(body or {}), content_type="application/json")


def reauthenticated(user: User) -> Client:
    client = signed_in(user)
    assert client.post(REAUTH, {"passphrase": PASSPHRASE}).status_code == 302
    return client


def register(client: Client, authenticator: SoftAuthenticator, name: str = "Clé USB") -> Any:
    options = post_json(client, ADD_OPTIONS)
    assert options.status_code == 200, options.content
    return post_json(
        client, ADD_VERIFY, {"credential": authenticator.create(options.json()), "name": name}
    )


def passphrase_step(user: User, address: str = "192.0.2.50") -> Client:
    client = Client(REMOTE_ADDR=address)
    response = client.post(LOGIN, {"username": user.username, "passphrase": PASSPHRASE})
    assert response.status_code == 302 and response["Location"] == SECOND
    return client


def with_passkey(address: str) -> tuple[User, SoftAuthenticator]:
    user, _ = make_account(address)
    authenticator = SoftAuthenticator()
    assert register(reauthenticated(user), authenticator).status_code == 200
    return user, authenticator


def factor_events(action: str) -> list[str]:
    return [
        detail
        for detail in AuditEvent.objects.filter(action=action).values_list("detail", flat=True)
        if '"factor":"webauthn"' in detail
    ]


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_registration_options_name_the_relying_party_and_exclude_known_keys() -> None:
    user, _ = make_account("dr.options@cabinet.pli.test")
    client = reauthenticated(user)
    response = post_json(client, ADD_OPTIONS)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    options = response.json()
    assert options["rp"] == {"name": "Pli", "id": RP_ID}
    assert options["attestation"] == "none"
    assert len(unb64url(options["challenge"])) >= 16  # §13.4.3: at least 16 random bytes
    # §14.6.1: the user handle carries no personal data, and is stable for the account.
    handle = unb64url(options["user"]["id"])
    assert handle == passkeys.user_handle(user) and user.username.encode() not in handle
    assert options["excludeCredentials"] == []

    authenticator = SoftAuthenticator()
    assert (
        post_json(
            client, ADD_VERIFY, {"credential": authenticator.create(options), "name": "Clé"}
        ).status_code
        == 200
    )
    again = post_json(client, ADD_OPTIONS).json()
    assert [d["id"] for d in again["excludeCredentials"]] == [b64url(authenticator.credential_id)]
    assert again["challenge"] != options["challenge"]


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_key_added_from_the_factors_page_logs_in_after_the_passphrase() -> None:
    user, authenticator = with_passkey("dr.passkey@cabinet.pli.test")
    row = WebAuthnCredential.objects.get(user=user)
    assert bytes(row.credential_id) == authenticator.credential_id
    assert row.credential_id_hash == hashlib.sha256(authenticator.credential_id).hexdigest()
    assert row.name == "Clé USB" and row.sign_count == 0 and row.last_used_at is None
    assert len(factor_events("accounts.factor_added")) == 1

    client = passphrase_step(user)
    page = client.get(SECOND)
    assert 'data-webauthn="authenticate"' in page.content.decode()
    assert "pli/passkeys.js" in page.content.decode()
    # The first factor alone opens nothing.
    assert client.get("/api/accounts/me").status_code == 401
    options = post_json(client, LOGIN_OPTIONS).json()
    assert options["rpId"] == RP_ID
    assert [d["id"] for d in options["allowCredentials"]] == [b64url(authenticator.credential_id)]
    response = post_json(client, LOGIN_VERIFY, {"credential": authenticator.get(options)})
    assert response.status_code == 200 and response.json() == {"redirect": "/messagerie/"}
    assert client.get("/api/accounts/me").status_code == 200
    assert UserSession.objects.get(user=user, method="passphrase+webauthn")
    used = WebAuthnCredential.objects.get(pk=row.pk)
    assert used.sign_count == 1 and used.last_used_at is not None
    assert AuditEvent.objects.filter(action="auth.login", detail__contains="webauthn").exists()


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_adding_a_key_needs_a_recent_authentication() -> None:
    user, _ = make_account("dr.stale@cabinet.pli.test")
    client = signed_in(user)
    page = client.get(ADD_PAGE)
    assert page.status_code == 302 and page["Location"].startswith(REAUTH)
    refused = post_json(client, ADD_OPTIONS)
    assert refused.status_code == 403 and refused.json()["code"] == "reauth_required"
    assert refused.json()["redirect"].startswith(REAUTH)
    assert post_json(Client(), ADD_OPTIONS).status_code == 401
    client.post(REAUTH, {"passphrase": PASSPHRASE})
    page = client.get(ADD_PAGE)
    assert page.status_code == 200 and 'data-webauthn="register"' in page.content.decode()


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_challenge_is_single_use_and_short_lived(monkeypatch: pytest.MonkeyPatch) -> None:
    user, authenticator = with_passkey("dr.replay.key@cabinet.pli.test")
    client = passphrase_step(user)
    options = post_json(client, LOGIN_OPTIONS).json()
    answer = authenticator.get(options)
    # An answer to an older challenge is refused once a newer one was asked for.
    newer = post_json(client, LOGIN_OPTIONS).json()
    assert post_json(client, LOGIN_VERIFY, {"credential": answer}).status_code == 400
    # The newer one was consumed by that attempt: answering it now fails too.
    fresh = authenticator.get(newer)
    assert post_json(client, LOGIN_VERIFY, {"credential": fresh}).status_code == 400

    # A registration challenge does not serve a login (and the reverse).
    signed = reauthenticated(user)
    register_options = post_json(signed, ADD_OPTIONS).json()
    client = passphrase_step(user)
    forged = authenticator.get({"challenge": register_options["challenge"], "rpId": RP_ID})
    assert post_json(client, LOGIN_VERIFY, {"credential": forged}).status_code == 400

    # Too old: refused even though never used.
    client = passphrase_step(user)
    options = post_json(client, LOGIN_OPTIONS).json()
    monkeypatch.setattr(passkeys, "CHALLENGE_SECONDS", -1)
    expired = post_json(client, LOGIN_VERIFY, {"credential": authenticator.get(options)})
    assert expired.status_code == 400 and expired.json()["code"] == "webauthn_failed"
    monkeypatch.undo()

    # A valid answer is accepted once; replaying it on another login fails.
    client = passphrase_step(user)
    options = post_json(client, LOGIN_OPTIONS).json()
    good = authenticator.get(options)
    assert post_json(client, LOGIN_VERIFY, {"credential": good}).status_code == 200
    other = passphrase_step(user)
    post_json(other, LOGIN_OPTIONS)
    assert post_json(other, LOGIN_VERIFY, {"credential": good}).status_code == 400


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_signature_counter_going_backwards_is_refused() -> None:
    user, authenticator = with_passkey("dr.clone@cabinet.pli.test")
    client = passphrase_step(user)
    options = post_json(client, LOGIN_OPTIONS).json()
    first = post_json(
        client, LOGIN_VERIFY, {"credential": authenticator.get(options, sign_count=7)}
    )
    assert first.status_code == 200
    row = WebAuthnCredential.objects.get(user=user)
    assert row.sign_count == 7
    # §6.1.1: a clone of the key would report a counter at or below the stored one.
    for count in (7, 3):
        client = passphrase_step(user)
        options = post_json(client, LOGIN_OPTIONS).json()
        response = post_json(
            client, LOGIN_VERIFY, {"credential": authenticator.get(options, sign_count=count)}
        )
        assert response.status_code == 400 and response.json()["code"] == "webauthn_failed"
    row.refresh_from_db()
    assert row.sign_count == 7
    assert client.get("/api/accounts/me").status_code == 401


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_another_users_key_does_not_log_in_this_user() -> None:
    alice, alice_key = with_passkey("dr.alice.key@cabinet.pli.test")
    _bob, bob_key = with_passkey("dr.bob.key@cabinet.pli.test")
    client = passphrase_step(alice)
    options = post_json(client, LOGIN_OPTIONS).json()
    assert b64url(bob_key.credential_id) not in json.dumps(options)
    # Bob's key answers Alice's challenge: a valid signature, but not one of her credentials.
    response = post_json(client, LOGIN_VERIFY, {"credential": bob_key.get(options)})
    assert response.status_code == 400 and response.json()["code"] == "webauthn_failed"
    assert client.get("/api/accounts/me").status_code == 401
    failed = AuditEvent.objects.filter(action="auth.login_failed", actor_id=alice.pk)
    assert [event.detail for event in failed] == ['{"factor":"webauthn"}']
    # Nor does a key registered under another relying party (origin or RP ID elsewhere).
    stranger = SoftAuthenticator(origin="https://phishing.example")
    stranger.credential_id = alice_key.credential_id
    stranger.key = alice_key.key
    client = passphrase_step(alice)
    options = post_json(client, LOGIN_OPTIONS).json()
    assert post_json(client, LOGIN_VERIFY, {"credential": stranger.get(options)}).status_code == 400
    client = passphrase_step(alice)
    options = post_json(client, LOGIN_OPTIONS).json()
    answer = alice_key.get(options, rp_id="phishing.example")
    assert post_json(client, LOGIN_VERIFY, {"credential": answer}).status_code == 400


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_failed_assertions_lock_the_account_and_the_address() -> None:
    user, authenticator = with_passkey("dr.locked.key@cabinet.pli.test")
    impostor = SoftAuthenticator()
    impostor.credential_id = authenticator.credential_id  # right ID, wrong private key
    client = passphrase_step(user, "192.0.2.60")
    codes = []
    for _ in range(throttle.ACCOUNT_POLICY.max_failures):
        options = post_json(client, LOGIN_OPTIONS)
        if options.status_code != 200:
            codes.append(options.json()["code"])
            continue
        codes.append(
            post_json(client, LOGIN_VERIFY, {"credential": impostor.get(options.json())}).json()[
                "code"
            ]
        )
    assert codes[:-1] == ["webauthn_failed"] * (len(codes) - 1) and codes[-1] == "locked"
    # Even the right key is refused now, and the options are not given either.
    refused = post_json(client, LOGIN_OPTIONS)
    assert refused.status_code == 429 and refused.json()["code"] == "locked"
    stale = {"challenge": b64url(os.urandom(32)), "rpId": RP_ID}
    assert (
        post_json(client, LOGIN_VERIFY, {"credential": authenticator.get(stale)}).status_code == 429
    )
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1
    # The lock holds for the account from another address too, as for TOTP codes.
    other = Client(REMOTE_ADDR="192.0.2.61")
    login = other.post(LOGIN, {"username": user.username, "passphrase": PASSPHRASE})
    assert login.status_code == 400 and 'data-code="locked"' in login.content.decode()
    assert throttle.locked(throttle.address_key("192.0.2.60")) is False  # 5 < 20 for addresses


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_the_last_second_factor_cannot_be_removed_and_others_keys_are_not_found() -> None:
    user, _authenticator = with_passkey("dr.remove.key@cabinet.pli.test")
    row = WebAuthnCredential.objects.get(user=user)
    remove = f"/compte/facteurs/cles-de-securite/{row.pk}/supprimer/"
    # Sensitive: without a recent authentication, back to the re-authentication page.
    stale = signed_in(user).post(remove)
    assert stale.status_code == 302 and stale["Location"].startswith(REAUTH)

    client = reauthenticated(user)
    TotpDevice.objects.filter(user=user).delete()  # the key is now the only second factor
    refused = client.post(remove)
    assert refused.status_code == 400 and 'data-code="last_factor"' in refused.content.decode()
    assert WebAuthnCredential.objects.filter(pk=row.pk).exists()

    # An outsider cannot remove it: 404, exactly as for a key that does not exist.
    outsider, _ = make_account("dr.outsider.key@cabinet.pli.test")
    other = reauthenticated(outsider)
    foreign = other.post(remove)
    missing = other.post("/compte/facteurs/cles-de-securite/999999/supprimer/")
    assert foreign.status_code == missing.status_code == 404
    assert 'data-code="not_found"' in foreign.content.decode()
    assert WebAuthnCredential.objects.filter(pk=row.pk).exists()

    # With a second key, the first one goes (and the removal is audited).
    assert register(client, SoftAuthenticator(), "Téléphone").status_code == 200
    assert client.post(remove).status_code == 302
    assert not WebAuthnCredential.objects.filter(pk=row.pk).exists()
    assert len(factor_events("accounts.factor_removed")) == 1
    assert has_second_factor(user)


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_key_is_registered_once_and_only_with_the_expected_origin() -> None:
    user, authenticator = with_passkey("dr.twice@cabinet.pli.test")
    client = reauthenticated(user)
    again = register(client, authenticator)
    assert again.status_code == 400 and again.json()["code"] == "credential_exists"
    # The same key for another account is refused too (§7.1 step 22).
    other, _ = make_account("dr.twice.other@cabinet.pli.test")
    stolen = register(reauthenticated(other), authenticator)
    assert stolen.status_code == 400 and stolen.json()["code"] == "credential_exists"
    # A page on another origin cannot register a key for Pli (§7.1 step 9).
    phishing = register(client, SoftAuthenticator(origin="https://pli.example.test.evil"))
    assert phishing.status_code == 400 and phishing.json()["code"] == "webauthn_refused"
    # Without options first, there is no challenge to answer.
    lone = post_json(
        client, ADD_VERIFY, {"credential": SoftAuthenticator().create(_fake_options(user))}
    )
    assert lone.status_code == 400 and lone.json()["code"] == "challenge_expired"
    assert WebAuthnCredential.objects.filter(user=user).count() == 1
    assert WebAuthnCredential.objects.filter(user=other).count() == 0


def _fake_options(user: User) -> dict[str, Any]:
    return {
        "challenge": b64url(os.urandom(32)),
        "rp": {"id": RP_ID, "name": "Pli"},
        "user": {"id": b64url(passkeys.user_handle(user))},
    }


@pytest.mark.django_db
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_enrolment_with_a_key_instead_of_an_authenticator_application(
    django_capture_on_commit_callbacks: Any,
) -> None:
    admin, _ = make_account("admin.key@operator.pli.test", role=Role.OPERATOR_ADMIN)
    make_professional("dr.enrol.key@hopital.pli.test")
    with django_capture_on_commit_callbacks(execute=True):
        do_invite_account(admin, "dr.enrol.key@hopital.pli.test")
    (code,) = outbox_codes("dr.enrol.key@hopital.pli.test")
    client = Client()
    # Before the activation, there is nobody to register a key for.
    early = post_json(client, ENROL_OPTIONS)
    assert early.status_code == 401 and early.json()["code"] == "enrolment_expired"
    client.post("/compte/activation/", {"address": "dr.enrol.key@hopital.pli.test", "code": code})
    # The passphrase comes first.
    assert post_json(client, ENROL_OPTIONS).json()["code"] == "enrolment_incomplete"
    client.post(
        "/compte/inscription/phrase-secrete/",
        {"passphrase": PASSPHRASE, "confirmation": PASSPHRASE},
    )
    page = client.get("/compte/inscription/authentificateur/").content.decode()
    assert 'data-webauthn="register"' in page and ENROL_OPTIONS in page
    options = post_json(client, ENROL_OPTIONS).json()
    authenticator = SoftAuthenticator()
    response = post_json(
        client, ENROL_VERIFY, {"credential": authenticator.create(options), "name": ""}
    )
    assert response.status_code == 200
    assert response.json() == {"redirect": "/compte/inscription/codes-de-secours/"}
    user = User.objects.get(username="dr.enrol.key@hopital.pli.test")
    assert WebAuthnCredential.objects.get(user=user).name == "Clé de sécurité"
    assert has_second_factor(user) and not TotpDevice.objects.filter(
        user=user, confirmed_at__isnull=False
    )
    assert client.get("/compte/inscription/codes-de-secours/").status_code == 200
    client.post("/compte/inscription/codes-de-secours/")
    from pli.server.accounts.actions import current_charter

    charter = current_charter()
    assert charter is not None
    done = client.post("/compte/inscription/charte/", {"version": charter.version, "accept": "on"})
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.enrolled_at is not None
    assert len(factor_events("accounts.factor_added")) == 1
    # Enrolled: the enrolment endpoints are closed, keys are added after re-authentication.
    assert post_json(client, ENROL_OPTIONS).status_code == 401

    # And the key alone is the second factor: the page offers no code field.
    client = passphrase_step(user)
    page = client.get(SECOND).content.decode()
    assert 'data-webauthn="authenticate"' in page and 'name="code"' not in page
    options = post_json(client, LOGIN_OPTIONS).json()
    final = post_json(client, LOGIN_VERIFY, {"credential": authenticator.get(options)})
    assert final.status_code == 200


@pytest.mark.django_db
def test_an_ip_address_as_base_url_is_said_clearly(settings: Settings) -> None:
    # Browsers refuse an IP address as RP ID (§5.1.3): the server says so instead of
    # letting the browser fail with "This is an invalid domain".
    settings.PLI_BASE_URL = "http://127.0.0.1:8000"
    user, authenticator = with_passkey_for_base_url("dr.ip@cabinet.pli.test")
    client = reauthenticated(user)
    response = post_json(client, ADD_OPTIONS)
    assert response.status_code == 400 and response.json()["code"] == "webauthn_unavailable"
    client = passphrase_step(user)
    response = post_json(client, LOGIN_OPTIONS)
    assert response.status_code == 400 and response.json()["code"] == "webauthn_unavailable"
    response = post_json(
        client, LOGIN_VERIFY, {"credential": authenticator.get({"challenge": "", "rpId": "x"})}
    )
    assert response.status_code == 400


def with_passkey_for_base_url(address: str) -> tuple[User, SoftAuthenticator]:
    """A key registered while PLI_BASE_URL was right, before an operator changed it."""
    from django.test import override_settings

    with override_settings(PLI_BASE_URL=BASE_URL):
        return with_passkey(address)


@pytest.mark.django_db
def test_the_ceremony_endpoints_need_the_csrf_token() -> None:
    user, _ = make_account("dr.csrf@cabinet.pli.test")
    client = Client(enforce_csrf_checks=True)
    page = client.get(LOGIN).content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    login = client.post(
        LOGIN, {"username": user.username, "passphrase": PASSPHRASE, "csrfmiddlewaretoken": token}
    )
    assert login.status_code == 302
    assert post_json(client, LOGIN_OPTIONS).status_code == 403
    page = client.get(SECOND).content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    response = client.post(
        LOGIN_OPTIONS, data="{}", content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 400 and response.json()["code"] == "no_credential"


@pytest.mark.django_db
def test_only_post_and_json_reach_the_ceremonies() -> None:
    user, _authenticator = with_passkey("dr.methods@cabinet.pli.test")
    client = passphrase_step(user)
    assert client.get(LOGIN_OPTIONS).status_code == 405
    assert post_json(Client(), LOGIN_OPTIONS).json()["code"] == "login_expired"
    post_json(client, LOGIN_OPTIONS)
    for body in (b"not json", b"[]", b'{"credential": {}, "extra": 1}', b"{" * 70000):
        response = client.post(LOGIN_VERIFY, data=body, content_type="application/json")
        assert response.status_code in (400, 429)
        assert response.json()["code"] in ("webauthn_failed", "locked")
    signed = reauthenticated(user)
    post_json(signed, ADD_OPTIONS)
    bad = signed.post(ADD_VERIFY, data=b'{"credential": "x"}', content_type="application/json")
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=12,
    )


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            (),
            ("response",),
            ("response", "clientDataJSON"),
            ("response", "attestationObject"),
            ("id",),
            ("rawId",),
            ("type",),
        ]
    ),
    value=_json_values(),
    truncate=st.integers(min_value=0, max_value=400),
)
def test_hostile_registration_answers_are_refused_cleanly(
    path: tuple[str, ...], value: Any, truncate: int
) -> None:
    user = User.objects.get_or_create(username="dr.fuzz@cabinet.pli.test")[0]
    request = RequestFactory().post(ADD_VERIFY)
    request.session = SessionStore()
    # A real challenge and a valid answer to it, then one part of it spoiled.
    options = json.loads(passkeys.registration_options(request, user))
    valid = SoftAuthenticator().create(options)
    credential: dict[str, Any] = json.loads(json.dumps(valid))
    if path:
        target = credential
        for key in path[:-1]:
            target = target[key]
        if isinstance(value, str | None) and isinstance(target[path[-1]], str):
            target[path[-1]] = target[path[-1]][:truncate]  # a truncated field
        else:
            target[path[-1]] = value
    else:
        credential = value if isinstance(value, dict) else {"value": value}
    assume(credential != valid)
    with pytest.raises(AccountError) as refused:
        passkeys.do_register_passkey(request, user, credential, "x")
    assert refused.value.code == "webauthn_refused"
    assert not WebAuthnCredential.objects.filter(user=user).exists()
