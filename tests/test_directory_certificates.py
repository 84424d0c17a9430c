"""Publishing mailbox certificates and discovering them to seal messages (REQ-LPS, REQ-E2E).

Certificates come from the session's real test PKI (tests/conftest.py); the
round trip fetches a certificate through the API, seals for it with
``pli.crypto.seal`` and opens the envelope with the recipient's key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from pli.crypto import (
    certificate_fingerprint,
    certificate_pem,
    load_certificate,
    open_envelope,
    seal,
)
from pli.crypto.smime import canonical_crlf
from pli.mime import Draft, build_inner_message, parse_inner_message
from pli.server.directory.actions import (
    BadAddress,
    BadCertificate,
    CertificateAddressMismatch,
    CertificateAlreadyPublished,
    CertificateExpired,
    do_publish_mailbox_certificate,
    normalise_address,
)
from pli.server.directory.models import (
    IdentifierType,
    Mailbox,
    MailboxCertificate,
    MailboxType,
    Professional,
)
from tests.conftest import ALICE, ALICE_IDNPS, BOB, CAROL, Pki

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(member_client: Client) -> Client:
    """Every request of these tests comes from a signed-in member (issue "accounts")."""
    return member_client


URL = "/api/directory/certificates"
NOT_FOUND = {
    "code": "mailbox_not_found",
    "message": "Aucune boîte aux lettres de l'annuaire ne correspond à cette adresse.",
}


@dataclass(frozen=True)
class Mailboxes:
    alice: Mailbox
    bob: Mailbox
    carol: Mailbox


@pytest.fixture
def mailboxes() -> Mailboxes:
    alice = Professional.objects.create(
        identifier_type=IdentifierType.RPPS,
        identifier=ALICE_IDNPS[1:],
        national_id=ALICE_IDNPS,
        last_name="MARTIN",
        first_name="Alice",
    )
    bob = Professional.objects.create(
        identifier_type=IdentifierType.ADELI,
        identifier="751234567",
        national_id="0751234567",
        last_name="DURAND",
        first_name="Bob",
    )
    return Mailboxes(
        alice=Mailbox.objects.create(address=ALICE, kind=MailboxType.PERSONAL, professional=alice),
        bob=Mailbox.objects.create(address=BOB, kind=MailboxType.PERSONAL, professional=bob),
        # Carol's mailbox is on the red list.
        carol=Mailbox.objects.create(address=CAROL, kind=MailboxType.PERSONAL, red_list=True),
    )


def pem_of(key: Any) -> str:
    return certificate_pem(key.certificate).decode("ascii")


def fetch(client: Client, address: str, status: int = 200) -> Any:
    response = client.get(URL, {"address": address})
    assert response.status_code == status, response.content
    return response.json()


# --- discovery and sealing -------------------------------------------------------------------
@pytest.mark.requirement("REQ-LPS")
@pytest.mark.requirement("REQ-E2E")
def test_client_seals_for_a_discovered_certificate_and_recipient_opens(
    client: Client, pki: Pki, mailboxes: Mailboxes
) -> None:
    do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))

    body = fetch(client, ALICE)
    assert body["address"] == ALICE
    [published] = body["certificates"]
    certificate = load_certificate(published["pem"].encode("ascii"))
    assert published["fingerprint"] == certificate_fingerprint(certificate)
    assert published["serial"] == format(pki.alice.certificate.serial_number, "x")

    inner = build_inner_message(
        Draft(
            from_address=BOB,
            to=[ALICE],
            subject="Compte rendu",
            body_text="Chère consœur,\nci-joint le compte rendu.\n",
        )
    )
    envelope = seal(inner, pki.bob, [certificate])
    opened = open_envelope(envelope, pki.alice, pki.trust())
    assert opened.mime == canonical_crlf(inner)
    assert opened.signer.emails == [BOB]
    assert parse_inner_message(opened.mime).subject == "Compte rendu"


@pytest.mark.requirement("REQ-LPS")
def test_only_currently_valid_certificates_are_listed(
    client: Client, pki: Pki, mailboxes: Mailboxes
) -> None:
    current = do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    revoked = do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice_revoked))
    MailboxCertificate.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    # Rows the action would refuse today, written as an older import would have left them.
    expired = pki.alice_expired.certificate
    MailboxCertificate.objects.create(
        mailbox=mailboxes.alice,
        pem=pem_of(pki.alice_expired),
        serial=format(expired.serial_number, "x"),
        fingerprint=certificate_fingerprint(expired),
        not_before=expired.not_valid_before_utc,
        not_after=expired.not_valid_after_utc,
    )
    future = timezone.now() + dt.timedelta(days=2)
    MailboxCertificate.objects.create(
        mailbox=mailboxes.alice,
        pem=pem_of(pki.alice_foreign),
        serial="1",
        fingerprint="0" * 64,
        not_before=future,
        not_after=future + dt.timedelta(days=365),
    )

    body = fetch(client, ALICE)
    assert [c["fingerprint"] for c in body["certificates"]] == [current.fingerprint]
    assert set(body["certificates"][0]) == {
        "pem",
        "serial",
        "fingerprint",
        "not_before",
        "not_after",
    }


def test_mailbox_without_certificate_lists_none(client: Client, mailboxes: Mailboxes) -> None:
    assert fetch(client, BOB) == {"address": BOB, "certificates": []}


def test_address_is_matched_whatever_its_case(
    client: Client, pki: Pki, mailboxes: Mailboxes
) -> None:
    do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    body = fetch(client, f"  {ALICE.upper()} ")
    assert body["address"] == ALICE
    assert len(body["certificates"]) == 1


# --- not found, refused ----------------------------------------------------------------------
def test_unknown_address_is_404_with_stable_code(client: Client, mailboxes: Mailboxes) -> None:
    assert fetch(client, "personne@pli.test", 404) == NOT_FOUND


def test_closed_mailbox_is_not_found(client: Client, pki: Pki, mailboxes: Mailboxes) -> None:
    do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    Mailbox.objects.filter(pk=mailboxes.alice.pk).update(active=False)
    assert fetch(client, ALICE, 404) == NOT_FOUND


@pytest.mark.requirement("REQ-DIRECTORY")
def test_red_listed_mailbox_answers_only_authenticated_members(
    client: Client, pki: Pki, mailboxes: Mailboxes
) -> None:
    do_publish_mailbox_certificate(mailboxes.carol, pem_of(pki.carol))
    # An anonymous caller gets nothing at all: the API requires authentication.
    assert Client().get("/api/directory/certificates", {"address": CAROL}).status_code == 401
    member = get_user_model().objects.create_user("bob", BOB, "un mot de passe assez long")
    client.force_login(member)
    body = fetch(client, CAROL)
    assert body["address"] == CAROL
    assert len(body["certificates"]) == 1


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice@",
        "@pli.test",
        "alice@localhost",
        "alice martin@pli.test",
        "alice..martin@pli.test",
        ".alice@pli.test",
        "alice@pli..test",
        "alice@-pli.test",
        "alice@pli.test\r\nBcc: eve@evil.test",
        '"alice"@pli.test',
        "alice@[127.0.0.1]",
        "alicé@pli.test",
        "a" * 65 + "@pli.test",
        "alice@" + "d" * 250 + ".test",
        "alice@pli.test,bob@pli.test",
    ],
)
def test_bad_address_is_422_bad_address(client: Client, address: str) -> None:
    body = fetch(client, address, 422)
    assert body == {"code": "bad_address", "message": "Adresse de messagerie invalide."}


def test_missing_address_parameter_is_bad_address(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 422
    assert response.json()["code"] == "bad_address"


def test_certificates_endpoint_is_documented(client: Client) -> None:
    document = client.get("/api/openapi.json").json()
    operation = document["paths"][URL]["get"]
    assert operation["operationId"] == "directory_certificates"
    assert {"200", "404", "422"} <= set(operation["responses"])


# --- publication -----------------------------------------------------------------------------
def test_publication_stores_what_the_certificate_says(pki: Pki, mailboxes: Mailboxes) -> None:
    row = do_publish_mailbox_certificate(mailboxes.alice, certificate_pem(pki.alice.certificate))
    certificate = pki.alice.certificate
    row.refresh_from_db()
    assert row.mailbox == mailboxes.alice
    assert row.fingerprint == certificate_fingerprint(certificate)
    assert row.serial == format(certificate.serial_number, "x")
    assert row.not_before == certificate.not_valid_before_utc
    assert row.not_after == certificate.not_valid_after_utc
    assert row.revoked_at is None
    assert load_certificate(row.pem.encode("ascii")) == certificate


def test_publication_is_idempotent(pki: Pki, mailboxes: Mailboxes) -> None:
    first = do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    again = do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    assert again.pk == first.pk
    assert MailboxCertificate.objects.count() == 1


def test_certificate_of_another_address_is_refused(pki: Pki, mailboxes: Mailboxes) -> None:
    with pytest.raises(CertificateAddressMismatch) as refused:
        do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.bob))
    assert refused.value.code == "certificate_address_mismatch"
    assert not MailboxCertificate.objects.exists()


def test_expired_certificate_is_refused(pki: Pki, mailboxes: Mailboxes) -> None:
    with pytest.raises(CertificateExpired):
        do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice_expired))
    assert not MailboxCertificate.objects.exists()


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x03\x02\x01\x01",
        "chain",
    ],
)
def test_unreadable_or_chained_input_is_refused(
    pki: Pki, mailboxes: Mailboxes, pem: str | bytes
) -> None:
    if pem == "chain":
        pem = pem_of(pki.alice) + certificate_pem(pki.authority.certificate).decode("ascii")
    with pytest.raises(BadCertificate) as refused:
        do_publish_mailbox_certificate(mailboxes.alice, pem)
    assert refused.value.code == "bad_certificate"
    assert not MailboxCertificate.objects.exists()


def test_certificate_already_published_elsewhere_is_refused(pki: Pki, mailboxes: Mailboxes) -> None:
    do_publish_mailbox_certificate(mailboxes.alice, pem_of(pki.alice))
    Mailbox.objects.filter(pk=mailboxes.alice.pk).update(address="alice.ancienne@pli.test")
    successor = Mailbox.objects.create(address=ALICE, kind=MailboxType.PERSONAL)
    with pytest.raises(CertificateAlreadyPublished):
        do_publish_mailbox_certificate(successor, pem_of(pki.alice))
    assert MailboxCertificate.objects.get().mailbox_id == mailboxes.alice.pk


@pytest.mark.parametrize(
    ("typed", "stored"),
    [("Alice.Martin@PLI.test", ALICE), ("  bob.durand@pli.test\t", BOB)],
)
def test_addresses_are_normalised(typed: str, stored: str) -> None:
    assert normalise_address(typed) == stored


def test_bad_address_error_has_stable_code() -> None:
    with pytest.raises(BadAddress) as refused:
        normalise_address("pas une adresse")
    assert refused.value.code == "bad_address"
