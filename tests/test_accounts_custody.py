"""Key custody: vault keys, the unlock cookie, workstation CSRs, organisational mailbox keys.

A real operator CA on disk (the CaDirectory the server uses), real keys and
certificates, messages really sealed and opened. Personas: the owner, a
colleague, an outsider who must get the same answer as for a missing mailbox.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from django.contrib.sessions.models import Session
from django.http import HttpRequest
from django.test import Client, RequestFactory
from pytest_django.fixtures import Settings

from pli.client.castore import CaDirectory
from pli.crypto import (
    PrivateKey,
    SignerRevoked,
    SoftwareKey,
    TrustStore,
    WrongPassphrase,
    build_certificate_request,
    certificate_fingerprint,
    certificate_national_id,
    csr_pem,
    generate_private_key,
    load_certificate,
    load_crl,
    open_envelope,
    seal,
    unwrap_private_key,
    unwrap_private_key_with,
    vault_key_for_record,
)
from pli.crypto import keystore as crypto_keystore
from pli.mime import Draft, build_inner_message, parse_inner_message
from pli.server.accounts import custody, factors, operator_ca
from pli.server.accounts.actions import do_invite_account
from pli.server.accounts.custody import (
    CustodyError,
    do_add_mailbox_member,
    do_create_mailbox_key,
    do_create_vault_key,
    do_remove_mailbox_member,
    do_rewrap_vault_key,
    ensure_vault_key,
    personal_mailbox,
    vault_key_for,
    vault_keys_for,
)
from pli.server.accounts.models import Custody, MailboxKey, Membership, Role, User
from pli.server.accounts.sessions import AUTH_AT
from pli.server.audit.models import AuditEvent
from pli.server.directory.models import Mailbox, MailboxCertificate, Organisation
from tests.accounts_support import (
    PASSPHRASE,
    make_account,
    make_professional,
    outbox_codes,
    signed_in,
)

pytestmark = pytest.mark.django_db

CA_PASSPHRASE = "operator CA passphrase for tests"
LOGIN = "/compte/connexion/"
SECOND = "/compte/connexion/second-facteur/"
UNLOCK = "/compte/cle/deverrouiller/"
CHANGE_UNLOCK = "/compte/cle/phrase-de-deverrouillage/"
KEYS = "/api/accounts/keys"
CSR = "/api/accounts/keys/certificate-request"
COOKIE = "pli_vault"


@pytest.fixture(scope="session")
def ca_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One operator CA for the session (an RSA-3072 root and a 600 000-round PKCS#12)."""
    path = tmp_path_factory.mktemp("operator-ca") / "ca"
    CaDirectory.create(path, "Pli Test Operator CA", CA_PASSPHRASE)
    return path


@pytest.fixture(autouse=True)
def operator(
    ca_directory: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> CaDirectory:
    settings.PLI_CA_DIR = ca_directory
    monkeypatch.setenv("PLI_CA_PASSPHRASE", CA_PASSPHRASE)
    return operator_ca.operator_ca()


def vault_professional(address: str, **kwargs: Any) -> tuple[User, Mailbox]:
    """An enrolled professional whose key was made at enrolment (vault custody)."""
    user, _secret = make_account(address, **kwargs)
    assert do_create_vault_key(user, PASSPHRASE) is not None
    mailbox = personal_mailbox(user)
    assert mailbox is not None
    return user, mailbox


def unlocked(user: User, passphrase: str = PASSPHRASE) -> Client:
    client = signed_in(user)
    response = client.post(UNLOCK, {"passphrase": passphrase})
    assert response.status_code == 302, response.content
    return client


def request_of(client: Client, user: User) -> HttpRequest:
    """The request a view of this client's session would get."""
    request = RequestFactory().get("/")
    request.user = user
    request.session = client.session
    request.COOKIES = {name: morsel.value for name, morsel in client.cookies.items()}
    return request


def fresh_login(client: Client) -> None:
    """As if the passphrase had just been typed (sensitive actions need it)."""
    session = client.session
    session[AUTH_AT] = int(time.time())
    session.save()


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def published_fingerprints(client: Client, address: str) -> list[str]:
    response = client.get("/api/directory/certificates", {"address": address})
    assert response.status_code == 200
    return [c["fingerprint"] for c in response.json()["certificates"]]


def trust(ca: CaDirectory) -> TrustStore:
    return TrustStore([ca.certificate], [load_crl((ca.path / "crl.pem").read_bytes())])


def letter(sender: str, recipient: str) -> bytes:
    return build_inner_message(
        Draft(
            from_address=sender,
            to=[recipient],
            subject="Avis — patient réf. 2026-117",
            body_text="Cher confrère, voici mon avis.\n",
        )
    )


# --- vault custody -------------------------------------------------------------------------------
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_enrolment_makes_a_sealed_key_and_publishes_its_certificate(
    operator: CaDirectory, django_capture_on_commit_callbacks: Any
) -> None:
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    mailbox = make_professional("dr.enrolled@hopital.pli.test")
    with django_capture_on_commit_callbacks(execute=True):
        do_invite_account(admin, mailbox.address)
    client = Client()
    code = outbox_codes(mailbox.address)[0]
    client.post("/compte/activation/", {"address": mailbox.address, "code": code})
    response = client.post(
        "/compte/inscription/phrase-secrete/",
        {"passphrase": PASSPHRASE, "confirmation": PASSPHRASE},
    )
    assert response.status_code == 302

    user = User.objects.get(username=mailbox.address)
    row = MailboxKey.objects.get(user=user, mailbox=mailbox)
    assert row.wrapping == "passphrase"
    # Published in the directory, where a colleague finds it to seal messages.
    colleague, _ = make_account("dr.colleague@hopital.pli.test")
    assert published_fingerprints(signed_in(colleague), mailbox.address) == [
        row.certificate_fingerprint
    ]
    certificate = load_certificate(
        MailboxCertificate.objects.get(fingerprint=row.certificate_fingerprint).pem.encode()
    )
    assert certificate.issuer == operator.certificate.subject
    assert certificate_national_id(certificate) == mailbox.professional.national_id  # type: ignore[union-attr]
    # The key rests sealed under the passphrase (Argon2id + AES-256-GCM), never in clear.
    record = bytes(row.wrapped_key)
    key = unwrap_private_key(record, PASSPHRASE)
    assert key.public_key() == certificate.public_key()
    assert json.loads(json.loads(record)["header"])["kdf"] == "argon2id"
    assert b"PRIVATE KEY" not in record
    assert {"keys.created", "keys.certificate_issued"} <= set(actions())


def test_the_vault_key_is_made_once(operator: CaDirectory) -> None:
    user, mailbox = vault_professional("dr.once@cabinet.pli.test")
    again = do_create_vault_key(user, PASSPHRASE)
    assert again is not None and MailboxKey.objects.filter(user=user).count() == 1
    assert MailboxCertificate.objects.filter(mailbox=mailbox).count() == 1
    # Operator staff have no personal mailbox, and workstation users keep their keys.
    staff, _ = make_account("staff@operator.pli.test", role=Role.SUPPORT)
    assert do_create_vault_key(staff, PASSPHRASE) is None
    workstation, _ = make_account("dr.workstation@cabinet.pli.test")
    workstation.custody = Custody.WORKSTATION
    workstation.save()
    assert do_create_vault_key(workstation, PASSPHRASE) is None


@pytest.mark.requirement("REQ-AT-REST")
def test_unlocking_sets_a_strict_cookie_and_later_requests_derive_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    user, mailbox = vault_professional("dr.unlock@cabinet.pli.test")
    caplog.set_level(logging.DEBUG)
    client = signed_in(user)
    assert client.get(KEYS).json()["vault_unlocked"] is False
    assert client.get(UNLOCK).status_code == 200

    wrong = client.post(UNLOCK, {"passphrase": "not the passphrase"})
    assert wrong.status_code == 400 and b'data-code="bad_passphrase"' in wrong.content
    assert COOKIE not in wrong.cookies

    response = client.post(UNLOCK + "?next=/compte/sessions/", {"passphrase": PASSPHRASE})
    assert response.status_code == 302 and response["Location"] == "/compte/sessions/"
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == settings.SESSION_COOKIE_AGE
    assert not cookie["secure"]  # PLI_HTTPS is off in the tests
    assert client.get(KEYS).json()["vault_unlocked"] is True

    # Later requests open the key with the cookie: no Argon2id run.
    derivations: list[int] = []
    original = crypto_keystore._vault_key

    def counting(*args: Any) -> bytes:
        derivations.append(1)
        return original(*args)

    monkeypatch.setattr(crypto_keystore, "_vault_key", counting)
    key = vault_key_for(request_of(client, user), mailbox)
    assert key.certificate.public_key() == key.private_key.public_key()
    assert derivations == []

    # The derived key is in none of the database, the session table or the logs.
    record = bytes(MailboxKey.objects.get(user=user).wrapped_key)
    secret = vault_key_for_record(record, PASSPHRASE).secret
    forms = {secret.hex(), base64.b64encode(secret).decode().rstrip("=")}
    forms.add(base64.urlsafe_b64encode(secret).decode().rstrip("="))
    sessions = " ".join(str(s.get_decoded()) + s.session_data for s in Session.objects.all())
    trail = " ".join(str(e.detail) + e.target for e in AuditEvent.objects.all())
    for form in forms:
        assert form not in sessions and form not in trail and form not in caplog.text
        assert form not in cookie.value
    assert AuditEvent.objects.filter(action="keys.unlocked", outcome="success").exists()
    assert AuditEvent.objects.filter(action="keys.unlocked", outcome="failure").exists()

    settings.HTTPS = True
    response = signed_in(user).post(UNLOCK, {"passphrase": PASSPHRASE})
    assert response.cookies[COOKIE]["secure"] is True


@pytest.mark.requirement("REQ-AUTH-STRONG")
@pytest.mark.requirement("REQ-AT-REST")
def test_login_unlocks_the_vault_with_one_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    user, _mailbox = vault_professional("dr.login@cabinet.pli.test")
    totp = pyotp.TOTP(factors.totp_secret(user.totp))
    derivations: list[int] = []
    original = crypto_keystore._vault_key

    def counting(*args: Any) -> bytes:
        derivations.append(1)
        return original(*args)

    monkeypatch.setattr(crypto_keystore, "_vault_key", counting)
    client = Client()
    first = client.post(LOGIN, {"username": user.username, "passphrase": PASSPHRASE})
    assert first.status_code == 302 and first.cookies[COOKIE]["samesite"] == "Strict"
    assert derivations == [1]  # the vault's Argon2id, once (the login hash is argon2-cffi's)
    # The first factor alone opens nothing: the cookie serves a completed session only.
    assert client.get(KEYS).status_code == 401
    # The code of the next time step: the current one was used at enrolment.
    code = totp.at(int(time.time()) + 30)
    assert client.post(SECOND, {"code": code}).status_code == 302
    assert client.get(KEYS).json()["vault_unlocked"] is True
    assert derivations == [1]
    assert AuditEvent.objects.filter(action="keys.unlocked", outcome="success").exists()

    # Logging out forgets the key in the browser too.
    response = client.post("/compte/deconnexion/")
    assert response.cookies[COOKIE].value == "" and response.cookies[COOKIE]["max-age"] == 0


@pytest.mark.requirement("REQ-AT-REST")
def test_the_database_row_alone_opens_nothing() -> None:
    user, mailbox = vault_professional("dr.row@cabinet.pli.test")
    record = bytes(MailboxKey.objects.get(user=user).wrapped_key)
    with pytest.raises(WrongPassphrase):
        unwrap_private_key_with(record, os.urandom(32))

    # Signed in but not unlocked: locked.
    client = signed_in(user)
    with pytest.raises(CustodyError) as locked:
        vault_key_for(request_of(client, user), mailbox)
    assert locked.value.code == "vault_locked"

    # The cookie of one session does not open the key in another session.
    owner = unlocked(user)
    other = signed_in(user)
    other.cookies[COOKIE] = owner.cookies[COOKIE].value
    with pytest.raises(CustodyError) as replayed:
        vault_key_for(request_of(other, user), mailbox)
    assert replayed.value.code == "vault_locked"

    # An edited cookie opens nothing either.
    edited = owner.cookies[COOKIE].value
    owner.cookies[COOKIE] = ("A" if edited[5] != "A" else "B").join((edited[:5], edited[6:]))
    with pytest.raises(CustodyError):
        vault_key_for(request_of(owner, user), mailbox)

    # After logout, the cookie left in the browser is useless.
    again = unlocked(user)
    kept = again.cookies[COOKIE].value
    again.post("/compte/deconnexion/")
    back = signed_in(user, again)
    back.cookies[COOKIE] = kept
    with pytest.raises(CustodyError):
        vault_key_for(request_of(back, user), mailbox)


def test_unlocking_is_throttled_like_a_login() -> None:
    user, _ = vault_professional("dr.guess@cabinet.pli.test")
    client = signed_in(user)
    codes = [
        client.post(UNLOCK, {"passphrase": f"guess number {i}"}).content.decode() for i in range(5)
    ]
    assert 'data-code="locked"' not in codes[0] and 'data-code="bad_passphrase"' in codes[0]
    response = client.post(UNLOCK, {"passphrase": PASSPHRASE})
    assert response.status_code == 400 and b'data-code="locked"' in response.content
    assert COOKIE not in response.cookies


@pytest.mark.requirement("REQ-AT-REST")
def test_a_passphrase_change_reseals_the_key() -> None:
    user, mailbox = vault_professional("dr.change@cabinet.pli.test")
    before = MailboxKey.objects.get(user=user)
    public = unwrap_private_key(bytes(before.wrapped_key), PASSPHRASE).public_key()
    with pytest.raises(CustodyError) as wrong:
        do_rewrap_vault_key(user, "not the old passphrase", "a brand new passphrase")
    assert wrong.value.code == "wrong_passphrase"

    assert do_rewrap_vault_key(user, PASSPHRASE, "a brand new passphrase") == 1
    after = MailboxKey.objects.get(user=user)
    assert after.certificate_fingerprint == before.certificate_fingerprint
    with pytest.raises(WrongPassphrase):
        unwrap_private_key(bytes(after.wrapped_key), PASSPHRASE)
    assert unwrap_private_key(bytes(after.wrapped_key), "a brand new passphrase").public_key() == (
        public
    )
    assert "keys.rewrapped" in actions()
    client = unlocked(user, "a brand new passphrase")
    assert vault_key_for(request_of(client, user), mailbox).private_key.public_key() == public


@pytest.mark.requirement("REQ-AT-REST")
def test_certificate_users_choose_a_separate_unlock_passphrase() -> None:
    user, _ = make_account("dr.card@chu.pli.test")
    user.set_unusable_password()  # logs in with a professional card or OpenID Connect
    user.save()
    client = signed_in(user)
    page = client.get(UNLOCK)
    assert page.status_code == 200 and "phrase de déverrouillage" in page.content.decode()
    short = client.post(UNLOCK, {"passphrase": "court", "confirmation": "court"})
    assert short.status_code == 400 and b'data-code="weak_passphrase"' in short.content
    assert not MailboxKey.objects.filter(user=user).exists()

    unlock = "ma phrase de deverrouillage"
    response = client.post(UNLOCK, {"passphrase": unlock, "confirmation": unlock})
    assert response.status_code == 302 and COOKIE in response.cookies
    mailbox = personal_mailbox(user)
    assert mailbox is not None
    assert vault_key_for(request_of(client, user), mailbox).certificate is not None
    assert published_fingerprints(client, mailbox.address) == [
        MailboxKey.objects.get(user=user).certificate_fingerprint
    ]

    changed = "une autre phrase de deverrouillage"
    response = client.post(
        CHANGE_UNLOCK, {"current": unlock, "passphrase": changed, "confirmation": changed}
    )
    assert response.status_code == 302
    # This session stays unlocked; elsewhere only the new phrase opens the key.
    assert vault_key_for(request_of(client, user), mailbox) is not None
    other = signed_in(user)
    assert other.post(UNLOCK, {"passphrase": unlock}).status_code == 400
    assert other.post(UNLOCK, {"passphrase": changed}).status_code == 302


def test_a_missing_ca_is_reported_with_its_code(settings: Settings, tmp_path: Path) -> None:
    user, _ = make_account("dr.noca@cabinet.pli.test")
    settings.PLI_CA_DIR = tmp_path / "nowhere"
    with pytest.raises(operator_ca.OperatorCaUnavailable) as missing:
        do_create_vault_key(user, PASSPHRASE)
    assert missing.value.code == "ca_not_configured" and "PLI_CA_DIR" in missing.value.detail
    # Enrolment goes on without it; the key is made at the first unlock.
    assert ensure_vault_key(user, PASSPHRASE) is None
    assert not MailboxKey.objects.filter(user=user).exists()


def test_a_ca_without_its_passphrase_names_the_setting(
    ca_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLI_CA_PASSPHRASE")
    with pytest.raises(operator_ca.OperatorCaUnavailable) as missing:
        operator_ca.operator_ca()
    assert "PLI_CA_PASSPHRASE" in missing.value.detail
    monkeypatch.setenv("PLI_CA_PASSPHRASE", "not the CA passphrase")
    with pytest.raises(operator_ca.OperatorCaUnavailable) as wrong:
        operator_ca.operator_ca()
    assert "does not open" in wrong.value.detail


# --- workstation custody -------------------------------------------------------------------------
def workstation_csr(user: User, key: PrivateKey, address: str | None = None) -> str:
    professional = user.professional
    assert professional is not None
    request = build_certificate_request(
        key,
        email=address or user.username,
        common_name=f"{professional.first_name} {professional.last_name}",
        national_id=professional.national_id if address is None else None,
    )
    return csr_pem(request).decode()


@pytest.fixture(scope="module")
def workstation_key() -> PrivateKey:
    return generate_private_key()


@pytest.mark.requirement("REQ-E2E")
def test_workstation_key_is_certified_and_opens_a_colleagues_sealed_message(
    operator: CaDirectory, workstation_key: PrivateKey
) -> None:
    alice, _ = make_account("alice.ws@cabinet.pli.test")
    alice.custody = Custody.WORKSTATION
    alice.save()
    client = signed_in(alice)
    body = {"csr": workstation_csr(alice, workstation_key)}
    stale = client.post(CSR, body, content_type="application/json")
    assert stale.status_code == 403 and stale.json()["code"] == "reauthentication_required"

    fresh_login(client)
    response = client.post(CSR, body, content_type="application/json")
    assert response.status_code == 201, response.content
    issued = response.json()
    certificate = load_certificate(issued["certificate"].encode())
    assert certificate.public_key() == workstation_key.public_key()
    assert load_certificate(issued["ca_certificate"].encode()) == operator.certificate
    assert issued["fingerprint"] == certificate_fingerprint(certificate)
    # The server holds the certificate only: no sealed key anywhere.
    assert not MailboxKey.objects.filter(user=alice).exists()
    listed = client.get(KEYS).json()
    assert listed["mailboxes"][0]["certificates"][0]["custody"] == "workstation"
    assert "PRIVATE" not in json.dumps(listed)
    assert AuditEvent.objects.filter(
        action="keys.certificate_issued", detail__contains="workstation"
    ).exists()
    assert not AuditEvent.objects.filter(action="keys.created").exists()

    # A colleague with a vault key finds the certificate in the directory and seals to it.
    bob, bob_mailbox = vault_professional("bob.vault@cabinet.pli.test")
    bob_client = unlocked(bob)
    found = bob_client.get("/api/directory/certificates", {"address": alice.username}).json()
    recipients = [load_certificate(c["pem"].encode()) for c in found["certificates"]]
    assert [certificate_fingerprint(c) for c in recipients] == [issued["fingerprint"]]
    bob_key = vault_key_for(request_of(bob_client, bob), bob_mailbox)
    envelope = seal(letter(bob.username, alice.username), bob_key, recipients)

    opened = open_envelope(envelope, SoftwareKey(workstation_key, certificate), trust(operator))
    assert opened.signer.emails == [bob.username]
    assert parse_inner_message(opened.mime).subject == "Avis — patient réf. 2026-117"


@pytest.mark.requirement("REQ-E2E")
def test_a_csr_for_another_address_is_refused_like_an_unknown_one(
    workstation_key: PrivateKey,
) -> None:
    alice, _ = make_account("alice.csr@cabinet.pli.test")
    bob, _ = make_account("bob.csr@cabinet.pli.test")
    client = signed_in(alice)
    fresh_login(client)
    before = MailboxCertificate.objects.count()

    def ask(address: str | None) -> Any:
        body = {"csr": workstation_csr(alice, workstation_key, address)}
        return client.post(CSR, body, content_type="application/json")

    someone_else = ask(bob.username)
    nobody = ask("nobody@cabinet.pli.test")
    assert someone_else.status_code == nobody.status_code == 404
    assert someone_else.json() == nobody.json()
    assert someone_else.json()["code"] == "mailbox_not_found"
    # An operator account has no personal mailbox: the same answer.
    staff, _ = make_account("support@operator.pli.test", role=Role.SUPPORT)
    staff_client = signed_in(staff)
    fresh_login(staff_client)
    body = {"csr": workstation_csr(alice, workstation_key)}
    answer = staff_client.post(CSR, body, content_type="application/json")
    assert answer.status_code == 404 and answer.json() == nobody.json()

    garbage = client.post(
        CSR, {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA"}, "application/json"
    )
    assert garbage.status_code == 422 and garbage.json()["code"] == "invalid_certificate_request"
    extra = client.post(CSR, {**body, "key": "x"}, content_type="application/json")
    assert extra.status_code == 422
    professional = alice.professional
    assert professional is not None
    impostor = build_certificate_request(
        workstation_key,
        email=alice.username,
        common_name="Dr Quelqu'un d'autre",
        national_id=professional.national_id,
    )
    mismatch = client.post(CSR, {"csr": csr_pem(impostor).decode()}, "application/json")
    assert mismatch.status_code == 422 and mismatch.json()["code"] == "certificate_request_mismatch"
    assert Client().post(CSR, body, content_type="application/json").status_code == 401
    assert MailboxCertificate.objects.count() == before


# --- organisational mailboxes --------------------------------------------------------------------
@dataclass
class Ward:
    mailbox: Mailbox
    alice: User
    bob: User
    carol: User


@pytest.fixture
def ward() -> Ward:
    alice, _ = vault_professional("alice.ward@chu.pli.test")
    bob, _ = vault_professional("bob.ward@chu.pli.test")
    carol, _ = vault_professional("carol.outsider@chu.pli.test")
    organisation = Organisation.objects.create(technical_id="TWARD", name="CHU — Cardiologie")
    mailbox = Mailbox.objects.create(
        address="cardiologie@chu.pli.test", kind="ORG", organisation=organisation
    )
    Membership.objects.create(user=alice, mailbox=mailbox, role="manager")
    Membership.objects.create(user=bob, mailbox=mailbox, role="member")
    return Ward(mailbox, alice, bob, carol)


@pytest.mark.requirement("REQ-E2E")
def test_a_member_added_while_the_key_rotates_stops_the_rotation_and_nothing_changes(
    operator: CaDirectory, ward: Ward, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new key is made outside the transaction (a key pair takes a while): a change
    of the members meanwhile refuses the removal rather than leave a member without the
    key, or a removed one with it (found by a review)."""
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    first = do_create_mailbox_key(ward.mailbox, actor=admin)
    make_new_key = custody._new_shared_key

    def carol_added_meanwhile(mailbox: Mailbox, members: Any) -> Any:
        made = make_new_key(mailbox, members)
        Membership.objects.create(user=ward.carol, mailbox=ward.mailbox, role="member")
        return made

    monkeypatch.setattr(custody, "_new_shared_key", carol_added_meanwhile)
    with pytest.raises(CustodyError) as changed:
        do_remove_mailbox_member(ward.mailbox, ward.bob, actor=ward.alice)
    assert changed.value.code == "membership_changed"
    assert Membership.objects.filter(user=ward.bob, mailbox=ward.mailbox).exists()
    valid = MailboxCertificate.objects.filter(mailbox=ward.mailbox, revoked_at__isnull=True)
    assert [row.pk for row in valid] == [first.pk]
    assert MailboxKey.objects.filter(user=ward.bob, mailbox=ward.mailbox).exists()

    # Run again with the members as they now are: the new key reaches Carol too.
    monkeypatch.setattr(custody, "_new_shared_key", make_new_key)
    second = do_remove_mailbox_member(ward.mailbox, ward.bob, actor=ward.alice)
    assert second is not None
    holders = MailboxKey.objects.filter(
        mailbox=ward.mailbox, certificate_fingerprint=second.fingerprint
    )
    assert {row.user_id for row in holders} == {ward.alice.pk, ward.carol.pk}


@pytest.mark.requirement("REQ-E2E")
def test_members_open_the_mailbox_key_and_a_removed_member_no_longer_can(
    operator: CaDirectory, ward: Ward
) -> None:
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    first = do_create_mailbox_key(ward.mailbox, actor=admin)
    with pytest.raises(CustodyError) as twice:
        do_create_mailbox_key(ward.mailbox, actor=admin)
    assert twice.value.code == "mailbox_key_exists"
    rows = MailboxKey.objects.filter(mailbox=ward.mailbox)
    assert {r.user_id for r in rows} == {ward.alice.pk, ward.bob.pk}
    assert {r.wrapping for r in rows} == {"member"}

    alice, bob, carol = (unlocked(u) for u in (ward.alice, ward.bob, ward.carol))
    for client, user in ((alice, ward.alice), (bob, ward.bob)):
        key = vault_key_for(request_of(client, user), ward.mailbox)
        assert certificate_fingerprint(key.certificate) == first.fingerprint
    # The outsider gets what a mailbox that is not theirs gives: not found.
    with pytest.raises(CustodyError) as outsider:
        vault_key_for(request_of(carol, ward.carol), ward.mailbox)
    alice_mailbox = personal_mailbox(ward.alice)
    assert alice_mailbox is not None
    with pytest.raises(CustodyError) as not_theirs:
        vault_key_for(request_of(carol, ward.carol), alice_mailbox)
    assert outsider.value.code == not_theirs.value.code == "mailbox_not_found"
    assert outsider.value.message == not_theirs.value.message

    # Carol writes to the ward; Bob reads it with the ward's key.
    carol_key = vault_key_for(
        request_of(carol, ward.carol),
        personal_mailbox(ward.carol),  # type: ignore[arg-type]
    )
    before = seal(
        letter(ward.carol.username, ward.mailbox.address),
        carol_key,
        [load_certificate(first.pem.encode())],
    )
    ward_key = vault_key_for(request_of(bob, ward.bob), ward.mailbox)
    assert open_envelope(before, ward_key, trust(operator)).signer.emails == [ward.carol.username]

    # A plain member may not remove anyone; the manager removes Bob: the key rotates.
    with pytest.raises(CustodyError):
        do_remove_mailbox_member(ward.mailbox, ward.alice, actor=ward.bob)
    second = do_remove_mailbox_member(ward.mailbox, ward.bob, actor=ward.alice)
    assert second is not None and second.fingerprint != first.fingerprint
    assert not MailboxKey.objects.filter(user=ward.bob).exclude(wrapping="passphrase").exists()
    with pytest.raises(CustodyError) as removed:
        vault_keys_for(request_of(bob, ward.bob), ward.mailbox)
    assert removed.value.code == "mailbox_not_found"

    # The old certificate is revoked in the CA's CRL and no longer listed in the directory.
    first.refresh_from_db()
    assert first.revoked_at is not None
    crl = load_crl((operator.path / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(first.serial, 16)) is not None
    assert published_fingerprints(alice, ward.mailbox.address) == [second.fingerprint]
    # What the old key signs is no longer genuine for anyone.
    stale = seal(
        letter(ward.mailbox.address, ward.carol.username), ward_key, [carol_key.certificate]
    )
    with pytest.raises(SignerRevoked):
        open_envelope(stale, carol_key, trust(operator))

    # Alice keeps both keys: the new one first, the old one still opens older mail.
    keys = vault_keys_for(request_of(alice, ward.alice), ward.mailbox)
    assert [certificate_fingerprint(k.certificate) for k in keys] == [
        second.fingerprint,
        first.fingerprint,
    ]
    assert open_envelope(before, keys[1], trust(operator)).signer.emails == [ward.carol.username]

    done = actions()
    for action in (
        "keys.created",
        "keys.certificate_issued",
        "keys.shared",
        "keys.unshared",
        "keys.rotated",
        "keys.certificate_revoked",
    ):
        assert action in done, action
    assert done.count("keys.shared") >= 3  # Alice and Bob, then Alice again after the rotation


@pytest.mark.requirement("REQ-E2E")
def test_adding_a_member_needs_a_member_who_holds_the_key(ward: Ward) -> None:
    do_create_mailbox_key(ward.mailbox, actor=ward.alice)
    alice, bob, carol = (unlocked(u) for u in (ward.alice, ward.bob, ward.carol))
    # Without the opened key the server cannot give it to anyone (REQ-E2E).
    with pytest.raises(CustodyError) as locked:
        do_add_mailbox_member(ward.mailbox, ward.carol, actor=ward.alice)
    assert locked.value.code == "mailbox_key_locked"
    # A plain member is not a manager: the same answer as for a stranger's mailbox.
    bob_keys = vault_keys_for(request_of(bob, ward.bob), ward.mailbox)
    with pytest.raises(CustodyError) as member:
        do_add_mailbox_member(ward.mailbox, ward.carol, actor=ward.bob, mailbox_keys=bob_keys)
    assert member.value.code == "mailbox_not_found"

    keys = vault_keys_for(request_of(alice, ward.alice), ward.mailbox)
    do_add_mailbox_member(ward.mailbox, ward.carol, actor=ward.alice, mailbox_keys=keys)
    opened = vault_key_for(request_of(carol, ward.carol), ward.mailbox)
    assert opened.private_key.private_numbers() == keys[0].private_key.private_numbers()
    listed = carol.get(KEYS).json()["mailboxes"]
    ward_entry = next(m for m in listed if m["address"] == ward.mailbox.address)
    assert ward_entry["part"] == "member" and ward_entry["certificates"][0]["custody"] == "member"
    assert "keys.shared" in actions()


def test_the_keys_listing_shows_custody_without_key_material(ward: Ward) -> None:
    client = unlocked(ward.alice)
    listed = client.get(KEYS).json()
    assert listed["custody"] == "vault" and listed["vault_unlocked"] is True
    own = listed["mailboxes"][0]
    assert own["part"] == "owner" and own["certificates"][0]["custody"] == "vault"
    ward_entry = next(m for m in listed["mailboxes"] if m["address"] == ward.mailbox.address)
    assert ward_entry["part"] == "manager" and ward_entry["certificates"] == []
    text = json.dumps(listed)
    record = bytes(MailboxKey.objects.get(user=ward.alice).wrapped_key)
    assert "PRIVATE" not in text and json.loads(record)["ciphertext"][:40] not in text
    assert Client().get(KEYS).status_code == 401
