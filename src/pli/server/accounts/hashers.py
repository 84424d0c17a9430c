"""Argon2id for passphrases (DESIGN: argon2-cffi), with the operator's cost settings.

``PLI_ARGON2_MEMORY_KIB`` / ``PLI_ARGON2_TIME`` / ``PLI_ARGON2_PARALLELISM``
(default 64 MiB, 3 passes, 4 lanes: RFC 9106 section 4's second recommended
option). Django re-hashes a passphrase at the next login when they change.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher


class PliArgon2Hasher(Argon2PasswordHasher):
    # Same algorithm name as Django's: hashes stay readable by either class.
    time_cost = settings.PLI_ARGON2_TIME
    memory_cost = settings.PLI_ARGON2_MEMORY_KIB
    parallelism = settings.PLI_ARGON2_PARALLELISM
