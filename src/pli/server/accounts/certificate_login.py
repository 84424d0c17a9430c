"""Login with a professional certificate over TLS (REQ-AUTH-CARD).

The card (CPS) or soft token proves possession of its key in the TLS
handshake, and its PIN unlocks that key: possession and knowledge, so a
certificate login is strong authentication by itself (REQ-AUTH-STRONG).

The certificate reaches Pli in one of two ways:

* Pli's own server terminated TLS (``pli serve`` with PLI_TLS_CERT_FILE):
  the peer certificate is in the WSGI environ (pli.server.tls);
* a reverse proxy terminated TLS and passes the URL-escaped PEM in the
  header named by PLI_TLS_CLIENT_CERT_HEADER (nginx: ``$ssl_client_escaped_cert``).
  The header is believed only from the socket addresses of PLI_TRUSTED_PROXIES;
  from anywhere else it is ignored and the attempt is audited as denied.

Either way Pli verifies the certificate itself (pli.crypto.client_certificates:
path to PLI_CLIENT_CA_FILE, validity, keyUsage / extendedKeyUsage, CRLs of
PLI_CLIENT_CRL_FILES), then maps it to an account: a certificate registered
to an account (ClientCertificate, by fingerprint), else the subject's
national identifier (8 + RPPS) to the directory entry and its account.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest
from django.utils.translation import gettext as _

from pli.crypto import (
    ClientCertificateError,
    ClientCertificateExpired,
    ClientCertificateRevocationUnknown,
    ClientCertificateRevoked,
    ClientCertificateTrust,
    ClientCertificateUntrusted,
    ClientCertificateUsageInvalid,
    CryptoError,
    VerifiedClientCertificate,
    certificate_fingerprint,
    load_certificates,
    load_client_certificate,
    load_crl,
)
from pli.identifiers import IdentifierError, parse_national_id
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import ClientCertificate, User
from pli.server.tls import PEER_CERTIFICATE

logger = logging.getLogger(__name__)

#: A PEM certificate with a short chain fits easily; anything longer is refused unread.
MAX_HEADER_BYTES = 16 * 1024


class CertificateLoginError(AccountError):
    """A refused certificate login: a stable code, a translated message, what to audit."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        user: User | None = None,
        fingerprint: str = "",
    ) -> None:
        super().__init__(code, message)
        self.user = user
        self.fingerprint = fingerprint


def certificate_login_enabled() -> bool:
    return bool(settings.PLI_CLIENT_CA_FILE)


# --- the trust anchors, reloaded when their files change ----------------------------------------

_trust_lock = threading.Lock()
_trust_cache: dict[tuple[tuple[str, int], ...], ClientCertificateTrust] = {}


def _stamp(name: str) -> tuple[str, int]:
    try:
        return name, Path(name).stat().st_mtime_ns
    except OSError:
        return name, -1


def client_trust() -> ClientCertificateTrust:
    """The anchors and CRLs of the settings, read again whenever a file changes (daily CRLs)."""
    files = [settings.PLI_CLIENT_CA_FILE, *settings.PLI_CLIENT_CRL_FILES]
    key = tuple(_stamp(name) for name in files)
    with _trust_lock:
        cached = _trust_cache.get(key)
        if cached is not None:
            return cached
    try:
        anchors = load_certificates(Path(settings.PLI_CLIENT_CA_FILE).read_bytes())
        crls = [load_crl(Path(name).read_bytes()) for name in settings.PLI_CLIENT_CRL_FILES]
        trust = ClientCertificateTrust(anchors, crls)
    except (OSError, CryptoError) as error:
        # A broken configuration refuses every certificate; it never lets one through.
        logger.exception("client certificate anchors or CRLs cannot be loaded")
        raise CertificateLoginError(
            "certificate_unavailable",
            _("La connexion par certificat est momentanément indisponible."),
        ) from error
    with _trust_lock:
        _trust_cache.clear()
        _trust_cache[key] = trust
    return trust


# --- what the client presented ------------------------------------------------------------------


@dataclass(frozen=True)
class PresentedCertificate:
    #: DER or PEM of the end entity (and any intermediates), or None when none reached Pli.
    data: bytes | None
    #: "tls" (Pli's own server), "proxy" (the trusted reverse proxy's header) or "none".
    via: str
    #: A certificate header came from an address that is not a trusted proxy (ignored).
    spoofed: bool


def _header_meta_key() -> str:
    return "HTTP_" + settings.PLI_TLS_CLIENT_CERT_HEADER.upper().replace("-", "_")


def is_trusted_proxy(address: str | None) -> bool:
    if not address:
        return False
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(
        peer in ipaddress.ip_network(entry, strict=False) for entry in settings.PLI_TRUSTED_PROXIES
    )


def presented_certificate(request: HttpRequest) -> PresentedCertificate:
    """The certificate of the request's TLS connection, however it reached Pli."""
    spoofed = False
    header = None
    if settings.PLI_TLS_CLIENT_CERT_HEADER:
        header = request.META.get(_header_meta_key()) or None
        # Only REMOTE_ADDR, the socket peer: X-Forwarded-For is what a client writes.
        if header is not None and not is_trusted_proxy(request.META.get("REMOTE_ADDR")):
            spoofed, header = True, None
    direct = request.META.get(PEER_CERTIFICATE)
    if isinstance(direct, bytes) and direct:
        return PresentedCertificate(direct, "tls", spoofed)
    if header:
        if len(header) > MAX_HEADER_BYTES:
            raise _invalid()
        # nginx's $ssl_client_escaped_cert is the PEM, URL-encoded (RFC 3986 percent-encoding).
        pem = urllib.parse.unquote(header).encode("ascii", "replace")
        return PresentedCertificate(pem, "proxy", spoofed)
    return PresentedCertificate(None, "none", spoofed)


# --- verification and mapping -------------------------------------------------------------------


def _invalid() -> CertificateLoginError:
    return CertificateLoginError(
        "certificate_invalid", _("Le certificat présenté est illisible : connexion refusée.")
    )


_REFUSALS: list[tuple[type[ClientCertificateError], str]] = [
    (ClientCertificateExpired, "certificate_expired"),
    (ClientCertificateRevoked, "certificate_revoked"),
    (ClientCertificateRevocationUnknown, "certificate_revocation_unknown"),
    (ClientCertificateUsageInvalid, "certificate_usage_invalid"),
    (ClientCertificateUntrusted, "certificate_untrusted"),
]


def _refusal_message(code: str) -> str:
    messages = {
        "certificate_expired": _("Ce certificat est expiré ou pas encore valide."),
        "certificate_revoked": _("Ce certificat a été révoqué : connexion refusée."),
        "certificate_revocation_unknown": _(
            "L'état de révocation de ce certificat ne peut pas être vérifié pour le moment."
            " Réessayez plus tard ou connectez-vous avec votre phrase secrète."
        ),
        "certificate_usage_invalid": _(
            "Ce certificat ne permet pas de s'authentifier (usage non prévu)."
        ),
        "certificate_untrusted": _(
            "Ce certificat n'est pas délivré par une autorité reconnue par Pli : connexion refusée."
        ),
    }
    return messages[code]


def verify_presented(data: bytes) -> VerifiedClientCertificate:
    """Pli's own verification, whatever the TLS terminator already checked."""
    try:
        certificate, intermediates = load_client_certificate(data)
    except CryptoError:
        raise _invalid() from None
    trust = client_trust()
    try:
        return trust.verify(certificate, intermediates)
    except ClientCertificateError as error:
        for kind, code in _REFUSALS:
            if isinstance(error, kind):
                raise CertificateLoginError(
                    code, _refusal_message(code), fingerprint=certificate_fingerprint(certificate)
                ) from None
        raise CertificateLoginError(
            "certificate_untrusted",
            _refusal_message("certificate_untrusted"),
            fingerprint=certificate_fingerprint(certificate),
        ) from None
    except CryptoError:
        raise _invalid() from None


def account_for_certificate(verified: VerifiedClientCertificate) -> User:
    """The registered certificate's account, else the account of the subject's national id."""
    registered = (
        ClientCertificate.objects.select_related("user__professional")
        .filter(fingerprint=verified.fingerprint)
        .first()
    )
    user = registered.user if registered is not None else None
    if user is None and verified.national_id:
        try:
            national_id = parse_national_id(verified.national_id).national_id
        except IdentifierError:
            national_id = verified.national_id.strip()
        if national_id:
            user = (
                User.objects.select_related("professional")
                .filter(professional__national_id=national_id)
                .first()
            )
    if user is None:
        raise CertificateLoginError(
            "certificate_unknown_professional",
            _(
                "Aucun compte Pli n'est associé à ce certificat. Demandez d'abord un code"
                " d'activation depuis la page de connexion."
            ),
            fingerprint=verified.fingerprint,
        )
    if not user.is_active or (user.professional is not None and not user.professional.active):
        raise CertificateLoginError(
            "account_inactive",
            _("Ce compte est désactivé."),
            user=user,
            fingerprint=verified.fingerprint,
        )
    if user.enrolled_at is None:
        raise CertificateLoginError(
            "enrolment_incomplete",
            _("Terminez d'abord votre inscription avec votre code d'activation."),
            user=user,
            fingerprint=verified.fingerprint,
        )
    return user


def authenticate_certificate(presented: PresentedCertificate) -> User:
    """The account the presented certificate logs in, or CertificateLoginError."""
    if presented.data is None:
        raise CertificateLoginError(
            "certificate_missing",
            _(
                "Aucun certificat n'a été présenté. Insérez votre carte professionnelle,"
                " choisissez son certificat quand le navigateur le demande, puis réessayez."
            ),
        )
    return account_for_certificate(verify_presented(presented.data))
