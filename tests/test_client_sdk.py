"""The SDK (``pli.client.Client``) and the JSON login, against a real server over HTTP.

pytest-django's ``live_server`` serves Pli in a thread; the SDK talks to it
through urllib like practice software would (REQ-LPS). Accounts are enrolled
(passphrase, TOTP, charter) and keep their keys on the workstation: each key
is certified by the operator CA through the server's own action, and kept in
a PKCS#12 file, the only place the SDK reads it from (DESIGN "Key custody").
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from pytest_django.fixtures import Settings

from pli.client import ApiError, AuthenticationRequired, Client, ClientError, PolicyRefused
from pli.client.castore import CaDirectory
from pli.client.sdk import workstation_zone
from pli.crypto import (
    PrivateKey,
    SenderMismatch,
    build_certificate_request,
    certificate_pem,
    csr_pem,
    dump_pkcs12,
    load_certificate,
    load_pkcs12,
)
from pli.crypto.smime import decrypt_envelope
from pli.identifiers import nir_key
from pli.mime import Attachment
from pli.server.accounts import factors, operator_ca
from pli.server.accounts.custody import do_issue_workstation_certificate
from pli.server.accounts.models import Custody, User, UserSession
from pli.server.audit.models import AuditEvent
from pli.server.directory.actions import do_publish_mailbox_certificate
from pli.server.directory.models import Mailbox
from pli.server.messaging.models import Delivery, Message, MessageEnvelope
from tests.accounts_support import PASSPHRASE, make_account
from tests.conftest import Pki

pytestmark = pytest.mark.django_db(transaction=True)

A = "dr.martin@hopital-a.pli.test"
B = "dr.durand@clinique-b.pli.test"
UNKNOWN = "personne@nulle-part.pli.test"
CA_PASSPHRASE = "operator CA passphrase for tests"
IDENTITY_PASSPHRASE = "workstation identity passphrase"
#: A valid NIR (its key checks): what REQ-SUBJECT forbids in a subject.
NIR = "1850578006084" + f"{nir_key('1850578006084'):02d}"


@pytest.fixture(scope="session")
def ca_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One operator CA for the session (an RSA-3072 root and a 600 000-round PKCS#12)."""
    path = tmp_path_factory.mktemp("client-operator-ca") / "ca"
    CaDirectory.create(path, "Pli Test Operator CA", CA_PASSPHRASE)
    return path


@dataclass(frozen=True)
class Persona:
    user: User
    totp: str
    identity: Path

    @property
    def address(self) -> str:
        return self.user.username

    def code(self) -> str:
        # make_account used the current TOTP step to confirm the seed, and a code is
        # accepted once (RFC 6238 §5.2): the next step's code, within the ±1 window.
        return pyotp.TOTP(self.totp).at(time.time() + factors.TOTP_PERIOD)


@dataclass(frozen=True)
class Server:
    url: str
    ca: CaDirectory
    tmp: Path

    @property
    def trust(self) -> Path:
        return self.ca.path / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.ca.path / "crl.pem"

    def client(self, persona: Persona | None, name: str, **kwargs: Any) -> Client:
        """An SDK client with its own session file, as on its own workstation."""
        options: dict[str, Any] = {
            "session_file": self.tmp / f"{name}-session.json",
            "trust": [self.trust],
            "crl": [self.crl],
        }
        if persona is not None:
            options |= {"identity": persona.identity, "passphrase": IDENTITY_PASSPHRASE}
        return Client(self.url, **(options | kwargs))

    def logged_in(self, persona: Persona, name: str | None = None) -> Client:
        client = self.client(persona, name or persona.address.split("@")[0])
        client.login(persona.address, PASSPHRASE, persona.code())
        return client


@pytest.fixture
def server(
    live_server: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    ca_directory: Path,
    tmp_path: Path,
) -> Server:
    # The live server runs in this process: these settings are its settings.
    settings.PLI_CA_DIR = ca_directory
    settings.BLOB_DIR = tmp_path / "blobs"
    monkeypatch.setenv("PLI_CA_PASSPHRASE", CA_PASSPHRASE)
    return Server(str(live_server.url), operator_ca.operator_ca(), tmp_path)


def workstation_persona(
    server: Server, address: str, key: PrivateKey, *, organisation: str
) -> Persona:
    """An enrolled account whose key stays on the workstation, certified by the operator CA."""
    user, secret = make_account(address, organisation=organisation)
    user.custody = Custody.WORKSTATION
    user.save()
    professional = user.professional
    assert professional is not None
    request = build_certificate_request(
        key,
        email=address,
        common_name=f"{professional.first_name} {professional.last_name}",
        national_id=professional.national_id,
    )
    published = do_issue_workstation_certificate(user, csr_pem(request).decode())
    certificate = load_certificate(published.pem.encode())
    identity = server.tmp / f"{address.split('@', maxsplit=1)[0]}.p12"
    # Few PBKDF2 rounds: the file is a test fixture, opened by many CLI runs.
    identity.write_bytes(
        dump_pkcs12(
            key,
            certificate,
            IDENTITY_PASSPHRASE,
            chain=[server.ca.certificate],
            iterations=1000,
        )
    )
    identity.chmod(0o600)
    return Persona(user, secret, identity)


@pytest.fixture
def alice(server: Server, pki: Pki) -> Persona:
    return workstation_persona(server, A, pki.keys["alice"], organisation="Hôpital A")


@pytest.fixture
def bob(server: Server, pki: Pki) -> Persona:
    return workstation_persona(server, B, pki.keys["bob"], organisation="Clinique B")


def actions(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def raw_post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - the live server's http URL
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the live server
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --------------------------------------------------------------------------- sending and reading


@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_letter_sealed_by_the_sdk_is_opened_and_verified_by_the_recipients_sdk(
    server: Server, alice: Persona, bob: Persona
) -> None:
    sender = server.logged_in(alice)
    report = b"%PDF-1.4 compte rendu de consultation\n"
    sent = sender.send(
        A,
        [B],
        "Avis cardiologique, réf. 2026-117",
        "Cher confrère, voici mon avis.\n",
        patient_id=NIR,
        attachments=[Attachment("compte-rendu.pdf", "application/pdf", report)],
    )
    assert sent.id.startswith("msg_") and sent.thread.startswith("thr_")
    assert [(d.recipient, d.state) for d in sent.deliveries] == [(B, "delivered")]

    # What the server holds: routing metadata and ciphertext only.
    stored = Message.objects.get(public_id=sent.id)
    files = (server.tmp / "blobs").rglob("*")
    in_database = MessageEnvelope.objects.values_list("data", flat=True)  # decision 0013
    kept = b"".join([*(p.read_bytes() for p in files if p.is_file()), *map(bytes, in_database)])
    assert kept and b"Avis cardiologique" not in kept and b"compte rendu" not in kept
    assert NIR not in json.dumps([str(v) for v in vars(stored).values()])

    reader = server.logged_in(bob)
    listed = reader.inbox()
    assert [(m.id, m.from_, m.read) for m in listed.results] == [(sent.id, A, False)]
    opened = reader.read(sent.id)
    assert opened.subject == "Avis cardiologique, réf. 2026-117"
    assert opened.body == "Cher confrère, voici mon avis.\n"
    assert opened.patient_id == f"nir:{NIR}"
    assert [(a.filename, a.data) for a in opened.attachments] == [("compte-rendu.pdf", report)]
    assert opened.signature.status == "valid"
    assert opened.signature.signer_emails == [A]
    assert opened.signature.revocation_checked
    assert opened.signature.national_id == alice.user.professional.national_id  # type: ignore[union-attr]
    assert opened.message_id == sent.message_id

    # Read: the sender sees it in the delivery state.
    assert reader.inbox().results[0].read
    delivery = sender.message(sent.id).deliveries
    assert delivery is not None and delivery[0].state == "read"
    assert Delivery.objects.get(message=stored).read_at is not None

    # The sender's own copy stays readable (sealed to the sending mailbox too).
    own = sender.read(sent.id, mark_read=False)
    assert own.subject == opened.subject and own.summary.folder == "sent"


@pytest.mark.requirement("REQ-SUBJECT")
@pytest.mark.requirement("REQ-LPS")
def test_a_subject_with_a_valid_nir_is_refused_before_anything_is_sent(
    server: Server, alice: Persona, bob: Persona
) -> None:
    sender = server.logged_in(alice)
    with pytest.raises(PolicyRefused) as refused:
        sender.send(A, [B], f"Patient {NIR} : résultats", "Bonjour.\n")
    assert refused.value.code == "subject_contains_patient_id"
    assert refused.value.codes == ["subject_contains_patient_id"]
    # The declared patient's name is found too, whatever its case and accents.
    with pytest.raises(PolicyRefused) as named:
        sender.send(A, [B], "Résultats de M. DUPONT", "Bonjour.\n", patient_names=["Dupont"])
    assert named.value.code == "subject_contains_patient_name"
    # Nothing reached the server: no message, not even a refused attempt in the trail.
    assert Message.objects.count() == 0
    assert actions("messages.sent") == []


@pytest.mark.requirement("REQ-LPS")
def test_an_unknown_recipient_is_refused_by_the_server_with_its_code(
    server: Server, alice: Persona, bob: Persona
) -> None:
    sender = server.logged_in(alice)
    with pytest.raises(ApiError) as refused:
        sender.send(A, [B, UNKNOWN], "Avis", "Bonjour.\n")
    assert refused.value.code == "recipient_not_in_directory"
    assert refused.value.status == 422
    assert refused.value.details == {"addresses": [UNKNOWN]}
    assert Message.objects.count() == 0
    [event] = actions("messages.sent")
    assert event.outcome == "failure"
    assert json.loads(event.detail) == {"code": "recipient_not_in_directory"}


@pytest.mark.requirement("REQ-E2E")
def test_a_recipient_certificate_outside_the_trust_anchors_is_never_sealed_to(
    server: Server, alice: Persona, bob: Persona, pki: Pki
) -> None:
    # The directory lists, beside B's real certificate, one of a CA this workstation
    # does not trust (as a compromised server could): sending stops before sealing.
    foreign = pki.authority.issue(pki.keys["carol"], B, "Dr Bob Durand")
    do_publish_mailbox_certificate(
        Mailbox.objects.get(address=B), certificate_pem(foreign.certificate)
    )
    sender = server.logged_in(alice)
    with pytest.raises(ClientError) as refused:
        sender.send(A, [B], "Avis", "Bonjour.\n")
    assert refused.value.code == "recipient_certificate_untrusted"
    assert Message.objects.count() == 0 and actions("messages.sent") == []


@pytest.mark.requirement("REQ-LPS")
def test_a_reply_threads_and_names_the_original(
    server: Server, alice: Persona, bob: Persona
) -> None:
    sender = server.logged_in(alice)
    sent = sender.send(A, [B], "Avis", "Question ?\n", patient_id=NIR)
    reader = server.logged_in(bob)
    answered = reader.reply(sent.id, "Réponse.\n")
    back = sender.read(answered.id)
    assert back.subject == "Re: Avis"
    assert back.in_reply_to_header == sent.message_id
    assert back.references == [sent.message_id]
    assert back.patient_id == f"nir:{NIR}"
    assert back.signature.signer_emails == [B]
    assert back.summary.thread == sent.thread and back.summary.in_reply_to == sent.id


@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_genuine_letter_replayed_by_someone_else_is_not_shown_as_theirs(
    server: Server, alice: Persona, bob: Persona
) -> None:
    """B re-encrypts A's signed letter and sends it back to A as his own: the signature
    is A's and valid, but the server routed it from B, so it is not shown at all."""
    practice = server.logged_in(alice)
    sent = practice.send(A, [B], "Avis", "Texte de A.\n")
    mallory = server.logged_in(bob)
    envelope = mallory._call("GET", f"/api/messages/{sent.id}/envelope").body
    key = load_pkcs12(bob.identity.read_bytes(), IDENTITY_PASSPHRASE).software_key()
    signed_by_a, _cipher = decrypt_envelope(envelope, key)
    a_certificates = mallory.certificates(A)
    replayed = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(signed_by_a)
        .add_recipient(a_certificates[0])
        .add_recipient(key.certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    posted = mallory._call(
        "POST",
        "/api/messages",
        body={"from": B, "recipients": [A], "envelope": base64.b64encode(replayed).decode()},
        ok=(201,),
    ).json()
    with pytest.raises(SenderMismatch) as refused:
        practice.read(posted["id"])
    assert refused.value.code == "sender_mismatch"
    # The routing check, in the client's language (French by default).
    assert refused.value.detail == f"signé par {A}, mais envoyé par {B}"
    assert not Message.objects.get(public_id=posted["id"]).copies.get(mailbox__address=A).read


# --------------------------------------------------------------------------- JSON login


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_unknown_accounts_get_the_wrong_passphrase_answer_and_both_are_throttled(
    server: Server, alice: Persona
) -> None:
    client = server.client(None, "guesser")
    answers = []
    for username in (A, UNKNOWN):
        with pytest.raises(AuthenticationRequired) as failed:
            client.login(username, "not the passphrase at all", "000000")
        answers.append((failed.value.code, failed.value.status, failed.value.message))
    assert answers[0] == answers[1]
    assert answers[0][:2] == ("bad_credentials", 401)
    events = actions("auth.login_failed")
    assert [e.target for e in events] == [f"user:{alice.user.pk}", "user:unknown"]
    for _ in range(4):
        with pytest.raises(ApiError):
            client.login(A, "not the passphrase at all", "000000")
    with pytest.raises(ApiError) as locked:
        client.login(A, PASSPHRASE, alice.code())
    assert (locked.value.code, locked.value.status) == ("locked", 429)
    assert actions("auth.lockout")
    assert not actions("auth.login")


def test_the_json_login_needs_the_csrf_token(server: Server, alice: Persona) -> None:
    login = f"{server.url}/api/auth/login"
    body = {"username": A, "passphrase": PASSPHRASE}
    status, answer = raw_post(login, body, {})
    assert (status, answer["code"]) == (403, "csrf_failed")
    # A token without its cookie (what a forging page could send) fails alike.
    with urllib.request.urlopen(f"{server.url}/api/auth/csrf", timeout=30) as got:  # noqa: S310
        token = json.loads(got.read())["csrf_token"]
        cookie = got.headers["Set-Cookie"].split(";", 1)[0]
    status, answer = raw_post(login, body, {"X-CSRFToken": token})
    assert (status, answer["code"]) == (403, "csrf_failed")
    status, answer = raw_post(login, body, {"X-CSRFToken": token, "Cookie": cookie})
    assert (status, answer) == (200, {"next": "second_factor"})
    # Nothing was counted for the forged attempts.
    assert not actions("auth.login_failed")


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_second_factor_without_a_first_one_opens_nothing(server: Server, alice: Persona) -> None:
    client = server.client(None, "skipper")
    with pytest.raises(AuthenticationRequired) as refused:
        client._call("POST", "/api/auth/second-factor", body={"code": alice.code()})
    assert refused.value.code == "login_required"
    with pytest.raises(AuthenticationRequired) as anonymous:
        client.mailboxes()
    assert anonymous.value.code == "not_logged_in"


@pytest.mark.requirement("REQ-AUTH-STRONG")
def test_a_recovery_code_logs_in_and_logout_revokes_the_session(
    server: Server, alice: Persona
) -> None:
    codes = factors.new_recovery_codes(alice.user)
    client = server.client(alice, "recovery")
    result = client.login(A, PASSPHRASE, codes[0].lower())
    assert (result.username, result.method) == (A, "passphrase+recovery")
    assert actions("accounts.recovery_code_used")
    [login] = actions("auth.login")
    assert json.loads(login.detail) == {"method": "passphrase+recovery"}
    assert [m.address for m in client.mailboxes()] == [A]
    with pytest.raises(AuthenticationRequired) as reused:
        server.client(alice, "again").login(A, PASSPHRASE, codes[0])
    assert reused.value.code == "bad_code"

    client.logout()
    assert UserSession.objects.get(user=alice.user).revoked_at is not None
    assert json.loads(client.session_file.read_text())["servers"] == {}
    with pytest.raises(AuthenticationRequired) as ended:
        client.mailboxes()
    assert ended.value.code == "not_logged_in"


def test_the_session_file_is_private_shared_and_ends_with_the_session(
    server: Server, alice: Persona
) -> None:
    first = server.logged_in(alice, "shared")
    path = first.session_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Client.saved_server(path) == server.url
    # Another process (here another client) on the same file shares the login.
    second = Client(server.url, session_file=path)
    assert second.username == A and [m.address for m in second.mailboxes()] == [A]

    # The server ends an idle session: the client says so and forgets it.
    UserSession.objects.filter(user=alice.user).update(last_seen_at="2000-01-01T00:00:00Z")
    with pytest.raises(AuthenticationRequired) as ended:
        second.mailboxes()
    assert ended.value.code == "session_ended"
    assert server.url not in json.loads(path.read_text())["servers"]

    path.chmod(0o644)
    with pytest.raises(ClientError) as insecure:
        Client(server.url, session_file=path)
    assert insecure.value.code == "session_file_insecure"


# ------------------------------------------------------------------- organisational mailboxes


@pytest.mark.requirement("REQ-CITY-HOSPITAL")
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
def test_members_read_an_organisational_mailbox_from_their_workstations(
    server: Server, alice: Persona, bob: Persona, pki: Pki
) -> None:
    """A ward's key is wrapped to its members' workstation keys; outsiders get a 404."""
    from pli.server.accounts.custody import do_create_mailbox_key
    from pli.server.accounts.models import Membership, Role
    from pli.server.directory.models import Organisation

    ward_address = "cardiologie@hopital-a.pli.test"
    carol = workstation_persona(
        server, "infirmiere.petit@hopital-a.pli.test", pki.keys["carol"], organisation="Hôpital A"
    )
    organisation = Organisation.objects.create(technical_id="TWARDSDK", name="Hôpital A — Cardio")
    ward = Mailbox.objects.create(address=ward_address, kind="ORG", organisation=organisation)
    Membership.objects.create(user=alice.user, mailbox=ward, role="manager")
    Membership.objects.create(user=carol.user, mailbox=ward, role="member")
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    do_create_mailbox_key(ward, actor=admin)

    # From outside: Bob writes to the ward; Carol, a member, reads it on her workstation.
    outside = server.logged_in(bob)
    sent = outside.send(B, [ward_address], "Transfert de Mme X", "Dossier ci-joint.\n")
    nurse = server.logged_in(carol)
    opened = nurse.read(sent.id, mailbox=ward_address)
    assert opened.body == "Dossier ci-joint.\n"
    assert opened.signature.signer_emails == [B]
    assert len(nurse.mailbox_keys(ward_address)) == 1

    # From inside: Alice writes for the ward (she signs, as Sender); Carol reads the
    # ward's sent copy, sealed to the ward's key.
    doctor = server.logged_in(alice)
    answer = doctor.send(ward_address, [B], "Re: Transfert de Mme X", "Bien reçu.\n")
    copy = nurse.read(answer.id, mailbox=ward_address, mark_read=False)
    assert copy.body == "Bien reçu.\n"
    assert copy.from_address == ward_address and copy.sender == A
    assert copy.signature.signer_emails == [A]

    # Bob is not a member: the same 404 as for an address that does not exist.
    answers = []
    for address in (ward_address, "inconnue@hopital-a.pli.test"):
        with pytest.raises(ApiError) as refused:
            outside.mailbox_keys(address)
        answers.append((refused.value.status, refused.value.code))
    assert answers == [(404, "mailbox_not_found")] * 2

    # Alice leaves: the key rotates and its old certificate is revoked. What was sealed
    # for the old key still opens on Carol's workstation (a fresh client: nothing
    # cached), with the older key, which chains to the operator's CA as issued.
    from pli.server.accounts.custody import do_remove_mailbox_member

    do_remove_mailbox_member(ward, alice.user, actor=admin)
    nurse = server.client(carol, "infirmiere.petit")  # the same login, another process
    assert len(nurse.mailbox_keys(ward_address)) == 2
    assert nurse.read(sent.id, mailbox=ward_address, mark_read=False).body == (
        "Dossier ci-joint.\n"
    )


def test_a_workstation_receipt_names_the_workstations_own_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A receipt's text gives the original's date as its reader saw it (pli.mime.mdn).
    monkeypatch.setenv("TZ", "Europe/Paris")
    assert workstation_zone() == ZoneInfo("Europe/Paris")
    monkeypatch.setenv("TZ", ":America/Montreal")  # POSIX allows the leading colon
    assert workstation_zone() == ZoneInfo("America/Montreal")
    for utc in ("UTC", "Etc/UTC"):
        monkeypatch.setenv("TZ", utc)
        assert workstation_zone() is dt.UTC  # named "UTC", as the server's text does
    # A name the zone database does not know: the offset the system gives now.
    monkeypatch.setenv("TZ", "Nowhere/Atlantis")
    fallback = workstation_zone()
    assert not isinstance(fallback, ZoneInfo)
    assert fallback.utcoffset(None) == dt.datetime.now().astimezone().utcoffset()


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://pli.example.org", True),
        ("http://10.0.0.5:8000", True),
        ("https://pli.example.org", False),
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
    ],
)
def test_a_server_is_spoken_to_in_clear_only_on_this_machine(
    url: str, refused: bool, tmp_path: Path
) -> None:
    # The passphrase, the TOTP code and the session would cross the network in clear.
    if refused:
        with pytest.raises(ClientError) as error:
            Client(url, session_file=tmp_path / "s.json")
        assert error.value.code == "insecure_server_url"
    else:
        assert Client(url, session_file=tmp_path / "s.json").base_url == url
