"""Tampering and bad signers: each gives its own typed error, never a silent pass.

REQ-SIGNATURE: a message is shown as genuine only when everything checks.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from pli.crypto import (
    Certificate,
    CryptoError,
    MalformedEnvelope,
    RevocationPolicy,
    RevocationUnknown,
    SenderMismatch,
    SignatureInvalid,
    SignatureMissing,
    SignerCertificateMismatch,
    SignerExpired,
    SignerRevoked,
    SignerUntrusted,
    SignerUsageInvalid,
    TrustStore,
    UnsupportedAlgorithm,
    build_crl,
    open_envelope,
    seal,
)
from pli.crypto.smime import sign_entity
from pli.mime import Draft, build_inner_message
from tests.conftest import ALICE, BOB, CAROL, Pki
from tests.pki import make_authority
from tests.test_seal_open import letter

pytestmark = pytest.mark.requirement("REQ-SIGNATURE")


def envelope_of(entity: bytes, recipient: Certificate) -> bytes:
    """Encrypt an arbitrary entity for ``recipient``, as an attacker could."""
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(entity)
        .add_recipient(recipient)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def signed_data_of(entity: bytes) -> asn1_cms.ContentInfo:
    body = entity.split(b"\r\n\r\n", 1)[1]
    return asn1_cms.ContentInfo.load(base64.b64decode(body))


def entity_of(info: asn1_cms.ContentInfo) -> bytes:
    encoded = base64.encodebytes(info.dump(force=True)).replace(b"\n", b"\r\n")
    return b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n" + (
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )


def test_every_flipped_byte_is_a_typed_error_or_outside_this_recipients_reach(pki: Pki) -> None:
    inner = letter()
    envelope = seal(inner, pki.alice, [pki.bob.certificate])
    genuine = open_envelope(envelope, pki.bob, pki.trust()).mime
    # Alice's own RecipientInfo is not read when Bob opens: CMS does not
    # authenticate other recipients' key blocks (RFC 5652 §6), so a flip
    # there must leave Bob's message exactly as sealed.
    info = asn1_cms.ContentInfo.load(envelope)
    alice_ri = next(
        ri.dump()
        for ri in info["content"]["recipient_infos"]
        if ri.chosen["rid"].chosen["serial_number"].native == pki.alice.certificate.serial_number
    )
    start = envelope.index(alice_ri)
    other_recipient = range(start, start + len(alice_ri))
    codes: set[str] = set()
    for position in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[position] ^= 0x01
        try:
            opened = open_envelope(bytes(tampered), pki.bob, pki.trust())
        except CryptoError as error:
            codes.add(error.code)
            continue
        assert position in other_recipient, f"flip at {position} went unnoticed"
        assert opened.mime == genuine
    assert {"malformed_envelope", "envelope_corrupted"} <= codes


def test_altered_signed_content_is_detected(pki: Pki) -> None:
    info = signed_data_of(sign_entity(letter(), pki.alice))
    content = bytearray(info["content"]["encap_content_info"]["content"].native)
    content[content.index(b"Avis")] = ord("B")
    info["content"]["encap_content_info"]["content"] = bytes(content)
    envelope = envelope_of(entity_of(info), pki.bob.certificate)
    with pytest.raises(SignatureInvalid) as caught:
        open_envelope(envelope, pki.bob, pki.trust())
    assert caught.value.code == "signature_invalid"
    assert "altered" in str(caught.value)


def test_swapped_signer_certificate_is_detected(pki: Pki) -> None:
    info = signed_data_of(sign_entity(letter(), pki.alice))
    carol = asn1_x509.Certificate.load(
        pki.carol.certificate.public_bytes(serialization.Encoding.DER)
    )
    info["content"]["certificates"] = [carol]
    envelope = envelope_of(entity_of(info), pki.bob.certificate)
    with pytest.raises(SignerCertificateMismatch) as caught:
        open_envelope(envelope, pki.bob, pki.trust())
    assert caught.value.code == "signer_certificate_mismatch"


def test_look_alike_certificate_with_the_same_serial_fails_the_signature(pki: Pki) -> None:
    # A forger's certificate naming Alice's issuer and serial but holding Carol's key.
    forger = make_authority(pki.authority.certificate.subject.rfc4514_string(), pki.foreign.key)
    look_alike = forger.issue(pki.keys["carol"], ALICE, "Dr Alice Martin")
    info = signed_data_of(sign_entity(letter(), pki.alice))
    fake = asn1_x509.Certificate.load(
        look_alike.certificate.public_bytes(serialization.Encoding.DER)
    )
    tbs = fake["tbs_certificate"]
    tbs["serial_number"] = pki.alice.certificate.serial_number
    tbs["issuer"] = asn1_x509.Name.load(pki.authority.certificate.subject.public_bytes())
    info["content"]["certificates"] = [fake]
    envelope = envelope_of(entity_of(info), pki.bob.certificate)
    with pytest.raises(SignatureInvalid):
        open_envelope(envelope, pki.bob, pki.trust())


@pytest.mark.parametrize(
    ("signer_name", "error", "code"),
    [
        ("alice_expired", SignerExpired, "signer_expired"),
        ("alice_revoked", SignerRevoked, "signer_revoked"),
        ("alice_foreign", SignerUntrusted, "signer_untrusted"),
        ("alice_tls_only", SignerUsageInvalid, "signer_usage_invalid"),
    ],
)
def test_bad_signer_certificates_are_refused(
    pki: Pki, signer_name: str, error: type[CryptoError], code: str
) -> None:
    signer = getattr(pki, signer_name)
    envelope = seal(letter(), signer, [pki.bob.certificate])
    with pytest.raises(error) as caught:
        open_envelope(envelope, pki.bob, pki.trust())
    assert caught.value.code == code


def test_signer_address_must_match_from(pki: Pki) -> None:
    envelope = seal(letter(sender=CAROL), pki.alice, [pki.bob.certificate])
    with pytest.raises(SenderMismatch) as caught:
        open_envelope(envelope, pki.bob, pki.trust())
    assert caught.value.code == "sender_mismatch"


@pytest.mark.requirement("REQ-CITY-HOSPITAL")
def test_sender_header_is_accepted_for_an_organisational_mailbox(pki: Pki) -> None:
    # A secretary (Sender) writes for the ward's mailbox (From), signing as herself.
    inner = build_inner_message(
        Draft(
            from_address="cardiologie@chu.pli.test",
            sender=ALICE,
            to=[BOB],
            subject="RDV",
            body_text="Rendez-vous confirmé.",
        )
    )
    opened = open_envelope(seal(inner, pki.alice, [pki.bob.certificate]), pki.bob, pki.trust())
    assert opened.signer.emails == [ALICE]


def test_revocation_unknown_without_crl_fails_closed(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    with pytest.raises(RevocationUnknown):
        open_envelope(envelope, pki.bob, pki.trust(crl=False))
    lenient = TrustStore([pki.authority.certificate], [], RevocationPolicy.IF_AVAILABLE)
    opened = open_envelope(envelope, pki.bob, lenient)
    assert opened.details.revocation_checked is False
    assert opened.warnings == ["revocation_not_checked"]


def test_stale_or_foreign_crl_does_not_count(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    stale = build_crl(
        pki.authority.key, pki.authority.certificate, [], number=9, days=7, now=long_ago
    )
    foreign = build_crl(pki.foreign.key, pki.foreign.certificate, [], number=1)
    for crl in (stale, foreign):
        with pytest.raises(RevocationUnknown):
            open_envelope(envelope, pki.bob, TrustStore([pki.authority.certificate], [crl]))


def test_unsigned_content_is_not_shown_as_genuine(pki: Pki) -> None:
    envelope = envelope_of(letter(), pki.bob.certificate)
    with pytest.raises(SignatureMissing) as caught:
        open_envelope(envelope, pki.bob, pki.trust())
    assert caught.value.code == "signature_missing"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30\x03\x02\x01", b"not an envelope at all\r\n\r\n", b"-----BEGIN CMS-----\nAAAA"],
)
def test_garbage_is_malformed(pki: Pki, data: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        open_envelope(data, pki.bob, pki.trust())


# --- regressions from the security review of 2026-11-22 ---------------------------------------
SPOOFED_HEADERS = [
    b"From: Dr Alice Martin <alice.martin@pli.test> <carol.petit@pli.test>\r\n",
    b"From: <alice.martin@pli.test>\t<carol.petit@pli.test>\r\n",
    b"From: alice.martin@pli.test;carol.petit@pli.test\r\n",
    b"From: alice.martin@pli.test)<carol.petit@pli.test>\r\n",
    b"From: <alice.martin@pli.test>carol.petit@pli.test\r\n",
    b"From: alice.martin@pli.test\r\nFrom : carol.petit@pli.test\r\n",
    b"From: alice.martin@pli.test\r\n\r\r\nSender: carol.petit@pli.test\r\n",
    b"From: alice.martin@pli.test\r\nFrom: carol.petit@pli.test\r\n",
]


@pytest.mark.parametrize("from_lines", SPOOFED_HEADERS)
def test_carol_cannot_pass_as_alice(pki: Pki, from_lines: bytes) -> None:
    inner = (
        from_lines + b"To: bob.durand@pli.test\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <s@pli.test>\r\nSubject: s\r\n\r\nhello\r\n"
    )
    envelope = seal(inner, pki.carol, [pki.bob.certificate])
    with pytest.raises(SenderMismatch):
        open_envelope(envelope, pki.bob, pki.trust())


def test_sender_line_hidden_past_the_header_limit_does_not_count(pki: Pki) -> None:
    padding_headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 900) for i in range(100))
    inner = (
        b"From: alice.martin@pli.test\r\nTo: bob.durand@pli.test\r\n" + padding_headers
        + b"\r\nSender: carol.petit@pli.test\r\n"
    )  # fmt: skip
    envelope = seal(inner, pki.carol, [pki.bob.certificate])
    with pytest.raises(SenderMismatch):
        open_envelope(envelope, pki.bob, pki.trust())


def test_an_older_crl_does_not_hide_a_newer_revocation(pki: Pki) -> None:
    envelope = seal(letter(), pki.alice_revoked, [pki.bob.certificate])
    older = build_crl(pki.authority.key, pki.authority.certificate, [], number=0)
    for crls in ([older, pki.crl], [pki.crl, older]):
        with pytest.raises(SignerRevoked):
            open_envelope(envelope, pki.bob, TrustStore([pki.authority.certificate], crls))


@pytest.mark.parametrize(
    ("algorithm", "hash_"),
    [
        ("sha1_rsa", hashes.SHA1()),  # noqa: S303 - the weak hash an attacker would use
        ("md5_rsa", hashes.MD5()),  # noqa: S303 - the weak hash an attacker would use
    ],
)
def test_weak_signature_algorithms_are_refused(
    pki: Pki, algorithm: str, hash_: hashes.HashAlgorithm
) -> None:
    info = signed_data_of(sign_entity(letter(), pki.alice))
    signer_info = asn1_cms.SignerInfo.load(info["content"]["signer_infos"][0].dump())
    signer_info["signature_algorithm"] = {"algorithm": algorithm}
    to_be_signed = signer_info["signed_attrs"].untag().dump()
    signer_info["signature"] = pki.alice.private_key.sign(
        to_be_signed, asym_padding.PKCS1v15(), hash_
    )
    info["content"]["signer_infos"] = [signer_info]
    envelope = envelope_of(entity_of(info), pki.bob.certificate)
    with pytest.raises(UnsupportedAlgorithm):
        open_envelope(envelope, pki.bob, pki.trust())


def test_no_padding_oracle_after_decryption(pki: Pki) -> None:
    # Vaudenay's probe: vary the last byte of the second-to-last ciphertext block.
    envelope = seal(letter(), pki.alice, [pki.bob.certificate])
    codes: set[str] = set()
    for value in range(256):
        info = asn1_cms.ContentInfo.load(envelope)
        encrypted = info["content"]["encrypted_content_info"]
        ciphertext = bytearray(encrypted["encrypted_content"].native)
        if ciphertext[-17] == value:
            continue
        ciphertext[-17] = value
        encrypted["encrypted_content"] = bytes(ciphertext)
        try:
            open_envelope(info.dump(force=True), pki.bob, pki.trust())
        except CryptoError as error:
            codes.add(error.code)
    assert codes == {"envelope_corrupted"}
