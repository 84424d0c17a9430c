"""Sealed round trips: signed then encrypted, opened and verified as the recipient would."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pli.crypto import (
    Certificate,
    NotARecipient,
    SignerExpired,
    SoftwareKey,
    TrustStore,
    WeakKey,
    build_certificate_request,
    envelope_to_smime,
    issue_certificate,
    open_envelope,
    seal,
)
from pli.crypto.smime import canonical_crlf
from pli.mime import Draft, build_inner_message, parse_inner_message
from tests.conftest import ALICE, ALICE_IDNPS, BOB, CAROL, Pki


def letter(sender: str = ALICE, to: tuple[str, ...] = (BOB,), subject: str = "Avis") -> bytes:
    return build_inner_message(
        Draft(
            from_address=sender,
            to=list(to),
            subject=subject,
            body_text="Cher confrère,\nvoici le compte rendu.\n",
            patient_id="1 85 05 78 006 084 91",
        )
    )


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_recipient_opens_and_verifies_signer(pki: Pki) -> None:
    inner = letter()
    envelope = seal(inner, pki.alice, [pki.bob.certificate])
    opened = open_envelope(envelope, pki.bob, pki.trust())
    assert opened.mime == canonical_crlf(inner)
    assert opened.signer.emails == [ALICE]
    assert opened.signer.national_id == ALICE_IDNPS
    assert opened.signer.certificate == pki.alice.certificate
    assert opened.details.revocation_checked is True
    assert opened.details.digest_algorithm == "sha256"
    assert opened.details.content_encryption == "aes256_cbc"
    assert opened.signed_at is not None
    assert abs(opened.signed_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    message = parse_inner_message(opened.mime)
    assert message.subject == "Avis"
    assert message.patient_id == "nir:185057800608491"


@pytest.mark.requirement("REQ-E2E")
def test_sender_can_read_own_sent_message(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    opened = open_envelope(envelope, pki.alice, pki.trust())
    assert opened.signer.emails == [ALICE]


@pytest.mark.requirement("REQ-E2E")
def test_outsider_cannot_open(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    with pytest.raises(NotARecipient) as caught:
        open_envelope(envelope, pki.carol, pki.trust())
    assert caught.value.code == "not_a_recipient"


@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-AT-REST")
def test_envelope_does_not_contain_plaintext(pki: Pki) -> None:
    secret_subject = "Confidentiel-Subject-7391"
    envelope = seal(letter(subject=secret_subject), pki.alice, [pki.bob.certificate])
    for needle in (secret_subject.encode(), b"compte rendu", b"185057800608491"):
        assert needle not in envelope
        assert needle not in envelope_to_smime(envelope)


def test_every_recipient_opens_the_same_message(pki: Pki) -> None:
    inner = letter(to=(BOB, CAROL))
    envelope = seal(inner, pki.alice, [pki.bob.certificate, pki.carol.certificate])
    assert open_envelope(envelope, pki.bob, pki.trust()).mime == canonical_crlf(inner)
    assert open_envelope(envelope, pki.carol, pki.trust()).mime == canonical_crlf(inner)


def test_smime_text_and_pem_forms_open(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    smime = envelope_to_smime(envelope)
    assert b"smime-type=enveloped-data" in smime
    assert open_envelope(smime, pki.bob, pki.trust()).signer.emails == [ALICE]


class CardSigner:
    """A key that never leaves its 'device': only raw sign / decrypt calls cross."""

    def __init__(self, inner: SoftwareKey) -> None:
        self._inner = inner
        self.calls: list[str] = []

    @property
    def certificate(self) -> Certificate:
        return self._inner.certificate

    def sign(self, data: bytes) -> bytes:
        self.calls.append("sign")
        return self._inner.sign(data)

    def decrypt_key(self, encrypted_key: bytes) -> bytes:
        self.calls.append("decrypt_key")
        return self._inner.decrypt_key(encrypted_key)


@pytest.mark.requirement("REQ-SIGNATURE")
def test_signer_and_decrypter_interfaces_work_without_the_key_object(pki: Pki) -> None:
    card_alice, card_bob = CardSigner(pki.alice), CardSigner(pki.bob)
    envelope = seal(letter(), card_alice, [pki.bob.certificate])
    opened = open_envelope(envelope, card_bob, pki.trust())
    assert opened.signer.emails == [ALICE]
    assert card_alice.calls == ["sign"]
    assert card_bob.calls == ["decrypt_key"]


def test_seal_needs_a_recipient(pki: Pki) -> None:
    with pytest.raises(NotARecipient):
        seal(letter(), pki.alice, [])


def test_ca_refuses_a_weak_key(pki: Pki) -> None:
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    csr = build_certificate_request(weak_key, email="weak@pli.test", common_name="Weak")
    with pytest.raises(WeakKey):
        issue_certificate(pki.authority.key, pki.authority.certificate, csr)


def test_validation_happens_at_opening_time(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=5000)
    with pytest.raises(SignerExpired):
        open_envelope(
            envelope, pki.bob, TrustStore([pki.authority.certificate], [pki.crl]), at=later
        )


def test_forwarded_signed_message_is_flagged_as_not_addressed(pki: Pki) -> None:
    # Bob re-encrypts Alice's signed letter for Carol: genuine, but not to Carol.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.serialization import pkcs7

    from pli.client.sealing import open_file_message
    from pli.crypto.smime import sign_entity

    entity = sign_entity(letter(), pki.alice)
    forwarded = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(entity)
        .add_recipient(pki.carol.certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    result = open_file_message(forwarded, pki.carol, pki.trust())
    assert result.opened.signer.emails == [ALICE]
    assert "not_addressed_to_you" in result.opened.warnings
    direct = open_file_message(
        seal(letter(), pki.alice, [pki.bob.certificate]), pki.bob, pki.trust()
    )
    assert direct.opened.warnings == []
