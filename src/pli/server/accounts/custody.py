"""Key custody: mailbox key pairs, their certificates, and where the private keys rest.

DESIGN "Key custody" and "Mailboxes and certificates"; REQ-E2E, REQ-AT-REST.

*Vault* custody (web mail). At enrolment the server makes the personal
mailbox's RSA-3072 key, has the operator CA certify it (address and national
identifier) and publishes the certificate in the directory; the private key
is kept only sealed under a key derived with Argon2id from the mailbox
passphrase (``MailboxKey.wrapping == "passphrase"``). The passphrase is the
login passphrase for passphrase users, a separate unlock passphrase for
users who log in with a certificate or OpenID Connect.

Unlocking runs Argon2id once and hands the derived key to the browser in its
own cookie (:func:`unlock_vault`); later requests open the record with it
(:func:`vault_key_for`) without another Argon2id run. The derived key is
never written to the database, the session table or a log: the database row
is useless without the cookie, the cookie useless without the row. The
cookie's value is moreover sealed under a server key and bound to the
account and to a random value kept in the session, so that it stops working
when the session ends (logout, revocation, timeout) and cannot be replayed
into another session.

*Workstation* custody. The ``pli`` client makes the key and sends a CSR
(:func:`do_issue_workstation_certificate`): the server only ever sees the
certificate.

*Organisational* mailboxes (ORG, APP, CAB). The mailbox key is wrapped to
each member's own certificates as a CMS EnvelopedData (RFC 5652 §6,
``wrapping == "member"``); opening it needs the member's own unlocked key.
Adding a member wraps the keys to them; removing one rotates the mailbox
key: a new key and certificate, the old certificate revoked and the CRL
published, the new key wrapped to the remaining members. Older keys stay
with the remaining members, who must still read the mail sealed to them.

Every action is one transaction with its audit events (CONVENTIONS, habit 3);
the slow work (RSA key generation, Argon2id, the CA's files) happens before
the transaction opens, so that the audit chain's lock is held briefly.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from pli.crypto import (
    BlobCorrupted,
    Certificate,
    CryptoError,
    KeyStoreCorrupted,
    NotARecipient,
    PrivateKey,
    SoftwareKey,
    VaultKey,
    VaultParameters,
    WeakKey,
    WrongPassphrase,
    build_certificate_request,
    certificate_fingerprint,
    certificate_pem,
    check_certificate_request,
    derive_key,
    derive_vault_key,
    generate_private_key,
    load_certificate,
    load_certificate_request,
    open_secret,
    seal_secret,
    unwrap_private_key_from,
    unwrap_private_key_with,
    vault_key_for_record,
    vault_needs_upgrade,
    wrap_private_key_to,
    wrap_private_key_with,
)
from pli.identifiers import IdentifierError, parse_national_id
from pli.server.accounts import operator_ca
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import (
    Custody,
    MailboxKey,
    Membership,
    MembershipRole,
    Role,
    User,
)
from pli.server.audit.actions import do_record_event
from pli.server.directory.actions import (
    BadAddress,
    DirectoryError,
    do_publish_mailbox_certificate,
    normalise_address,
)
from pli.server.directory.models import Mailbox, MailboxCertificate, MailboxType

logger = logging.getLogger(__name__)

#: ``MailboxKey.wrapping``: sealed under the holder's vault key / wrapped to a member's key.
PASSPHRASE = "passphrase"  # noqa: S105 - a kind of wrapping, not a secret
MEMBER = "member"
#: Mailbox kinds whose key is shared by members (DESIGN "Mailboxes and certificates").
SHARED_KINDS = (MailboxType.ORGANISATIONAL, MailboxType.APPLICATIVE, MailboxType.PRACTICE)
#: The audit codes these actions write (pli.server.audit.models.AuditAction).
AUDIT_ACTIONS = (
    "keys.created",
    "keys.certificate_issued",
    "keys.unlocked",
    "keys.rewrapped",
    "keys.shared",
    "keys.unshared",
    "keys.rotated",
    "keys.certificate_revoked",
)
#: Session entry binding the vault cookie to this session: random, not a key.
_BINDING = "pli_vault_binding"
#: RFC 5280 §5.3.1: a removed member knew the key; the mailbox's affiliation changed.
_ROTATION_REASON = "affiliation_changed"
#: X.520 ub-common-name: a commonName holds at most 64 characters.
_CN_MAX = 64


class CustodyError(AccountError):
    """A key custody action refused; ``code`` is stable, ``message`` translated."""


def _not_found() -> CustodyError:
    # The same answer for "does not exist" and "not yours" (CONVENTIONS, habit 8).
    return CustodyError("mailbox_not_found", _("Boîte aux lettres introuvable."))


def _locked() -> CustodyError:
    return CustodyError(
        "vault_locked", _("Votre clé est verrouillée : saisissez votre phrase de déverrouillage.")
    )


def vault_parameters() -> VaultParameters:
    """The Argon2id cost of new vault records (``PLI_VAULT_*``, RFC 9106 §4 by default)."""
    return VaultParameters(
        memory_kib=settings.PLI_VAULT_MEMORY_KIB,
        iterations=settings.PLI_VAULT_TIME,
        lanes=settings.PLI_VAULT_PARALLELISM,
    )


# --- whose mailbox, which certificate -----------------------------------------------------------
def personal_mailbox(user: User) -> Mailbox | None:
    """The personal mailbox the account was enrolled for (its login is that address)."""
    if user.professional_id is None:
        return None
    return Mailbox.objects.filter(
        address=user.username,
        kind=MailboxType.PERSONAL,
        professional_id=user.professional_id,
        active=True,
    ).first()


def _valid_certificates(mailbox: Mailbox) -> list[MailboxCertificate]:
    now = timezone.now()
    return list(
        MailboxCertificate.objects.filter(
            mailbox=mailbox, revoked_at__isnull=True, not_before__lte=now, not_after__gt=now
        ).order_by("-not_after", "-pk")
    )


def _member_certificates(user: User) -> list[Certificate]:
    """The valid certificates of the member's personal mailbox: any of their keys opens a wrap."""
    mailbox = personal_mailbox(user)
    if mailbox is None:
        return []
    return [load_certificate(row.pem.encode()) for row in _valid_certificates(mailbox)]


def _personal_name(mailbox: Mailbox) -> tuple[str, str | None]:
    """(commonName, national identifier) for a professional's certificate request."""
    professional = mailbox.professional
    name = f"{professional.first_name} {professional.last_name}".strip() if professional else ""
    national_id = None
    if professional is not None:
        try:
            national_id = parse_national_id(professional.national_id).national_id
        except IdentifierError:
            national_id = None  # a local identifier (REQ-NON-HEALTH): no national form to certify
    return (name or mailbox.address)[:_CN_MAX], national_id


def _shared_name(mailbox: Mailbox) -> str:
    organisation = mailbox.organisation
    name = mailbox.description or (organisation.name if organisation else "") or mailbox.address
    return name[:_CN_MAX]


def _issue(key: PrivateKey, email: str, common_name: str, national_id: str | None) -> Certificate:
    csr = build_certificate_request(
        key, email=email, common_name=common_name, national_id=national_id
    )
    try:
        return operator_ca.issue_certificate(csr)
    except CryptoError as error:
        raise CustodyError(
            "certificate_not_issued", _("Le certificat n'a pas pu être émis.")
        ) from error


def _publish(mailbox: Mailbox, certificate: Certificate) -> MailboxCertificate:
    try:
        return do_publish_mailbox_certificate(mailbox, certificate_pem(certificate))
    except DirectoryError as error:
        raise CustodyError(error.code, error.message) from None


@dataclass
class _Issued:
    """A certificate issued before the transaction: withdrawn if the transaction fails."""

    certificate: Certificate
    published: bool = False

    def __enter__(self) -> _Issued:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if error is not None or not self.published:
            operator_ca.withdraw_certificate(self.certificate)


# --- vault custody ------------------------------------------------------------------------------
def _vault_rows(user: User) -> list[MailboxKey]:
    """The account's sealed personal keys, the newest first."""
    return list(
        MailboxKey.objects.filter(user=user, wrapping=PASSPHRASE).order_by("-created_at", "-pk")
    )


def has_vault_key(user: User) -> bool:
    return MailboxKey.objects.filter(user=user, wrapping=PASSPHRASE).exists()


def needs_unlock_passphrase(user: User) -> bool:
    """Certificate and OpenID Connect users have no login passphrase to seal the vault with."""
    return not user.has_usable_password()


def do_create_vault_key(
    user: User, passphrase: str, request: HttpRequest | None = None
) -> MailboxKey | None:
    """The personal key pair of a vault-custody professional, certified, sealed, published.

    Called once the mailbox passphrase is set (enrolment, or the unlock page for
    users without a login passphrase). Idempotent: an account that already has a
    sealed key keeps it. None for an account without a personal mailbox (operator
    staff) or with workstation custody.
    """
    if user.custody != Custody.VAULT:
        return None
    mailbox = personal_mailbox(user)
    if mailbox is None:
        return None
    existing = MailboxKey.objects.filter(user=user, mailbox=mailbox, wrapping=PASSPHRASE).first()
    if existing is not None:
        return existing
    try:
        vault_key = derive_vault_key(passphrase, vault_parameters())
    except WeakKey:
        raise CustodyError(
            "weak_passphrase", _("La phrase doit compter au moins 12 caractères.")
        ) from None
    key = generate_private_key()
    common_name, national_id = _personal_name(mailbox)
    record = wrap_private_key_with(key, vault_key)
    issued = _Issued(_issue(key, mailbox.address, common_name, national_id))
    with issued, transaction.atomic():
        # One key per account even if two requests race: the second waits, then finds it.
        User.objects.select_for_update().filter(pk=user.pk).first()
        existing = MailboxKey.objects.filter(
            user=user, mailbox=mailbox, wrapping=PASSPHRASE
        ).first()
        if existing is not None:
            return existing
        published = _publish(mailbox, issued.certificate)
        row = MailboxKey.objects.create(
            user=user,
            mailbox=mailbox,
            certificate_fingerprint=published.fingerprint,
            wrapped_key=record,
            wrapping=PASSPHRASE,
        )
        _record_issued(user, request, mailbox, published, "vault")
        issued.published = True
    return row


def ensure_vault_key(
    user: User, passphrase: str, request: HttpRequest | None = None
) -> MailboxKey | None:
    """:func:`do_create_vault_key` for the enrolment step, which a missing CA must not block.

    Without a usable operator CA the account is enrolled all the same and the
    failure is logged with the setting to fix; the key is made at the first
    unlock once the CA is there (the unlock page proves the passphrase again).
    """
    try:
        return do_create_vault_key(user, passphrase, request)
    except operator_ca.OperatorCaUnavailable as error:
        # No traceback: the detail names the setting, and a trace would only add noise.
        logger.error(  # noqa: TRY400
            "vault key of user %s not created: %s: %s", user.pk, error.code, error.detail
        )
        return None


def _record_issued(
    actor: User | None,
    request: HttpRequest | None,
    mailbox: Mailbox,
    published: MailboxCertificate,
    custody: str,
) -> None:
    target = f"mailbox:{mailbox.pk}"
    if custody != "workstation":  # the server made this key pair
        do_record_event(
            "keys.created", actor=actor, request=request, target=target, detail={"custody": custody}
        )
    do_record_event(
        "keys.certificate_issued",
        actor=actor,
        request=request,
        target=target,
        detail={"custody": custody, "serial": published.serial},
    )


def _cookie_key() -> bytes:
    return derive_key(settings.SECRET_KEY.encode(), "vault-cookie")


def _cookie_context(user: User, binding: str) -> bytes:
    return f"vault-cookie:{user.pk}:{binding}".encode()


def _set_cookie(request: HttpRequest, response: HttpResponse, user: User, secret: bytes) -> None:
    binding = secrets.token_urlsafe(24)
    request.session[_BINDING] = binding
    sealed = seal_secret(_cookie_key(), secret, _cookie_context(user, binding))
    response.set_cookie(
        settings.PLI_VAULT_COOKIE_NAME,
        base64.urlsafe_b64encode(sealed).decode().rstrip("="),
        max_age=settings.SESSION_COOKIE_AGE,
        path="/",
        secure=settings.HTTPS,
        httponly=True,
        samesite="Strict",
    )


def lock_vault(request: HttpRequest, response: HttpResponse) -> None:
    """Forget the unlocking key: the session's binding and the browser's cookie."""
    if hasattr(request, "session"):
        request.session.pop(_BINDING, None)
    response.delete_cookie(settings.PLI_VAULT_COOKIE_NAME, path="/", samesite="Strict")


def _cookie_secret(request: HttpRequest, user: User) -> bytes | None:
    raw = request.COOKIES.get(settings.PLI_VAULT_COOKIE_NAME, "")
    binding = request.session.get(_BINDING) if hasattr(request, "session") else None
    if not raw or not isinstance(binding, str) or len(raw) > 512:
        return None
    try:
        sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return open_secret(_cookie_key(), sealed, _cookie_context(user, binding))
    except (ValueError, BlobCorrupted):
        return None


def unlock_vault(
    request: HttpRequest,
    response: HttpResponse,
    user: User,
    passphrase: str,
    *,
    via: str = "login",
) -> bool:
    """Derive the vault key (one Argon2id run) and give it to this browser for this session.

    Call it where the passphrase is in hand and already checked (the login
    form), or from the unlock page. False, and nothing set, when the account
    has no sealed key or the passphrase does not open it. The caller counts
    failures in the throttles.
    """
    rows = _vault_rows(user)
    if not rows:
        return False
    current = bytes(rows[0].wrapped_key)
    try:
        vault_key = vault_key_for_record(current, passphrase)
        unwrap_private_key_with(current, vault_key.secret)
    except (WrongPassphrase, KeyStoreCorrupted):
        with transaction.atomic():
            do_record_event(
                "keys.unlocked",
                actor=user,
                request=request,
                target=f"mailbox:{rows[0].mailbox_id}",
                outcome="failure",
                detail={"via": via},
            )
        return False
    if vault_needs_upgrade(current, vault_parameters()) and len(passphrase) >= 12:
        # The operator raised the Argon2id cost: reseal while the passphrase is in hand.
        stronger = derive_vault_key(passphrase, vault_parameters())
        vault_key = _reseal(
            user, rows, vault_key.secret, stronger, request=request, reason="upgrade"
        )
    _set_cookie(request, response, user, vault_key.secret)
    with transaction.atomic():
        do_record_event(
            "keys.unlocked",
            actor=user,
            request=request,
            target=f"mailbox:{rows[0].mailbox_id}",
            detail={"via": via},
        )
    return True


def vault_unlocked(request: HttpRequest) -> bool:
    """Whether this session holds the key that opens the account's current sealed key."""
    user = request.user
    if not isinstance(user, User):
        return False
    rows = _vault_rows(user)
    secret = _cookie_secret(request, user)
    if not rows or secret is None:
        return False
    try:
        unwrap_private_key_with(bytes(rows[0].wrapped_key), secret)
    except (WrongPassphrase, KeyStoreCorrupted):
        return False
    return True


def _signed_in(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise _not_found()
    return user


def _certificates_by_fingerprint(fingerprints: Sequence[str]) -> dict[str, MailboxCertificate]:
    rows = MailboxCertificate.objects.filter(fingerprint__in=list(fingerprints))
    return {row.fingerprint: row for row in rows}


def _open_personal(user: User, secret: bytes, mailbox: Mailbox | None = None) -> list[SoftwareKey]:
    rows = [row for row in _vault_rows(user) if mailbox is None or row.mailbox_id == mailbox.pk]
    certificates = _certificates_by_fingerprint([row.certificate_fingerprint for row in rows])
    opened: list[SoftwareKey] = []
    for row in rows:
        published = certificates.get(row.certificate_fingerprint)
        if published is None:
            continue
        try:
            key = unwrap_private_key_with(bytes(row.wrapped_key), secret)
        except (WrongPassphrase, KeyStoreCorrupted):
            continue  # sealed under another vault key (an older passphrase): not this session's
        opened.append(SoftwareKey(key, load_certificate(published.pem.encode())))
    return opened


def _member_keys(user: User, mailbox: Mailbox) -> list[tuple[MailboxKey, MailboxCertificate]]:
    """The shared mailbox's keys wrapped to ``user``, newest first, with their certificates."""
    rows = list(
        MailboxKey.objects.filter(user=user, mailbox=mailbox, wrapping=MEMBER).order_by(
            "-created_at", "-pk"
        )
    )
    certificates = _certificates_by_fingerprint([row.certificate_fingerprint for row in rows])
    return [
        (row, certificates[row.certificate_fingerprint])
        for row in rows
        if row.certificate_fingerprint in certificates
    ]


def _open_shared(
    user: User, mailbox: Mailbox, personal: Sequence[SoftwareKey]
) -> list[tuple[SoftwareKey, MailboxCertificate]]:
    opened: list[tuple[SoftwareKey, MailboxCertificate]] = []
    for row, published in _member_keys(user, mailbox):
        certificate = load_certificate(published.pem.encode())
        for member_key in personal:
            try:
                key = unwrap_private_key_from(bytes(row.wrapped_key), member_key, certificate)
            except NotARecipient:
                continue
            opened.append((SoftwareKey(key, certificate), published))
            break
    return opened


@dataclass(frozen=True)
class WrappedMailboxKey:
    """A shared mailbox's key as held for one member: opened only by their own key."""

    certificate: MailboxCertificate
    envelope: bytes
    current: bool


def member_wrapped_keys(user: User, address: str) -> list[WrappedMailboxKey]:
    """The keys of the shared mailbox ``address`` wrapped to ``user``, the current one first.

    For a workstation client (REQ-LPS, REQ-CITY-HOSPITAL): the server hands
    out CMS envelopes it cannot open (wrapped to the member's own
    certificates, :func:`_wrap_for`); the client opens them with the key
    that never left the workstation. Not a member, not a shared mailbox, or
    no such address: the same ``mailbox_not_found``.
    """
    try:
        normalised = normalise_address(address)
    except BadAddress:
        raise _not_found() from None
    mailbox = Mailbox.objects.filter(address=normalised, kind__in=SHARED_KINDS).first()
    if mailbox is None or not Membership.objects.filter(user=user, mailbox=mailbox).exists():
        raise _not_found()
    held = [
        WrappedMailboxKey(
            certificate=published,
            envelope=bytes(row.wrapped_key),
            current=published.revoked_at is None,
        )
        for row, published in _member_keys(user, mailbox)
    ]
    held.sort(key=lambda item: not item.current)
    return held


def vault_keys_for(request: HttpRequest, mailbox: Mailbox) -> list[SoftwareKey]:
    """Every key of ``mailbox`` this session can open, the current one first.

    Older keys open the mail sealed before a rotation. Raises ``mailbox_not_found``
    for a mailbox that is not the user's (or does not exist), ``vault_locked`` when
    this session holds no unlocking key.
    """
    user = _signed_in(request)
    shared = mailbox.kind in SHARED_KINDS
    if shared:
        if not Membership.objects.filter(user=user, mailbox=mailbox).exists():
            raise _not_found()
    else:
        own = personal_mailbox(user)
        if own is None or own.pk != mailbox.pk:
            raise _not_found()
    secret = _cookie_secret(request, user)
    if secret is None:
        raise _locked()
    personal = _open_personal(user, secret, None if shared else mailbox)
    if not personal:
        raise _locked()
    if not shared:
        return personal
    opened = _open_shared(user, mailbox, personal)
    if not opened:
        raise CustodyError(
            "mailbox_key_unavailable",
            _("La clé de cette boîte ne vous a pas encore été transmise."),
        )
    # Current first: a key whose certificate is still valid before the rotated ones.
    opened.sort(key=lambda pair: pair[1].revoked_at is not None)
    return [key for key, _row in opened]


def vault_key_for(request: HttpRequest, mailbox: Mailbox) -> SoftwareKey:
    """The current key of ``mailbox`` for this session: to sign, and to open new mail."""
    return vault_keys_for(request, mailbox)[0]


def _reseal(
    user: User,
    rows: Sequence[MailboxKey],
    old_secret: bytes,
    new_key: VaultKey,
    *,
    request: HttpRequest | None,
    reason: str,
) -> VaultKey:
    """Seal every personal key of ``rows`` again under ``new_key``, in one transaction."""
    opened = []
    for row in rows:
        try:
            opened.append((row, unwrap_private_key_with(bytes(row.wrapped_key), old_secret)))
        except (WrongPassphrase, KeyStoreCorrupted):
            continue  # a record sealed under an older passphrase is left as it is
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        for row, key in opened:
            row.wrapped_key = wrap_private_key_with(key, new_key)
            row.save(update_fields=["wrapped_key"])
        do_record_event(
            "keys.rewrapped",
            actor=user,
            request=request,
            target=f"user:{user.pk}",
            detail={"keys": len(opened), "reason": reason},
        )
    return new_key


def do_rewrap_vault_key(
    user: User,
    old_passphrase: str,
    new_passphrase: str,
    *,
    request: HttpRequest | None = None,
    response: HttpResponse | None = None,
) -> int:
    """The mailbox passphrase changes: seal the personal keys under the new one.

    Returns how many keys were sealed again. With ``request`` and ``response``,
    this session stays unlocked (its cookie carries the new key).
    """
    rows = _vault_rows(user)
    if not rows:
        return 0
    try:
        old = vault_key_for_record(bytes(rows[0].wrapped_key), old_passphrase)
        unwrap_private_key_with(bytes(rows[0].wrapped_key), old.secret)
    except (WrongPassphrase, KeyStoreCorrupted):
        raise CustodyError(
            "wrong_passphrase", _("L'ancienne phrase n'ouvre pas votre clé.")
        ) from None
    try:
        new = derive_vault_key(new_passphrase, vault_parameters())
    except WeakKey:
        raise CustodyError(
            "weak_passphrase", _("La phrase doit compter au moins 12 caractères.")
        ) from None
    _reseal(user, rows, old.secret, new, request=request, reason="passphrase_changed")
    if request is not None and response is not None:
        _set_cookie(request, response, user, new.secret)
    return len(rows)


def check_unlock_passphrase(user: User, passphrase: str) -> None:
    """The rules of login passphrases apply to unlock passphrases too."""
    try:
        validate_password(passphrase, user)
    except ValidationError as error:
        raise CustodyError("weak_passphrase", " ".join(error.messages)) from None


# --- workstation custody ------------------------------------------------------------------------
def do_issue_workstation_certificate(
    user: User, csr_pem: str, request: HttpRequest | None = None
) -> MailboxCertificate:
    """Certify a key made on the professional's workstation, for their own personal mailbox.

    The server sees the certificate request only, never the private key. A
    request naming any address but the account's own answers like an unknown
    address (``mailbox_not_found``).
    """
    try:
        csr = load_certificate_request(csr_pem.encode("ascii", "replace"))
        profile = check_certificate_request(csr)
    except CryptoError as error:
        raise CustodyError(
            "invalid_certificate_request",
            _("La demande de certificat est invalide (%(reason)s).") % {"reason": error.code},
        ) from None
    mailbox = personal_mailbox(user)
    try:
        requested = normalise_address(profile.email)
    except BadAddress:
        requested = ""
    if mailbox is None or requested != mailbox.address.lower():
        raise _not_found()
    common_name, national_id = _personal_name(mailbox)
    # The certificate vouches for who holds it: the directory's name and national
    # identifier, or the bare address, nothing the requester made up.
    if profile.national_id != national_id:
        raise CustodyError(
            "certificate_request_mismatch",
            _("L'identifiant national de la demande n'est pas celui de l'annuaire."),
        )
    names = {" ".join(common_name.casefold().split()), mailbox.address.lower()}
    if " ".join(profile.common_name.casefold().split()) not in names:
        raise CustodyError(
            "certificate_request_mismatch",
            _("Le nom de la demande n'est pas celui de l'annuaire."),
        )
    try:
        certificate = operator_ca.issue_certificate(csr)
    except CryptoError as error:
        raise CustodyError(
            "certificate_not_issued", _("Le certificat n'a pas pu être émis.")
        ) from error
    with _Issued(certificate) as issued, transaction.atomic():
        published = _publish(mailbox, certificate)
        _record_issued(user, request, mailbox, published, "workstation")
        issued.published = True
    return published


# --- organisational mailboxes -------------------------------------------------------------------
def _shared_mailbox(mailbox: Mailbox) -> None:
    if mailbox.kind not in SHARED_KINDS or not mailbox.active:
        raise _not_found()


def _may_manage(actor: User | None, mailbox: Mailbox) -> None:
    """Operator admins and the mailbox's managers; ``None`` is the server's own commands."""
    if actor is None or actor.role == Role.OPERATOR_ADMIN:
        return
    if not Membership.objects.filter(
        user=actor, mailbox=mailbox, role=MembershipRole.MANAGER
    ).exists():
        raise _not_found()


def _wrap_for(user: User, key: PrivateKey) -> bytes:
    certificates = _member_certificates(user)
    if not certificates:
        raise CustodyError(
            "member_without_certificate",
            _("%(address)s n'a pas encore de certificat : la clé ne peut pas lui être transmise.")
            % {"address": user.username},
        )
    return wrap_private_key_to(key, certificates)


def _current_shared(mailbox: Mailbox) -> list[MailboxCertificate]:
    """The mailbox's current certificates that members hold a key for."""
    held = MailboxKey.objects.filter(mailbox=mailbox, wrapping=MEMBER).values_list(
        "certificate_fingerprint", flat=True
    )
    return [row for row in _valid_certificates(mailbox) if row.fingerprint in set(held)]


def _new_shared_key(mailbox: Mailbox, members: Sequence[User]) -> tuple[_Issued, dict[int, bytes]]:
    key = generate_private_key()
    wrapped = {member.pk: _wrap_for(member, key) for member in members}
    return _Issued(_issue(key, mailbox.address, _shared_name(mailbox), None)), wrapped


def _store_shared(
    mailbox: Mailbox,
    issued: _Issued,
    wrapped: dict[int, bytes],
    actor: User | None,
    request: HttpRequest | None,
) -> MailboxCertificate:
    published = _publish(mailbox, issued.certificate)
    MailboxKey.objects.bulk_create(
        MailboxKey(
            user_id=member,
            mailbox=mailbox,
            certificate_fingerprint=published.fingerprint,
            wrapped_key=envelope,
            wrapping=MEMBER,
        )
        for member, envelope in wrapped.items()
    )
    _record_issued(actor, request, mailbox, published, "member")
    for member in wrapped:
        do_record_event(
            "keys.shared",
            actor=actor,
            request=request,
            target=f"mailbox:{mailbox.pk}",
            detail={"member": member},
        )
    return published


def do_create_mailbox_key(
    mailbox: Mailbox, *, actor: User | None, request: HttpRequest | None = None
) -> MailboxCertificate:
    """The key pair of an organisational mailbox, certified, wrapped to every member."""
    _shared_mailbox(mailbox)
    _may_manage(actor, mailbox)
    if _current_shared(mailbox):
        raise CustodyError("mailbox_key_exists", _("Cette boîte a déjà une clé."))
    members = [m.user for m in Membership.objects.filter(mailbox=mailbox).select_related("user")]
    if not members:
        raise CustodyError("mailbox_without_members", _("Cette boîte n'a aucun membre."))
    issued, wrapped = _new_shared_key(mailbox, members)
    with issued, transaction.atomic():
        published = _store_shared(mailbox, issued, wrapped, actor, request)
        issued.published = True
    return published


def do_add_mailbox_member(
    mailbox: Mailbox,
    user: User,
    role: str = MembershipRole.MEMBER,
    *,
    actor: User | None,
    mailbox_keys: Sequence[SoftwareKey] = (),
    request: HttpRequest | None = None,
) -> Membership:
    """Make ``user`` a member and wrap the mailbox's keys to them.

    The server cannot do it alone (REQ-E2E): ``mailbox_keys`` are the keys a
    member opened in this request (:func:`vault_keys_for`), the current one
    at least. A mailbox without a key yet needs none.
    """
    _shared_mailbox(mailbox)
    _may_manage(actor, mailbox)
    if role not in MembershipRole.values:
        raise CustodyError("bad_role", _("Rôle inconnu."))
    if personal_mailbox(user) is None:
        raise CustodyError("not_in_directory", _("Ce compte n'a pas de boîte personnelle."))
    current = {row.fingerprint for row in _current_shared(mailbox)}
    given = {}
    for key in mailbox_keys:
        row = MailboxCertificate.objects.filter(
            mailbox=mailbox, fingerprint=certificate_fingerprint(key.certificate)
        ).first()
        if row is None:
            raise _not_found()
        given[row.fingerprint] = key
    if not current <= set(given):
        raise CustodyError(
            "mailbox_key_locked",
            _("Déverrouillez d'abord la clé de la boîte pour la transmettre au nouveau membre."),
        )
    wrapped = {fingerprint: _wrap_for(user, key.private_key) for fingerprint, key in given.items()}
    with transaction.atomic():
        membership, _created = Membership.objects.get_or_create(
            user=user, mailbox=mailbox, defaults={"role": role}
        )
        if membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        for fingerprint, envelope in wrapped.items():
            MailboxKey.objects.update_or_create(
                user=user,
                mailbox=mailbox,
                certificate_fingerprint=fingerprint,
                defaults={"wrapped_key": envelope, "wrapping": MEMBER},
            )
        do_record_event(
            "keys.shared",
            actor=actor,
            request=request,
            target=f"mailbox:{mailbox.pk}",
            detail={"member": user.pk, "keys": len(wrapped)},
        )
    return membership


def do_remove_mailbox_member(
    mailbox: Mailbox, user: User, *, actor: User | None, request: HttpRequest | None = None
) -> MailboxCertificate | None:
    """Remove a member and rotate the mailbox key (DESIGN: removing a member rotates it).

    The former member's wrapped keys are deleted; a new key and certificate are
    made and wrapped to the remaining members; the old certificates are revoked
    in the CA and the CRL is published, so that no one seals new mail to a key
    the former member may have kept. Returns the new certificate (None when no
    member remains or the mailbox had no key).
    """
    _shared_mailbox(mailbox)
    if actor is None or actor.pk != user.pk:
        _may_manage(actor, mailbox)
    if not Membership.objects.filter(user=user, mailbox=mailbox).exists():
        raise _not_found()
    old = _valid_certificates(mailbox)
    had_key = MailboxKey.objects.filter(mailbox=mailbox, wrapping=MEMBER).exists()
    remaining = [
        m.user
        for m in Membership.objects.filter(mailbox=mailbox)
        .exclude(user=user)
        .select_related("user")
    ]
    # A remaining member without a certificate must not block the removal: they
    # are left out of the new key, which can be wrapped to them later.
    reachable = [member for member in remaining if _member_certificates(member)]
    issued: _Issued | None = None
    wrapped: dict[int, bytes] = {}
    if had_key and reachable:
        issued, wrapped = _new_shared_key(mailbox, reachable)
    published = None
    with contextlib.ExitStack() as guard:
        if issued is not None:
            guard.enter_context(issued)  # withdrawn from the CA if the transaction fails
        with transaction.atomic():
            _unchanged_since(mailbox, user, remaining, old)
            Membership.objects.filter(user=user, mailbox=mailbox).delete()
            removed = MailboxKey.objects.filter(user=user, mailbox=mailbox).delete()[0]
            do_record_event(
                "keys.unshared",
                actor=actor,
                request=request,
                target=f"mailbox:{mailbox.pk}",
                detail={"member": user.pk, "keys": removed},
            )
            if issued is not None:
                published = _store_shared(mailbox, issued, wrapped, actor, request)
                do_record_event(
                    "keys.rotated",
                    actor=actor,
                    request=request,
                    target=f"mailbox:{mailbox.pk}",
                    detail={"members": len(wrapped), "left_out": len(remaining) - len(reachable)},
                )
            if had_key:
                _revoke(old, actor, request)
            if issued is not None:
                issued.published = True
    return published


def _unchanged_since(
    mailbox: Mailbox,
    leaving: User,
    remaining: Sequence[User],
    old: Sequence[MailboxCertificate],
) -> None:
    """In the removal's transaction, under the mailbox row's lock: the members and the
    certificates are still those the new key was made for, outside the transaction
    (a key pair takes a while to make).

    Otherwise two changes of one mailbox at once could wrap the new key to a member
    the other one removes, or revoke a certificate the other one just made (found
    by a review): ``membership_changed``, nothing changed, the new certificate
    withdrawn from the CA; the caller runs it again.
    """
    # Rotations of one mailbox wait for each other here (SQLite: one writer anyway).
    list(Mailbox.objects.select_for_update().filter(pk=mailbox.pk).values_list("pk", flat=True))
    if not Membership.objects.filter(user=leaving, mailbox=mailbox).exists():
        raise _not_found()  # removed meanwhile: as if never a member
    members = set(
        Membership.objects.filter(mailbox=mailbox)
        .exclude(user=leaving)
        .values_list("user_id", flat=True)
    )
    current = [row.pk for row in _valid_certificates(mailbox)]
    if members != {member.pk for member in remaining} or current != [row.pk for row in old]:
        raise CustodyError(
            "membership_changed",
            _(
                "Les membres ou les clés de cette boîte ont changé pendant l'opération :"
                " recommencez."
            ),
        )


def _revoke(
    rows: Sequence[MailboxCertificate], actor: User | None, request: HttpRequest | None
) -> None:
    """Revoke in the CA first, then in the directory; publish the CRL (RFC 5280 §5).

    Inside the caller's transaction and before its commit: if the commit then
    fails, a certificate is revoked that the directory still lists, which errs
    on the safe side; the other order could leave a former member's key valid.
    """
    now = timezone.now()
    for row in rows:
        operator_ca.revoke_serial(row.serial, _ROTATION_REASON)
        MailboxCertificate.objects.filter(pk=row.pk).update(revoked_at=now)
        do_record_event(
            "keys.certificate_revoked",
            actor=actor,
            request=request,
            target=f"mailbox:{row.mailbox_id}",
            detail={"serial": row.serial, "reason": _ROTATION_REASON},
        )
    if rows:
        operator_ca.publish_crl()


# --- what an account holds ----------------------------------------------------------------------
@dataclass(frozen=True)
class CertificateState:
    serial: str
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked: bool
    custody: str


def key_states(user: User) -> list[tuple[Mailbox, str, list[CertificateState]]]:
    """The account's mailboxes, its part in each, and where each certificate's key rests."""
    held = dict(
        MailboxKey.objects.filter(user=user).values_list("certificate_fingerprint", "wrapping")
    )
    mailboxes: list[tuple[Mailbox, str]] = []
    own = personal_mailbox(user)
    if own is not None:
        mailboxes.append((own, "owner"))
    for membership in Membership.objects.filter(user=user).select_related("mailbox"):
        mailboxes.append((membership.mailbox, membership.role))
    result = []
    for mailbox, part in mailboxes:
        states = []
        rows = MailboxCertificate.objects.filter(mailbox=mailbox).filter(
            Q(revoked_at__isnull=True) | Q(fingerprint__in=list(held))
        )
        for row in rows.order_by("-not_after", "-pk"):
            wrapping = held.get(row.fingerprint)
            if wrapping == PASSPHRASE:
                custody = "vault"
            elif wrapping == MEMBER:
                custody = "member"
            elif part == "owner":
                custody = "workstation"
            else:
                custody = "none"
            states.append(
                CertificateState(
                    serial=row.serial,
                    fingerprint=row.fingerprint,
                    not_before=row.not_before,
                    not_after=row.not_after,
                    revoked=row.revoked_at is not None,
                    custody=custody,
                )
            )
        result.append((mailbox, part, states))
    return result
