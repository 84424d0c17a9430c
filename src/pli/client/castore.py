"""A certificate authority kept in a directory, for the CLI and the embedded default.

Layout of ``CA_DIR``:

- ``ca.pem``: the root certificate (public, the trust anchor to hand out);
- ``ca.p12``: the root key and certificate, encrypted PKCS#12 (passphrase);
- ``index.json``: every issued certificate (serial, address, expiry) and
  every revocation, with the next CRL number;
- ``crl.pem``: the last published CRL.

Its refusals are said in the command line's language (``PLI_LANGUAGE``): ``pli
ca`` shows them as they are, after their stable code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pli.client.i18n import _
from pli.crypto import (
    Certificate,
    CertificateRevocationList,
    CertificateSigningRequest,
    InvalidCertificate,
    PrivateKey,
    Revocation,
    build_crl,
    certificate_emails,
    certificate_pem,
    create_root,
    crl_pem,
    dump_pkcs12,
    generate_private_key,
    issue_certificate,
    load_certificate,
    load_pkcs12,
)
from pli.crypto.ca import REVOCATION_REASONS
from pli.crypto.errors import CertificateAuthorityError, UnknownCertificate


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file beside ``path`` and rename: never half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temporary).chmod(mode)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class CaDirectory:
    path: Path
    key: PrivateKey
    certificate: Certificate

    @staticmethod
    def create(path: Path, name: str, passphrase: str, *, days: int = 3650) -> CaDirectory:
        path.mkdir(parents=True, exist_ok=True)
        if (path / "ca.p12").exists():
            raise CertificateAuthorityError(_("une autorité existe déjà dans {path}", path=path))
        key = generate_private_key()
        certificate = create_root(key, name, days=days)
        write_atomically(
            path / "ca.p12", dump_pkcs12(key, certificate, passphrase, name="ca"), 0o600
        )
        write_atomically(path / "ca.pem", certificate_pem(certificate))
        ca = CaDirectory(path, key, certificate)
        ca._save_index({"next_crl_number": 1, "issued": {}, "revoked": {}})
        ca.publish_crl()
        return ca

    @staticmethod
    def open(path: Path, passphrase: str) -> CaDirectory:
        try:
            data = (path / "ca.p12").read_bytes()
        except FileNotFoundError:
            raise CertificateAuthorityError(
                _("aucune autorité dans {path} (créez-la avec pli ca init)", path=path)
            ) from None
        contents = load_pkcs12(data, passphrase)
        if contents.certificate is None:
            raise CertificateAuthorityError(
                _("le fichier de l'autorité ne contient aucun certificat")
            )
        return CaDirectory(path, contents.key, contents.certificate)

    def _index(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.path / "index.json").read_text())
        return loaded

    def _save_index(self, index: dict[str, Any]) -> None:
        data = json.dumps(index, indent=2, sort_keys=True).encode()
        write_atomically(self.path / "index.json", data)

    def issue(self, csr: CertificateSigningRequest, *, days: int = 3 * 365) -> Certificate:
        certificate = issue_certificate(self.key, self.certificate, csr, days=days)
        index = self._index()
        index["issued"][f"{certificate.serial_number:x}"] = {
            "email": certificate_emails(certificate)[0],
            "not_after": certificate.not_valid_after_utc.isoformat(),
        }
        self._save_index(index)
        return certificate

    def revoke(self, serial_number: int, reason: str = "unspecified") -> None:
        if reason not in REVOCATION_REASONS:
            raise CertificateAuthorityError(
                _(
                    "motif de révocation inconnu : {reason} ; l'un de : {reasons}",
                    reason=reason,
                    reasons=", ".join(REVOCATION_REASONS),
                )
            )
        index = self._index()
        key = f"{serial_number:x}"
        if key not in index["issued"]:
            raise UnknownCertificate(
                _("cette autorité n'a émis aucun certificat de numéro {serial}", serial=key)
            )
        index["revoked"].setdefault(
            key, {"at": dt.datetime.now(dt.UTC).isoformat(), "reason": reason}
        )
        self._save_index(index)

    def publish_crl(self, *, days: int = 7) -> CertificateRevocationList:
        index = self._index()
        revocations = [
            Revocation(int(serial, 16), dt.datetime.fromisoformat(entry["at"]), entry["reason"])
            for serial, entry in sorted(index["revoked"].items())
        ]
        crl = build_crl(
            self.key, self.certificate, revocations, number=index["next_crl_number"], days=days
        )
        index["next_crl_number"] += 1
        self._save_index(index)
        write_atomically(self.path / "crl.pem", crl_pem(crl))
        return crl


def serial_of(certificate_file: Path) -> int:
    try:
        return load_certificate(certificate_file.read_bytes()).serial_number
    except FileNotFoundError:
        raise InvalidCertificate(_("{path} n'existe pas", path=certificate_file)) from None
