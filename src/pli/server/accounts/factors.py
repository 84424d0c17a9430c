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

from pli.crypto import derive_key, open_secret, seal_secret
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


def start_totp(user: User) -> tuple[TotpDevice, str]:
    """A new, unconfirmed seed (160 bits: pyotp refuses fewer than 112)."""
    secret = pyotp.random_base32(32)
    device, _ = TotpDevice.objects.update_or_create(
        user=user,
        defaults={
            "sealed_secret": seal_secret(_totp_key(), secret.encode(), _context(user)),
            "confirmed_at": None,
            "last_step": 0,
        },
    )
    return device, secret


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret, interval=TOTP_PERIOD).provisioning_uri(
        name=user.username, issuer_name=ISSUER
    )


def qr_svg(uri: str) -> str:
    """The enrolment QR code as an SVG data URI (an <img>, so no inline script or style)."""
    import segno  # noqa: PLC0415 - only for the enrolment page's QR code

    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


@transaction.atomic
def check_totp(user: User, code: str, *, confirm: bool = False) -> bool:
    """True for a valid code not used before (replay is refused: RFC 6238 section 5.2)."""
    device = TotpDevice.objects.select_for_update().filter(user=user).first()
    if device is None or (device.confirmed_at is None and not confirm):
        return False
    digits = "".join(ch for ch in code if ch.isdigit())
    if len(digits) != 6:
        return False
    totp = pyotp.TOTP(totp_secret(device), interval=TOTP_PERIOD)
    now = time.time()
    step_now = int(now // TOTP_PERIOD)
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        step = step_now + offset
        if step <= device.last_step:
            continue
        if pyotp.utils.strings_equal(totp.at(step * TOTP_PERIOD), digits):
            device.last_step = step
            if confirm and device.confirmed_at is None:
                device.confirmed_at = timezone.now()
            device.save(update_fields=["last_step", "confirmed_at"])
            return True
    return False


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
