"""Brute-force protection: failures counted per account and per source address.

REQ-AUTH-STRONG: repeated wrong passphrases, codes or recovery codes lock
the account *and* the address for a while. Unknown accounts are counted
exactly like known ones, so the answers do not reveal which accounts exist.
Kept in the database (every worker process sees the same counters).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from pli.server.accounts.models import Throttle, User
from pli.server.audit.actions import do_record_event


@dataclass(frozen=True)
class Policy:
    max_failures: int
    window: dt.timedelta
    lockout: dt.timedelta


ACCOUNT_POLICY = Policy(5, dt.timedelta(minutes=15), dt.timedelta(minutes=15))
ADDRESS_POLICY = Policy(20, dt.timedelta(minutes=15), dt.timedelta(minutes=15))


def account_key(login: str) -> str:
    return "account:" + login.strip().lower()[:150]


def address_key(address: str | None) -> str:
    return "address:" + (address or "unknown")


def _policy(key: str) -> Policy:
    return ACCOUNT_POLICY if key.startswith("account:") else ADDRESS_POLICY


def locked(*keys: str) -> bool:
    now = timezone.now()
    return Throttle.objects.filter(key__in=keys, locked_until__gt=now).exists()


def record_failure(*keys: str) -> list[str]:
    """Count one failure on each key; returns the keys that became locked now."""
    now = timezone.now()
    newly_locked: list[str] = []
    with transaction.atomic():
        for key in keys:
            policy = _policy(key)
            row, _ = Throttle.objects.select_for_update().get_or_create(
                key=key, defaults={"window_started_at": now}
            )
            if now - row.window_started_at > policy.window:
                row.failures = 0
                row.window_started_at = now
            row.failures += 1
            if row.failures >= policy.max_failures and not (
                row.locked_until and row.locked_until > now
            ):
                row.locked_until = now + policy.lockout
                newly_locked.append(key)
            row.save()
    return newly_locked


def clear(*keys: str) -> None:
    """A success resets the account's counter (not the address's)."""
    Throttle.objects.filter(key__in=keys).delete()


def record_failure_audited(request: HttpRequest, user: User | None, *keys: str) -> None:
    """:func:`record_failure`, and an ``auth.lockout`` event for each key it locks."""
    for key in record_failure(*keys):
        do_record_event(
            "auth.lockout",
            actor=user,
            request=request,
            target=key.split(":", 1)[0],
            outcome="failure",
        )
