"""Keys, certificates and the signer / decrypter interfaces.

A private key may live in memory (a workstation PKCS#12 file, the server's
vault) or later on a smart card through PKCS#11. Callers never touch the key:
they hold a :class:`Signer` or a :class:`Decrypter`, whose only operations are
the two raw RSA operations S/MIME needs. :func:`as_private_key` turns either
into the object ``cryptography``'s CMS builders expect, delegating the raw
operation back to the interface, so that a card key needs no other change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.x509.oid import NameOID

from pli.crypto.errors import InvalidCertificate, WeakKey

Certificate = x509.Certificate
CertificateSigningRequest = x509.CertificateSigningRequest
CertificateRevocationList = x509.CertificateRevocationList
PrivateKey = rsa.RSAPrivateKey

#: Our own keys (REQ-E2E): RSA-3072, about 128-bit security (ANSSI RGS B1 beyond 2030).
DEFAULT_KEY_BITS = 3072
#: The smallest RSA modulus accepted from a peer (ANSSI RGS B1 until 2030, MSSanté IGC-Santé).
MIN_PEER_KEY_BITS = 2048


@runtime_checkable
class Signer(Protocol):
    """Something that can sign with the private key of :attr:`certificate`."""

    @property
    def certificate(self) -> Certificate: ...

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over ``data`` (RFC 8017 §8.2)."""
        ...


@runtime_checkable
class Decrypter(Protocol):
    """Something that can unwrap content keys sent to :attr:`certificate`."""

    @property
    def certificate(self) -> Certificate: ...

    def decrypt_key(self, encrypted_key: bytes) -> bytes:
        """RSAES-PKCS1-v1_5 decryption of a CMS KeyTransRecipientInfo key (RFC 5652 §6.2.1)."""
        ...


@dataclass(frozen=True)
class SoftwareKey:
    """A key in memory with its certificate: a :class:`Signer` and a :class:`Decrypter`."""

    private_key: PrivateKey
    certificate: Certificate

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def decrypt_key(self, encrypted_key: bytes) -> bytes:
        return self.private_key.decrypt(encrypted_key, padding.PKCS1v15())


class _DelegatingKey(rsa.RSAPrivateKey):
    """An ``RSAPrivateKey`` whose two private operations go to a Signer / Decrypter.

    ``cryptography``'s PKCS#7 builders call ``sign`` / ``decrypt`` on the key
    object they are given, which is what lets a key that never leaves its
    device take part. Only the operations S/MIME needs are allowed.
    """

    def __init__(self, delegate: Signer | Decrypter) -> None:
        self._delegate = delegate
        self._public = delegate.certificate.public_key()
        if not isinstance(self._public, rsa.RSAPublicKey):
            raise InvalidCertificate("only RSA keys are supported")

    def sign(
        self,
        data: bytes,
        padding: padding.AsymmetricPadding,
        algorithm: Prehashed | hashes.HashAlgorithm | NoDigestInfo,
    ) -> bytes:
        if not isinstance(self._delegate, Signer):
            raise TypeError("this key cannot sign")
        if padding.name != "EMSA-PKCS1-v1_5" or not isinstance(algorithm, hashes.SHA256):
            raise TypeError("only RSASSA-PKCS1-v1_5 with SHA-256 is delegated")
        return self._delegate.sign(data)

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        if not isinstance(self._delegate, Decrypter):
            raise TypeError("this key cannot decrypt")
        if padding.name != "EMSA-PKCS1-v1_5":
            raise TypeError("only RSAES-PKCS1-v1_5 is delegated")
        return self._delegate.decrypt_key(ciphertext)

    @property
    def key_size(self) -> int:
        return self._public.key_size  # type: ignore[union-attr]

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public  # type: ignore[return-value]

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise TypeError("a delegated key does not reveal its numbers")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,  # noqa: A002 - name fixed by the base class
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise TypeError("a delegated key cannot be exported")

    def __copy__(self) -> _DelegatingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _DelegatingKey:
        return self


def as_private_key(holder: Signer | Decrypter) -> PrivateKey:
    """The key object for ``cryptography``'s builders, routed through ``holder``.

    A :class:`SoftwareKey` holds the key object itself: the builders get it
    directly (the delegation's runtime protocol checks cost more than the
    encryption of a 10 KB message). Any other holder, such as a card, is
    reached through :class:`_DelegatingKey`.
    """
    if type(holder) is SoftwareKey:
        return holder.private_key
    return _DelegatingKey(holder)


def generate_private_key(bits: int = DEFAULT_KEY_BITS) -> PrivateKey:
    if bits < DEFAULT_KEY_BITS:
        raise WeakKey(f"Pli creates RSA keys of at least {DEFAULT_KEY_BITS} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def check_peer_public_key(certificate: Certificate) -> None:
    """Reject keys a peer may not use: only RSA of at least 2048 bits."""
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidCertificate("only RSA certificates are supported")
    if key.key_size < MIN_PEER_KEY_BITS:
        raise WeakKey(f"RSA key of {key.key_size} bits, at least {MIN_PEER_KEY_BITS} required")


# --- certificates: loading and reading ---------------------------------------------------------
def load_certificate(data: bytes) -> Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as error:
        # InvalidVersion is not a ValueError: a tampered version field must
        # still be a typed error, not a crash.
        raise InvalidCertificate(f"cannot read certificate: {error}") from None


def load_certificates(data: bytes) -> list[Certificate]:
    """Every certificate of a PEM bundle (or the one DER certificate)."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return [load_certificate(data)]
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise InvalidCertificate(f"cannot read certificates: {error}") from None


def load_crl(data: bytes) -> CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as error:
        raise InvalidCertificate(f"cannot read CRL: {error}") from None


def load_certificate_request(data: bytes) -> CertificateSigningRequest:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as error:
        raise InvalidCertificate(f"cannot read certificate request: {error}") from None


def certificate_pem(certificate: Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificate_der(certificate: Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_emails(certificate: Certificate) -> list[str]:
    """The rfc822Name addresses of the subjectAltName (RFC 8550 §3), lower-cased."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.value.get_values_for_type(x509.RFC822Name)]


def _name_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def certificate_common_name(certificate: Certificate) -> str | None:
    return _name_attribute(certificate.subject, NameOID.COMMON_NAME)


def certificate_national_id(certificate: Certificate) -> str | None:
    """The professional's national identifier, carried as the subject's serialNumber."""
    return _name_attribute(certificate.subject, NameOID.SERIAL_NUMBER)


def certificate_fingerprint(certificate: Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def build_certificate_request(
    key: PrivateKey | Signer,
    *,
    email: str,
    common_name: str,
    national_id: str | None = None,
) -> CertificateSigningRequest:
    """A CSR naming the mailbox address (subjectAltName) and the holder."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if national_id:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, national_id))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    )
    signing_key = key if isinstance(key, rsa.RSAPrivateKey) else as_private_key(key)
    return builder.sign(signing_key, hashes.SHA256())


def csr_pem(csr: CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_emails(csr: CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.RFC822Name))


def unique_certificates(certificates: Iterable[Certificate]) -> list[Certificate]:
    # Certificates compare and hash by their DER encoding: no digest needed.
    seen: set[Certificate] = set()
    result = []
    for certificate in certificates:
        if certificate not in seen:
            seen.add(certificate)
            result.append(certificate)
    return result


def crl_pem(crl: CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
