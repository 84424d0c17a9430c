"""Opening envelopes for the web mail, in memory, for the request that displays them.

DESIGN "Key custody" (vault): the mailbox's private keys are opened with the
session's vault cookie (:func:`pli.server.accounts.custody.vault_keys_for`),
the envelope is decrypted and its signature verified
(:func:`pli.crypto.open_envelope`) and parsed (:func:`pli.mime.parse_inner_message`)
in this process's memory; nothing of it is written anywhere (no cache, no
temporary file, no log line names its content). What a page shows lives in
the objects returned here and dies with the request.

A message is shown as genuine only when all of these hold (DESIGN "Security
model", REQ-SIGNATURE): the envelope opens with one of the mailbox's keys, the
signature verifies against the operator's trust anchors with a current CRL,
the signer's certificate names the signed From or Sender, and that From is the
mailbox the server recorded as sending it (the signer being the account that
sent it, or that mailbox). Otherwise the page shows the precise reason and no
content at all: :func:`pli.crypto.open_envelope` gives none.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.utils.translation import gettext as _

from pli.crypto import (
    BlobCorrupted,
    CryptoError,
    NotARecipient,
    RevocationPolicy,
    SoftwareKey,
    TrustStore,
    certificate_national_id,
    iter_decrypted,
    load_certificates,
    load_crl,
    open_envelope,
)
from pli.mime import ExternalPart, InnerMessage, MimeError, is_mdn, parse_inner_message
from pli.server.messaging.models import MessageCopy
from pli.server.webmail.correspondents import Identity, identities

logger = logging.getLogger(__name__)


class DecryptedDownload:
    """A large attachment's plaintext as it is decrypted, for a streamed download.

    Decision 0003: the server holds the stream's ciphertext only; the key is in
    the signed message the vault just opened. Nothing is written anywhere: each
    authenticated record goes to the browser and is forgotten, so memory stays
    at a record or two whatever the size (:func:`pli.crypto.iter_decrypted`,
    which also holds back the last piece until the whole stream has matched the
    digest and sizes that the signed message gives). A stream that fails raises
    before its last bytes: the server cuts the connection short of its
    ``Content-Length`` and the browser reports the download as failed, never a
    file that looks whole. The log names the blob, never the file.

    An object rather than a generator so that :meth:`close`, which Django calls
    on the answer's content (PEP 3333), closes the blob even when the answer is
    dropped before its body is sent (a generator never started has no
    ``finally`` to run).
    """

    def __init__(self, handle: BinaryIO, part: ExternalPart, message_id: str) -> None:
        self._handle = handle
        self._part = part
        self._message_id = message_id

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from iter_decrypted(
                self._handle,
                key=self._part.key,
                sha256=self._part.blob_id,
                size=self._part.size,
                plaintext_size=self._part.plaintext_size,
            )
        except BlobCorrupted as error:
            logger.error(  # noqa: TRY400 - the server logs the traceback as it cuts the answer
                "webmail: the large attachment %s of %s fails its checks: %s",
                self._part.blob_id,
                self._message_id,
                error.detail,
            )
            raise
        finally:
            self.close()

    def close(self) -> None:
        self._handle.close()


def reason_text(code: str) -> str:
    """Why a message is not shown as genuine, in the reader's language.

    The codes are pli.crypto's (stable) and the web mail's own
    (``routing_mismatch``, ``malformed_message``, ``trust_unavailable``…).
    """
    texts = {
        "valid": _("Signature valide."),
        "signature_missing": _("Le message n'est pas signé."),
        "signature_invalid": _(
            "La signature ne correspond pas au contenu : le message a pu être modifié."
        ),
        "signer_certificate_mismatch": _("Le certificat joint ne correspond pas à la signature."),
        "signer_untrusted": _(
            "Le certificat du signataire n'est pas émis par une autorité de confiance."
        ),
        "signer_expired": _("Le certificat du signataire n'est pas ou plus valide."),
        "signer_revoked": _("Le certificat du signataire a été révoqué."),
        "revocation_unknown": _(
            "La révocation du certificat du signataire ne peut pas être vérifiée "
            "(liste de révocation absente ou périmée)."
        ),
        "signer_usage_invalid": _(
            "Le certificat du signataire n'est pas destiné à signer des messages."
        ),
        "sender_mismatch": _(
            "Le signataire n'est ni l'expéditeur ni le rédacteur indiqués dans le message."
        ),
        "routing_mismatch": _(
            "Le message signé ne vient pas de la boîte qui l'a envoyé : il n'est pas "
            "présenté comme authentique."
        ),
        "envelope_corrupted": _("Le message chiffré est endommagé et ne peut pas être lu."),
        "malformed_envelope": _("Le message chiffré est illisible."),
        "not_a_recipient": _("Aucune clé de cette boîte n'ouvre ce message."),
        "unsupported_algorithm": _("Le message utilise un algorithme que Pli ne sait pas ouvrir."),
        "malformed_message": _("Le message déchiffré est mal formé."),
        "envelope_unavailable": _("Ce message est momentanément illisible."),
        "trust_unavailable": _(
            "Les autorités de confiance de l'opérateur ne sont pas disponibles : "
            "la signature ne peut pas être vérifiée."
        ),
        "vault_locked": _("Votre clé est verrouillée : saisissez votre phrase de déverrouillage."),
        "mailbox_key_unavailable": _("La clé de cette boîte ne vous a pas encore été transmise."),
        "mailbox_not_found": _("Vous n'avez pas la clé de cette boîte."),
    }
    return texts.get(code, _("Le message ne peut pas être vérifié."))


class TrustUnavailable(Exception):
    """The operator CA's certificate is not readable: nothing can be verified."""


_trust_lock = threading.Lock()
_trust_cache: dict[tuple[object, ...], TrustStore] = {}


def trust_store() -> TrustStore:
    """The operator CA as trust anchor, with its published CRL (fail closed: REQUIRE).

    Read from the public files of ``PLI_CA_DIR`` (``ca.pem``, ``crl.pem``): no
    passphrase is needed to verify. The store is kept while the files are
    unchanged, so its cache of validated paths serves the following requests;
    a new CRL (a revocation) makes a new store.
    """
    path = Path(settings.PLI_CA_DIR)
    anchor_file, crl_file = path / "ca.pem", path / "crl.pem"
    try:
        anchor_stat = anchor_file.stat()
    except OSError:
        raise TrustUnavailable(str(anchor_file)) from None
    try:
        crl_stat: tuple[int, int] | None = (crl_file.stat().st_mtime_ns, crl_file.stat().st_size)
    except OSError:
        crl_stat = None
    key = (str(path), anchor_stat.st_mtime_ns, anchor_stat.st_size, crl_stat)
    with _trust_lock:
        cached = _trust_cache.get(key)
        if cached is not None:
            return cached
        try:
            anchors = load_certificates(anchor_file.read_bytes())
            crls = [load_crl(crl_file.read_bytes())] if crl_stat is not None else []
            store = TrustStore(anchors, crls, RevocationPolicy.REQUIRE)
        except (OSError, CryptoError):
            raise TrustUnavailable(str(anchor_file)) from None
        _trust_cache.clear()
        _trust_cache[key] = store
        return store


@dataclass(frozen=True)
class Signature:
    """How the web mail presents a message's signature (REQ-SIGNATURE)."""

    code: str
    signer: Identity | None = None
    #: The signer's address as its certificate gives it.
    signer_address: str = ""
    certificate_name: str = ""
    signed_at: dt.datetime | None = None
    warnings: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.code == "valid"

    @property
    def reason(self) -> str:
        return reason_text(self.code)

    @property
    def warning_texts(self) -> list[str]:
        return [warning_text(code) for code in self.warnings]


def warning_text(code: str) -> str:
    texts = {
        "not_addressed_to_you": _(
            "Ce message signé ne vous est pas adressé : il vous a été retransmis par l'expéditeur."
        ),
        "identity_changed": _(
            "L'identifiant national du certificat diffère de celui de l'annuaire."
        ),
        "revocation_not_checked": _("La révocation du certificat n'a pas pu être vérifiée."),
    }
    return texts.get(code, code)


@dataclass
class OpenedCopy:
    """A mailbox's copy with what its envelope holds, when it is genuine (else None)."""

    copy: MessageCopy
    signature: Signature
    message: InnerMessage | None = None
    #: A read receipt (RFC 8098 MDN, its signed content says so: ``multipart/report;
    #: report-type=disposition-notification``), shown as such, never as a reply.
    receipt: bool = False

    @property
    def readable(self) -> bool:
        return self.message is not None


def open_copy(
    copy: MessageCopy, envelope: bytes, keys: Sequence[SoftwareKey], *, trust: TrustStore
) -> OpenedCopy:
    """Decrypt, verify and parse ``envelope`` (the bytes of ``copy``'s message) in memory."""
    sent = copy.message
    opened = None
    failure = "not_a_recipient"
    for key in keys:
        try:
            opened = open_envelope(envelope, key, trust)
        except NotARecipient:
            continue
        except CryptoError as error:
            failure = error.code
        break
    if opened is None:
        return OpenedCopy(copy, Signature(failure))
    try:
        inner = parse_inner_message(opened.mime)
    except MimeError:
        return OpenedCopy(copy, Signature("malformed_message"))
    emails = {email.lower() for email in opened.signer.emails}
    known = identities([*opened.signer.emails[:1], sent.sender_address])
    signer_identity = known.get(opened.signer.emails[0].lower()) if opened.signer.emails else None
    # The signed From must be the mailbox the server saw sending, and the signer the
    # person who sent it or that mailbox itself (DESIGN: never shown as genuine otherwise).
    routed = inner.from_address.lower() == sent.sender_address.lower() and bool(
        emails & {sent.sender_person.lower(), sent.sender_address.lower()}
    )
    if not routed:
        return OpenedCopy(copy, Signature("routing_mismatch", signer=signer_identity))
    warnings = list(opened.warnings)
    if not copy.is_sender_copy and not inner.addressed_to(copy.mailbox.address):
        warnings.append("not_addressed_to_you")
    national = certificate_national_id(opened.signer.certificate)
    if (
        national
        and signer_identity is not None
        and signer_identity.national_id
        and national != signer_identity.national_id
    ):
        warnings.append("identity_changed")
    signature = Signature(
        "valid",
        signer=signer_identity,
        signer_address=opened.signer.emails[0] if opened.signer.emails else "",
        certificate_name=opened.signer.common_name or "",
        signed_at=opened.signed_at,
        warnings=tuple(warnings),
    )
    return OpenedCopy(copy, signature, inner, receipt=is_mdn(opened.mime))
