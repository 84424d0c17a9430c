"""WebAuthn (passkeys and security keys) as a second factor (REQ-AUTH-STRONG).

The ceremonies of W3C Web Authentication Level 2, through py_webauthn:

- *registration* (§7.1) during enrolment, as an alternative to the TOTP
  application, or later from the factors page after a re-authentication;
- *authentication* (§7.2) as the second step of a login, once the
  passphrase is right (``sessions.pending_user``).

The relying party is the host of ``PLI_BASE_URL`` and the expected origin is
``PLI_BASE_URL`` itself: a page served under another name cannot use the
credentials (§13.4.9, origin validation). Challenges live in the server-side
session, are single use and short-lived (§13.4.3). The caller counts every
refused assertion in the throttles, exactly like a wrong TOTP code.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    generate_challenge,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from pli.crypto import derive_key
from pli.server.accounts.actions import do_record_factor
from pli.server.accounts.errors import AccountError
from pli.server.accounts.factors import has_totp
from pli.server.accounts.models import User, WebAuthnCredential

logger = logging.getLogger(__name__)

RP_NAME = "Pli"
#: What the browser is told to wait for the user (a hint, §5.4 ``timeout``).
TIMEOUT_MS = 60_000
#: A challenge older than this is refused even if the browser waited longer (§13.4.3).
CHALLENGE_SECONDS = 120
#: Bounds what one account can store; more keys than this is a mistake or an abuse.
MAX_CREDENTIALS = 10
NAME_LENGTH = 64

#: Session key of the ceremony in progress: {"ceremony", "user", "challenge", "at"}.
_STATE = "pli_webauthn"

# What a malformed browser answer can raise on its way through py_webauthn's
# parsers (base64, CBOR, JSON structure) besides its own exceptions.
_MALFORMED = (WebAuthnException, ValueError, TypeError, KeyError, IndexError)


class Ceremony(StrEnum):
    REGISTER = "register"
    AUTHENTICATE = "authenticate"


def relying_party() -> tuple[str, str]:
    """(RP ID, expected origin) from ``PLI_BASE_URL``.

    §5.1.3 / §5.1.4: the RP ID is the effective domain of the origin and must
    be a domain name (browsers refuse an IP address: "This is an invalid
    domain"); the origin is scheme://host[:port], exactly as the browser
    reports it in clientDataJSON.
    """
    parts = urlsplit(settings.PLI_BASE_URL)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or _is_ip_address(host):
        logger.warning(
            "PLI_BASE_URL %r cannot name a WebAuthn relying party: a domain name is needed"
            " (e.g. http://localhost:8000 rather than http://127.0.0.1:8000)",
            settings.PLI_BASE_URL,
        )
        raise AccountError(
            "webauthn_unavailable",
            _("Les clés de sécurité ne sont pas disponibles sur ce serveur."),
        )
    return host, f"{parts.scheme}://{parts.netloc}"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def user_handle(user: User) -> bytes:
    """The account's WebAuthn user handle (§14.6.1: opaque, no personal data).

    Derived from the server secret like the TOTP seed key, so it is stable
    without storing it and reveals neither the address nor the database id.
    """
    return derive_key(settings.SECRET_KEY.encode(), f"webauthn-user-handle:{user.pk}")


def credential_id_hash(credential_id: bytes) -> str:
    return hashlib.sha256(credential_id).hexdigest()


def _remember(request: HttpRequest, ceremony: Ceremony, user: User, challenge: bytes) -> None:
    # A new ceremony replaces any previous one: only the latest challenge is valid.
    request.session[_STATE] = {
        "ceremony": str(ceremony),
        "user": user.pk,
        "challenge": bytes_to_base64url(challenge),
        "at": time.time(),
    }


def _take_challenge(request: HttpRequest, ceremony: Ceremony, user: User) -> bytes | None:
    """The challenge of *user*'s *ceremony*, removed from the session (single use, §13.4.3)."""
    state = request.session.pop(_STATE, None)
    if not isinstance(state, dict):
        return None
    fresh = time.time() - float(state.get("at", 0)) <= CHALLENGE_SECONDS
    if not fresh or state.get("ceremony") != ceremony or state.get("user") != user.pk:
        return None
    try:
        return base64url_to_bytes(str(state.get("challenge", "")))
    except ValueError:
        return None


def _descriptors(user: User) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(id=bytes(row.credential_id))
        for row in WebAuthnCredential.objects.filter(user=user).order_by("created_at")
    ]


def registration_options(request: HttpRequest, user: User) -> str:
    """PublicKeyCredentialCreationOptions as JSON (§5.4), its challenge kept in the session."""
    rp_id, _origin = relying_party()
    challenge = generate_challenge()
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=RP_NAME,
        user_name=user.username,
        user_id=user_handle(user),
        user_display_name=user.get_full_name() or user.username,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        # No attestation: Pli does not restrict authenticator models, and "none"
        # reveals nothing about the user's device (§5.4.7, privacy §14.4.1).
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            # A second factor after the passphrase: presence is enough, a PIN or
            # biometric is welcome (§5.8.6).
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        # §5.4 excludeCredentials: the same authenticator is not registered twice.
        exclude_credentials=_descriptors(user),
    )
    _remember(request, Ceremony.REGISTER, user, challenge)
    return options_to_json(options)


def authentication_options(request: HttpRequest, user: User) -> str | None:
    """PublicKeyCredentialRequestOptions as JSON (§5.5); None when *user* has no credential."""
    allowed = _descriptors(user)
    if not allowed:
        return None
    rp_id, _origin = relying_party()
    challenge = generate_challenge()
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        # §5.5 allowCredentials: only this account's credentials (the user is
        # already identified by the passphrase).
        allow_credentials=allowed,
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    _remember(request, Ceremony.AUTHENTICATE, user, challenge)
    return options_to_json(options)


def _name(name: str) -> str:
    cleaned = " ".join(name.split())[:NAME_LENGTH]
    return cleaned or _("Clé de sécurité")


def do_register_passkey(
    request: HttpRequest, user: User, credential: dict[str, Any], name: str
) -> WebAuthnCredential:
    """§7.1: verify the new credential and store it; one audit event (accounts.factor_added)."""
    refused = AccountError("webauthn_refused", _("La clé n'a pas pu être enregistrée. Réessayez."))
    challenge = _take_challenge(request, Ceremony.REGISTER, user)
    if challenge is None:
        raise AccountError(
            "challenge_expired", _("La demande a expiré. Recommencez l'enregistrement.")
        )
    rp_id, origin = relying_party()
    try:
        verified = verify_registration_response(
            credential=parse_registration_credential_json(credential),
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_presence=True,
        )
    except _MALFORMED as failure:
        logger.info("webauthn registration refused for user %s: %s", user.pk, failure)
        raise refused from None
    digest = credential_id_hash(verified.credential_id)
    try:
        with transaction.atomic():
            # Serialise the user's factor changes (see do_remove_passkey).
            User.objects.select_for_update().filter(pk=user.pk).first()
            if WebAuthnCredential.objects.filter(user=user).count() >= MAX_CREDENTIALS:
                raise AccountError(
                    "too_many_credentials",
                    _("Vous avez déjà %(count)d clés : supprimez-en une d'abord.")
                    % {"count": MAX_CREDENTIALS},
                )
            # §7.1 step 22: a credential ID already registered (to anyone) is refused.
            if WebAuthnCredential.objects.filter(credential_id_hash=digest).exists():
                raise AccountError("credential_exists", _("Cette clé est déjà enregistrée."))
            row = WebAuthnCredential.objects.create(
                user=user,
                name=_name(name),
                credential_id=verified.credential_id,
                credential_id_hash=digest,
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
            )
            do_record_factor(user, "webauthn", True, request)
    except IntegrityError:  # the same key registered twice at the same moment
        raise AccountError("credential_exists", _("Cette clé est déjà enregistrée.")) from None
    return row


def verify_passkey(
    request: HttpRequest, user: User, credential: dict[str, Any]
) -> WebAuthnCredential | None:
    """§7.2: the assertion proves *user* holds one of their credentials; None if not.

    Every refusal looks the same to the caller (and to the user): unknown
    credential, another user's credential, bad signature, old challenge,
    counter gone backwards.
    """
    challenge = _take_challenge(request, Ceremony.AUTHENTICATE, user)
    if challenge is None:
        logger.info("webauthn assertion without a live challenge for user %s", user.pk)
        return None
    rp_id, origin = relying_party()
    try:
        parsed = parse_authentication_credential_json(credential)
    except _MALFORMED as failure:
        logger.info("webauthn assertion malformed for user %s: %s", user.pk, failure)
        return None
    with transaction.atomic():
        # §7.2 step 6: the credential must be one of the identified user's. Another
        # user's credential ID is looked up under this user, so it is "unknown".
        row = (
            WebAuthnCredential.objects.select_for_update()
            .filter(user=user, credential_id_hash=credential_id_hash(parsed.raw_id))
            .first()
        )
        if row is None:
            logger.info("webauthn assertion with an unknown credential for user %s", user.pk)
            return None
        handle = parsed.response.user_handle
        if handle is not None and not hmac.compare_digest(handle, user_handle(user)):
            logger.info("webauthn assertion with another user handle for user %s", user.pk)
            return None
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=rp_id,
                expected_origin=origin,
                credential_public_key=bytes(row.public_key),
                # §7.2 step 21 / §6.1.1: when either counter is non-zero, a new value
                # not above the stored one signals a possibly cloned authenticator;
                # py_webauthn refuses it, and so does Pli.
                credential_current_sign_count=row.sign_count,
                require_user_verification=False,
            )
        except _MALFORMED as failure:
            logger.info("webauthn assertion refused for user %s: %s", user.pk, failure)
            return None
        row.sign_count = verified.new_sign_count
        row.last_used_at = timezone.now()
        row.save(update_fields=["sign_count", "last_used_at"])
    return row


@transaction.atomic
def do_remove_passkey(request: HttpRequest, user: User, credential_pk: int) -> None:
    """Remove one of *user*'s credentials, never their last second factor.

    Another user's credential answers exactly like a missing one.
    """
    User.objects.select_for_update().filter(pk=user.pk).first()
    row = WebAuthnCredential.objects.filter(pk=credential_pk, user=user).first()
    if row is None:
        raise AccountError("not_found", _("Clé introuvable."))
    others = WebAuthnCredential.objects.filter(user=user).exclude(pk=row.pk).exists()
    if not others and not has_totp(user):
        # REQ-AUTH-STRONG: an account always keeps a second factor.
        raise AccountError("last_factor", _("Gardez au moins un second facteur."))
    row.delete()
    do_record_factor(user, "webauthn", False, request)
