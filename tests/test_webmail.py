"""The web mail with Django's test client: sealing on the server with the vault key.

Real operator CA on disk, real vault keys (sealed under the passphrase,
unlocked with the cookie as after a login), messages really signed and
encrypted by the server and really opened by the recipient's key. Personas:
A, a doctor of Hôpital A; B, a doctor of Clinique B; D, B's colleague at
Clinique B, who must see nothing of B's mail; E, an outsider elsewhere; and
the anonymous visitor.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.fixtures import Settings

from pli.client.castore import CaDirectory
from pli.crypto import (
    PrivateKey,
    SoftwareKey,
    TrustStore,
    generate_private_key,
    inspect_envelope,
    load_certificate,
    load_crl,
    open_envelope,
    seal,
    unwrap_private_key,
)
from pli.identifiers import nir_key
from pli.mime import Draft, build_inner_message, parse_inner_message
from pli.server.accounts import custody, operator_ca
from pli.server.accounts.custody import do_create_mailbox_key, do_create_vault_key
from pli.server.accounts.models import Custody, MailboxKey, Membership, Role, User
from pli.server.audit.models import AuditAction, AuditEvent
from pli.server.compliance.actions import do_record_opposition
from pli.server.config import ConfigurationError
from pli.server.directory.models import Mailbox, MailboxCertificate, Organisation
from pli.server.messaging.actions import do_send_message, read_envelope
from pli.server.messaging.models import Delivery, Message, MessageCopy, MessageEnvelope
from pli.server.messaging.storage import do_set_mailbox_quota, storage_of
from pli.server.messaging.uploads import MessageBlob, Upload
from pli.server.webmail import views as webmail_views
from tests.accounts_support import PASSPHRASE, make_account, signed_in

pytestmark = pytest.mark.django_db

CA_PASSPHRASE = "operator CA passphrase for the web mail tests"
A = "dr.martin@hopital-a.pli.test"
B = "dr.durand@clinique-b.pli.test"
D = "dr.moreau@clinique-b.pli.test"
E = "dr.petit@cabinet-e.pli.test"
WARD = "cardiologie@clinique-b.pli.test"
UNLOCK = "/compte/cle/deverrouiller/"
INBOX = "/messagerie/"
COMPOSE = "/messagerie/nouveau/"
MESSAGE_ID = re.compile(r"/messagerie/message/(msg_[0-9a-f]{32})/")
REPORT = b"%PDF-1.4\n% compte rendu de test\n" + bytes(range(256)) * 8


def valid_nir(first13: str = "1850578006084") -> str:
    return f"{first13}{nir_key(first13):02d}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ca_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One operator CA for the session (an RSA-3072 root and a 600 000-round PKCS#12)."""
    path = tmp_path_factory.mktemp("webmail-ca") / "ca"
    CaDirectory.create(path, "Pli Web Mail Test CA", CA_PASSPHRASE)
    return path


@pytest.fixture(scope="session")
def key_pool() -> list[PrivateKey]:
    """RSA-3072 key generation is the slow part: a few keys, made once, handed out in turn."""
    return [generate_private_key() for _ in range(5)]


@pytest.fixture(autouse=True)
def operator(
    ca_directory: Path,
    key_pool: list[PrivateKey],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> CaDirectory:
    settings.PLI_CA_DIR = ca_directory
    settings.BLOB_DIR = tmp_path / "blobs"
    monkeypatch.setenv("PLI_CA_PASSPHRASE", CA_PASSPHRASE)
    keys = itertools.cycle(key_pool)
    monkeypatch.setattr(custody, "generate_private_key", lambda: next(keys))
    return operator_ca.operator_ca()


def vault_user(address: str, *, organisation: str, last_name: str, profession: str) -> User:
    """An enrolled professional whose key is in the vault (made at enrolment)."""
    return vault_account(
        address, organisation=organisation, last_name=last_name, profession=profession
    )[0]


def vault_account(
    address: str, *, organisation: str, last_name: str, profession: str
) -> tuple[User, str]:
    """:func:`vault_user`, and the seed of its TOTP (to log in through the pages)."""
    user, secret = make_account(address, organisation=organisation)
    professional = user.professional
    assert professional is not None
    professional.last_name, professional.profession = last_name, profession
    professional.civil_title = "Dr"
    professional.save()
    assert do_create_vault_key(user, PASSPHRASE) is not None
    return user, secret


def unlocked(user: User) -> Client:
    """A signed-in client whose vault cookie is set, as after the login page."""
    client = signed_in(user)
    response = client.post(UNLOCK, {"passphrase": PASSPHRASE})
    assert response.status_code == 302, response.content
    return client


def vault_key(user: User, address: str | None = None) -> SoftwareKey:
    """The user's personal key, opened from its record with the passphrase (the test's view)."""
    row = MailboxKey.objects.filter(user=user, wrapping="passphrase").get()
    certificate = MailboxCertificate.objects.get(fingerprint=row.certificate_fingerprint)
    return SoftwareKey(
        unwrap_private_key(bytes(row.wrapped_key), PASSPHRASE),
        load_certificate(certificate.pem.encode()),
    )


def trust(ca: CaDirectory) -> TrustStore:
    return TrustStore([ca.certificate], [load_crl((ca.path / "crl.pem").read_bytes())])


@dataclass
class World:
    a: User
    b: User
    d: User
    e: User
    ca: CaDirectory
    blob_dir: Path

    @property
    def mailbox_a(self) -> Mailbox:
        return Mailbox.objects.get(address=A)

    @property
    def mailbox_b(self) -> Mailbox:
        return Mailbox.objects.get(address=B)


@pytest.fixture
def world(operator: CaDirectory, settings: Settings) -> World:
    return World(
        a=vault_user(A, organisation="Hôpital A", last_name="Martin", profession="Cardiologue"),
        b=vault_user(B, organisation="Clinique B", last_name="Durand", profession="Médecin"),
        d=vault_user(D, organisation="Clinique B", last_name="Moreau", profession="Médecin"),
        e=vault_user(E, organisation="Cabinet E", last_name="Petit", profession="Infirmier"),
        ca=operator,
        blob_dir=Path(settings.BLOB_DIR),
    )


def compose(
    client: Client,
    *,
    to: str = B,
    sender: str = A,
    subject: str = "Avis cardiologique réf. 2026-117",
    body: str = "Cher confrère,\nvoici mon avis sur votre patiente.\n",
    confirm: tuple[str, ...] = (B,),
    files: tuple[tuple[str, bytes, str], ...] = (),
    path: str = COMPOSE,
    **extra: Any,
) -> Any:
    data: dict[str, Any] = {
        "sender": sender,
        "recipients": to,
        "subject": subject,
        "body": body,
        "action": "send",
        "confirm": list(confirm),
        **extra,
    }
    if files:
        data["attachments"] = [SimpleUploadedFile(n, c, content_type=t) for n, c, t in files]
    data["end"] = "1"  # the form's last field, after the files (a body cut short lacks it)
    return client.post(path, data)


def sent_id(response: Any) -> str:
    assert response.status_code == 302, response.content.decode()[:3000]
    match = MESSAGE_ID.search(response["Location"])
    assert match, response["Location"]
    return match.group(1)


def codes(response: Any) -> list[str]:
    return re.findall(r'data-code="([a-z_]+)"', response.content.decode())


def stored_bytes(address: str) -> int:
    pk = Mailbox.objects.get(address=address).pk
    return storage_of([pk])[pk].used


def stored() -> tuple[int, int, int]:
    return Message.objects.count(), Delivery.objects.count(), MessageCopy.objects.count()


def blob_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def refusals() -> list[str]:
    return [
        str(e.detail)
        for e in AuditEvent.objects.filter(action="messages.sent", outcome="failure").order_by(
            "seq"
        )
    ]


def without_tokens(response: Any) -> str:
    """The page without its CSRF tokens, which are masked anew for each response."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())


def message_url(message_id: str, mailbox: str) -> str:
    return f"/messagerie/message/{message_id}/?boite={mailbox}"


# --------------------------------------------------------------------------- sending and reading


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
@pytest.mark.requirement("REQ-AT-REST")
def test_a_message_is_sealed_on_the_server_and_read_by_the_recipient(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    page = a.get(COMPOSE)
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    assert "script-src 'self'" in page["Content-Security-Policy"]

    response = compose(
        a, files=(("compte-rendu écho.pdf", REPORT, "application/pdf"),), patient_id=valid_nir()
    )
    message_id = sent_id(response)
    message = Message.objects.get(public_id=message_id)
    assert message.sender_address == A and message.sender_person == A
    assert message.patient_key  # the opposition register's keyed hash, never the NIR

    check_sealed(world, message)
    check_read_by_b(world, a, b, message)

    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert {"messages.sent", "messages.delivered", "messages.opened", "messages.read"} <= set(
        actions
    )
    # The trail holds ids and codes only.
    trail = " ".join(e.detail + e.target for e in AuditEvent.objects.all())
    assert "Avis" not in trail and "compte-rendu" not in trail


def check_sealed(world: World, message: Message) -> None:
    """What rests is ciphertext, sealed to both mailboxes, signed by A, as composed."""
    # No subject, body, file name, attachment or NIR in clear.
    envelope = read_envelope(MessageCopy.objects.get(message=message, mailbox__address=B))
    for secret in (b"Avis cardiologique", b"voici mon avis", b"compte-rendu", REPORT[:40]):
        assert secret not in envelope
    assert valid_nir().encode() not in envelope
    # Everything kept: blob files and envelopes in the database (decision 0013).
    kept = [path.read_bytes() for path in blob_files(world.blob_dir)]
    kept += map(bytes, MessageEnvelope.objects.values_list("data", flat=True))
    assert envelope in kept
    for data in kept:
        assert b"voici mon avis" not in data
    # Sealed to every current certificate of the recipient and of the sending mailbox.
    info = inspect_envelope(envelope)
    for user in (world.a, world.b):
        info.require_recipient(vault_key(user).certificate)

    # B's own key opens it (what any S/MIME agent would do): signed by A, as sent.
    opened = open_envelope(envelope, vault_key(world.b), trust(world.ca))
    assert opened.signer.emails == [A]
    inner = parse_inner_message(opened.mime)
    assert inner.subject == "Avis cardiologique réf. 2026-117"
    assert inner.to == [B] and inner.from_address == A
    assert inner.patient_id == f"nir:{valid_nir()}"
    assert [(x.filename, x.data) for x in inner.attachments] == [("compte-rendu écho.pdf", REPORT)]


def check_read_by_b(world: World, a: Client, b: Client, message: Message) -> None:
    """B's pages: the inbox, the message with its signer, the download; A sees it read."""
    message_id = message.public_id
    # B's inbox: one unread message, its subject opened in memory for the page.
    inbox = b.get(INBOX)
    html = inbox.content.decode()
    assert 'data-unread="1"' in html
    assert "Avis cardiologique réf. 2026-117" in html
    assert "1 pièce jointe" in html

    reading = b.get(message_url(message_id, B))
    assert reading.status_code == 200
    assert "no-store" in reading["Cache-Control"]
    html = reading.content.decode()
    assert 'data-code="valid"' in html
    assert "Signature valide" in html
    assert "Dr Alice Martin" in html and "Cardiologue" in html
    assert f"RPPS {world.a.professional.identifier}" in html  # type: ignore[union-attr]
    assert "voici mon avis sur votre patiente." in html
    assert "compte-rendu écho.pdf" in html
    # Read: B's delivery is read, which A sees.
    delivery = Delivery.objects.get(message=message)
    assert delivery.state == "read" and delivery.read_at is not None
    assert 'data-unread="1"' not in b.get(INBOX).content.decode()
    sent_view = a.get(message_url(message_id, A)).content.decode()
    assert f'data-recipient="{B}" data-state="read"' in sent_view

    download = b.get(f"/messagerie/message/{message_id}/pieces-jointes/0/?boite={B}")
    assert download.status_code == 200
    assert download.content == REPORT
    assert download["Content-Type"] == "application/pdf"
    assert download["Content-Disposition"] == (
        'attachment; filename="compte-rendu _cho.pdf"; '
        "filename*=UTF-8''compte-rendu%20%C3%A9cho.pdf"
    )
    assert "sandbox" in download["Content-Security-Policy"]
    assert "no-store" in download["Cache-Control"]
    assert b.get(f"/messagerie/message/{message_id}/pieces-jointes/1/?boite={B}").status_code == 404


@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_message_whose_signer_is_not_its_sender_is_not_shown(world: World) -> None:
    """Signed by A, claiming to come from D: the precise reason, and no content at all."""
    forged = build_inner_message(
        Draft(from_address=D, to=[B], subject="Résultats", body_text="Contenu forgé\n")
    )
    envelope = seal(forged, vault_key(world.a), [vault_key(world.b).certificate])
    message = do_send_message(world.a, A, [B], envelope)
    b = unlocked(world.b)
    html = b.get(message_url(message.public_id, B)).content.decode()
    assert 'data-code="sender_mismatch"' in html
    assert "Signature non vérifiée" in html
    assert "Contenu forgé" not in html and "Résultats" not in html
    assert "Répondre" not in html
    # Not read: nothing genuine was shown.
    assert Delivery.objects.get(message=message).state == "delivered"
    inbox = b.get(INBOX).content.decode()
    assert "Contenu forgé" not in inbox and "(illisible)" in inbox


@pytest.mark.requirement("REQ-E2E")
def test_an_organisational_mailbox_is_read_with_the_members_wrapped_key(world: World) -> None:
    clinic = Organisation.objects.get(technical_id="TClinique B")
    ward = Mailbox.objects.create(address=WARD, kind="ORG", organisation=clinic)
    Membership.objects.create(user=world.b, mailbox=ward, role="member")
    admin, _ = make_account("admin@operator.pli.test", role=Role.OPERATOR_ADMIN)
    do_create_mailbox_key(ward, actor=admin)
    a, b = unlocked(world.a), unlocked(world.b)
    message_id = sent_id(compose(a, to=WARD, confirm=(WARD,)))
    html = b.get(f"{INBOX}?boite={WARD}").content.decode()
    assert "Avis cardiologique réf. 2026-117" in html
    reading = b.get(message_url(message_id, WARD)).content.decode()
    assert 'data-code="valid"' in reading and "voici mon avis" in reading
    # B answers from the ward: signed with B's own key, From the ward, Sender B.
    reply_id = sent_id(
        compose(
            b,
            sender=WARD,
            to=A,
            confirm=(),
            path=f"/messagerie/message/{message_id}/repondre/?boite={WARD}",
        )
    )
    reply = Message.objects.get(public_id=reply_id)
    assert reply.sender_address == WARD and reply.sender_person == B
    assert 'data-code="valid"' in a.get(message_url(reply_id, A)).content.decode()
    # D, B's colleague but not a member, sees nothing of the ward.
    assert unlocked(world.d).get(f"{INBOX}?boite={WARD}").status_code == 404


# --------------------------------------------------------------------------- pre-send policy


@pytest.mark.requirement("REQ-VERIFY-RECIPIENT")
def test_the_first_message_to_a_recipient_needs_a_confirmation(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    # The check the page shows as the sender types: who the address is, and "first time".
    fragment = a.get("/messagerie/destinataires/", {"de": A, "a": f"{B}, nobody@nowhere.pli.test"})
    html = fragment.content.decode()
    assert "Dr Alice Durand" in html and "Médecin" in html and "Clinique B" in html
    assert f'name="confirm" value="{B}"' in html
    assert 'data-code="recipient_not_in_directory"' in html

    refused = compose(a, confirm=())
    assert refused.status_code == 400
    assert "recipient_not_confirmed" in codes(refused)
    assert f'name="confirm" value="{B}"' in refused.content.decode()
    assert stored() == (0, 0, 0)
    assert refusals() == []  # a step of the page, not a refused send

    sent_id(compose(a, confirm=(B,)))
    # Written to once: known from now on, for this mailbox.
    sent_id(compose(a, confirm=()))
    assert (
        f'name="confirm" value="{B}"'
        not in a.get("/messagerie/destinataires/", {"de": A, "a": B}).content.decode()
    )
    # B received from A: answering A needs no confirmation either.
    sent_id(compose(b, sender=B, to=A, confirm=()))
    # A new correspondent of B still does.
    assert "recipient_not_confirmed" in codes(compose(b, sender=B, to=E, confirm=()))
    assert Message.objects.count() == 3


@pytest.mark.requirement("REQ-SUBJECT")
def test_a_subject_that_identifies_the_patient_is_refused_and_nothing_is_stored(
    world: World,
) -> None:
    a = unlocked(world.a)
    nir = valid_nir()
    by_number = compose(a, subject=f"Résultats NIR {nir}")
    assert by_number.status_code == 400
    assert "subject_contains_patient_id" in codes(by_number)
    assert "doit rester pseudonymisé" in by_number.content.decode()

    by_name = compose(
        a,
        subject="Compte rendu de Mme Lefèvre",
        patient_last_name="LEFEVRE",
        patient_first_name="Jeanne",
    )
    assert "subject_contains_patient_name" in codes(by_name)
    # The typed text stays on the page; attachments are not kept (they never are).
    with_file = compose(
        a,
        subject="Compte rendu de Jeanne",
        patient_first_name="Jeanne",
        files=(("cr.pdf", REPORT, "application/pdf"),),
    )
    assert "attachments_not_kept" in codes(with_file)
    assert "Compte rendu de Jeanne" in with_file.content.decode()

    # A number shaped like a NIR but not one: a warning, sent once the subject is reviewed.
    doubtful = compose(a, subject="Dossier 1850578006084")
    assert "subject_needs_review" in codes(doubtful)
    assert 'name="subject_reviewed"' in doubtful.content.decode()
    assert stored() == (0, 0, 0)
    assert blob_files(world.blob_dir) == []
    assert refusals() == [
        '{"code":"subject_contains_patient_id"}',
        '{"code":"subject_contains_patient_name"}',
        '{"code":"subject_contains_patient_name"}',
    ]
    sent_id(compose(a, subject="Dossier 1850578006084", subject_reviewed="on"))


@pytest.mark.requirement("REQ-OPPOSITION")
def test_a_message_about_an_opposed_patient_is_refused_with_the_advice(world: World) -> None:
    dpo, _ = make_account("dpo@operator.pli.test", role=Role.DPO)
    do_record_opposition(dpo, valid_nir(), None)
    a = unlocked(world.a)
    refused = compose(a, patient_id=valid_nir(), files=(("cr.pdf", REPORT, "application/pdf"),))
    assert refused.status_code == 400
    assert "patient_opposed" in codes(refused)
    assert "courrier postal" in refused.content.decode()
    bad = compose(a, patient_id="12345")
    assert "bad_patient_id" in codes(bad)
    assert stored() == (0, 0, 0)
    assert blob_files(world.blob_dir) == []
    assert refusals() == ['{"code":"patient_opposed"}', '{"code":"bad_patient_id"}']


@pytest.mark.requirement("REQ-RESILIENCE")
def test_past_the_daily_limit_the_compose_page_says_so_and_stores_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_DAILY_SEND_MESSAGES", "1")
    a = unlocked(world.a)
    sent_id(compose(a, files=(("cr.pdf", REPORT, "application/pdf"),)))
    before = stored()
    refused = compose(a, confirm=(), files=(("cr.pdf", REPORT, "application/pdf"),))
    assert refused.status_code == 400
    assert "daily_limit_reached" in codes(refused)
    page = refused.content.decode()
    assert "Limite d&#x27;envoi du jour atteinte" in page or "Limite d'envoi du jour" in page
    # What was typed is kept for tomorrow (or for the administrator's new limit).
    assert "Avis cardiologique réf. 2026-117" in page
    assert stored() == before
    assert refusals() == ['{"code":"daily_limit_reached"}']


@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_full_mailbox_is_shown_to_its_holders_and_named_to_its_senders(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    sent_id(compose(a, files=(("cr.pdf", REPORT, "application/pdf"),)))
    page = b.get("/messagerie/").content.decode()
    assert "Espace utilisé : " in page and " sur 20,0" in page
    assert "Boîte pleine" not in page and "presque pleine" not in page

    # B's mailbox holds more than its quota: its holder is told, its senders refused.
    do_set_mailbox_quota(None, B, 1000)
    page = b.get("/messagerie/").content.decode()
    assert "Boîte pleine : elle ne reçoit plus de messages." in page
    before = stored()
    refused = compose(a, confirm=(), files=(("cr.pdf", REPORT, "application/pdf"),))
    assert refused.status_code == 400
    assert "recipient_mailbox_full" in codes(refused)
    text = refused.content.decode()
    assert "La boîte de ces destinataires est pleine" in text
    assert "Avis cardiologique réf. 2026-117" in text  # what was typed is kept
    assert stored() == before
    assert refusals() == ['{"code":"recipient_mailbox_full"}']

    # Nearly full: a warning before the refusals begin.
    do_set_mailbox_quota(None, B, stored_bytes(B) + stored_bytes(B) // 20)
    page = b.get("/messagerie/").content.decode()
    assert "Boîte presque pleine" in page


def test_recipients_must_be_active_mailboxes_of_the_directory(world: World) -> None:
    a = unlocked(world.a)
    unknown = compose(a, to="nobody@nowhere.pli.test", confirm=())
    assert "recipient_not_in_directory" in codes(unknown)
    itself = compose(a, to=A, confirm=())
    assert "recipient_is_sender" in codes(itself)
    nobody = compose(a, to="", confirm=())
    assert "no_recipient" in codes(nobody)
    not_mine = compose(a, sender=B, confirm=())
    assert not_mine.status_code == 400 and "De" in not_mine.content.decode()
    assert stored() == (0, 0, 0)


def test_recipients_without_a_valid_certificate_are_named_before_and_on_send(
    world: World,
) -> None:
    """The check box flags them as the sender types (one certificate query for all the
    recipients); a send to them is refused naming them."""
    a = unlocked(world.a)
    MailboxCertificate.objects.filter(mailbox__address=B).update(revoked_at=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        fragment = a.get("/messagerie/destinataires/", {"de": A, "a": f"{B}, {D}, {E}"})
    html = fragment.content.decode()
    flagged = re.findall(
        r'data-address="([^"]+)">(?:(?!</li>).)*data-code="recipient_without_certificate"',
        html,
        re.S,
    )
    assert flagged == [B]
    assert "Cette boîte n'a pas de certificat valide" in html
    certificate_queries = [q for q in queries if "directory_mailboxcertificate" in q["sql"]]
    assert len(certificate_queries) == 1, certificate_queries

    refused = compose(a, to=f"{B}, {D}", confirm=(B, D))
    assert refused.status_code == 400
    assert "recipient_without_certificate" in codes(refused)
    page = refused.content.decode()
    assert (
        "Ces boîtes n&#x27;ont pas de certificat valide, le message ne peut pas leur être "
        f"chiffré : {B}."
    ) in page
    assert stored() == (0, 0, 0)


# --------------------------------------------------------------------------- reply and forward


@pytest.mark.requirement("REQ-AFTER-SEND")
def test_a_forward_needs_the_patients_agreement(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    original = sent_id(compose(a, files=(("cr.pdf", REPORT, "application/pdf"),)))
    path = f"/messagerie/message/{original}/transferer/?boite={B}"
    page = b.get(path)
    html = page.content.decode()
    assert page.status_code == 200
    assert "TR : Avis cardiologique réf. 2026-117" in html
    assert "Message transféré" in html and "voici mon avis" in html
    assert 'name="patient_consent"' in html and 'name="keep" value="0"' in html

    refused = compose(b, sender=B, to=E, confirm=(E,), subject="TR : avis", path=path, keep="0")
    assert refused.status_code == 400
    assert "patient_consent_required" in codes(refused)
    assert Message.objects.count() == 1
    # Positions that are not plain digits are ignored, not a server error.
    odd = compose(b, sender=B, to=E, confirm=(E,), subject="TR : avis", path=path, keep="\u00b2")
    assert odd.status_code == 400 and "patient_consent_required" in codes(odd)

    forwarded = sent_id(
        compose(
            b,
            sender=B,
            to=E,
            confirm=(E,),
            subject="TR : avis",
            body="Pour information.\n",
            path=path,
            keep="0",
            patient_consent="on",
        )
    )
    message = Message.objects.get(public_id=forwarded)
    assert message.sender_address == B and message.in_reply_to is None
    e = unlocked(world.e)
    html = e.get(message_url(forwarded, E)).content.decode()
    assert 'data-code="valid"' in html and "Dr Alice Durand" in html  # signed by B
    assert "cr.pdf" in html
    assert e.get(f"/messagerie/message/{forwarded}/pieces-jointes/0/").content == REPORT


@pytest.mark.requirement("REQ-AFTER-SEND")
@pytest.mark.requirement("REQ-AT-REST")
def test_what_a_forward_carries_and_a_new_file_together_may_pass_the_envelope(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload handler saw only the new file: the largest leaves the envelope at send."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))  # about 26 KiB inline
    a, b = unlocked(world.a), unlocked(world.b)
    carried = b"%PDF-1.7\n" + os.urandom(20_000)
    added = b"%PDF-1.7\n" + os.urandom(15_000)
    original = sent_id(compose(a, files=(("echo.pdf", carried, "application/pdf"),)))
    forwarded = sent_id(
        compose(
            b,
            sender=B,
            to=E,
            confirm=(E,),
            subject="TR : avis",
            path=f"/messagerie/message/{original}/transferer/?boite={B}",
            keep="0",
            patient_consent="on",
            files=(("bilan.pdf", added, "application/pdf"),),
        )
    )
    [blob] = MessageBlob.objects.filter(message__public_id=forwarded)  # the larger one
    assert not Upload.objects.exists()
    e = unlocked(world.e)
    html = e.get(message_url(forwarded, E)).content.decode()
    assert "echo.pdf" in html and "bilan.pdf" in html
    assert e.get(f"/messagerie/message/{forwarded}/pieces-jointes/0/").content == added
    streamed = e.get(f"/messagerie/message/{forwarded}/pieces-volumineuses/0/?boite={E}")
    assert b"".join(streamed.streaming_content) == carried  # type: ignore[attr-defined]
    assert blob.size > len(carried)


@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_forward_past_the_daily_limit_copies_no_large_attachment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward's large parts are copied before the send: past the daily limits they are
    not copied at all (the send would refuse them, after gigabytes of copying)."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))  # about 26 KiB inline
    a, b = unlocked(world.a), unlocked(world.b)
    scan = b"%PDF-1.7\n" + os.urandom(60_000)
    original = sent_id(compose(a, files=(("scan.pdf", scan, "application/pdf"),)))
    assert MessageBlob.objects.count() == 1
    # B's day allows one more small message, not one carrying the scan again.
    monkeypatch.setenv("PLI_DAILY_SEND_BYTES", "40000")
    copies: list[object] = []

    def copy_blob(*args: object, **kwargs: object) -> None:
        copies.append(args)
        pytest.fail("a large attachment was copied past the daily limit")

    monkeypatch.setattr("pli.server.webmail.sending.do_copy_message_blob", copy_blob)
    before = (stored(), sorted(blob_files(world.blob_dir)))
    refused = compose(
        b,
        sender=B,
        to=E,
        confirm=(E,),
        subject="TR : avis",
        path=f"/messagerie/message/{original}/transferer/?boite={B}",
        keep_large="0",
        patient_consent="on",
    )
    assert "daily_limit_reached" in codes(refused)
    assert copies == []
    assert (stored(), sorted(blob_files(world.blob_dir))) == before
    assert not Upload.objects.exists()
    assert refusals() == ['{"code":"daily_limit_reached"}']
    # Without the scan, the same forward fits.
    sent_id(
        compose(
            b,
            sender=B,
            to=E,
            confirm=(E,),
            subject="TR : avis",
            path=f"/messagerie/message/{original}/transferer/?boite={B}",
            keep_large="",
            patient_consent="on",
        )
    )


@pytest.mark.requirement("REQ-RESILIENCE")
def test_a_forward_to_a_full_mailbox_copies_no_large_attachment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nor when the recipient's mailbox has no room for it: refused before the copies."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))  # about 26 KiB inline
    a, b = unlocked(world.a), unlocked(world.b)
    scan = b"%PDF-1.7\n" + os.urandom(60_000)
    original = sent_id(compose(a, files=(("scan.pdf", scan, "application/pdf"),)))
    # E's mailbox has room for a small message, not for one carrying the scan again.
    monkeypatch.setenv("PLI_MAILBOX_QUOTA_BYTES", "40000")

    def copy_blob(*args: object, **kwargs: object) -> None:
        pytest.fail("a large attachment was copied for a mailbox without room for it")

    monkeypatch.setattr("pli.server.webmail.sending.do_copy_message_blob", copy_blob)
    before = (stored(), sorted(blob_files(world.blob_dir)))
    forward = {
        "sender": B,
        "to": E,
        "confirm": (E,),
        "subject": "TR : avis",
        "path": f"/messagerie/message/{original}/transferer/?boite={B}",
        "patient_consent": "on",
    }
    refused = compose(b, keep_large="0", **forward)  # type: ignore[arg-type]
    assert "recipient_mailbox_full" in codes(refused)
    assert E in refused.content.decode()  # who has no room, named
    assert (stored(), sorted(blob_files(world.blob_dir))) == before
    assert not Upload.objects.exists()
    assert refusals() == ['{"code":"recipient_mailbox_full"}']
    # Without the scan, the same forward fits.
    sent_id(compose(b, keep_large="", **forward))  # type: ignore[arg-type]


@pytest.mark.requirement("REQ-AFTER-SEND")
@pytest.mark.requirement("REQ-OPPOSITION")
def test_a_forward_keeps_the_patient_and_its_opposition_check(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    original = sent_id(compose(a, patient_id=valid_nir()))
    dpo, _ = make_account("dpo@operator.pli.test", role=Role.DPO)
    do_record_opposition(dpo, valid_nir(), None)
    refused = compose(
        b,
        sender=B,
        to=E,
        confirm=(E,),
        subject="TR : avis",
        path=f"/messagerie/message/{original}/transferer/?boite={B}",
        patient_id="",  # the forwarded message's patient is kept whatever the form says
        patient_consent="on",
    )
    assert "patient_opposed" in codes(refused)
    assert Message.objects.count() == 1


def test_a_folder_page_reads_its_envelopes_kept_in_the_database_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    for number in range(3):
        sent_id(compose(a, subject=f"Avis n° {number}", confirm=(B,) if number == 0 else ()))
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "0")  # one in the blob store
    sent_id(compose(a, subject="Avis n° 3", confirm=()))
    assert MessageEnvelope.objects.count() == 3
    with CaptureQueriesContext(connection) as queries:
        page = b.get(INBOX).content.decode()
    for number in range(4):  # each opened with the vault key: its subject shown
        assert f"Avis n° {number}" in page
    read = [q["sql"] for q in queries.captured_queries if "messaging_messageenvelope" in q["sql"]]
    assert len(read) == 1, read  # one query for the page, not one a row


def test_a_folder_page_does_not_open_an_envelope_too_large_to_list(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone in the directory may send ten-MB envelopes, about a second each to open: a
    listing opens only those up to PLI_WEBMAIL_LIST_OPEN_BYTES; the others show their
    subject when opened."""
    a, b = unlocked(world.a), unlocked(world.b)
    sent_id(compose(a, subject="Avis court"))
    scan = b"%PDF-1.7\n" + os.urandom(40_000)
    large = sent_id(
        compose(a, subject="Avis long", confirm=(), files=(("scan.pdf", scan, "application/pdf"),))
    )
    small, big = Message.objects.order_by("pk").values_list("size", flat=True)
    assert small < big
    monkeypatch.setenv("PLI_WEBMAIL_LIST_OPEN_BYTES", str(small))
    opened = AuditEvent.objects.filter(action=AuditAction.MESSAGES_OPENED).count()
    page = b.get(INBOX).content.decode()
    assert "Avis court" in page and "Avis long" not in page
    assert "objet affiché à l'ouverture" in page
    # Only the listed one was opened (and traced).
    assert AuditEvent.objects.filter(action=AuditAction.MESSAGES_OPENED).count() == opened + 1
    assert "Avis long" in b.get(message_url(large, B)).content.decode()
    monkeypatch.setenv("PLI_WEBMAIL_LIST_OPEN_BYTES", "0")
    with pytest.raises(ConfigurationError, match="PLI_WEBMAIL_LIST_OPEN_BYTES"):
        b.get(INBOX)


def test_a_message_page_does_not_open_a_thread_entry_too_large_to_list(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread under a message is opened (to tell read receipts from replies) only for
    envelopes a folder page would open: a thread of ten-MB answers costs no more."""
    a, b = unlocked(world.a), unlocked(world.b)
    original = sent_id(compose(a, subject="Avis court"))
    scan = b"%PDF-1.7\n" + os.urandom(40_000)
    sent_id(
        compose(
            b,
            sender=B,
            to=A,
            confirm=(),
            subject="RE : Avis court",
            body="Le scanner est joint.\n",
            path=f"/messagerie/message/{original}/repondre/?boite={B}",
            files=(("scan.pdf", scan, "application/pdf"),),
        )
    )
    small, big = Message.objects.order_by("pk").values_list("size", flat=True)

    def opened_on_view(limit: int) -> int:
        monkeypatch.setenv("PLI_WEBMAIL_LIST_OPEN_BYTES", str(limit))
        before = AuditEvent.objects.filter(action=AuditAction.MESSAGES_OPENED).count()
        assert a.get(message_url(original, A)).status_code == 200
        return AuditEvent.objects.filter(action=AuditAction.MESSAGES_OPENED).count() - before

    assert opened_on_view(big) == 2  # the message, and its answer in the thread
    assert opened_on_view(small) == 1  # the message only


def test_a_message_page_lists_only_the_most_recent_entries_of_a_long_thread(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may answer in a thread as often as the daily limits allow: the page lists
    the most recent entries and counts the others, in French and in English."""
    monkeypatch.setattr(webmail_views, "THREAD_LISTED", 3)
    a, b = unlocked(world.a), unlocked(world.b)
    original = sent_id(compose(a, subject="Avis court"))
    for n in range(1, 6):
        sent_id(
            compose(
                b,
                sender=B,
                to=A,
                confirm=(),
                subject=f"Réponse n° {n}",
                path=f"/messagerie/message/{original}/repondre/?boite={B}",
            )
        )
    page = a.get(message_url(original, A)).content.decode()
    listed = re.findall(r"Réponse n° (\d)", page)
    assert listed == ["3", "4", "5"]  # the three most recent, oldest first
    assert 'data-older="2"' in page
    assert "Et 2 messages plus anciens dans ce fil, non affichés." in page
    english = a.get(message_url(original, A), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "And 2 older messages in this thread, not shown." in english
    # Opened from the newest reply, which A's reading answers with a receipt: listed are
    # replies 3 and 4 and that receipt; the original and replies 1 and 2 are counted.
    newest = Message.objects.order_by("-pk").values_list("public_id", flat=True)[0]
    one_more = a.get(message_url(newest, A)).content.decode()
    thread_part = one_more[one_more.index('id="thread-title"') :]
    assert re.findall(r"Réponse n° (\d)", thread_part) == ["3", "4"]
    assert 'data-kind="receipt"' in thread_part
    assert 'data-older="3"' in thread_part
    monkeypatch.setattr(webmail_views, "THREAD_LISTED", 100)
    assert "data-older" not in a.get(message_url(original, A)).content.decode()


def test_a_reply_joins_the_thread_of_the_original(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    original_id = sent_id(compose(a))
    path = f"/messagerie/message/{original_id}/repondre/?boite={B}"
    page = b.get(path).content.decode()
    assert "RE : Avis cardiologique réf. 2026-117" in page
    assert f'value="{A}"' in page  # the recipient: the sender of the original
    assert "&gt; voici mon avis sur votre patiente." in page

    reply_id = sent_id(
        compose(
            b,
            sender=B,
            to=A,
            confirm=(),
            subject="RE : Avis cardiologique réf. 2026-117",
            body="Merci.\n",
            path=path,
        )
    )
    original = Message.objects.get(public_id=original_id)
    reply = Message.objects.get(public_id=reply_id)
    assert reply.in_reply_to == original and reply.thread_id == original.thread_id
    envelope = read_envelope(MessageCopy.objects.get(message=reply, mailbox__address=A))
    inner = parse_inner_message(open_envelope(envelope, vault_key(world.a), trust(world.ca)).mime)
    first = parse_inner_message(
        open_envelope(
            read_envelope(MessageCopy.objects.get(message=original, mailbox__address=A)),
            vault_key(world.a),
            trust(world.ca),
        ).mime
    )
    assert inner.in_reply_to == first.message_id
    assert inner.references == [first.message_id]
    html = a.get(message_url(reply_id, A)).content.decode()
    assert "Dans le même fil" in html and "message auquel celui-ci répond" in html
    # The sender's own copy offers no reply to itself, only a forward.
    own = a.get(message_url(original_id, A)).content.decode()
    assert "/repondre/" not in own and "/transferer/" in own


# --------------------------------------------------------------------------- folders


def test_archive_restore_and_delete_act_on_the_readers_copy(world: World) -> None:
    a, b = unlocked(world.a), unlocked(world.b)
    message_id = sent_id(compose(a))
    url = f"/messagerie/message/{message_id}"
    moved = b.post(f"{url}/deplacer/?boite={B}", {"folder": "archive"})
    assert moved.status_code == 302 and "dossier=inbox" in moved["Location"]
    copy = MessageCopy.objects.get(message__public_id=message_id, mailbox__address=B)
    assert copy.folder == "archive"
    assert "Avis cardiologique" in b.get(f"{INBOX}?boite={B}&dossier=archive").content.decode()
    assert "Avis cardiologique" not in b.get(INBOX).content.decode()
    assert b.post(f"{url}/deplacer/?boite={B}", {"folder": "sent"}).status_code == 302
    assert MessageCopy.objects.get(pk=copy.pk).folder == "archive"  # refused: bad_folder
    b.post(f"{url}/deplacer/?boite={B}", {"folder": "inbox"})
    assert MessageCopy.objects.get(pk=copy.pk).folder == "inbox"

    assert b.post(f"{url}/supprimer/?boite={B}").status_code == 302
    assert MessageCopy.objects.get(pk=copy.pk).folder == "trash"
    trash = b.get(f"{INBOX}?boite={B}&dossier=trash").content.decode()
    assert "Avis cardiologique" in trash
    # From the trash, for good: only once confirmed (a question first, by GET or POST alike).
    for asked in (b.get(f"{url}/supprimer/?boite={B}"), b.post(f"{url}/supprimer/?boite={B}")):
        assert asked.status_code == 200
        assert "Supprimer définitivement ce message ?" in asked.content.decode()
        assert 'name="confirm" value="1"' in asked.content.decode()
        assert MessageCopy.objects.filter(pk=copy.pk, folder="trash").exists()
    b.post(f"{url}/supprimer/?boite={B}", {"confirm": "1"})
    assert not MessageCopy.objects.filter(pk=copy.pk).exists()
    assert b.get(message_url(message_id, B)).status_code == 404
    # A's copy and the delivery state stay.
    html = a.get(message_url(message_id, A)).content.decode()
    assert 'data-code="valid"' in html and f'data-recipient="{B}"' in html
    moves = AuditEvent.objects.filter(action__in=["messages.moved", "messages.deleted"])
    assert moves.count() == 4


# --------------------------------------------------------------------------- who sees what


@pytest.mark.requirement("REQ-E2E")
def test_a_colleague_and_an_outsider_get_404_for_every_message_url(world: World) -> None:
    a = unlocked(world.a)
    message_id = sent_id(compose(a, files=(("cr.pdf", REPORT, "application/pdf"),)))
    missing = "msg_" + "0" * 32
    base = f"/messagerie/message/{message_id}"
    gets = ["/", "/repondre/", "/transferer/", "/pieces-jointes/0/", "/supprimer/"]
    posts: list[tuple[str, dict[str, str]]] = [
        ("/deplacer/", {"folder": "archive"}),
        ("/supprimer/", {}),
        ("/supprimer/", {"confirm": "1"}),
        ("/repondre/", {"sender": D, "recipients": A, "subject": "x", "action": "send"}),
    ]
    for user in (world.d, world.e):
        client = unlocked(user)
        reference = client.get(f"/messagerie/message/{missing}/")
        assert reference.status_code == 404
        for suffix in gets:
            for mailbox in ("", f"?boite={B}", f"?boite={A}"):
                response = client.get(base + suffix + mailbox)
                assert response.status_code == 404, (user, suffix, mailbox)
                assert without_tokens(response) == without_tokens(reference)
        for suffix, data in posts:
            response = client.post(base + suffix + f"?boite={B}", data)
            assert response.status_code == 404, (user, suffix)
        assert client.get(f"{INBOX}?boite={B}").status_code == 404
    # A page number that is not plain digits: the same answer as an unknown folder.
    for page in ("\u00b2", "0", "9" * 5000):
        assert a.get(INBOX, {"page": page}).status_code == 404, page[:10]
    assert MessageCopy.objects.filter(message__public_id=message_id).count() == 2
    assert set(MessageCopy.objects.values_list("folder", flat=True)) == {"inbox", "sent"}
    # The anonymous visitor is sent to the login page, for reading and for acting alike.
    anonymous = Client()
    for suffix in gets:
        response = anonymous.get(base + suffix)
        assert response.status_code == 302 and "/compte/connexion/" in response["Location"]
    for suffix, data in posts:
        response = anonymous.post(base + suffix, data)
        assert response.status_code in (302, 403)
    assert Message.objects.count() == 1


def test_a_locked_vault_sends_to_the_unlock_page_and_back(world: World) -> None:
    message_id = sent_id(compose(unlocked(world.a)))
    b = signed_in(world.b)  # signed in, vault not unlocked
    url = message_url(message_id, B)
    response = b.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(UNLOCK + "?next=")
    back = b.post(response["Location"], {"passphrase": PASSPHRASE})
    assert back.status_code == 302 and back["Location"] == url
    assert 'data-code="valid"' in b.get(url).content.decode()

    c = signed_in(world.b)
    assert c.get(COMPOSE)["Location"].startswith(UNLOCK)
    inbox = c.get(INBOX).content.decode()
    assert 'data-code="vault_locked"' in inbox and "(clé verrouillée)" in inbox
    # A send with a locked key keeps what was typed, sends nothing.
    before = Message.objects.count()  # A's message, and B's read receipt (RFC 8098)
    refused = compose(c, sender=B, to=A, confirm=(), body="Texte gardé\n")
    assert refused.status_code == 400 and "vault_locked" in codes(refused)
    assert "Texte gardé" in refused.content.decode()
    assert Message.objects.count() == before


# --------------------------------------------------------------------------- attachments


def test_attachments_stay_in_memory_and_too_large_ones_are_refused(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_temporary_file(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an upload went to a temporary file")

    monkeypatch.setattr(TemporaryFileUploadHandler, "new_file", no_temporary_file)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100  # Django would write anything larger to disk
    a = unlocked(world.a)
    sent_id(compose(a, files=(("cr.pdf", REPORT, "application/pdf"),)))

    # An envelope of 300 KiB holds about 26 KiB of attachments: a larger one is encrypted
    # as it arrives, into the blob store, and travels beside the envelope.
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", str(100_000))
    scan = b"%PDF-1.7\n" + bytes(60_000)
    streamed = sent_id(compose(a, files=(("scan.pdf", scan, "application/pdf"),)))
    assert MessageBlob.objects.filter(message__public_id=streamed).count() == 1
    assert not Upload.objects.exists()

    big = b"%PDF-1.7\n" + bytes(200 * 1024)
    refused = compose(a, files=(("big.pdf", big, "application/pdf"),))
    assert refused.status_code == 413
    assert "attachments_too_large" in codes(refused)
    assert Message.objects.count() == 2
    assert not Upload.objects.exists()
    assert MessageBlob.objects.count() == 1


def test_a_compose_post_without_its_csrf_token_stores_nothing_even_a_large_file(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose views read their body before the CSRF check (the token is in it, and the
    upload handler must be set first): a forged post is refused, and what its body made
    on the way (a large file is encrypted into the blob store as it arrives) is removed."""
    monkeypatch.setenv("PLI_MAX_ENVELOPE_BYTES", str(300 * 1024))
    monkeypatch.setenv("PLI_MAX_ATTACHMENT_BYTES", str(1_000_000))
    scan = b"%PDF-1.7\n" + os.urandom(200_000)
    signed = unlocked(world.a)
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = signed.cookies
    attachment = SimpleUploadedFile("scan.pdf", scan, content_type="application/pdf")
    form: dict[str, Any] = {
        "sender": A,
        "recipients": B,
        "subject": "Avis",
        "body": "Cher confrère,\n",
        "action": "send",
        "confirm": [B],
        "attachments": [attachment],
        "end": "1",
    }
    # The page sets the CSRF cookie: without it the middleware refuses before the body.
    page = strict.get(COMPOSE).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None and "csrftoken" in strict.cookies
    blobs_before = blob_files(world.blob_dir)
    # Without a token, and with a wrong one: the body is read (the large file encrypted
    # into the blob store), then refused. Another site's Origin, and HTTPS without a
    # Referer: refused before the body is read.
    cases: list[tuple[bool, dict[str, str], dict[str, str]]] = [
        (False, {}, {}),
        (False, {"csrfmiddlewaretoken": "x" * 64}, {}),
        (False, {}, {"Origin": "https://ailleurs.example"}),
        (True, {}, {}),
    ]
    for secure, token_field, headers in cases:
        attachment.seek(0)
        data = {**form, **token_field}
        refused = strict.post(COMPOSE, data, secure=secure, headers=headers)
        assert refused.status_code == 403, (secure, token_field, headers)
        assert stored() == (0, 0, 0)
        assert not Upload.objects.exists() and not MessageBlob.objects.exists()
        assert blob_files(world.blob_dir) == blobs_before
    # The same post with the page's token is sent: the refusals above were the token's.
    attachment.seek(0)
    sent = strict.post(COMPOSE, {**form, "csrfmiddlewaretoken": token.group(1)})
    message_id = sent_id(sent)
    assert MessageBlob.objects.filter(message__public_id=message_id).count() == 1


def test_attachment_names_and_types_are_made_safe() -> None:
    from pli.server.webmail.views import content_disposition, safe_filename

    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\x\\rapport.pdf") == "rapport.pdf"
    assert safe_filename(".hidden") == "hidden"
    assert safe_filename("a\u202egnp.exe") == "agnp.exe"
    assert safe_filename("") == "piece-jointe"
    assert content_disposition('x"; filename="evil.html') == (
        'attachment; filename="x__ filename__evil.html"; '
        "filename*=UTF-8''x%22%3B%20filename%3D%22evil.html"
    )


# --------------------------------------------------------------------------- directory


@pytest.mark.requirement("REQ-VERIFY-RECIPIENT")
def test_the_directory_suggests_correspondents_with_profession_and_place(world: World) -> None:
    a = unlocked(world.a)
    html = a.get("/messagerie/annuaire/", {"q": "durand"}).content.decode()
    assert "Dr Alice Durand" in html and "Médecin" in html and "Clinique B" in html
    assert f'name="add_recipient" value="{B}"' in html
    # Red-listed mailboxes are never suggested from a name.
    Mailbox.objects.filter(address=B).update(red_list=True)
    assert B not in a.get("/messagerie/annuaire/", {"q": "durand"}).content.decode()
    # Without the script: "Chercher" and a suggestion post the form back.
    searched = a.post(
        COMPOSE, {"sender": A, "q": "moreau", "action": "search", "body": "gardé", "end": "1"}
    )
    assert f'value="{D}"' in searched.content.decode() and "gardé" in searched.content.decode()
    added = a.post(
        COMPOSE, {"sender": A, "recipients": "", "add_recipient": D, "body": "gardé", "end": "1"}
    )
    html = added.content.decode()
    assert f'value="{D}"' in html and f'name="confirm" value="{D}"' in html
    assert Message.objects.count() == 0


def test_pages_need_a_login_and_have_no_inline_script(world: World) -> None:
    anonymous = Client()
    for path in (INBOX, COMPOSE, "/messagerie/annuaire/?q=du", "/messagerie/destinataires/"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/compte/connexion/" in response["Location"]
    a = unlocked(world.a)
    for path in (INBOX, COMPOSE):
        html = a.get(path).content.decode()
        assert "<script>" not in html and " style=" not in html and " on" + "click" not in html
        assert '<script src="/static/pli/webmail.js" defer></script>' in html


def test_a_workstation_custody_user_is_sent_to_the_client(world: World) -> None:
    message_id = sent_id(compose(unlocked(world.a)))
    world.e.custody = Custody.WORKSTATION
    world.e.save()
    e = signed_in(world.e)
    assert "workstation_custody" in codes(e.get(COMPOSE))
    # Someone else's message still answers as a missing one.
    assert e.get(f"/messagerie/message/{message_id}/repondre/?boite={B}").status_code == 404


# --------------------------------------------------------------------------- read receipts


def test_a_read_receipt_gives_the_original_date_in_the_servers_zone_named(
    world: World, settings: Settings
) -> None:
    settings.TIME_ZONE = "Europe/Paris"
    a, b = unlocked(world.a), unlocked(world.b)
    message_id = sent_id(compose(a))
    b.get(message_url(message_id, B))  # the first reading sends the receipt
    receipt = Message.objects.get(sender_address=B, in_reply_to__public_id=message_id)
    sent = MessageCopy.objects.get(message__public_id=message_id, mailbox__address=A)
    original = parse_inner_message(
        open_envelope(read_envelope(sent), vault_key(world.a), trust(world.ca)).mime
    )
    local = original.date.astimezone(ZoneInfo("Europe/Paris"))
    months = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août"]
    months += ["septembre", "octobre", "novembre", "décembre"]
    said = f"{local.day} {months[local.month - 1]} {local.year} à {local:%H:%M} (Europe/Paris)"
    html = a.get(message_url(receipt.public_id, A)).content.decode()
    assert f"du {said} adressé à {B} a été affiché par son destinataire." in html
    assert " UTC" not in html
