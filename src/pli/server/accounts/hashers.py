"""Argon2id for passphrases (DESIGN: argon2-cffi), with the operator's cost settings.

``PLI_ARGON2_MEMORY_KIB`` / ``PLI_ARGON2_TIME`` / ``PLI_ARGON2_PARALLELISM``
(default 64 MiB, 3 passes, 4 lanes: RFC 9106 section 4's second recommended
option). Django re-hashes a passphrase at the next login when they change.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher, make_password


class PliArgon2Hasher(Argon2PasswordHasher):
    # Same algorithm name as Django's: hashes stay readable by either class.
    time_cost = settings.PLI_ARGON2_TIME
    memory_cost = settings.PLI_ARGON2_MEMORY_KIB
    parallelism = settings.PLI_ARGON2_PARALLELISM


@cache
def timing_equaliser_hash() -> str:
    """A passphrase hash to check against when the account is unknown, so both answers
    take as long (the login throttling of REQ-AUTH-STRONG, without telling which
    accounts exist).

    Made once per process, with the operator's current cost, on first use rather
    than at import: an Argon2id hash holds ``PLI_ARGON2_MEMORY_KIB`` (64 MiB) while
    it runs, and a module-level one ran in every process that imported the views,
    at its first request (a worker then grew by 64 MiB in the middle of whatever it
    served first: issue 5's 1 GiB upload, decision 0015). ``pli serve`` makes it as
    each worker starts (:func:`pli.server.serve.warm_worker`), before the worker
    takes a request, so the first unknown account's answer is not slower either.
    """
    return make_password("pli-timing-equaliser")
