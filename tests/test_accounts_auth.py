"""Enrolment, login with two factors, lockout, sessions, re-authentication, charter."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import argon2
import pyotp
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from pli.server.accounts import throttle
from pli.server.accounts.actions import do_invite_account
from pli.server.accounts.models import (
    Charter,
    CharterAcknowledgement,
    Enrolment,
    RecoveryCode,
    Role,
    TotpDevice,
    User,
    UserSession,
)
from pli.server.audit.models import AuditEvent
from pli.server.directory.models import Professional
from tests.accounts_support import (
    PASSPHRASE,
    ensure_charter,
    make_account,
    make_professional,
    outbox_codes,
    signed_in,
)

pytestmark = pytest.mark.django_db

LOGIN = "/compte/connexion/"
SECOND = "/compte/connexion/second-facteur/"


def _error_code(response: Any) -> str | None:
    match = re.search(r'data-code="([a-z_]+)"', response.content.decode())
    return match.group(1) if match else None


def _login(client: Client, username: str, passphrase: str, secret: str | None = None) -> Any:
    response = client.post(LOGIN, {"username": username, "passphrase": passphrase})
    if secret is None or response.status_code != 302:
        return response
    return client.post(SECOND, {"code": _next_code(secret)})


def _next_code(secret: str) -> str:
    """The code of the next time step (the current one may be used already)."""
    totp = pyotp.TOTP(secret)
    return totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))


@pytest.mark.requirement("REQ-AUTH-STRONG")
@pytest.mark.requirement("REQ-INFO-PRO")
def test_invitation_enrolment_end_to_end(django_capture_on_commit_callbacks: Any) -> None:
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    make_professional("dr.invited@hopital.pli.test")
    with django_capture_on_commit_callbacks(execute=True):
        do_invite_account(admin, "Dr.Invited@hopital.pli.test")
    codes = outbox_codes("dr.invited@hopital.pli.test")
    assert len(codes) == 1

    client = Client()
    # A wrong code first: refused, nothing created.
    response = client.post(
        "/compte/activation/", {"address": "dr.invited@hopital.pli.test", "code": "AAAA-BBBB-CCCC"}
    )
    assert response.status_code == 400 and _error_code(response) == "bad_code"
    assert not User.objects.filter(username="dr.invited@hopital.pli.test").exists()

    response = client.post(
        "/compte/activation/", {"address": "dr.invited@hopital.pli.test", "code": codes[0].lower()}
    )
    assert response.status_code == 302 and response["Location"].endswith("/phrase-secrete/")
    user = User.objects.get(username="dr.invited@hopital.pli.test")
    assert user.professional is not None and not user.has_usable_password()

    # Too weak, then mismatched, then right.
    response = client.post(
        "/compte/inscription/phrase-secrete/", {"passphrase": "court", "confirmation": "court"}
    )
    assert response.status_code == 400 and _error_code(response) == "weak_passphrase"
    response = client.post(
        "/compte/inscription/phrase-secrete/",
        {"passphrase": PASSPHRASE, "confirmation": PASSPHRASE + "x"},
    )
    assert response.status_code == 400
    response = client.post(
        "/compte/inscription/phrase-secrete/",
        {"passphrase": PASSPHRASE, "confirmation": PASSPHRASE},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.password.startswith("argon2$argon2id$")

    page = client.get("/compte/inscription/authentificateur/")
    assert page.status_code == 200
    secret = page.context["secret"]
    assert page.context["qr"].startswith("data:image/svg+xml")
    assert (
        client.post("/compte/inscription/authentificateur/", {"code": "000000"}).status_code == 400
    )
    response = client.post(
        "/compte/inscription/authentificateur/", {"code": pyotp.TOTP(secret).now()}
    )
    assert response.status_code == 302

    page = client.get("/compte/inscription/codes-de-secours/")
    recovery = page.context["codes"]
    assert len(recovery) == 10 and len(set(recovery)) == 10
    # Only hashes are stored.
    stored = set(RecoveryCode.objects.filter(user=user).values_list("code_hash", flat=True))
    assert not stored & set(recovery)
    client.post("/compte/inscription/codes-de-secours/")

    charter = ensure_charter()
    response = client.post("/compte/inscription/charte/", {"version": charter.version})
    assert response.status_code == 200  # the box was not ticked
    response = client.post(
        "/compte/inscription/charte/", {"version": charter.version, "accept": "on"}
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.enrolled_at is not None and user.last_authenticated_at is not None
    assert CharterAcknowledgement.objects.filter(user=user, charter=charter).exists()
    assert client.get("/api/accounts/me").json()["username"] == "dr.invited@hopital.pli.test"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"accounts.invited", "accounts.activated", "accounts.enrolled", "auth.login"} <= actions

    # The code is single-use.
    other = Client()
    response = other.post(
        "/compte/activation/", {"address": "dr.invited@hopital.pli.test", "code": codes[0]}
    )
    assert response.status_code == 400


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_request_access_answers_the_same_and_sends_only_to_the_directory_address(
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_professional("dr.request@cabinet.pli.test")
    client = Client()
    with django_capture_on_commit_callbacks(execute=True):
        known = client.post("/compte/inscription/", {"address": "dr.request@cabinet.pli.test"})
        unknown = client.post("/compte/inscription/", {"address": "nobody@cabinet.pli.test"})
    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"]
    assert len(outbox_codes("dr.request@cabinet.pli.test")) == 1
    assert outbox_codes("nobody@cabinet.pli.test") == []
    assert Enrolment.objects.filter(address="nobody@cabinet.pli.test").count() == 0


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_invitation_refuses_non_admins_and_addresses_outside_the_directory() -> None:
    user, _ = make_account("dr.plain@cabinet.pli.test")
    from pli.server.accounts.errors import AccountError

    with pytest.raises(AccountError) as refused:
        do_invite_account(user, "dr.plain@cabinet.pli.test")
    assert refused.value.code == "not_allowed"
    admin, _ = make_account("admin2@operator.pli.test", role=Role.OPERATOR_ADMIN)
    with pytest.raises(AccountError) as outside:
        do_invite_account(admin, "stranger@elsewhere.pli.test")
    assert outside.value.code == "not_in_directory"
    with pytest.raises(AccountError) as twice:
        do_invite_account(admin, "dr.plain@cabinet.pli.test")
    assert twice.value.code == "already_enrolled"


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_login_needs_passphrase_and_second_factor() -> None:
    user, secret = make_account("dr.login@cabinet.pli.test")
    client = Client()
    response = client.post(
        LOGIN, {"username": "DR.LOGIN@cabinet.pli.test", "passphrase": PASSPHRASE}
    )
    assert response.status_code == 302 and response["Location"] == SECOND
    # The first factor alone opens nothing.
    assert client.get("/api/accounts/me").status_code == 401
    assert client.post(SECOND, {"code": "123456"}).status_code == 400
    response = client.post(SECOND, {"code": _next_code(secret)})
    assert response.status_code == 302
    assert client.get("/api/accounts/me").status_code == 200
    record = UserSession.objects.get(user=user)
    assert record.method == "passphrase+totp"


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_totp_code_is_accepted_once() -> None:
    user, secret = make_account("dr.replay@cabinet.pli.test")
    code = _next_code(secret)
    first = Client()
    _login(first, user.username, PASSPHRASE)
    assert first.post(SECOND, {"code": code}).status_code == 302
    second = Client()
    _login(second, user.username, PASSPHRASE)
    assert second.post(SECOND, {"code": code}).status_code == 400


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_recovery_code_logs_in_once() -> None:
    user, _ = make_account("dr.recover@cabinet.pli.test")
    from pli.server.accounts import factors

    codes = factors.new_recovery_codes(user)
    client = Client()
    _login(client, user.username, PASSPHRASE)
    response = client.post("/compte/connexion/secours/", {"code": codes[3]})
    assert response.status_code == 302
    assert factors.remaining_recovery_codes(user) == 9
    again = Client()
    _login(again, user.username, PASSPHRASE)
    assert again.post("/compte/connexion/secours/", {"code": codes[3]}).status_code == 400


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_unknown_account_answers_exactly_like_a_wrong_passphrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_account("dr.exists@cabinet.pli.test")
    verified: list[str] = []
    original = argon2.PasswordHasher.verify

    def counting(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002
        verified.append("x")
        return original(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    wrong = Client().post(
        LOGIN, {"username": "dr.exists@cabinet.pli.test", "passphrase": "not it at all"}
    )
    unknown = Client().post(
        LOGIN, {"username": "dr.ghost@cabinet.pli.test", "passphrase": "not it at all"}
    )
    assert wrong.status_code == unknown.status_code == 400
    assert _error_code(wrong) == _error_code(unknown) == "bad_credentials"
    strip = re.compile(r'name="csrfmiddlewaretoken" value="[^"]+"|value="[^"]*@[^"]*"')
    assert strip.sub("", wrong.content.decode()) == strip.sub("", unknown.content.decode())
    # Both answers cost one Argon2id verification (same timing).
    assert len(verified) == 2


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_repeated_wrong_passphrases_lock_the_account_then_the_right_one_is_refused() -> None:
    user, _ = make_account("dr.locked@cabinet.pli.test")
    client = Client(REMOTE_ADDR="192.0.2.10")
    codes = [_error_code(_login(client, user.username, f"wrong passphrase {i}")) for i in range(5)]
    assert codes[:4] == ["bad_credentials"] * 4 and codes[4] == "locked"
    # Even the right passphrase, from another address, is refused while locked.
    other = Client(REMOTE_ADDR="192.0.2.11")
    assert _error_code(_login(other, user.username, PASSPHRASE)) == "locked"
    assert AuditEvent.objects.filter(action="auth.lockout").exists()
    # Unknown accounts lock the same way (no enumeration through the lockout).
    ghost = [
        _error_code(
            _login(Client(REMOTE_ADDR="192.0.2.12"), "dr.nobody@cabinet.pli.test", "x" * 12)
        )
        for _ in range(5)
    ]
    assert ghost == codes
    # When the lock expires, the right passphrase works again.
    from pli.server.accounts.models import Throttle

    Throttle.objects.update(locked_until=timezone.now() - dt.timedelta(seconds=1))
    assert _login(other, user.username, PASSPHRASE).status_code == 302


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_wrong_second_factor_codes_lock_too() -> None:
    user, secret = make_account("dr.codes@cabinet.pli.test")
    client = Client(REMOTE_ADDR="192.0.2.20")
    _login(client, user.username, PASSPHRASE)
    results = [_error_code(client.post(SECOND, {"code": f"{i:06d}"})) for i in range(5)]
    assert results[-1] == "locked"
    assert client.post(SECOND, {"code": _next_code(secret)}).status_code == 400


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_one_address_trying_many_accounts_is_locked() -> None:
    client = Client(REMOTE_ADDR="192.0.2.30")
    results = [
        _error_code(_login(client, f"dr.spray{i}@cabinet.pli.test", "wrong passphrase"))
        for i in range(throttle.ADDRESS_POLICY.max_failures)
    ]
    assert results[-1] == "locked" and results[0] == "bad_credentials"
    user, _ = make_account("dr.victim@cabinet.pli.test")
    assert _error_code(_login(client, user.username, PASSPHRASE)) == "locked"


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_sessions_listed_and_revoked_elsewhere() -> None:
    user, secret = make_account("dr.sessions@cabinet.pli.test")
    laptop = Client(HTTP_USER_AGENT="Laptop")
    phone = Client(HTTP_USER_AGENT="Phone")
    _login(laptop, user.username, PASSPHRASE, secret)
    phone_login = phone.post(LOGIN, {"username": user.username, "passphrase": PASSPHRASE})
    assert phone_login.status_code == 302
    # (the TOTP code of this time step is spent: a recovery code opens the second session)
    from pli.server.accounts import factors

    recovery = factors.new_recovery_codes(user)[0]
    assert phone.post("/compte/connexion/secours/", {"code": recovery}).status_code == 302
    listed = laptop.get("/api/accounts/sessions").json()
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
    phone_id = next(s["id"] for s in listed if not s["current"])
    page = laptop.get("/compte/sessions/")
    assert page.status_code == 200 and "Phone" in page.content.decode()
    assert laptop.post("/compte/sessions/", {"session": phone_id}).status_code == 302
    response = phone.get("/api/accounts/me")
    assert response.status_code == 401
    assert laptop.get("/api/accounts/me").status_code == 200
    assert AuditEvent.objects.filter(action="accounts.session_revoked").exists()


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_idle_and_absolute_timeouts_end_the_session() -> None:
    user, _ = make_account("dr.idle@cabinet.pli.test")
    client = signed_in(user)
    assert client.get("/api/accounts/me").status_code == 200
    UserSession.objects.filter(user=user).update(
        last_seen_at=timezone.now() - dt.timedelta(minutes=16)
    )
    response = client.get("/compte/facteurs/")
    assert response.status_code == 302 and "ended=idle" in response["Location"]
    assert client.get("/api/accounts/me").status_code == 401

    client = signed_in(user)
    UserSession.objects.filter(user=user, revoked_at__isnull=True).update(
        created_at=timezone.now() - dt.timedelta(hours=13)
    )
    assert client.get("/api/accounts/me").json()["code"] == "session_ended"


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_django_login_without_a_registered_session_is_refused() -> None:
    user, _ = make_account("dr.forced@cabinet.pli.test")
    client = signed_in(user)
    assert client.get("/api/accounts/me").status_code == 200
    # A Django session the login flow did not register (a login bypassing the flow).
    UserSession.objects.filter(user=user).delete()
    assert client.get("/api/accounts/me").status_code == 401
    # The admin console has no single-factor login form of its own.
    response = Client().get("/admin/login/")
    assert response.status_code == 302 and response["Location"] == LOGIN


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_sensitive_actions_need_a_fresh_authentication() -> None:
    user, _ = make_account("dr.reauth@cabinet.pli.test")
    client = signed_in(user)
    response = client.post("/compte/facteurs/codes-de-secours/")
    assert response.status_code == 302 and response["Location"].startswith(
        "/compte/reauthentification/"
    )
    assert (
        client.post("/compte/reauthentification/", {"passphrase": "wrong one here"}).status_code
        == 400
    )
    assert client.post("/compte/reauthentification/", {"passphrase": PASSPHRASE}).status_code == 302
    response = client.post("/compte/facteurs/codes-de-secours/")
    assert response.status_code == 200 and len(response.context["codes"]) == 10
    assert AuditEvent.objects.filter(action="accounts.factor_added").exists()


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_the_last_second_factor_cannot_be_removed() -> None:
    user, _ = make_account("dr.last@cabinet.pli.test")
    client = signed_in(user)
    client.post("/compte/reauthentification/", {"passphrase": PASSPHRASE})
    response = client.post("/compte/facteurs/authentificateur/supprimer/")
    assert response.status_code == 400 and _error_code(response) == "last_factor"
    assert TotpDevice.objects.filter(user=user).exists()


@pytest.mark.requirement("REQ-INFO-PRO")
def test_a_new_charter_version_must_be_acknowledged() -> None:
    user, _ = make_account("dr.charter@cabinet.pli.test")
    client = signed_in(user)
    assert client.get("/annuaire/").status_code == 200
    latest = Charter.objects.order_by("-version").first()
    new = Charter.objects.create(
        version=(latest.version if latest else 0) + 1, text_fr="Nouvelle charte."
    )
    response = client.get("/annuaire/")
    assert response.status_code == 302 and response["Location"] == reverse("accounts:charter")
    assert client.get("/api/accounts/me").json()["code"] == "charter_required"
    # Its sessions can still be listed, and one ended, before the charter is read.
    assert client.get("/api/accounts/sessions").status_code == 200
    assert client.get("/api/auth/csrf").status_code == 200
    # Acknowledging an older version does not count.
    stale = client.post("/compte/charte/", {"version": new.version - 1, "accept": "on"})
    assert stale.status_code == 400 and _error_code(stale) == "charter_changed"
    assert (
        client.post("/compte/charte/", {"version": new.version, "accept": "on"}).status_code == 302
    )
    assert client.get("/annuaire/").status_code == 200
    assert CharterAcknowledgement.objects.filter(user=user).count() == 2


def test_pages_carry_a_strict_content_security_policy() -> None:
    response = Client().get(LOGIN)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in response.content.decode()
    assert response.cookies == {} or all(
        c["httponly"] for c in response.cookies.values() if c.key == "pli_session"
    )


def test_pages_are_french_first_and_english_available() -> None:
    assert "Phrase secrète" in Client().get(LOGIN).content.decode()
    english = Client().get(LOGIN, HTTP_ACCEPT_LANGUAGE="en")
    assert "Passphrase" in english.content.decode()


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_roles_match_the_cli_choices() -> None:
    from pli.server.accounts.cli import ROLES

    assert set(ROLES) == set(Role.values)


@pytest.mark.requirement("REQ-ADMIN-LIMITS")
@pytest.mark.requirement("REQ-DATA-ADMIN")
@pytest.mark.parametrize(
    ("role", "superuser", "can_view_audit", "can_change_directory"),
    [
        (Role.OPERATOR_ADMIN, True, True, True),
        (Role.DPO, False, True, False),
        (Role.SUPPORT, False, False, False),
    ],
)
def test_operator_roles_get_their_console_rights_at_activation(
    role: str, superuser: bool, can_view_audit: bool, can_change_directory: bool
) -> None:
    from pli.server.accounts.actions import invite_with_code

    address = f"{role}@operator.pli.test"
    _, code = invite_with_code(None, address, role)
    user = do_activate_enrolment_for_test(address, code)
    assert user.is_staff and user.is_superuser == superuser
    assert user.has_perm("audit.view_auditevent") == can_view_audit
    assert user.has_perm("directory.change_professional") == can_change_directory
    assert user.has_perm("directory.view_professional")
    # No operator role can change the audit trail, whatever the console offers.
    assert not user.has_perm("audit.change_auditevent") or superuser


def do_activate_enrolment_for_test(address: str, code: str) -> User:
    response = Client().post("/compte/activation/", {"address": address, "code": code})
    assert response.status_code == 302
    return User.objects.get(username=address)


@pytest.mark.requirement("REQ-AUTH-STRONG")
@pytest.mark.requirement("REQ-TRACE")
def test_guessing_activation_codes_locks_and_is_traced_as_a_failure() -> None:
    client = Client()
    answers = [
        _error_code(
            client.post(
                "/compte/activation/",
                {"address": "dr.inconnu@hopital.pli.test", "code": f"AAAA-BBBB-{n:04d}"},
            )
        )
        for n in range(throttle.ACCOUNT_POLICY.max_failures + 1)
    ]
    assert answers[0] == "bad_code" and answers[-1] == "locked"
    lockouts = AuditEvent.objects.filter(action="auth.lockout")
    assert [(e.target, e.outcome) for e in lockouts] == [("account", "failure")]


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_opening_the_authenticator_page_keeps_the_second_factor_until_a_new_one_is_confirmed() -> (
    None
):
    user, secret = make_account("dr.change@cabinet.pli.test")
    victim = signed_in(user)
    assert victim.post("/compte/reauthentification/", {"passphrase": PASSPHRASE}).status_code == 302
    page = victim.get("/compte/facteurs/authentificateur/")  # a link can make this happen
    assert page.status_code == 200
    new_secret = page.context["secret"]
    assert new_secret != secret

    # Someone with the passphrase alone still meets the second factor, and the enrolment
    # pages stay closed to an enrolled account.
    attacker = Client()
    answer = _login(attacker, user.username, PASSPHRASE)
    assert answer.status_code == 302 and answer["Location"] == SECOND
    assert attacker.get("/compte/inscription/authentificateur/")["Location"].startswith(
        "/compte/activation"
    )
    # The authenticator in use still logs in; the new seed, not confirmed, does not.
    assert attacker.post(SECOND, {"code": pyotp.TOTP(new_secret).now()}).status_code == 400
    assert _login(Client(), user.username, PASSPHRASE, secret).status_code == 302

    # Confirmed with its code, the new seed replaces the old one.
    done = victim.post("/compte/facteurs/authentificateur/", {"code": pyotp.TOTP(new_secret).now()})
    assert done.status_code == 302
    assert _login(Client(), user.username, PASSPHRASE, new_secret).status_code == 302
    assert _login(Client(), user.username, PASSPHRASE, secret).status_code != 302


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_an_enrolled_account_without_a_second_factor_is_never_let_in_on_its_passphrase() -> None:
    user, _ = make_account("dr.nofactor@cabinet.pli.test")
    TotpDevice.objects.filter(user=user).delete()  # by hand: Pli keeps the last factor
    client = Client()
    answer = _login(client, user.username, PASSPHRASE)
    assert answer.status_code == 400 and _error_code(answer) == "no_second_factor"
    assert client.get("/compte/inscription/authentificateur/").status_code == 302
    assert not TotpDevice.objects.filter(user=user).exists()
    assert AuditEvent.objects.filter(action="auth.login_failed", outcome="failure").exists()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/auth/login", {"username": "dr.a\u0000b@cabinet.pli.test", "passphrase": "x"}),
        ("/api/auth/login", {"username": "dr.ab@cabinet.pli.test", "passphrase": "x\u0000"}),
        ("/api/auth/second-factor", {"code": "12\u00003456"}),
    ],
)
def test_a_nul_character_in_a_json_body_is_refused_with_its_code(
    path: str, body: dict[str, str]
) -> None:
    # PostgreSQL's text cannot hold NUL: before, a server error (500) on PostgreSQL.
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    answer = client.post(path, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert (answer.status_code, answer.json()["code"]) == (422, "bad_request")


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_professional_gone_from_the_directory_cannot_log_in_with_a_passphrase() -> None:
    user, secret = make_account("dr.gone@cabinet.pli.test")
    assert user.professional is not None
    Professional.objects.filter(pk=user.professional.pk).update(active=False)
    answer = _login(Client(), user.username, PASSPHRASE, secret)
    assert answer.status_code == 400 and _error_code(answer) == "account_inactive"
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    refused = client.post(
        "/api/auth/login",
        {"username": user.username, "passphrase": PASSPHRASE},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "account_inactive")


def test_a_session_ends_when_its_professional_leaves_the_directory() -> None:
    user, _ = make_account("dr.leaving@cabinet.pli.test")
    assert user.professional is not None
    client = signed_in(user)
    assert client.get("/api/accounts/me").status_code == 200
    Professional.objects.filter(pk=user.professional.pk).update(active=False)
    ended = client.get("/api/accounts/me")
    assert (ended.status_code, ended.json()) == (
        401,
        {"code": "session_ended", "detail": "inactive"},
    )
    web = signed_in(user)
    page = web.get("/annuaire/")
    assert page.status_code == 302 and page["Location"].endswith("?ended=inactive")
    notice = web.get(page["Location"]).content.decode()
    assert "n'est plus dans l'annuaire" in notice
    english = Client().get(page["Location"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "no longer in the directory" in english
