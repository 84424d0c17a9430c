"""Sends reach only the directory as it stands, and look addresses up through its index.

REQ-DIRECTORY: a mailbox takes mail while it is active **and** so is the
professional or organisation it belongs to. The national import deactivates
an organisation that closed (and an admin may deactivate a professional)
without always touching their mailboxes: the API, the batch, the web mail and
the certificate lookup must all refuse them, as the web mail's recipient check
already did. Addresses are stored in lower case, so that every lookup is an
exact one on the unique index (no case-insensitive scan per unknown address,
which SQLite refused past about a thousand conditions).
Personas as in ``tests/test_messaging_api.py``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from django.apps import apps
from django.test import Client
from pytest_django.fixtures import Settings

from pli.crypto import seal
from pli.server.directory.models import Mailbox, Organisation, Professional
from pli.server.directory.queries import takes_mail
from pli.server.messaging.models import Message
from pli.server.webmail.correspondents import active_mailbox
from tests.conftest import Pki
from tests.test_messaging_api import (
    WARD,
    A,
    B,
    World,
    a_to_b,
    encoded,
    letter,
    make_world,
    send,
    stored_state,
)

CERTIFICATES = "/api/directory/certificates"
lowering = importlib.import_module(
    "pli.server.directory.migrations.0005_mailbox_addresses_in_lower_case"
)


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def _a_to_ward(world: World) -> bytes:
    return seal(letter(A, [WARD]), world.a_key, [world.ward_key.certificate])


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
def test_a_mailbox_whose_organisation_left_the_directory_takes_no_mail(world: World) -> None:
    alice, bob = world.client(world.a), world.client(world.b)
    envelope = _a_to_ward(world)
    assert send(alice, A, [WARD], envelope).status_code == 201
    assert alice.get(CERTIFICATES, {"address": WARD}).status_code == 200

    Organisation.objects.filter(mailboxes=world.ward).update(active=False)
    world.ward.refresh_from_db()
    assert world.ward.active and not takes_mail(world.ward)
    before = stored_state(world.blob_dir)
    messages = Message.objects.count()

    # To it: not in the directory, as an address that never was.
    refused = send(alice, A, [WARD], envelope)
    assert refused.status_code == 422, refused.content
    assert refused.json()["code"] == "recipient_not_in_directory"
    assert refused.json()["details"]["addresses"] == [WARD]
    batch = alice.post(
        "/api/messages/batch",
        data=json.dumps(
            {"messages": [{"from": A, "recipients": [WARD], "envelope": encoded(envelope)}]}
        ),
        content_type="application/json",
    ).json()
    assert [r["code"] for r in batch["details"]["refused"]] == ["recipient_not_in_directory"]
    # Its certificates are no longer handed out to seal for it.
    lookup = alice.get(CERTIFICATES, {"address": WARD})
    assert (lookup.status_code, lookup.json()["code"]) == (404, "mailbox_not_found")
    # From it: B, its member, may no longer send for it (the web mail's check too).
    ward_letter = seal(
        letter(WARD, [A], person=B),
        world.b_key,
        [world.a_key.certificate, world.ward_key.certificate],
    )
    from_ward = send(bob, WARD, [A], ward_letter)
    assert (from_ward.status_code, from_ward.json()["code"]) == (403, "not_allowed_sender")
    assert active_mailbox(WARD) is None  # the web mail's recipient check
    assert Message.objects.count() == messages
    assert stored_state(world.blob_dir) == before

    # Back in the directory: back in use.
    Organisation.objects.filter(mailboxes=world.ward).update(active=True)
    assert send(alice, A, [WARD], envelope).status_code == 201


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
def test_a_professional_who_left_the_directory_takes_no_mail(world: World) -> None:
    alice = world.client(world.a)
    Professional.objects.filter(mailboxes=world.mailbox_b).update(active=False)
    refused = send(alice, A, [B], a_to_b(world))
    assert refused.status_code == 422, refused.content
    assert refused.json()["details"]["addresses"] == [B]
    assert alice.get(CERTIFICATES, {"address": B}).status_code == 404


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
def test_addresses_are_stored_in_lower_case_and_found_whatever_their_case(
    world: World,
) -> None:
    typed = "Secretariat@Clinique-B.pli.test"
    mailbox = Mailbox.objects.create(
        address=f" {typed} ", kind="ORG", organisation=world.ward.organisation
    )
    mailbox.refresh_from_db()
    assert mailbox.address == typed.lower()
    lookup = world.client(world.a).get(CERTIFICATES, {"address": typed})
    assert lookup.status_code == 200 and lookup.json()["address"] == typed.lower()


@pytest.mark.django_db
def test_the_migration_lowers_the_addresses_stored_with_capitals_and_stops_on_twins(
    world: World,
) -> None:
    # Stored with capitals as an admin could before (an update bypasses save()).
    Mailbox.objects.filter(pk=world.ward.pk).update(address=WARD.upper())
    lowering.lower_addresses(apps, None)
    world.ward.refresh_from_db()
    assert world.ward.address == WARD

    twin = Mailbox.objects.create(address="x@clinique-b.pli.test", kind="ORG")
    Mailbox.objects.filter(pk=twin.pk).update(address=WARD.upper())
    with pytest.raises(RuntimeError, match="differ only by case"):
        lowering.lower_addresses(apps, None)
    assert Mailbox.objects.filter(address=WARD.upper()).exists()


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
def test_a_batch_of_two_thousand_unknown_addresses_is_refused_cleanly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each unknown address was one more case-insensitive condition: past about a
    thousand, SQLite refused the statement and the sender got a 500."""
    monkeypatch.setenv("PLI_MAX_RECIPIENTS", "20")
    monkeypatch.setenv("PLI_MAX_BATCH_MESSAGES", "100")
    envelope = encoded(a_to_b(world))
    messages = [
        {
            "from": A,
            "recipients": [f"inconnu.{i}.{j}@nulle-part.pli.test" for j in range(20)],
            "envelope": envelope,
        }
        for i in range(100)
    ]
    client: Client = world.client(world.a)
    response = client.post(
        "/api/messages/batch",
        data=json.dumps({"messages": messages}),
        content_type="application/json",
    )
    assert response.status_code == 422, response.content[:500]
    refused = response.json()["details"]["refused"]
    assert len(refused) == 100
    assert {r["code"] for r in refused} == {"recipient_not_in_directory"}
