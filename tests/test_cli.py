"""The `pli` command line, end to end, as a professional and an operator would use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pli.client.cli import main

PASSPHRASE = "correct horse battery staple"
INNER = (
    b"From: Dr Alice Martin <alice.martin@pli.test>\r\n"
    b"To: bob.durand@pli.test\r\n"
    b"Subject: Resultats de biologie\r\n"
    b"\r\n"
    b"Bonjour, voici les resultats.\r\n"
)


def pli(*args: str | Path, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args], env={"PLI_PASSPHRASE": PASSPHRASE})
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An operator CA and two professionals with installed certificates, made with the CLI."""
    d = tmp_path_factory.mktemp("cli")
    pli("ca", "init", "--dir", d / "ca", "--name", "Opérateur de test")
    for who, rpps in (("alice.martin", "10100000008"), ("bob.durand", "10100000024")):
        pli(
            "keys", "new", "--email", f"{who}@pli.test", "--name", who,
            "--national-id", f"8{rpps}", "--out", d / f"{who}.p12", "--csr", d / f"{who}.csr",
        )  # fmt: skip
        pli("ca", "issue", "--dir", d / "ca", "--csr", d / f"{who}.csr", "--out", d / f"{who}.pem")
        pli("keys", "install", "--identity", d / f"{who}.p12", "--cert", d / f"{who}.pem")
    (d / "inner.eml").write_bytes(INNER)
    return d


def test_seal_then_open_prints_the_verified_signer(world: Path) -> None:
    d = world
    pli(
        "seal", "--identity", d / "alice.martin.p12", "--to", d / "bob.durand.pem",
        "--in", d / "inner.eml", "--out", d / "m1.p7m",
    )  # fmt: skip
    result = pli(
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--crl", d / "ca" / "crl.pem", "--in", d / "m1.p7m", "--out", d / "m1.eml",
    )  # fmt: skip
    assert "signature : valide, signée par alice.martin@pli.test" in result.output
    assert "810100000008" in result.output
    assert b"Subject: Resultats de biologie" in (d / "m1.eml").read_bytes()


def test_open_without_crl_fails_closed_unless_asked(world: Path) -> None:
    d = world
    pli(
        "seal", "--identity", d / "alice.martin.p12", "--to", d / "bob.durand.pem",
        "--in", d / "inner.eml", "--out", d / "m2.p7m", "--smime",
    )  # fmt: skip
    base: list[str | Path] = [
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--in", d / "m2.p7m", "--out", d / "m2.eml",
    ]  # fmt: skip
    refused = pli(*base, ok=False)
    assert refused.exit_code == 1
    assert "pli: error: revocation_unknown:" in refused.output
    lenient = pli(*base, "--no-revocation-check")
    assert "warning: revocation_not_checked" in lenient.output


@pytest.mark.requirement("REQ-SIGNATURE")
def test_revoked_signer_is_refused_after_a_new_crl(world: Path, tmp_path: Path) -> None:
    d = world
    # A second identity for Alice, revoked: the first stays usable for other tests.
    pli("keys", "new", "--email", "alice.martin@pli.test", "--out", tmp_path / "old.p12",
        "--csr", tmp_path / "old.csr")  # fmt: skip
    pli(
        "ca",
        "issue",
        "--dir",
        d / "ca",
        "--csr",
        tmp_path / "old.csr",
        "--out",
        tmp_path / "old.pem",
    )
    pli("seal", "--identity", tmp_path / "old.p12", "--cert", tmp_path / "old.pem",
        "--to", d / "bob.durand.pem", "--in", d / "inner.eml",
        "--out", tmp_path / "m.p7m")  # fmt: skip
    pli(
        "ca",
        "revoke",
        "--dir",
        d / "ca",
        "--cert",
        tmp_path / "old.pem",
        "--reason",
        "key_compromise",
    )
    pli("ca", "crl", "--dir", d / "ca", "--out", tmp_path / "crl.pem")
    refused = pli(
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--crl", tmp_path / "crl.pem", "--in", tmp_path / "m.p7m", "--out", tmp_path / "m.eml",
        ok=False,
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "pli: error: signer_revoked:" in refused.output
    assert not (tmp_path / "m.eml").exists()


@pytest.mark.requirement("REQ-AT-REST")
def test_large_attachment_travels_outside_the_cms(world: Path, tmp_path: Path) -> None:
    d = world
    big = tmp_path / "scan.pdf"
    big.write_bytes(os.urandom(300_000))
    pli(
        "seal", "--identity", d / "alice.martin.p12", "--to", d / "bob.durand.pem",
        "--in", d / "inner.eml", "--out", tmp_path / "m.p7m", "--attach", big,
        "--threshold", "100000",
    )  # fmt: skip
    assert (tmp_path / "m.p7m").stat().st_size < 50_000
    blobs = list((tmp_path / "m.p7m.blobs").iterdir())
    assert len(blobs) == 1
    result = pli(
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--crl", d / "ca" / "crl.pem", "--in", tmp_path / "m.p7m", "--out", tmp_path / "m.eml",
        "--attachments", tmp_path / "files",
    )  # fmt: skip
    assert (tmp_path / "files" / "scan.pdf").read_bytes() == big.read_bytes()
    assert "pièce jointe :" in result.output
    # Opening again never overwrites what is there.
    pli(
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--crl", d / "ca" / "crl.pem", "--in", tmp_path / "m.p7m", "--out", tmp_path / "m.eml",
        "--attachments", tmp_path / "files",
    )  # fmt: skip
    assert (tmp_path / "files" / "scan (2).pdf").read_bytes() == big.read_bytes()
    # A corrupted blob is refused and nothing is left behind.
    blob = blobs[0]
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    refused = pli(
        "open", "--identity", d / "bob.durand.p12", "--trust", d / "ca" / "ca.pem",
        "--crl", d / "ca" / "crl.pem", "--in", tmp_path / "m.p7m", "--out", tmp_path / "m2.eml",
        "--attachments", tmp_path / "files2", ok=False,
    )  # fmt: skip
    assert "blob_corrupted" in refused.output
    assert list((tmp_path / "files2").iterdir()) == []


def test_wrong_passphrase_and_missing_passphrase(world: Path) -> None:
    d = world
    args = ["seal", "--identity", str(d / "alice.martin.p12"), "--to", str(d / "bob.durand.pem"),
            "--in", str(d / "inner.eml"), "--out", str(d / "x.p7m")]  # fmt: skip
    wrong = CliRunner().invoke(main, args, env={"PLI_PASSPHRASE": "not the passphrase"})
    assert wrong.exit_code == 1
    assert "pli: error: wrong_passphrase:" in wrong.output
    missing = CliRunner().invoke(main, args, env={"PLI_PASSPHRASE": "", "PLI_LANGUAGE": None})
    assert missing.exit_code == 1
    # The code stays; its detail is French unless PLI_LANGUAGE asks for English.
    assert "passphrase_missing: indiquez --passphrase-file FICHIER ou définissez" in missing.output
    assert "Traceback" not in wrong.output + missing.output


def test_passphrase_file_is_read(world: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\n")
    result = CliRunner().invoke(
        main,
        ["ca", "crl", "--dir", str(world / "ca"), "--passphrase-file", str(secret)],
        env={"PLI_PASSPHRASE": ""},
    )
    assert result.exit_code == 0, result.output


def test_keys_new_refuses_bad_input(tmp_path: Path) -> None:
    bad_id = pli("keys", "new", "--email", "x@pli.test", "--national-id", "810100000002",
                 "--out", tmp_path / "x.p12", "--csr", tmp_path / "x.csr", ok=False)  # fmt: skip
    assert "invalid_certificate_request" in bad_id.output
    assert not (tmp_path / "x.p12").exists()
    bad_mail = pli("keys", "new", "--email", "not-an-address", "--out", tmp_path / "y.p12",
                   "--csr", tmp_path / "y.csr", ok=False)  # fmt: skip
    assert bad_mail.exit_code == 1


def test_installed_console_script_and_debug_flag(world: Path) -> None:
    pli_path = Path(sys.executable).with_name("pli")
    env = {**os.environ, "PLI_PASSPHRASE": PASSPHRASE}
    ok = subprocess.run(
        [str(pli_path), "id", "check", "1 85 05 78 006 084 91"],
        capture_output=True,
        check=False,
        env=env,
    )
    assert ok.returncode == 0
    assert b"nir 185057800608491" in ok.stdout
    missing = str(world / "nowhere")
    quiet = subprocess.run(
        [str(pli_path), "ca", "crl", "--dir", missing], capture_output=True, check=False, env=env
    )
    assert quiet.returncode == 1
    assert b"pli: error: ca_error:" in quiet.stderr and b"Traceback" not in quiet.stderr
    loud = subprocess.run(
        [str(pli_path), "--debug", "ca", "crl", "--dir", missing],
        capture_output=True,
        check=False,
        env=env,
    )
    assert loud.returncode == 1
    assert b"Traceback" in loud.stderr


def test_demo_runs(tmp_path: Path) -> None:
    result = pli("demo", "--seal-only", "--dir", tmp_path / "demo")
    assert "signature valide" in result.output
    assert "Message s" in result.output
    assert (tmp_path / "demo" / "ca" / "ca.pem").exists()
