"""A copy changed by another request between its lookup and the action (found by a review).

Two members of a ward's mailbox act on one message at once; a person double-clicks;
a client retries a request whose answer was lost. The action decides under the
row's lock, on what the caller asked for: "to the trash" never becomes a deletion
nobody confirmed, and a copy deleted meanwhile is a 404, never a 500. Each test
replaces the access helper with one that lets "the other request" commit right
after the lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db.models import QuerySet
from pytest_django.fixtures import Settings

from pli.server.messaging import api as messaging_api
from pli.server.messaging.access import access_copy_by_message_id
from pli.server.messaging.models import Folder, MessageCopy
from pli.server.webmail import views as webmail_views
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    A,
    B,
    World,
    a_to_b,
    make_world,
    post_json,
    send,
)

# Integrity of what the professionals keep (REQ-RESILIENCE), in shared mailboxes too.
pytestmark = [pytest.mark.django_db, pytest.mark.requirement("REQ-RESILIENCE")]


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


def meanwhile(
    monkeypatch: pytest.MonkeyPatch, module: Any, other: Callable[[QuerySet[MessageCopy]], Any]
) -> None:
    """After the lookup, ``other`` changes the copy, as a request committed just then."""

    def looked_up(user: Any, public_id: str, mailbox: str | None = None) -> MessageCopy:
        copy = access_copy_by_message_id(user, public_id, mailbox)
        other(MessageCopy.objects.filter(pk=copy.pk))
        return copy

    monkeypatch.setattr(module, "access_copy_by_message_id", looked_up)


def b_copy(message_id: str) -> QuerySet[MessageCopy]:
    return MessageCopy.objects.filter(message__public_id=message_id, mailbox__address=B)


def test_a_double_click_on_delete_never_deletes_for_good_unconfirmed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    # The first click moved it to the trash just after the second one looked it up.
    meanwhile(monkeypatch, webmail_views, lambda copy: copy.update(folder=Folder.TRASH))
    answer = world.client(world.b).post(f"/messagerie/message/{message_id}/supprimer/?boite={B}")
    assert answer.status_code == 302
    assert b_copy(message_id).get().folder == Folder.TRASH


def test_a_repeated_api_delete_leaves_the_copy_in_the_trash(world: World) -> None:
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    bob = world.client(world.b)
    for _ in range(2):  # a retried request: the same answer, the same state
        answer = bob.delete(f"{MESSAGES}/{message_id}")
        assert answer.json() == {"id": message_id, "deleted": False, "folder": "trash"}
    assert b_copy(message_id).get().folder == Folder.TRASH
    gone = bob.delete(f"{MESSAGES}/{message_id}?permanent=true")
    assert gone.json() == {"id": message_id, "deleted": True, "folder": None}
    assert not b_copy(message_id).exists()


def test_permanent_on_a_copy_outside_the_trash_moves_it_there_only(world: World) -> None:
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    answer = world.client(world.b).delete(f"{MESSAGES}/{message_id}?permanent=true")
    assert answer.json()["deleted"] is False
    assert b_copy(message_id).get().folder == Folder.TRASH


@pytest.mark.parametrize(
    ("path", "body"),
    [("/read", None), ("/move", {"folder": "archive"}), ("/flag", {"flagged": True})],
)
def test_a_copy_deleted_for_good_meanwhile_is_not_found(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any] | None
) -> None:
    message_id = send(world.client(world.a), A, [B], a_to_b(world)).json()["id"]
    meanwhile(monkeypatch, messaging_api, lambda copy: copy.delete())
    bob = world.client(world.b)
    bob.raise_request_exception = False
    answer = post_json(bob, f"{MESSAGES}/{message_id}{path}", body)
    assert answer.status_code == 404, answer.content
    assert answer.json()["code"] == "not_found"
