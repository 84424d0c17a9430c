"""Shared fixtures: one test PKI per session (RSA key generation is the slow part)."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.utils import translation

from pli.crypto import (
    CertificateRevocationList,
    PrivateKey,
    Revocation,
    SoftwareKey,
    TrustStore,
    build_crl,
    generate_private_key,
)
from tests.pki import Authority, issue_without_email_protection, make_authority

ALICE = "alice.martin@pli.test"
BOB = "bob.durand@pli.test"
CAROL = "carol.petit@pli.test"
#: A valid RPPS (Luhn) in the ANS national form 8 + RPPS.
ALICE_IDNPS = "810100000016"


@dataclass(frozen=True)
class Pki:
    authority: Authority
    foreign: Authority
    alice: SoftwareKey
    bob: SoftwareKey
    carol: SoftwareKey
    alice_expired: SoftwareKey
    alice_revoked: SoftwareKey
    alice_tls_only: SoftwareKey
    alice_foreign: SoftwareKey
    crl: CertificateRevocationList
    keys: dict[str, PrivateKey]

    def trust(self, *, crl: bool = True) -> TrustStore:
        return TrustStore([self.authority.certificate], [self.crl] if crl else [])


@pytest.fixture(scope="session")
def pki() -> Pki:
    authority = make_authority("Pli Test Operator")
    foreign = make_authority("Somebody Else's CA")
    keys = {name: generate_private_key() for name in ("alice", "bob", "carol")}
    alice = authority.issue(keys["alice"], ALICE, "Dr Alice Martin", national_id=ALICE_IDNPS)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired = authority.issue(keys["alice"], ALICE, "Dr Alice Martin", now=past, days=30)
    revoked = authority.issue(keys["alice"], ALICE, "Dr Alice Martin")
    crl = build_crl(
        authority.key,
        authority.certificate,
        [Revocation(revoked.certificate.serial_number, dt.datetime.now(dt.UTC), "key_compromise")],
        number=1,
    )
    return Pki(
        authority=authority,
        foreign=foreign,
        alice=alice,
        bob=authority.issue(keys["bob"], BOB, "Dr Bob Durand"),
        carol=authority.issue(keys["carol"], CAROL, "Carol Petit"),
        alice_expired=expired,
        alice_revoked=revoked,
        alice_tls_only=issue_without_email_protection(authority, keys["alice"], ALICE),
        alice_foreign=foreign.issue(keys["alice"], ALICE, "Dr Alice Martin"),
        crl=crl,
        keys=keys,
    )


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:  # pragma: no cover - ./run installs it
        pytest.fail("the openssl binary is required (./run installs it)")
    return path


@pytest.fixture(autouse=True)
def _no_language_carried_over() -> Iterator[None]:
    """A ``pli`` server command run in this process activates ``PLI_LANGUAGE``'s language
    (``setup_django``) for the thread: the next test starts from Django's default again."""
    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def _force_login_registers_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Client.force_login`` gives a session as after Pli's full login flow.

    Pli refuses Django sessions that its login flow did not register
    (pli.server.accounts.sessions.SessionGuardMiddleware) and sends users to the
    charter until they acknowledge it: tests that only need "a signed-in member"
    get both done here. tests/test_accounts_auth.py proves the refusal itself.
    """
    from django.test import Client

    original = Client.force_login

    def force_login(self: Client, user: Any, backend: str | None = None) -> None:
        original(self, user, backend)
        from tests.accounts_support import register_session

        register_session(self, user)

    monkeypatch.setattr(Client, "force_login", force_login)


@pytest.fixture
def member_client(db: None) -> Any:
    """A client signed in as a member: the directory requires authentication (issue "accounts")."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("member@pli.test", "member@pli.test")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(params=["database", "blob_store"])
def envelope_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Messaging tests that take it run twice (decision 0013): small envelopes
    kept in the database (the default), then every envelope in the blob store."""
    storage: str = request.param
    if storage == "blob_store":
        monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "0")
    return storage
