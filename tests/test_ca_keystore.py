"""The operator CA's certificate profile, CRLs, and the two key stores (REQ-AT-REST)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pli.crypto import (
    InvalidCertificateRequest,
    KeyStoreCorrupted,
    NotARecipient,
    Revocation,
    VaultParameters,
    WeakKey,
    WrongPassphrase,
    build_certificate_request,
    build_crl,
    certificate_pem,
    derive_vault_key,
    dump_pkcs12,
    issue_certificate,
    load_pkcs12,
    reuse_vault_key,
    unwrap_private_key,
    unwrap_private_key_from,
    unwrap_private_key_with,
    vault_key_for_record,
    vault_needs_upgrade,
    wrap_private_key,
    wrap_private_key_to,
    wrap_private_key_with,
)
from tests.conftest import ALICE, ALICE_IDNPS, Pki

FAST_VAULT = VaultParameters(memory_kib=1024, iterations=1, lanes=1)


def test_end_entity_profile(pki: Pki) -> None:
    certificate = pki.alice.certificate
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [ALICE]
    serial = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert serial[0].value == ALICE_IDNPS
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert certificate.issuer == pki.authority.certificate.subject
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    assert certificate.not_valid_after_utc <= pki.authority.certificate.not_valid_after_utc


def test_root_profile(pki: Pki) -> None:
    root = pki.authority.certificate
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


@pytest.mark.requirement("REQ-DIRECTORY")
def test_csr_with_a_bad_national_identifier_is_refused(pki: Pki) -> None:
    csr = build_certificate_request(
        pki.keys["carol"], email="x@pli.test", common_name="X", national_id="810100000017"
    )
    with pytest.raises(InvalidCertificateRequest, match="bad_check_digit"):
        issue_certificate(pki.authority.key, pki.authority.certificate, csr)


def test_csr_must_name_exactly_one_mailbox(pki: Pki) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No mail")]))
        .sign(pki.keys["carol"], hashes.SHA256())
    )
    with pytest.raises(InvalidCertificateRequest) as caught:
        issue_certificate(pki.authority.key, pki.authority.certificate, csr)
    assert caught.value.code == "invalid_certificate_request"


def test_crl_lists_revocations_with_reason(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    crl = build_crl(
        pki.authority.key,
        pki.authority.certificate,
        [Revocation(1234, now, "key_compromise")],
        number=7,
    )
    assert crl.is_signature_valid(pki.authority.certificate.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(1234)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc is not None and crl.next_update_utc > now


@pytest.mark.requirement("REQ-AT-REST")
def test_pkcs12_uses_pbes2_aes256_and_opens_with_the_passphrase(pki: Pki) -> None:
    data = dump_pkcs12(
        pki.alice.private_key, pki.alice.certificate, "s3cret passphrase", iterations=2000
    )
    # PBES2 (1.2.840.113549.1.5.13) with AES-256-CBC (2.16.840.1.101.3.4.1.42), DER-encoded OIDs.
    assert bytes.fromhex("2a864886f70d01050d") in data
    assert bytes.fromhex("060960864801650304012a") in data
    assert bytes.fromhex("0609608648016503040102") not in data  # no AES-128-CBC
    contents = load_pkcs12(data, "s3cret passphrase")
    assert contents.certificate == pki.alice.certificate
    assert contents.software_key().certificate == pki.alice.certificate
    with pytest.raises(WrongPassphrase):
        load_pkcs12(data, "wrong passphrase")


def test_pkcs12_refuses_a_short_passphrase(pki: Pki) -> None:
    with pytest.raises(WeakKey):
        dump_pkcs12(pki.alice.private_key, None, "short")


def test_pkcs12_certificate_must_match_the_key(pki: Pki) -> None:
    data = dump_pkcs12(pki.alice.private_key, None, "s3cret passphrase", iterations=2000)
    with pytest.raises(KeyStoreCorrupted):
        load_pkcs12(data, "s3cret passphrase").software_key(pki.bob.certificate)


@pytest.mark.requirement("REQ-AT-REST")
def test_vault_round_trip_and_wrong_passphrase(pki: Pki) -> None:
    record = wrap_private_key(pki.alice.private_key, "mailbox passphrase", FAST_VAULT)
    key = unwrap_private_key(record, "mailbox passphrase")
    assert key.private_numbers() == pki.alice.private_key.private_numbers()
    with pytest.raises(WrongPassphrase):
        unwrap_private_key(record, "another passphrase")
    header = json.loads(json.loads(record)["header"])
    assert header["kdf"] == "argon2id"
    assert header["memory_kib"] == 1024


@pytest.mark.requirement("REQ-AT-REST")
def test_vault_parameters_cannot_be_lowered_by_editing_the_record(pki: Pki) -> None:
    record = wrap_private_key(pki.alice.private_key, "mailbox passphrase", FAST_VAULT)
    outer = json.loads(record)
    header = json.loads(outer["header"])
    header["iterations"] = 2
    outer["header"] = json.dumps(header, sort_keys=True, separators=(",", ":"))
    with pytest.raises(WrongPassphrase):
        unwrap_private_key(json.dumps(outer).encode(), "mailbox passphrase")


def test_vault_upgrade_is_detected(pki: Pki) -> None:
    record = wrap_private_key(pki.alice.private_key, "mailbox passphrase", FAST_VAULT)
    assert vault_needs_upgrade(record)
    assert not vault_needs_upgrade(record, FAST_VAULT)


def test_vault_with_default_parameters(pki: Pki) -> None:
    # Once with the real cost (64 MiB, t=3, p=4): the default must work end to end.
    record = wrap_private_key(pki.bob.private_key, "mailbox passphrase")
    assert not vault_needs_upgrade(record)
    assert unwrap_private_key(record, "mailbox passphrase").key_size == 3072


@pytest.mark.parametrize("record", [b"", b"{}", b"not json", b'{"header": "{}", "nonce": 1}'])
def test_unreadable_vault_record(record: bytes) -> None:
    with pytest.raises(KeyStoreCorrupted):
        unwrap_private_key(record, "mailbox passphrase")


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_kib", 2**31), ("iterations", 10**6), ("lanes", 4096), ("memory_kib", 1)],
)
def test_edited_vault_costs_are_refused_before_deriving(pki: Pki, field: str, value: int) -> None:
    record = wrap_private_key(pki.alice.private_key, "mailbox passphrase", FAST_VAULT)
    outer = json.loads(record)
    header = json.loads(outer["header"])
    header[field] = value
    outer["header"] = json.dumps(header, sort_keys=True, separators=(",", ":"))
    with pytest.raises(KeyStoreCorrupted, match="out of bounds"):
        unwrap_private_key(json.dumps(outer).encode(), "mailbox passphrase")


# --- the split vault: derive once, open many times (DESIGN "Key custody") -------------------------
@pytest.mark.requirement("REQ-AT-REST")
def test_vault_key_derived_once_opens_the_record_without_argon2(pki: Pki) -> None:
    vault_key = derive_vault_key("mailbox passphrase", FAST_VAULT)
    record = wrap_private_key_with(pki.alice.private_key, vault_key)
    # The classic entry point still opens what the split one sealed, and the other way round.
    assert unwrap_private_key(record, "mailbox passphrase").key_size == 3072
    derived = vault_key_for_record(record, "mailbox passphrase")
    assert derived.secret == vault_key.secret and derived.salt == vault_key.salt
    key = unwrap_private_key_with(record, derived.secret)
    assert key.private_numbers() == pki.alice.private_key.private_numbers()
    classic = wrap_private_key(pki.bob.private_key, "mailbox passphrase", FAST_VAULT)
    secret = vault_key_for_record(classic, "mailbox passphrase").secret
    assert unwrap_private_key_with(classic, secret).key_size == 3072
    assert "secret" not in repr(vault_key) and vault_key.secret.hex() not in repr(vault_key)


@pytest.mark.requirement("REQ-AT-REST")
def test_a_wrong_derived_key_or_passphrase_is_refused(pki: Pki) -> None:
    record = wrap_private_key(pki.alice.private_key, "mailbox passphrase", FAST_VAULT)
    with pytest.raises(WrongPassphrase):
        unwrap_private_key_with(record, bytes(32))
    with pytest.raises(WrongPassphrase):
        unwrap_private_key_with(record, b"short")
    wrong = vault_key_for_record(record, "another passphrase")  # derives, checks nothing yet
    with pytest.raises(WrongPassphrase):
        unwrap_private_key_with(record, wrong.secret)
    with pytest.raises(WrongPassphrase):
        reuse_vault_key(record, wrong.secret)


def test_records_sealed_with_one_vault_key_share_it(pki: Pki) -> None:
    first = wrap_private_key_with(
        pki.alice.private_key, derive_vault_key("passphrase one", FAST_VAULT)
    )
    secret = vault_key_for_record(first, "passphrase one").secret
    second = wrap_private_key_with(pki.bob.private_key, reuse_vault_key(first, secret))
    assert unwrap_private_key_with(second, secret).public_key() == pki.bob.certificate.public_key()
    assert json.loads(first)["nonce"] != json.loads(second)["nonce"]


def test_derive_vault_key_refuses_short_passphrases_and_salts() -> None:
    with pytest.raises(WeakKey):
        derive_vault_key("short", FAST_VAULT)
    with pytest.raises(KeyStoreCorrupted):
        derive_vault_key("long enough passphrase", FAST_VAULT, salt=b"tiny")


# --- a mailbox key wrapped to a member's certificate (RFC 5652 §6) ------------------------------
@pytest.mark.requirement("REQ-E2E")
def test_mailbox_key_wrapped_to_a_member_opens_with_the_members_key_only(pki: Pki) -> None:
    mailbox_key = pki.keys["carol"]
    envelope = wrap_private_key_to(mailbox_key, pki.alice.certificate)
    assert envelope[:1] == b"\x30"  # DER ContentInfo
    opened = unwrap_private_key_from(envelope, pki.alice, pki.carol.certificate)
    assert opened.private_numbers() == mailbox_key.private_numbers()
    with pytest.raises(NotARecipient):
        unwrap_private_key_from(envelope, pki.bob)
    # The opened key must belong to the mailbox certificate named by the caller.
    with pytest.raises(KeyStoreCorrupted):
        unwrap_private_key_from(envelope, pki.alice, pki.bob.certificate)
    # One envelope for every certificate of a member: any of their keys opens it.
    both = wrap_private_key_to(mailbox_key, [pki.alice.certificate, pki.bob.certificate])
    for member in (pki.alice, pki.bob):
        assert unwrap_private_key_from(both, member).public_key() == mailbox_key.public_key()
    with pytest.raises(KeyStoreCorrupted):
        wrap_private_key_to(mailbox_key, [])


def test_wrapped_mailbox_key_opens_with_openssl(pki: Pki, openssl: str, tmp_path: Path) -> None:
    envelope = tmp_path / "wrapped.der"
    envelope.write_bytes(wrap_private_key_to(pki.keys["carol"], pki.alice.certificate))
    (tmp_path / "alice.pem").write_bytes(certificate_pem(pki.alice.certificate))
    (tmp_path / "alice.key").write_bytes(
        pki.alice.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = subprocess.run(
        [
            openssl,
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(envelope),
            "-recip",
            str(tmp_path / "alice.pem"),
            "-inkey",
            str(tmp_path / "alice.key"),
        ],
        capture_output=True,
        check=True,
    )
    opened = serialization.load_der_private_key(result.stdout, password=None)
    assert isinstance(opened, rsa.RSAPrivateKey)
    assert opened.private_numbers() == pki.keys["carol"].private_numbers()
