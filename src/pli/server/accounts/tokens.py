"""One-time codes: activation codes and recovery codes.

Only a keyed hash is stored (HMAC-SHA256 under a key derived from the server
secret): a stolen database does not allow testing guesses offline, and the
codes are long enough that on-line guessing is stopped by the throttles
(REQ-AUTH-STRONG).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings

from pli.crypto import derive_key

# Crockford-like alphabet without look-alikes (0/O, 1/I/L): codes are typed by hand.
_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def _key(purpose: str) -> bytes:
    return derive_key(settings.SECRET_KEY.encode(), purpose)


def new_code(groups: int = 3, size: int = 4) -> str:
    """E.g. ``K7QX-M3PA-ZR9T`` (3 x 4 characters, about 59 bits)."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size)) for _ in range(groups))


def normalise_code(code: str) -> str:
    """What the user typed, without spaces/dashes, upper case."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def code_hash(code: str, purpose: str) -> str:
    return hmac.new(
        _key(f"code:{purpose}"), normalise_code(code).encode(), hashlib.sha256
    ).hexdigest()


def session_key_hash(session_key: str) -> str:
    """The session registry keeps a hash: the key itself is a bearer secret."""
    return hashlib.sha256(session_key.encode()).hexdigest()
