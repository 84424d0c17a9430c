"""Helpers of the accounts tests: directory entries, enrolled accounts, signed-in clients."""

from __future__ import annotations

import itertools
import re

import pyotp
from django.core import mail
from django.test import Client
from django.utils import timezone

from pli.identifiers import luhn_complete
from pli.server.accounts import factors
from pli.server.accounts.actions import current_charter
from pli.server.accounts.charter_default import TEXT_EN, TEXT_FR
from pli.server.accounts.models import Charter, CharterAcknowledgement, Role, User, UserSession
from pli.server.accounts.tokens import session_key_hash
from pli.server.directory.models import Mailbox, Organisation, Professional

PASSPHRASE = "correct horse battery staple"
_serial = itertools.count(1)


def ensure_charter() -> Charter:
    """The charter of the data migration (transactional tests flush it away)."""
    charter = current_charter()
    if charter is None:
        charter = Charter.objects.create(version=1, text_fr=TEXT_FR, text_en=TEXT_EN)
    return charter


def make_professional(
    address: str, *, last_name: str = "Martin", organisation: str = ""
) -> Mailbox:
    """A professional of the directory with an active personal mailbox at *address*."""
    number = luhn_complete(f"1010{next(_serial):06d}")
    professional = Professional.objects.create(
        identifier_type="8",
        identifier=number,
        national_id="8" + number,
        last_name=last_name,
        first_name="Alice",
        profession_code="10",
        profession="Médecin",
    )
    org = None
    if organisation:
        org, _ = Organisation.objects.get_or_create(
            technical_id=f"T{organisation}", defaults={"name": organisation}
        )
    return Mailbox.objects.create(
        address=address, kind="PER", professional=professional, organisation=org
    )


def make_account(
    address: str, *, role: str = Role.PROFESSIONAL, organisation: str = ""
) -> tuple[User, str]:
    """A fully enrolled account (passphrase, TOTP, charter); returns it and its TOTP seed."""
    mailbox = (
        make_professional(address, organisation=organisation) if role == Role.PROFESSIONAL else None
    )
    user = User.objects.create_user(
        username=address,
        email=address,
        password=PASSPHRASE,
        role=role,
        professional=mailbox.professional if mailbox else None,
        is_staff=role != Role.PROFESSIONAL,
        is_superuser=role == Role.OPERATOR_ADMIN,
    )
    secret = factors.new_totp_seed()
    assert factors.confirm_totp(user, secret, pyotp.TOTP(secret).now())
    CharterAcknowledgement.objects.create(user=user, charter=ensure_charter())
    user.enrolled_at = timezone.now()
    user.save()
    return user, secret


def register_session(client: Client, user: User) -> None:
    """Register *client*'s Django session as Pli's login flow does; acknowledge the charter."""
    now = timezone.now()
    UserSession.objects.create(
        user=user,
        key_hash=session_key_hash(client.session.session_key or ""),
        method="test",
        created_at=now,
        last_seen_at=now,
    )
    CharterAcknowledgement.objects.get_or_create(user=user, charter=ensure_charter())


def signed_in(user: User, client: Client | None = None) -> Client:
    """A client with a registered session, as after a full login (see tests/conftest.py)."""
    client = client or Client()
    client.force_login(user)
    return client


def outbox_codes(address: str) -> list[str]:
    """Activation codes sent to *address* (pytest-django's in-memory outbox), oldest first.

    Mail leaves on commit: in a non-transactional test, run the action inside
    ``django_capture_on_commit_callbacks(execute=True)``.
    """
    codes: list[str] = []
    for message in mail.outbox:
        if address in message.to:
            codes += re.findall(r"\b[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}\b", str(message.body))
    return codes
