"""Revocation on a workstation that was given no CRL: the one the server publishes.

Before, a ``Client`` without ``crl=`` (and ``pli read`` without ``--crl``)
checked revocation only "where known": with no CRL at hand, a revoked signer
read as valid, with a warning. The SDK now fetches the operator CA's CRL from
``GET /api/directory/crl`` and requires revocation checks against it; the
server cannot forge that list (the workstation's own trust anchors must have
signed it), so a list from anyone else leaves revocation unknown, and the
message is refused (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pli.client import Client, ClientError, sdk
from pli.client.castore import CaDirectory
from pli.crypto import RevocationUnknown, SignerRevoked
from pli.server.accounts import operator_ca
from pli.server.directory.models import MailboxCertificate
from pli.server.messaging.models import Message
from tests.accounts_support import PASSPHRASE
from tests.test_client_sdk import (
    IDENTITY_PASSPHRASE,
    NIR,
    A,
    B,
    Persona,
    Server,
    alice,
    bob,
    ca_directory,
    server,
)

__all__ = ["alice", "bob", "ca_directory", "server"]  # fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def published_list_restored(ca_directory: Path) -> Iterator[None]:
    """The session's CA is shared: what a test does to its published list is undone."""
    crl = ca_directory / "crl.pem"
    before = crl.read_bytes()
    yield
    crl.write_bytes(before)


def without_crl(server: Server, persona: Persona, name: str, *, login: bool = True) -> Client:
    """A workstation given its trust anchor only, as ``pli read`` without ``--crl``.

    ``login=False``: the session an earlier client of ``name`` saved (a later process).
    """
    client = Client(
        server.url,
        identity=persona.identity,
        passphrase=IDENTITY_PASSPHRASE,
        trust=[server.trust],
        session_file=server.tmp / f"{name}-nocrl-session.json",
    )
    if login:
        client.login(persona.address, PASSPHRASE, persona.code())
    return client


@pytest.mark.requirement("REQ-SIGNATURE")
def test_without_a_crl_the_servers_is_fetched_and_a_revoked_signer_is_refused(
    server: Server, alice: Persona, bob: Persona
) -> None:
    sender = server.logged_in(alice)
    before = sender.send(A, [B], "Avis", "Avant la révocation.\n", NIR)
    reader = without_crl(server, bob, "bob")
    opened = reader.read(before.id)
    assert opened.signature.revocation_checked  # the published CRL covered the signer
    assert opened.signature.warnings == []

    # A's certificate is revoked (a lost key); the CA publishes a new list.
    serial = MailboxCertificate.objects.get(mailbox__address=A).serial
    assert operator_ca.revoke_serial(serial, "key_compromise")
    operator_ca.publish_crl()

    later = without_crl(server, bob, "bob", login=False)  # a new process, the same session
    with pytest.raises(SignerRevoked):
        later.read(before.id, mark_read=False)
    # Told not to fetch, the workstation knows nothing of it: the old, lenient reading.
    lenient = Client(
        server.url,
        identity=bob.identity,
        passphrase=IDENTITY_PASSPHRASE,
        trust=[server.trust],
        session_file=server.tmp / "bob-nocrl-session.json",
        fetch_crl=False,
    )
    assert not lenient.read(before.id, mark_read=False).signature.revocation_checked


@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_crl_the_trust_anchors_did_not_sign_is_not_believed(
    server: Server, alice: Persona, bob: Persona, tmp_path: Path
) -> None:
    sent = server.logged_in(alice).send(A, [B], "Avis", "Bonjour.\n", NIR)
    # The server's files now hold another CA's (empty) list: a server trying to hide
    # a revocation.
    other = CaDirectory.create(tmp_path / "other-ca", "Not The Operator", "x" * 20)
    other.publish_crl(days=7)
    (server.ca.path / "crl.pem").write_bytes((other.path / "crl.pem").read_bytes())
    with pytest.raises(RevocationUnknown):
        without_crl(server, bob, "bob").read(sent.id)


@pytest.mark.requirement("REQ-SIGNATURE")
def test_a_long_running_client_fetches_the_list_again(
    server: Server, alice: Persona, bob: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Practice software that stays up sees a revocation within CRL_REFRESH_SECONDS."""
    sent = server.logged_in(alice).send(A, [B], "Avis", "Bonjour.\n", NIR)
    reader = without_crl(server, bob, "bob")
    assert reader.read(sent.id, mark_read=False).signature.revocation_checked
    serial = MailboxCertificate.objects.get(mailbox__address=A).serial
    assert operator_ca.revoke_serial(serial, "key_compromise")
    operator_ca.publish_crl()
    # Within the refresh period the process keeps the list it has...
    assert reader.read(sent.id, mark_read=False).signature.status == "valid"
    # ...and once it is over, it asks the server again.
    monkeypatch.setattr(sdk, "CRL_REFRESH_SECONDS", 0.0)
    reader._trust_until = 0.0  # the period of the list already held is over
    with pytest.raises(SignerRevoked):
        reader.read(sent.id, mark_read=False)


def test_a_server_that_publishes_no_list_gets_the_lenient_reading(
    server: Server, alice: Persona, bob: Persona
) -> None:
    """What a withheld list gives: revocation not checked, and said (the limit of
    fetching; ``crl=`` / ``--crl`` makes the check required whatever the server does)."""
    sent = server.logged_in(alice).send(A, [B], "Avis", "Bonjour.\n", NIR)
    (server.ca.path / "crl.pem").unlink()
    opened = without_crl(server, bob, "bob").read(sent.id)
    assert not opened.signature.revocation_checked
    assert opened.signature.warnings == ["revocation_not_checked"]


@pytest.mark.requirement("REQ-E2E")
def test_a_server_that_publishes_no_list_gets_no_mail_sealed_without_one(
    server: Server, alice: Persona, bob: Persona
) -> None:
    """Sealing fails closed: a server withholding its list (with a stolen, revoked key of
    a recipient) would otherwise go on receiving new mail for that key, unseen."""
    (server.ca.path / "crl.pem").unlink()
    sender = without_crl(server, alice, "alice")
    stored = Message.objects.count()
    with pytest.raises(ClientError) as refused:
        sender.send(A, [B], "Avis", "Bonjour.\n", NIR)
    assert refused.value.code == "recipient_revocation_unknown"
    assert B in str(refused.value)
    assert Message.objects.count() == stored  # nothing went to the server
    # A caller who accepts it knowingly (unchecked_revocation=True) may send.
    sender.unchecked_revocation = True
    sender.send(A, [B], "Avis", "Bonjour.\n", NIR)
    assert Message.objects.count() == stored + 1
