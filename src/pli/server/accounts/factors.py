"""Second factors: TOTP (RFC 6238) and one-time recovery codes.

WebAuthn lives in ``passkeys.py``. Each check is counted by the throttles
by its caller (views), so that every factor shares one lockout.
"""

from __future__ import annotations

import time

import pyotp
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pli.crypto import CryptoError, derive_key, open_secret, seal_secret
from pli.server.accounts.models import RecoveryCode, TotpDevice, User
from pli.server.accounts.tokens import code_hash, new_code

TOTP_PERIOD = 30
#: One step either side: a phone clock a little off still works (RFC 6238 section 5.2).
TOTP_WINDOW = 1
RECOVERY_CODES = 10
ISSUER = "Pli"


def _totp_key() -> bytes:
    return derive_key(settings.SECRET_KEY.encode(), "totp-seed")


def _context(user: User) -> bytes:
    return f"totp:{user.pk}".encode()


def totp_secret(device: TotpDevice) -> str:
    return open_secret(_totp_key(), bytes(device.sealed_secret), _context(device.user)).decode()


def new_totp_seed() -> str:
    """A new seed (160 bits: pyotp refuses fewer than 112), not anyone's until confirmed."""
    return pyotp.random_base32(32)


def seal_totp_seed(user: User, secret: str) -> str:
    """A seed waiting for its first code, sealed as a stored one is (kept in the session)."""
    return seal_secret(_totp_key(), secret.encode(), _context(user)).hex()


def open_totp_seed(user: User, sealed: object) -> str | None:
    """The seed :func:`seal_totp_seed` sealed for this user; None for anything else."""
    if not isinstance(sealed, str):
        return None
    try:
        return open_secret(_totp_key(), bytes.fromhex(sealed), _context(user)).decode()
    except (ValueError, CryptoError):
        return None


def _matching_step(secret: str, digits: str, after: int) -> int | None:
    totp = pyotp.TOTP(secret, interval=TOTP_PERIOD)
    step_now = int(time.time() // TOTP_PERIOD)
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        step = step_now + offset
        if step > after and pyotp.utils.strings_equal(totp.at(step * TOTP_PERIOD), digits):
            return step
    return None


def _digits(code: str) -> str | None:
    digits = "".join(ch for ch in code if ch.isascii() and ch.isdigit())
    return digits if len(digits) == 6 else None


@transaction.atomic
def confirm_totp(user: User, secret: str, code: str) -> bool:
    """With a valid code for ``secret``, it becomes the user's authenticator, replacing any.

    Until then nothing changes: an authenticator being replaced keeps working,
    so that opening the page that shows a new seed never leaves the account
    without its second factor.
    """
    digits = _digits(code)
    step = _matching_step(secret, digits, 0) if digits else None
    if step is None:
        return False
    TotpDevice.objects.update_or_create(
        user=user,
        defaults={
            "sealed_secret": seal_secret(_totp_key(), secret.encode(), _context(user)),
            "confirmed_at": timezone.now(),
            "last_step": step,
        },
    )
    return True


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret, interval=TOTP_PERIOD).provisioning_uri(
        name=user.username, issuer_name=ISSUER
    )


def qr_svg(uri: str) -> str:
    """The enrolment QR code as an SVG data URI (an <img>, so no inline script or style)."""
    import segno  # noqa: PLC0415 - only for the enrolment page's QR code

    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


@transaction.atomic
def check_totp(user: User, code: str) -> bool:
    """True for a valid code of the user's confirmed authenticator, not used before
    (replay is refused: RFC 6238 section 5.2)."""
    device = TotpDevice.objects.select_for_update().filter(user=user).first()
    digits = _digits(code)
    if device is None or device.confirmed_at is None or digits is None:
        return False
    step = _matching_step(totp_secret(device), digits, device.last_step)
    if step is None:
        return False
    device.last_step = step
    device.save(update_fields=["last_step"])
    return True


def has_totp(user: User) -> bool:
    return TotpDevice.objects.filter(user=user, confirmed_at__isnull=False).exists()


@transaction.atomic
def new_recovery_codes(user: User) -> list[str]:
    """Replace the user's recovery codes; the plain codes are shown once, never stored."""
    RecoveryCode.objects.filter(user=user).delete()
    codes = [new_code(groups=4, size=4) for _ in range(RECOVERY_CODES)]
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, code_hash=code_hash(code, "recovery")) for code in codes
    )
    return codes


@transaction.atomic
def use_recovery_code(user: User, code: str) -> bool:
    row = (
        RecoveryCode.objects.select_for_update()
        .filter(user=user, code_hash=code_hash(code, "recovery"), used_at__isnull=True)
        .first()
    )
    if row is None:
        return False
    row.used_at = timezone.now()
    row.save(update_fields=["used_at"])
    return True


def remaining_recovery_codes(user: User) -> int:
    return RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()
