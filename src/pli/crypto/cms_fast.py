"""Fast paths for opening the envelopes Pli and common S/MIME agents write.

Opening a 10 KB message spent more time in asn1crypto's generic parsing and
pyHanko's integrity check than in the RSA decryption itself (issue 2 asks
for seal + open within 1.2x of the bare ``cryptography`` calls). These
functions read the usual DER shapes with :mod:`pli.crypto.der` and make the
*same* checks as the full path in :mod:`pli.crypto.smime`:

* :func:`inspect_enveloped`: the structure and algorithms of an
  EnvelopedData before decryption (RFC 5652 §6.1, §6.2.1);
* :func:`verify_signed`: the integrity of a SignedData with one signer
  (RFC 5652 §5.4, §11.1-§11.3): content type attribute ``data``, message
  digest attribute equal to the content's digest, an accepted digest and RSA
  signature algorithm, and the signature over the DER SET OF attributes.

They only ever *accept*: when anything differs from the usual shape, or a
check fails, they return ``None`` and the caller runs the full path, which
accepts BER and the rarer forms and names the precise error. So a fast path
can make opening quicker, never more permissive: a shape it does not know
(another attribute such as CMSAlgorithmProtection, a SubjectKeyIdentifier,
RSASSA-PSS, an indefinite length) always goes to the full checks.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pli.crypto import der
from pli.crypto.der import Element, NotSimpleDer

_DATA = der.encode_oid("1.2.840.113549.1.7.1")
_SIGNED_DATA = der.encode_oid("1.2.840.113549.1.7.2")
_ENVELOPED_DATA = der.encode_oid("1.2.840.113549.1.7.3")
_RSA_ENCRYPTION = der.encode_oid("1.2.840.113549.1.1.1")
_CONTENT_TYPE = der.encode_oid("1.2.840.113549.1.9.3")
_MESSAGE_DIGEST = der.encode_oid("1.2.840.113549.1.9.4")
_SIGNING_TIME = der.encode_oid("1.2.840.113549.1.9.5")
_SMIME_CAPABILITIES = der.encode_oid("1.2.840.113549.1.9.15")
#: The attributes a fast check understands; any other one goes to the full path
#: (pyHanko checks CMSAlgorithmProtection and signing-certificate attributes).
_KNOWN_ATTRIBUTES = {_CONTENT_TYPE, _MESSAGE_DIGEST, _SIGNING_TIME, _SMIME_CAPABILITIES}
#: Digest OIDs and the names the full path reports (asn1crypto's).
_DIGESTS = {
    der.encode_oid("2.16.840.1.101.3.4.2.1"): "sha256",
    der.encode_oid("2.16.840.1.101.3.4.2.2"): "sha384",
    der.encode_oid("2.16.840.1.101.3.4.2.3"): "sha512",
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
#: sha*WithRSAEncryption (RFC 4055 §5) and the digest each one implies.
_RSA_WITH = {
    der.encode_oid("1.2.840.113549.1.1.11"): "sha256",
    der.encode_oid("1.2.840.113549.1.1.12"): "sha384",
    der.encode_oid("1.2.840.113549.1.1.13"): "sha512",
}
#: The content ciphers Pli accepts (RFC 3565), by their asn1crypto names.
_CIPHERS = {
    der.encode_oid("2.16.840.1.101.3.4.1.2"): "aes128_cbc",
    der.encode_oid("2.16.840.1.101.3.4.1.22"): "aes192_cbc",
    der.encode_oid("2.16.840.1.101.3.4.1.42"): "aes256_cbc",
}
_NULL = b"\x05\x00"


@functools.lru_cache(maxsize=1024)
def _issuer_and_serial(encoded: bytes) -> tuple[bytes, int]:
    """The issuer (as encoded) and serial number of a DER certificate (RFC 5280 §4.1).

    Read from the bytes: ``cryptography`` parses the issuer lazily and would
    raise on a damaged one only when asked.
    """
    certificate = der.only(encoded, der.SEQUENCE)
    tbs = der.children(encoded, der.expect(der.children(encoded, certificate), 0, der.SEQUENCE))
    first = 1 if tbs and tbs[0][0] == der.context(0) else 0  # [0] EXPLICIT version
    serial = der.integer(encoded, der.expect(tbs, first, der.INTEGER))
    issuer = der.encoded(encoded, der.expect(tbs, first + 2, der.SEQUENCE))
    return issuer, serial


@functools.lru_cache(maxsize=256)
def _own_issuer_and_serial(certificate: x509.Certificate) -> tuple[bytes, int]:
    return _issuer_and_serial(certificate.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=1024)
def _certificate(encoded: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(encoded)
    except (ValueError, x509.InvalidVersion):
        return None


def _content_info(buf: bytes, content_type: bytes) -> list[Element]:
    """The fields of the content of a ContentInfo (RFC 5652 §3) of ``content_type``."""
    parts = der.children(buf, der.only(buf, der.SEQUENCE))
    if len(parts) != 2 or der.oid(buf, parts[0]) != content_type:
        raise NotSimpleDer("not the expected content")
    if parts[1][0] != der.context(0):
        raise NotSimpleDer("not the expected content")
    return der.children(buf, der.inner(buf, parts[1], der.SEQUENCE))


def _named_issuer_and_serial(buf: bytes, rid: Element) -> tuple[bytes, int]:
    """The issuer (its DER) and serial number an IssuerAndSerialNumber names."""
    if rid[0] != der.SEQUENCE:
        raise NotSimpleDer("not an IssuerAndSerialNumber")
    parts = der.children(buf, rid)
    if len(parts) != 2 or parts[0][0] != der.SEQUENCE:
        raise NotSimpleDer("not an IssuerAndSerialNumber")
    return der.encoded(buf, parts[0]), der.integer(buf, parts[1])


def _issuer_and_serial_matches(
    buf: bytes, rid: Element, issuer_and_serial: tuple[bytes, int]
) -> bool:
    """An IssuerAndSerialNumber naming that issuer and serial number, byte for byte."""
    return _named_issuer_and_serial(buf, rid) == issuer_and_serial


# --- EnvelopedData ---------------------------------------------------------------------------
def inspect_enveloped(data: bytes, recipient: x509.Certificate) -> str | None:
    """The content cipher's name if the envelope is well formed for ``recipient``, else None.

    The checks of ``smime._inspect_envelope``: content type, version consistent
    with the structure, ``data`` inside, an accepted AES-CBC cipher, and a
    KeyTransRecipientInfo for this certificate (version 0, RSA PKCS#1 v1.5).
    """
    return sealed_for(data, (recipient,))


def sealed_for(data: bytes, recipients: Sequence[x509.Certificate]) -> str | None:
    """The content cipher's name if the envelope is well formed for *every* one of
    ``recipients``, else None.

    The server's check before it accepts a send (REQ-E2E: each recipient and the
    sender's Sent copy can be opened), made as :func:`inspect_enveloped` makes
    it for one certificate. None also when the shape is unusual: the full
    inspection (:func:`pli.crypto.inspect_envelope`) then decides and names the
    missing recipient or the unsupported algorithm.
    """
    if not recipients:
        return None
    try:
        wanted = [_own_issuer_and_serial(recipient) for recipient in recipients]
        return _inspect_enveloped(data, wanted)
    except ValueError:  # NotSimpleDer, or a damaged certificate: the full path decides
        return None


def _inspect_enveloped(buf: bytes, wanted: list[tuple[bytes, int]]) -> str | None:
    fields = _content_info(buf, _ENVELOPED_DATA)
    # version, recipientInfos, encryptedContentInfo: no originatorInfo [0] and
    # no unprotectedAttrs [1] (rare; the full path handles them).
    if len(fields) != 3:
        return None
    version = der.small_integer(buf, fields[0])
    infos = der.children(buf, der.expect(fields, 1, der.SET))
    content = der.children(buf, der.expect(fields, 2, der.SEQUENCE))
    if len(content) != 3 or der.oid(buf, content[0]) != _DATA:
        return None
    cipher_oid, iv = der.algorithm(buf, content[1])
    cipher = _CIPHERS.get(cipher_oid)
    # RFC 3565 §4.1: the parameters of AES-CBC are the 16-byte IV, an OCTET STRING.
    if cipher is None or iv is None or iv[:2] != b"\x04\x10" or len(iv) != 18:
        return None
    if content[2][0] != der.context(0, constructed=False):
        return None
    found = [False] * len(wanted)
    # Each RecipientInfo's rid is read once and looked up, rather than compared with
    # every wanted certificate: a send to ten mailboxes has eleven of each.
    wanted_at: dict[tuple[bytes, int], list[int]] = {}
    for index, issuer_and_serial in enumerate(wanted):
        wanted_at.setdefault(issuer_and_serial, []).append(index)
    every_v0 = True
    for info in infos:
        # Every KeyTransRecipientInfo is read whole, ours or not (stricter than
        # the full path, which may stop at ours): version, rid, algorithm, key.
        if info[0] != der.SEQUENCE:  # another RecipientInfo choice than ktri
            return None
        ktri = der.children(buf, info)
        if len(ktri) != 4 or ktri[1][0] != der.SEQUENCE or ktri[3][0] != der.OCTET_STRING:
            return None  # a SubjectKeyIdentifier rid, or not a ktri
        ktri_version = der.small_integer(buf, ktri[0])
        every_v0 = every_v0 and ktri_version == 0
        key_algorithm, parameters = der.algorithm(buf, ktri[2])
        for index in wanted_at.get(_named_issuer_and_serial(buf, ktri[1]), ()):
            # The first RecipientInfo naming a certificate is the one its holder uses.
            if found[index]:
                continue
            # RFC 5652 §6.2.1: version 0 with an IssuerAndSerialNumber.
            if ktri_version != 0:
                return None
            if key_algorithm != _RSA_ENCRYPTION or parameters not in (None, _NULL):
                return None
            found[index] = True
    # RFC 5652 §6.1: version 0 exactly when every recipient info is a v0 ktri.
    if not all(found) or (version == 0) != every_v0 or version not in (0, 2):
        return None
    return cipher


# --- SignedData ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedSignature:
    """What an intact signature covers and who made it (before any trust check)."""

    content: bytes
    digest_name: str
    certificate: bytes
    others: list[bytes]
    signed_at: dt.datetime | None


def verify_signed(data: bytes) -> VerifiedSignature | None:
    """An intact SignedData's content and signer, or None: the full path decides."""
    try:
        return _verify_signed(data)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
        # NotSimpleDer, or a damaged certificate or key: the full path decides.
        return None


def _verify_signed(buf: bytes) -> VerifiedSignature | None:
    fields = _content_info(buf, _SIGNED_DATA)
    # version, digestAlgorithms, encapContentInfo, [0] certificates, signerInfos;
    # no [1] crls (unused by Pli's checks; the full path reads past them).
    if len(fields) != 5 or fields[3][0] != der.context(0):
        return None
    der.small_integer(buf, fields[0])
    der.expect(fields, 1, der.SET)
    content = _encapsulated_data(buf, der.expect(fields, 2, der.SEQUENCE))
    certificates = [der.encoded(buf, c) for c in der.children(buf, fields[3])]
    signer_infos = der.children(buf, der.expect(fields, 4, der.SET))
    if len(signer_infos) != 1 or signer_infos[0][0] != der.SEQUENCE:
        return None
    info = der.children(buf, signer_infos[0])
    # version 1, sid (IssuerAndSerialNumber), digestAlgorithm, [0] signedAttrs,
    # signatureAlgorithm, signature; unsignedAttrs [1] are not signed: ignored.
    if len(info) not in (6, 7) or der.small_integer(buf, info[0]) != 1:
        return None
    digest_name = _DIGESTS.get(der.algorithm(buf, info[2])[0])
    if digest_name is None or info[3][0] != der.context(0):
        return None
    signature_algorithm, parameters = der.algorithm(buf, info[4])
    if parameters not in (None, _NULL):
        return None
    # rsaEncryption (as OpenSSL writes it) takes the SignerInfo's digest; a
    # sha*WithRSA must name that same digest (see smime._check_signature_algorithm).
    if signature_algorithm != _RSA_ENCRYPTION and _RSA_WITH.get(signature_algorithm) != digest_name:
        return None
    signature = der.expect(info, 5, der.OCTET_STRING)
    if len(info) == 7 and info[6][0] != der.context(1):
        return None
    digest = hashlib.new(digest_name, content).digest()
    intact, signed_at = _check_attributes(buf, info[3], digest)
    if not intact:
        return None
    found = _signer(buf, info[1], certificates)
    if found is None:
        return None
    signer, encoded, others = found
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return None
    # RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF,
    # not as the [0] IMPLICIT field that carries them.
    try:
        key.verify(
            der.value(buf, signature),
            b"\x31" + buf[info[3][1] + 1 : info[3][3]],
            padding.PKCS1v15(),
            _HASHES[digest_name](),
        )
    except InvalidSignature:
        return None
    return VerifiedSignature(
        content=content,
        digest_name=digest_name,
        certificate=encoded,
        others=others,
        signed_at=signed_at,
    )


def _encapsulated_data(buf: bytes, element: Element) -> bytes:
    """The eContent of an EncapsulatedContentInfo of type ``data``, in one OCTET STRING."""
    parts = der.children(buf, element)
    if len(parts) != 2 or der.oid(buf, parts[0]) != _DATA or parts[1][0] != der.context(0):
        raise NotSimpleDer("not encapsulated data")
    return der.value(buf, der.inner(buf, parts[1], der.OCTET_STRING))


_BROKEN: tuple[bool, dt.datetime | None] = (False, None)


def _check_attributes(
    buf: bytes, attributes: Element, digest: bytes
) -> tuple[bool, dt.datetime | None]:
    """Whether the signed attributes hold, and the signing time they give.

    RFC 5652 §11: content-type and message-digest present once, with one
    value each; the content type is ``data`` and the digest matches.
    """
    seen: dict[bytes, list[Element]] = {}
    for attribute in der.children(buf, attributes):
        if attribute[0] != der.SEQUENCE:
            return _BROKEN
        parts = der.children(buf, attribute)
        if len(parts) != 2:
            return _BROKEN
        kind = der.oid(buf, parts[0])
        if kind not in _KNOWN_ATTRIBUTES or kind in seen:
            return _BROKEN
        seen[kind] = der.children(buf, der.expect(parts, 1, der.SET))
    content_types = seen.get(_CONTENT_TYPE, [])
    digests = seen.get(_MESSAGE_DIGEST, [])
    if len(content_types) != 1 or der.oid(buf, content_types[0]) != _DATA:
        return _BROKEN
    if len(digests) != 1 or digests[0][0] != der.OCTET_STRING:
        return _BROKEN
    if der.value(buf, digests[0]) != digest:
        return _BROKEN
    times = seen.get(_SIGNING_TIME)
    if times is None:
        return True, None
    if len(times) != 1:
        return _BROKEN
    signed_at = _time(buf, times[0])
    return (signed_at is not None), signed_at


def _time(buf: bytes, element: Element) -> dt.datetime | None:
    """A DER UTCTime or GeneralizedTime in UTC (RFC 5652 §11.3, RFC 5280 §4.1.2.5)."""
    try:
        text = der.value(buf, element).decode("ascii")
        if element[0] == der.UTC_TIME and len(text) == 13 and text.endswith("Z"):
            parsed = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")  # noqa: DTZ007 - UTC, set below
            # RFC 5280: two-digit years 50-99 are 19xx, 00-49 are 20xx.
            year = parsed.year if parsed.year < 2050 else parsed.year - 100
            return parsed.replace(year=year, tzinfo=dt.UTC)
        if element[0] == der.GENERALIZED_TIME and len(text) == 15 and text.endswith("Z"):
            parsed = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")  # noqa: DTZ007 - UTC, set below
            return parsed.replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return None


def _signer(
    buf: bytes, sid: Element, certificates: list[bytes]
) -> tuple[x509.Certificate, bytes, list[bytes]] | None:
    """The embedded certificate the IssuerAndSerialNumber names, its DER, and the others."""
    found: tuple[x509.Certificate, bytes] | None = None
    others: list[bytes] = []
    for encoded in certificates:
        certificate = _certificate(encoded)
        if certificate is None:
            return None
        if found is None and _issuer_and_serial_matches(buf, sid, _issuer_and_serial(encoded)):
            found = (certificate, encoded)
        else:
            others.append(encoded)
    return None if found is None else (*found, others)
