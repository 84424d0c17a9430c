"""Seal and open messages: S/MIME signed-then-enveloped (RFC 8551 §3.7).

``seal`` signs the inner MIME entity (CMS SignedData, SHA-256, RFC 5652 §5),
wraps it as ``application/pkcs7-mime; smime-type=signed-data`` and encrypts
that (CMS EnvelopedData, AES-256-CBC, RSA key transport, RFC 5652 §6) for
every recipient and for the sender, so that Sent items stay readable.

``open_envelope`` decrypts, then accepts the two signed forms S/MIME agents
write (opaque ``application/pkcs7-mime`` and ``multipart/signed``), verifies
the signature (pyHanko's CMS integrity check: content type, message digest,
signature over the signed attributes; pyHanko's key-usage constraints:
digitalSignature and emailProtection), validates the signer's path and its
revocation (:mod:`pli.crypto.trust`) and checks that the signer is the
message's From or Sender. Every failure is a typed :class:`CryptoError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography.exceptions import UnsupportedAlgorithm as _CryptographyUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from pli.crypto import cms_fast
from pli.crypto.errors import (
    EnvelopeCorrupted,
    InvalidCertificate,
    MalformedEnvelope,
    NotARecipient,
    SenderMismatch,
    SignatureInvalid,
    SignatureMissing,
    SignerCertificateMismatch,
    SignerUntrusted,
    SignerUsageInvalid,
    UnsupportedAlgorithm,
)
from pli.crypto.keys import (
    Certificate,
    Decrypter,
    PrivateKey,
    Signer,
    as_private_key,
    certificate_common_name,
    certificate_emails,
    certificate_fingerprint,
    certificate_national_id,
    check_peer_public_key,
    load_certificate,
    unique_certificates,
)
from pli.crypto.trust import TrustStore
from pli.mime import MimeError, originators

if TYPE_CHECKING:
    from pyhanko.sign.validation.settings import KeyUsageConstraints


@functools.cache
def _smime_key_usage() -> KeyUsageConstraints:
    """What an S/MIME signer's certificate must allow (RFC 8550 §4.4.2 and §4.4.4).

    pyHanko's generic CMS validation rejects valid e-mail signatures unless
    told. Imported on first use: ``pyhanko.sign`` brings about 15 MB of
    modules (PDF signing, an HTTP client) that a server process answering
    only the API never needs (issue 5's memory target).
    """
    from pyhanko.sign.validation.settings import KeyUsageConstraints  # noqa: PLC0415

    return KeyUsageConstraints(key_usage={"digital_signature"}, extd_key_usage={"email_protection"})


_ACCEPTED_DIGESTS = {"sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}
_ACCEPTED_CONTENT_CIPHERS = {"aes128_cbc", "aes192_cbc", "aes256_cbc"}
_SMIME_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
_SIGNATURE_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature"}
#: Header block of a MIME entity we parse ourselves (envelope wrappers): bounded.
_MAX_HEADER_BLOCK = 64 * 1024
#: The opaque signed entity as :func:`sign_entity` writes it, byte for byte.
_PLI_SIGNED_HEADER = (
    b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
    b"\r\n"
)


# --- helpers -------------------------------------------------------------------------------
def canonical_crlf(data: bytes) -> bytes:
    """RFC 5751 §3.1.1: signed MIME content is canonical, lines end with CRLF."""
    # Counting is one pass in C without a copy: canonical text is returned as is.
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045 §6.8)."""
    # One C call, then slices: base64.encodebytes calls b2a_base64 per line.
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[start : start + 76] for start in range(0, len(encoded), 76)]
    lines.append(b"")
    return b"\r\n".join(lines)


# RFC 5322 §2.2 / RFC 2045: header fields are printable US-ASCII, "name: value",
# folded lines start with white space.
_HEADER_LINE = re.compile(rb"(?:[!-9;-~]+:[ \t]*|[ \t]+)[ -~\t]*")


def _split_entity(entity: bytes) -> tuple[Message, bytes]:
    """Headers and body of a MIME entity; the blank line may be CRLF or LF.

    The headers of S/MIME wrapper entities are not covered by any signature,
    so they are read strictly: anything but well-formed header lines is refused.
    Only the fields we use are kept, in a bare ``Message`` (no feed parser:
    this runs for every message opened).
    """
    match = re.search(rb"\r?\n\r?\n", entity[: _MAX_HEADER_BLOCK + 4])
    if match is None:
        raise MalformedEnvelope("no end of headers found")
    fields: list[list[str]] = []
    for line in re.split(rb"\r?\n", entity[: match.start()]):
        if not _HEADER_LINE.fullmatch(line):
            raise MalformedEnvelope("malformed header line")
        text = line.decode("ascii")
        if text[0] in " \t":
            if not fields:
                raise MalformedEnvelope("header block starts with a continuation line")
            fields[-1][1] += " " + text.strip()
        else:
            name, _, value = text.partition(":")
            fields.append([name.strip(), value.strip()])
    headers = Message()
    for name, value in fields:
        if name.lower() in ("content-type", "content-transfer-encoding"):
            if name in headers:
                raise MalformedEnvelope(f"duplicate {name} header")
            headers[name] = value
    if "Content-Type" in headers and headers.get_params() is None:
        raise MalformedEnvelope("unreadable Content-Type")
    return headers, entity[match.end() :]


def _decode_base64(body: bytes) -> bytes:
    try:
        # bytes.translate deletes the line breaks at C speed (10 MB messages).
        return base64.b64decode(body.translate(None, b" \t\r\n"), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelope("bad base64 content") from None


# --- seal ------------------------------------------------------------------------------------
def sign_entity(inner_mime: bytes, signer: Signer, chain: Sequence[Certificate] = ()) -> bytes:
    """The opaque signed entity: ``application/pkcs7-mime; smime-type=signed-data``."""
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(canonical_crlf(inner_mime))
        .add_signer(signer.certificate, as_private_key(signer), hashes.SHA256())
    )
    for certificate in chain:
        builder = builder.add_certificate(certificate)
    signed = builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return _PLI_SIGNED_HEADER + _base64_lines(signed)


def seal(
    inner_mime: bytes,
    signer: Signer,
    recipients: Sequence[Certificate],
    *,
    chain: Sequence[Certificate] = (),
) -> bytes:
    """Sign then encrypt ``inner_mime`` for ``recipients`` and the signer; CMS DER."""
    if not recipients:
        raise NotARecipient("a sealed message needs at least one recipient")
    everyone = unique_certificates([*recipients, signer.certificate])
    for certificate in everyone:
        check_peer_public_key(certificate)
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(sign_entity(inner_mime, signer, chain))
    for certificate in everyone:
        builder = builder.add_recipient(certificate)
    return builder.set_content_encryption_algorithm(algorithms.AES256).encrypt(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]
    )


def envelope_to_smime(envelope_der: bytes) -> bytes:
    """The S/MIME entity (RFC 8551 §3.3) carrying an EnvelopedData, for SMTP."""
    return (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
        b"\r\n" + _base64_lines(envelope_der)
    )


# --- open ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignerIdentity:
    emails: list[str]
    common_name: str | None
    national_id: str | None
    certificate: Certificate
    fingerprint: str


@dataclass(frozen=True)
class ValidationDetails:
    chain: list[str]
    revocation_checked: bool
    digest_algorithm: str
    content_encryption: str
    signed_form: str


@dataclass(frozen=True)
class OpenedMessage:
    """A message whose envelope opened and whose signature is genuine."""

    mime: bytes
    signer: SignerIdentity
    signed_at: dt.datetime | None
    details: ValidationDetails
    warnings: list[str] = field(default_factory=list)


def envelope_bytes(data: bytes) -> bytes:
    """The CMS bytes of an envelope given as DER/BER, PEM (PKCS7 or CMS) or S/MIME."""
    stripped = data.lstrip()
    if stripped[:1] == b"\x30":
        return stripped
    if stripped.startswith(b"-----BEGIN"):
        # OpenSSL writes "-----BEGIN CMS-----", cryptography "-----BEGIN PKCS7-----".
        match = re.search(
            rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", stripped, re.S
        )
        if match is None:
            raise MalformedEnvelope("unterminated PEM block")
        return _decode_base64(match.group(1))
    headers, body = _split_entity(data)
    if headers.get_content_type() not in _SMIME_TYPES:
        raise MalformedEnvelope(f"not an S/MIME envelope: {headers.get_content_type()}")
    if (headers.get("Content-Transfer-Encoding") or "base64").strip().lower() != "base64":
        raise MalformedEnvelope("an S/MIME envelope must be base64-encoded")
    return _decode_base64(body)


def _matches(rid: asn1_cms.RecipientIdentifier, certificate: asn1_x509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        chosen = rid.chosen
        # Serial first: cheap, and it rules out almost every other recipient.
        # Issuers are compared as encoded (RFC 5280 §7.1 allows binary comparison
        # for names copied from the certificate, which CMS agents do); asn1crypto's
        # LDAP string preparation is the fallback for re-encoded names.
        if chosen["serial_number"].native != certificate.serial_number:
            return False
        return bool(
            chosen["issuer"].dump() == certificate.issuer.dump()
            or chosen["issuer"] == certificate.issuer
        )
    if rid.name == "subject_key_identifier":
        return bool(rid.chosen.native == certificate.key_identifier)
    return False


def _check_versions(enveloped: asn1_cms.EnvelopedData) -> None:
    """RFC 5652 §6.1: the version follows from the structure; a mismatch is tampering."""
    simple = (
        enveloped["originator_info"].native is None
        and enveloped["unprotected_attrs"].native is None
        and all(
            ri.name == "ktri" and ri.chosen["version"].native == "v0"
            for ri in enveloped["recipient_infos"]
        )
    )
    version = enveloped["version"].native
    if (version == "v0") != simple:
        raise MalformedEnvelope(f"EnvelopedData version {version} does not match its content")


def _inspect_envelope(der: bytes, recipient: asn1_x509.Certificate) -> str:
    """Check structure and algorithms before decrypting; the content cipher's name."""
    try:
        info = asn1_cms.ContentInfo.load(der)
        content_type = info["content_type"].native
        if content_type == "authenticated_enveloped_data":
            raise UnsupportedAlgorithm("AuthEnvelopedData (AES-GCM, RFC 5083) is not supported")
        if content_type != "enveloped_data":
            raise MalformedEnvelope(f"expected enveloped data, found {content_type}")
        enveloped = info["content"]
        _check_versions(enveloped)
        encrypted_content_info = enveloped["encrypted_content_info"]
        if encrypted_content_info["content_type"].native != "data":
            raise MalformedEnvelope("S/MIME content must be of type data")
        cipher = encrypted_content_info["content_encryption_algorithm"]["algorithm"].native
        if cipher not in _ACCEPTED_CONTENT_CIPHERS:
            raise UnsupportedAlgorithm(f"content encryption {cipher} is not accepted")
        for recipient_info in enveloped["recipient_infos"]:
            if recipient_info.name != "ktri":
                continue
            ktri = recipient_info.chosen
            if not _matches(ktri["rid"], recipient):
                continue
            expected = "v0" if ktri["rid"].name == "issuer_and_serial_number" else "v2"
            if ktri["version"].native != expected:  # RFC 5652 §6.2.1
                raise MalformedEnvelope("KeyTransRecipientInfo version does not match its rid")
            algorithm = ktri["key_encryption_algorithm"]["algorithm"].native
            if algorithm != "rsaes_pkcs1v15":
                raise UnsupportedAlgorithm(f"key transport {algorithm} is not supported")
            return str(cipher)
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise MalformedEnvelope(f"unreadable CMS structure: {error}") from None
    raise NotARecipient("this envelope was not sealed for this certificate")


def _to_der(der: bytes) -> bytes:
    """Re-encode BER (indefinite lengths, as ``openssl cms -stream`` writes) as DER."""
    try:
        return bytes(asn1_cms.ContentInfo.load(der).dump(force=True))
    except (ValueError, TypeError) as error:
        raise MalformedEnvelope(f"unreadable CMS structure: {error}") from None


#: Runs the structural inspection of envelopes beside the RSA decryption.
_INSPECTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pli-envelope")


def _decrypt_der(der: bytes, certificate: Certificate, key: PrivateKey) -> bytes:
    try:
        return pkcs7.pkcs7_decrypt_der(der, certificate, key, [])
    except ValueError:
        # cryptography reads DER only; BER from streaming agents gets one retry.
        reencoded = _to_der(der)
        if reencoded == der:
            raise
        return pkcs7.pkcs7_decrypt_der(reencoded, certificate, key, [])


def decrypt_envelope(data: bytes, decrypter: Decrypter) -> tuple[bytes, str]:
    """The decrypted content of an EnvelopedData, and the content cipher used.

    The usual DER shape is inspected by :mod:`pli.crypto.cms_fast` first.
    Otherwise the inspection (pure Python, asn1crypto) runs in a helper thread while
    this thread decrypts: RSA releases the GIL, so the two overlap. Key
    operations never leave the calling thread (a card session may be bound
    to it). The inspection's verdict wins over a decryption failure, so the
    error names the real reason (unsupported algorithm, not a recipient).
    """
    der = envelope_bytes(data)
    cipher_name = cms_fast.inspect_enveloped(der, decrypter.certificate)
    if cipher_name is not None:
        # The usual shape, checked without asn1crypto: decrypt in this thread.
        # A failure goes through the full path below, which names its reason.
        try:
            return _decrypt_der(der, decrypter.certificate, as_private_key(decrypter)), cipher_name
        except (ValueError, _CryptographyUnsupported, MalformedEnvelope):
            pass
    recipient = asn1_x509.Certificate.load(
        decrypter.certificate.public_bytes(serialization.Encoding.DER)
    )
    inspection = _INSPECTOR.submit(_inspect_envelope, der, recipient)
    content: bytes | None = None
    failure: Exception | None = None
    try:
        content = _decrypt_der(der, decrypter.certificate, as_private_key(decrypter))
    except (ValueError, _CryptographyUnsupported, MalformedEnvelope) as error:
        failure = error
    cipher = inspection.result()
    if content is not None:
        return content, cipher
    if isinstance(failure, _CryptographyUnsupported):
        raise UnsupportedAlgorithm(str(failure))
    if isinstance(failure, MalformedEnvelope):
        raise failure
    raise EnvelopeCorrupted("the envelope does not decrypt to a readable message")


@dataclass(frozen=True)
class _SignedParts:
    content: bytes
    signed_data: asn1_cms.SignedData
    form: str


def _fast_signature(entity: bytes) -> tuple[cms_fast.VerifiedSignature, str] | None:
    """An intact opaque signature checked by :mod:`pli.crypto.cms_fast`, or None.

    Only the two opaque forms Pli and OpenSSL write without options (DER, or
    Pli's own wrapper headers); anything else, or any doubt, is for the full
    path (:func:`_unwrap_signed`, :func:`_verify_parts`).
    """
    if entity[:1] == b"\x30":
        der_bytes, form = entity, "der"
    elif entity.startswith(_PLI_SIGNED_HEADER):
        try:
            der_bytes = base64.b64decode(
                entity[len(_PLI_SIGNED_HEADER) :].translate(None, b"\r\n"), validate=True
            )
        except (binascii.Error, ValueError):
            return None
        form = "opaque"
    else:
        return None
    signature = cms_fast.verify_signed(der_bytes)
    return None if signature is None else (signature, form)


def _unwrap_signed(entity: bytes) -> _SignedParts:
    if entity[:1] == b"\x30":
        return _opaque(entity, "der")
    headers, body = _split_entity(entity)
    content_type = headers.get_content_type()
    if content_type in _SMIME_TYPES:
        smime_type = headers.get_param("smime-type") or "signed-data"
        if str(smime_type).lower() != "signed-data":
            raise SignatureMissing(f"expected signed data, found {smime_type}")
        return _opaque(_decode_base64(body), "opaque")
    if content_type == "multipart/signed":
        protocol = str(headers.get_param("protocol") or "").lower()
        if protocol not in _SIGNATURE_TYPES:
            raise SignatureMissing(f"unknown multipart/signed protocol {protocol!r}")
        boundary = headers.get_boundary()
        if not boundary:
            raise MalformedEnvelope("multipart/signed without boundary")
        return _detached(body, boundary.encode())
    raise SignatureMissing("the message is not signed")


def _load_signed_data(der: bytes) -> asn1_cms.SignedData:
    try:
        info = asn1_cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise SignatureMissing("the signed part holds no SignedData")
        signed_data = info["content"]
        len(signed_data["signer_infos"])  # parses the signer infos: a bad structure fails here
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise MalformedEnvelope(f"unreadable SignedData: {error}") from None
    return signed_data


def _opaque(der: bytes, form: str) -> _SignedParts:
    signed_data = _load_signed_data(der)
    content = signed_data["encap_content_info"]["content"].native
    if content is None:
        raise SignatureMissing("detached signature without content")
    return _SignedParts(bytes(content), signed_data, form)


def _detached(body: bytes, boundary: bytes) -> _SignedParts:
    # RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter.
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*\r?\n?")
    positions = list(delimiter.finditer(body))
    if len(positions) < 3 or positions[2].group(1) is None:
        raise MalformedEnvelope("multipart/signed must have exactly two parts")
    signed_content = body[positions[0].end() : positions[1].start()]
    signature_entity = body[positions[1].end() : positions[2].start()]
    headers, signature_body = _split_entity(signature_entity)
    if headers.get_content_type() not in _SIGNATURE_TYPES:
        raise SignatureMissing("the second part of multipart/signed is not a signature")
    signed_data = _load_signed_data(_decode_base64(signature_body))
    return _SignedParts(canonical_crlf(signed_content), signed_data, "multipart/signed")


def _signer_certificate(
    signed_data: asn1_cms.SignedData, signer_info: asn1_cms.SignerInfo
) -> tuple[asn1_x509.Certificate, list[asn1_x509.Certificate]]:
    sid = signer_info["sid"]
    found = None
    others = []
    for choice in signed_data["certificates"] or []:
        if choice.name != "certificate":
            continue
        certificate = choice.chosen
        if found is None and _matches(sid, certificate):
            found = certificate
        else:
            others.append(certificate)
    if found is None:
        raise SignerCertificateMismatch("no embedded certificate matches the signer identifier")
    return found, others


def _check_signature_algorithm(signer_info: asn1_cms.SignerInfo, digest_name: str) -> None:
    """RSA with the SignerInfo's own SHA-2 digest, nothing else (no MD5 / SHA-1 signatures).

    pyHanko hashes the signed attributes with the hash the signature algorithm
    names: a weak one there would bypass the digest check above.
    """
    algorithm = signer_info["signature_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsassa_pkcs1v15":  # rsaEncryption, as OpenSSL writes: the digest applies
        return
    if name in ("sha256_rsa", "sha384_rsa", "sha512_rsa"):
        if name.split("_")[0] != digest_name:
            raise UnsupportedAlgorithm(f"signature algorithm {name} does not match {digest_name}")
        return
    if name == "rsassa_pss":
        try:
            pss_hash = algorithm["parameters"]["hash_algorithm"]["algorithm"].native
        except (KeyError, TypeError, ValueError):
            pss_hash = None
        if pss_hash == digest_name:
            return
    raise UnsupportedAlgorithm(f"signature algorithm {name} is not accepted")


@functools.lru_cache(maxsize=1024)
def _checked_signer_certificate(der: bytes) -> Certificate:
    """A signer certificate, its S/MIME usages checked by pyHanko; once per certificate.

    The check depends on the certificate alone, so a recurring signer costs
    one dictionary lookup. Failures raise, and are not cached.
    """
    from pyhanko_certvalidator.errors import InvalidCertificateError  # noqa: PLC0415

    try:
        _smime_key_usage().validate(asn1_x509.Certificate.load(der))
    except InvalidCertificateError as error:
        raise SignerUsageInvalid(str(error)) from None
    except (ValueError, TypeError, KeyError):
        # A damaged extension parses lazily and fails here: not a crash, a
        # certificate nobody can trust.
        raise SignerUntrusted("the signer's certificate cannot be read") from None
    try:
        return load_certificate(der)
    except InvalidCertificate:
        raise SignerUntrusted("the signer's certificate cannot be read") from None


@functools.lru_cache(maxsize=1024)
def _identity_fields(
    certificate: Certificate,
) -> tuple[tuple[str, ...], str | None, str | None, str]:
    return (
        tuple(certificate_emails(certificate)),
        certificate_common_name(certificate),
        certificate_national_id(certificate),
        certificate_fingerprint(certificate),
    )


def _signer_identity(certificate: Certificate) -> SignerIdentity:
    """Who signed: read from the certificate once, a fresh object each time."""
    emails, common_name, national_id, fingerprint = _identity_fields(certificate)
    return SignerIdentity(list(emails), common_name, national_id, certificate, fingerprint)


def _signing_time(signer_info: asn1_cms.SignerInfo) -> dt.datetime | None:
    for attribute in signer_info["signed_attrs"] or []:
        if attribute["type"].native == "signing_time":
            value = attribute["values"][0].native
            return value if isinstance(value, dt.datetime) else None
    return None


def _from_and_sender(mime: bytes) -> set[str]:
    """From and Sender of the signed message, read as ``pli.mime`` reads them for display."""
    try:
        from_address, sender = originators(mime)
    except MimeError as error:
        raise SenderMismatch(
            f"the signed message's From / Sender cannot be read: {error.detail}"
        ) from None
    return {address.lower() for address in (from_address, sender) if address}


def verify_signed_entity(
    entity: bytes,
    trust: TrustStore,
    *,
    at: dt.datetime | None = None,
    check_sender: bool = True,
) -> tuple[bytes, SignerIdentity, dt.datetime | None, list[str], bool, str, str]:
    """Verify a signed MIME entity; what it signed, who signed it and how."""
    return _verify_parts(_unwrap_signed(entity), trust, at=at, check_sender=check_sender)


def _verify_parts(
    parts: _SignedParts,
    trust: TrustStore,
    *,
    at: dt.datetime | None,
    check_sender: bool,
) -> tuple[bytes, SignerIdentity, dt.datetime | None, list[str], bool, str, str]:
    signer_infos = parts.signed_data["signer_infos"]
    if len(signer_infos) != 1:
        raise SignatureInvalid(f"expected one signer, found {len(signer_infos)}")
    signer_info = signer_infos[0]
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _ACCEPTED_DIGESTS:
        raise UnsupportedAlgorithm(f"digest {digest_name} is not accepted")
    _check_signature_algorithm(signer_info, digest_name)
    certificate_asn1, others = _signer_certificate(parts.signed_data, signer_info)
    digest = hashlib.new(_ACCEPTED_DIGESTS[digest_name], parts.content).digest()
    # Loaded on first use (see _smime_key_usage): the fast path needs none of it.
    from pyhanko.sign.general import ValueErrorWithMessage  # noqa: PLC0415
    from pyhanko.sign.validation.generic_cms import validate_sig_integrity  # noqa: PLC0415

    try:
        intact, valid = validate_sig_integrity(
            signer_info, certificate_asn1, expected_content_type="data", actual_digest=digest
        )
    except ValueErrorWithMessage as error:
        raise SignatureInvalid(str(error)) from None
    except (ValueError, TypeError, KeyError) as error:
        raise SignatureInvalid(f"unreadable signer information: {error}") from None
    if not (intact and valid):
        raise SignatureInvalid(
            "the content was altered" if valid else "the signature does not verify"
        )
    signature = cms_fast.VerifiedSignature(
        content=parts.content,
        digest_name=digest_name,
        certificate=certificate_asn1.dump(),
        others=[other.dump() for other in others],
        signed_at=_signing_time(signer_info),
    )
    return _trusted_signer(signature, parts.form, trust, at=at, check_sender=check_sender)


def _trusted_signer(
    signature: cms_fast.VerifiedSignature,
    form: str,
    trust: TrustStore,
    *,
    at: dt.datetime | None,
    check_sender: bool,
) -> tuple[bytes, SignerIdentity, dt.datetime | None, list[str], bool, str, str]:
    """After an intact signature: the signer's usages, path, revocation and address."""
    certificate = _checked_signer_certificate(signature.certificate)
    intermediates = [load_certificate(other) for other in signature.others]
    result = trust.verify_signer(certificate, intermediates, at=at)
    emails = _signer_identity(certificate).emails
    if check_sender:
        claimed = _from_and_sender(signature.content)
        if not claimed.intersection(emails):
            raise SenderMismatch(
                "the signer's certificate is for "
                + (", ".join(emails) or "no address")
                + ", not for the message's From or Sender"
            )
    identity = _signer_identity(certificate)
    return (
        signature.content,
        identity,
        signature.signed_at,
        result.chain_names,
        result.revocation_checked,
        signature.digest_name,
        form,
    )


def open_envelope(
    data: bytes,
    decrypter: Decrypter,
    trust: TrustStore,
    *,
    at: dt.datetime | None = None,
    check_sender: bool = True,
) -> OpenedMessage:
    """Decrypt and verify a sealed message; raise a typed error unless it is genuine."""
    entity, cipher = decrypt_envelope(data, decrypter)
    fast = _fast_signature(entity)
    if fast is not None:
        mime, identity, signed_at, chain, checked, digest_name, form = _trusted_signer(
            *fast, trust, at=at, check_sender=check_sender
        )
    else:
        try:
            parts = _unwrap_signed(entity)
        except MalformedEnvelope:
            # After an unauthenticated CBC decryption, "unreadable" must look like
            # "bad padding": one code, or the answer is a padding oracle.
            raise EnvelopeCorrupted("the envelope does not decrypt to a readable message") from None
        mime, identity, signed_at, chain, checked, digest_name, form = _verify_parts(
            parts, trust, at=at, check_sender=check_sender
        )
    warnings = [] if checked else ["revocation_not_checked"]
    return OpenedMessage(
        mime=mime,
        signer=identity,
        signed_at=signed_at,
        details=ValidationDetails(
            chain=chain,
            revocation_checked=checked,
            digest_algorithm=digest_name,
            content_encryption=cipher,
            signed_form=form,
        ),
        warnings=warnings,
    )
