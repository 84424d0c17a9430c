"""The fast CMS paths accept only what the full path accepts, with the same result.

``pli.crypto.cms_fast`` reads the usual DER shapes without asn1crypto and
pyHanko (issue 2: seal + open of 10 KB within 1.2x of the bare library
calls). These tests hold it to its promise: used for Pli's and OpenSSL's
envelopes, never more permissive than the full path (every flipped byte,
every truncation), and a shape it does not know goes to the full checks.

REQ-SIGNATURE, REQ-E2E.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from pli.crypto import (
    CryptoError,
    TrustStore,
    cms_fast,
    der,
    inspect_envelope,
    open_envelope,
    seal,
    sealed_for_all,
    smime,
)
from pli.mime import Draft, build_inner_message
from tests.conftest import ALICE, BOB, Pki

pytestmark = [pytest.mark.requirement("REQ-SIGNATURE"), pytest.mark.requirement("REQ-E2E")]


def _inner() -> bytes:
    return build_inner_message(
        Draft(from_address=ALICE, to=[BOB], subject="Compte rendu", body_text="Bonjour,\n")
    )


def _signed_der(pki: Pki, inner: bytes | None = None) -> bytes:
    entity = smime.sign_entity(inner or _inner(), pki.alice)
    header, _, body = entity.partition(b"\r\n\r\n")
    assert b"signed-data" in header
    return base64.b64decode(body)


_TRUST: dict[int, TrustStore] = {}


def _trust(pki: Pki) -> TrustStore:
    """One store per PKI, so that its path cache works as in production."""
    return _TRUST.setdefault(id(pki), pki.trust())


def _full(signed: bytes, pki: Pki) -> Any:
    """The full path's verdict: its result, or the class of its error."""
    try:
        return smime._verify_parts(
            smime._opaque(signed, "der"), _trust(pki), at=None, check_sender=True
        )
    except CryptoError as error:
        return type(error)


def _fast(signed: bytes, pki: Pki) -> Any:
    """The fast path's verdict, or None when it leaves the input to the full path."""
    verified = cms_fast.verify_signed(signed)
    if verified is None:
        return None
    try:
        return smime._trusted_signer(verified, "der", _trust(pki), at=None, check_sender=True)
    except CryptoError as error:
        return type(error)


def test_pli_envelopes_take_both_fast_paths(pki: Pki) -> None:
    envelope = seal(_inner(), pki.alice, [pki.bob.certificate])
    assert cms_fast.inspect_enveloped(envelope, pki.bob.certificate) == "aes256_cbc"
    assert cms_fast.inspect_enveloped(envelope, pki.alice.certificate) == "aes256_cbc"
    # Carol is not a recipient: the fast path does not decide, the full one refuses.
    assert cms_fast.inspect_enveloped(envelope, pki.carol.certificate) is None
    entity, _ = smime.decrypt_envelope(envelope, pki.bob)
    fast = smime._fast_signature(entity)
    assert fast is not None
    signature, form = fast
    assert form == "opaque"
    assert signature.digest_name == "sha256"
    assert signature.certificate == pki.alice.certificate.public_bytes(serialization.Encoding.DER)
    assert signature.signed_at is not None
    opened = open_envelope(envelope, pki.bob, _trust(pki))
    assert opened.signer.emails == [ALICE]
    assert opened.signed_at == signature.signed_at


def test_fast_and_full_paths_agree_on_an_intact_signature(pki: Pki) -> None:
    signed = _signed_der(pki)
    full = _full(signed, pki)
    assert not isinstance(full, type)
    assert _fast(signed, pki) == full


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_flipped_byte_of_a_signature_gets_the_full_paths_verdict(pki: Pki) -> None:
    """No single-bit change makes the fast path accept what the full path refuses."""
    signed = _signed_der(pki)
    for position in range(len(signed)):
        for bit in (0x01, 0x80):
            mutated = bytearray(signed)
            mutated[position] ^= bit
            fast = _fast(bytes(mutated), pki)
            if fast is None:
                continue
            # Bits the signature does not cover (the CA's signature on the embedded
            # certificate, the SignedData's version) reach the same later checks.
            assert fast == _full(bytes(mutated), pki), (position, bit)


def test_every_truncation_of_a_signature_is_left_to_the_full_path(pki: Pki) -> None:
    signed = _signed_der(pki)
    for length in range(len(signed)):
        assert cms_fast.verify_signed(signed[:length]) is None


def test_every_flipped_byte_of_an_envelope_header_gets_the_full_inspection(pki: Pki) -> None:
    envelope = seal(_inner(), pki.alice, [pki.bob.certificate])
    recipient = asn1_x509.Certificate.load(
        pki.bob.certificate.public_bytes(serialization.Encoding.DER)
    )
    # Everything up to the encrypted content: structure, recipients, algorithms.
    enveloped = asn1_cms.ContentInfo.load(envelope)["content"]
    encrypted = enveloped["encrypted_content_info"]["encrypted_content"].contents
    content_start = envelope.index(encrypted[:32])
    for position in range(content_start):
        for bit in (0x01, 0x80):
            mutated = bytearray(envelope)
            mutated[position] ^= bit
            cipher = cms_fast.inspect_enveloped(bytes(mutated), pki.bob.certificate)
            if cipher is None:
                continue
            try:
                assert smime._inspect_envelope(bytes(mutated), recipient) == cipher, position
            except CryptoError as error:  # pragma: no cover - the failure itself
                pytest.fail(f"fast inspection accepted byte {position}: {error}")


def _server_accepts(envelope: bytes, certificates: list[Any]) -> bool:
    """The server's full check before a send: readable, and sealed for every certificate."""
    try:
        info = inspect_envelope(envelope)
        for certificate in certificates:
            info.require_recipient(certificate)
    except CryptoError:
        return False
    return True


def test_the_servers_quick_check_accepts_only_what_the_full_inspection_accepts(pki: Pki) -> None:
    envelope = seal(_inner(), pki.alice, [pki.bob.certificate, pki.carol.certificate])
    everyone = [pki.alice.certificate, pki.bob.certificate, pki.carol.certificate]
    assert sealed_for_all(envelope, everyone)
    assert _server_accepts(envelope, everyone)
    # A certificate the envelope was not sealed for: left to the full inspection, which refuses.
    only_bob = seal(_inner(), pki.alice, [pki.bob.certificate])
    assert not sealed_for_all(only_bob, everyone)
    assert not _server_accepts(only_bob, everyone)
    assert not sealed_for_all(envelope, [])
    enveloped = asn1_cms.ContentInfo.load(envelope)["content"]
    encrypted = enveloped["encrypted_content_info"]["encrypted_content"].contents
    content_start = envelope.index(encrypted[:32])
    for position in range(content_start):
        for bit in (0x01, 0x80):
            mutated = bytearray(envelope)
            mutated[position] ^= bit
            if sealed_for_all(bytes(mutated), everyone):
                assert _server_accepts(bytes(mutated), everyone), position
    for length in range(len(envelope)):
        assert not sealed_for_all(envelope[:length], everyone)


def test_an_unknown_signed_attribute_goes_to_the_full_checks(pki: Pki) -> None:
    """A shape the fast path does not know is not refused: the full path decides."""
    info = asn1_cms.ContentInfo.load(_signed_der(pki))
    signer_info = info["content"]["signer_infos"][0]
    attributes = list(signer_info["signed_attrs"])
    attributes.append(
        asn1_cms.CMSAttribute(
            {"type": "1.3.6.1.4.1.99999.1", "values": [asn1_core.UTF8String("pli-test")]}
        )
    )
    signed_attrs = asn1_cms.CMSAttributes(attributes)
    signer_info["signed_attrs"] = signed_attrs
    to_sign = b"\x31" + signed_attrs.dump(force=True)[1:]
    signer_info["signature"] = pki.keys["alice"].sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    reworked = info.dump(force=True)
    assert cms_fast.verify_signed(reworked) is None
    verdict = _full(reworked, pki)
    assert not isinstance(verdict, type), verdict
    assert verdict[1].emails == [ALICE]


def test_the_der_reader_refuses_what_is_not_distinguished() -> None:
    with pytest.raises(der.NotSimpleDer):
        der.read(b"\x30\x80\x00\x00", 0, 4)  # indefinite length (BER)
    with pytest.raises(der.NotSimpleDer):
        der.read(b"\x04\x81\x05hello", 0, 8)  # long form for a short length
    with pytest.raises(der.NotSimpleDer):
        der.read(b"\x04\x82\x00\x05hello", 0, 9)  # leading zero length octet
    with pytest.raises(der.NotSimpleDer):
        der.read(b"\x04\x05hell", 0, 6)  # truncated
    with pytest.raises(der.NotSimpleDer):
        der.read(b"\x1f\x01\x00", 0, 3)  # multi-byte tag
    assert der.read(b"\x04\x05hello", 0, 7) == (der.OCTET_STRING, 0, 2, 7)
    assert der.encode_oid("1.2.840.113549.1.7.1") == bytes.fromhex("2a864886f70d010701")


def test_openssl_signatures_take_the_fast_path(pki: Pki, tmp_path: Path, openssl: str) -> None:
    """What `openssl cms -sign` writes (OpenSSL 3.0) is read without asn1crypto."""
    key = tmp_path / "alice-key.pem"
    certificate = tmp_path / "alice.pem"
    key.write_bytes(
        pki.keys["alice"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate.write_bytes(pki.alice.certificate.public_bytes(serialization.Encoding.PEM))
    message = tmp_path / "message.eml"
    message.write_bytes(_inner())
    signed = subprocess.run(
        [
            openssl,
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-md",
            "sha256",
            "-outform",
            "DER",
            "-in",
            str(message),
            "-signer",
            str(certificate),
            "-inkey",
            str(key),
        ],
        check=True,
        capture_output=True,
    ).stdout
    full = _full(signed, pki)
    assert not isinstance(full, type), full
    fast = _fast(signed, pki)
    if b"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x34" in signed:  # CMSAlgorithmProtection (3.2+)
        assert fast is None
    else:
        assert fast == full
