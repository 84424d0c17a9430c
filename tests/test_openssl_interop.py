"""Interoperability with the system ``openssl`` binary, in both directions (REQ-INTEROP).

What Pli seals, ``openssl cms`` decrypts and verifies; what ``openssl cms``
signs and encrypts (opaque or detached, DER, BER streaming, PEM or S/MIME
text), Pli opens and reports the right signer. Algorithms Pli cannot
process give ``unsupported_algorithm``, never a crash.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from pli.client.cli import main
from pli.crypto import (
    SoftwareKey,
    UnsupportedAlgorithm,
    certificate_pem,
    dump_pkcs12,
    open_envelope,
    seal,
)
from pli.crypto.smime import canonical_crlf
from tests.conftest import ALICE, BOB, Pki
from tests.test_seal_open import letter


def write_identity(directory: Path, name: str, who: SoftwareKey) -> tuple[Path, Path]:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(certificate_pem(who.certificate))
    key.write_bytes(
        who.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def run_openssl(openssl: str, *args: str | Path, data: bytes | None = None) -> bytes:
    result = subprocess.run(
        [openssl, *map(str, args)], input=data, capture_output=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> dict[str, Path]:
    alice_cert, alice_key = write_identity(tmp_path, "alice", pki.alice)
    bob_cert, bob_key = write_identity(tmp_path, "bob", pki.bob)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certificate_pem(pki.authority.certificate))
    inner = tmp_path / "inner.eml"
    inner.write_bytes(letter())
    return {
        "alice_cert": alice_cert,
        "alice_key": alice_key,
        "bob_cert": bob_cert,
        "bob_key": bob_key,
        "ca": ca,
        "inner": inner,
        "dir": tmp_path,
    }


def openssl_decrypt_and_verify(
    openssl: str, files: dict[str, Path], envelope: Path, inform: str
) -> bytes:
    signed = run_openssl(
        openssl, "cms", "-decrypt", "-inform", inform, "-in", envelope,
        "-recip", files["bob_cert"], "-inkey", files["bob_key"],
    )  # fmt: skip
    assert b"smime-type=signed-data" in signed
    signed_file = files["dir"] / "signed.eml"
    signed_file.write_bytes(signed)
    result = subprocess.run(
        [openssl, "cms", "-verify", "-in", str(signed_file), "-CAfile", str(files["ca"])],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Verification successful" in result.stderr
    return result.stdout


@pytest.mark.requirement("REQ-INTEROP")
@pytest.mark.requirement("REQ-E2E")
@pytest.mark.requirement("REQ-SIGNATURE")
def test_openssl_decrypts_and_verifies_what_pli_seals(
    pki: Pki, files: dict[str, Path], openssl: str
) -> None:
    inner = files["inner"].read_bytes()
    envelope = files["dir"] / "message.p7m"
    envelope.write_bytes(seal(inner, pki.alice, [pki.bob.certificate]))
    content = openssl_decrypt_and_verify(openssl, files, envelope, "DER")
    assert content == canonical_crlf(inner)


@pytest.mark.requirement("REQ-INTEROP")
def test_openssl_reads_pli_seal_command_output_der_and_smime(
    pki: Pki, files: dict[str, Path], openssl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_PASSPHRASE", "correct horse battery")
    identity = files["dir"] / "alice.p12"
    identity.write_bytes(
        dump_pkcs12(
            pki.alice.private_key, pki.alice.certificate, "correct horse battery", iterations=1000
        )
    )
    runner = CliRunner()
    for form, extra in (("DER", []), ("SMIME", ["--smime"])):
        out = files["dir"] / f"out-{form}.p7m"
        result = runner.invoke(
            main,
            ["seal", "--identity", str(identity), "--to", str(files["bob_cert"]),
             "--in", str(files["inner"]), "--out", str(out), *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        content = openssl_decrypt_and_verify(openssl, files, out, form)
        assert b"Subject: Avis" in content


def openssl_sign(openssl: str, files: dict[str, Path], *extra: str) -> Path:
    signed = files["dir"] / "openssl-signed.eml"
    run_openssl(
        openssl, "cms", "-sign", "-md", "sha256", "-in", files["inner"],
        "-signer", files["alice_cert"], "-inkey", files["alice_key"], "-out", signed, *extra,
    )  # fmt: skip
    return signed


def openssl_encrypt(openssl: str, files: dict[str, Path], signed: Path, *extra: str) -> bytes:
    out = files["dir"] / "openssl-env.p7m"
    run_openssl(
        openssl, "cms", "-encrypt", "-aes256", "-in", signed, "-out", out, *extra,
        files["bob_cert"],
    )  # fmt: skip
    return out.read_bytes()


@pytest.mark.requirement("REQ-INTEROP")
@pytest.mark.requirement("REQ-SIGNATURE")
@pytest.mark.parametrize(
    ("sign_args", "encrypt_args", "form"),
    [
        pytest.param((), ("-outform", "DER"), "multipart/signed", id="detached-der"),
        pytest.param(("-nodetach",), ("-outform", "DER"), "opaque", id="opaque-der"),
        pytest.param((), (), "multipart/signed", id="detached-smime-text"),
        pytest.param((), ("-outform", "PEM"), "multipart/signed", id="detached-pem-cms-tag"),
        pytest.param((), ("-outform", "DER", "-stream"), "multipart/signed", id="ber-stream"),
        pytest.param(("-nodetach", "-stream"), ("-stream",), "opaque", id="opaque-stream-smime"),
    ],
)
def test_pli_opens_what_openssl_signs_and_encrypts(
    pki: Pki,
    files: dict[str, Path],
    openssl: str,
    sign_args: tuple[str, ...],
    encrypt_args: tuple[str, ...],
    form: str,
) -> None:
    signed = openssl_sign(openssl, files, *sign_args)
    envelope = openssl_encrypt(openssl, files, signed, *encrypt_args)
    opened = open_envelope(envelope, pki.bob, pki.trust())
    assert opened.signer.emails == [ALICE]
    assert opened.signer.certificate == pki.alice.certificate
    assert opened.details.signed_form == form
    assert b"Subject: Avis" in opened.mime
    assert BOB.encode() in opened.mime


def test_ber_stream_really_is_indefinite_length(files: dict[str, Path], openssl: str) -> None:
    # Guards the test above: -stream must produce BER (0x80 length) for it to mean anything.
    signed = openssl_sign(openssl, files)
    envelope = openssl_encrypt(openssl, files, signed, "-outform", "DER", "-stream")
    assert envelope[:2] == b"\x30\x80"


@pytest.mark.parametrize(
    ("encrypt_args", "expected"),
    [
        pytest.param(("-aes-256-gcm", "-outform", "DER"), "AuthEnvelopedData", id="aes-gcm"),
        pytest.param(
            ("-aes256", "-outform", "DER", "-keyopt", "rsa_padding_mode:oaep"),
            "rsaes_oaep",
            id="rsa-oaep",
        ),
        pytest.param(("-des3", "-outform", "DER"), "tripledes", id="3des"),
    ],
)
def test_unsupported_algorithms_are_named(
    pki: Pki, files: dict[str, Path], openssl: str, encrypt_args: tuple[str, ...], expected: str
) -> None:
    signed = openssl_sign(openssl, files)
    out = files["dir"] / "other.p7m"
    # -keyopt applies to the -recip before it.
    run_openssl(
        openssl, "cms", "-encrypt", "-in", signed, "-out", out, "-recip", files["bob_cert"],
        *encrypt_args,
    )  # fmt: skip
    with pytest.raises(UnsupportedAlgorithm) as caught:
        open_envelope(out.read_bytes(), pki.bob, pki.trust())
    assert caught.value.code == "unsupported_algorithm"
    assert expected in str(caught.value)
