"""Identifiers in the messaging API's URLs: malformed ones, and others' ones.

What is not the caller's answers exactly as what does not exist (CONVENTIONS,
habit 8), on every endpoint that takes a message, blob or upload identifier; an
identifier of another shape is one that does not exist, never a server error. The
scene and the helpers are shared with tests/test_messaging_review_api.py.

Personas of tests/test_messaging_api.py: A sends, B receives, C is a doctor elsewhere
who must see nothing, D a colleague of B who receives a message of his own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from pli.crypto import seal
from pli.server.audit.models import AuditCheckpoint, AuditEvent, AuditPendingEvent
from pli.server.directory.models import Mailbox
from pli.server.messaging.models import Delivery, Message, MessageCopy, MessageEnvelope
from pli.server.messaging.uploads import MessageBlob, Upload
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    A,
    B,
    C,
    D,
    World,
    a_to_b,
    encoded,
    letter,
    make_world,
    post_json,
)
from tests.test_messaging_uploads import UPLOADS, ciphertext, create, put, upload

MISSING_MESSAGE = "msg_" + "0" * 32
MISSING_UPLOAD = "upl_" + "0" * 32
NOT_FOUND = {"code": "not_found", "message": "Introuvable.", "details": {}}


@pytest.fixture
def world(pki: Pki, settings: Settings, tmp_path: Path) -> World:
    settings.BLOB_DIR = tmp_path / "blobs"
    return make_world(pki, Path(settings.BLOB_DIR))


@dataclass(frozen=True)
class Scene:
    """A message from A to B with a streamed attachment, one from A to D with another,
    and two uploads of A: one 40 bytes into its 100, one complete."""

    message: str
    digest: str
    size: int
    to_d: str
    digest_to_d: str
    receiving: str
    complete: str


def make_scene(world: World) -> Scene:
    alice = world.client(world.a)
    data, other = ciphertext(500), ciphertext(300)
    attached = upload(alice, data, chunk=200)
    sent = post_json(
        alice,
        MESSAGES,
        {"from": A, "recipients": [B], "envelope": encoded(a_to_b(world)), "blobs": [attached]},
    )
    assert sent.status_code == 201, sent.content
    d_key = world.publish(Mailbox.objects.get(address=D), "carol")
    to_d = post_json(
        alice,
        MESSAGES,
        {
            "from": A,
            "recipients": [D],
            "envelope": encoded(seal(letter(A, [D]), world.a_key, [d_key.certificate])),
            "blobs": [upload(alice, other)],
        },
    )
    assert to_d.status_code == 201, to_d.content
    receiving = create(alice, ciphertext(100)).json()["id"]
    assert put(alice, receiving, 0, ciphertext(40)).json()["received"] == 40
    return Scene(
        message=sent.json()["id"],
        digest=hashlib.sha256(data).hexdigest(),
        size=len(data),
        to_d=to_d.json()["id"],
        digest_to_d=hashlib.sha256(other).hexdigest(),
        receiving=receiving,
        complete=upload(alice, ciphertext(100)),
    )


def stored(world: World) -> dict[str, Any]:
    """Every row of the messaging tables that a request may change, and every file."""
    root = world.blob_dir
    files = sorted(
        (str(path.relative_to(root)), path.stat().st_size)
        for path in (root.rglob("*") if root.exists() else [])
        if path.is_file()
    )
    return {
        "messages": list(Message.objects.order_by("pk").values_list("pk", "envelope_blob")),
        "envelopes": list(MessageEnvelope.objects.order_by("pk").values_list("pk", flat=True)),
        "deliveries": list(Delivery.objects.order_by("pk").values_list("pk", "state", "read_at")),
        "copies": list(
            MessageCopy.objects.order_by("pk").values_list("pk", "folder", "read", "flagged")
        ),
        "blobs": list(MessageBlob.objects.order_by("pk").values_list("pk", "blob_id")),
        "uploads": list(
            Upload.objects.order_by("pk").values_list("public_id", "received", "state", "blob_id")
        ),
        "checkpoints": AuditCheckpoint.objects.count(),
        "files": files,
    }


def journal() -> list[tuple[str, str, str]]:
    """The audit journal: chained events, then those waiting to be chained (decision 0010)."""
    return [
        *AuditEvent.objects.order_by("seq").values_list("action", "outcome", "detail"),
        *AuditPendingEvent.objects.order_by("id").values_list("action", "outcome", "detail"),
    ]


def refused_send(code: str) -> tuple[str, str, str]:
    return ("messages.sent", "failure", json.dumps({"code": code}, separators=(",", ":")))


# --------------------------------------------------------------------------- identifiers


def _message_endpoints(message_id: str, blob: str) -> list[tuple[str, str, dict[str, Any]]]:
    base = f"{MESSAGES}/{message_id}"
    return [
        ("get", base, {}),
        ("get", f"{base}/envelope", {}),
        ("post", f"{base}/read", {}),
        ("post", f"{base}/flag", {"flagged": True}),
        ("post", f"{base}/move", {"folder": "archive"}),
        ("delete", base, {}),
        ("get", f"{base}/blobs/{blob}", {}),
    ]


def _upload_endpoints(upload_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    path = f"{UPLOADS}/{upload_id}"
    return [("get", path, {}), ("put", f"{path}?offset=40", {}), ("delete", path, {})]


def ask(client: Client, method: str, path: str, body: dict[str, Any]) -> Any:
    if method == "post":
        return post_json(client, path, body)
    if method == "put":
        return put(client, path.removeprefix(f"{UPLOADS}/").split("?")[0], 40, b"x" * 10)
    return getattr(client, method)(path)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "malformed",
    [
        "x",
        "%00",
        "msg_%00",
        "msg_" + "0" * 31 + "%00",
        "MSG_" + "0" * 32,
        "msg_" + "0" * 32 + "0",
        "msg_" + "g" * 32,
        "msg_" + "0" * 200,
        "%C3%A9",
        "msg_%E2%80%AE" + "0" * 28,
    ],
)
def test_a_malformed_message_id_answers_as_a_missing_one_on_every_endpoint(
    world: World, malformed: str
) -> None:
    """Never a server error: PostgreSQL's text cannot hold NUL, so such an id must not
    reach a query (it did: 500 on PostgreSQL for every endpoint of a message)."""
    scene = make_scene(world)
    bob = world.client(world.b)
    before, logged = stored(world), journal()
    for (method, path, body), (_m, missing, _b) in zip(
        _message_endpoints(malformed, scene.digest),
        _message_endpoints(MISSING_MESSAGE, scene.digest),
        strict=True,
    ):
        answer = ask(bob, method, path, body)
        assert (answer.status_code, answer.json()) == (404, NOT_FOUND), (method, path)
        assert ask(bob, method, missing, body).json() == answer.json()
        # Naming the mailbox changes nothing.
        named = ask(bob, method, f"{path}?mailbox={B}", body)
        assert (named.status_code, named.json()) == (404, NOT_FOUND), (method, path)
    for method, path, body in _upload_endpoints(malformed.replace("msg_", "upl_")):
        answer = ask(world.client(world.a), method, path, body)
        assert (answer.status_code, answer.json()) == (404, NOT_FOUND), (method, path)
    assert stored(world) == before
    assert journal() == logged


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["0", "x" * 10, "%00"])
def test_a_blob_name_longer_than_its_digest_is_not_found(world: World, suffix: str) -> None:
    """The name was cut to 64 characters before it was looked up: the digest followed
    by anything served the blob, under as many names as one wished."""
    scene = make_scene(world)
    bob = world.client(world.b)
    path = f"{MESSAGES}/{scene.message}/blobs/{scene.digest}"
    assert bob.get(path).status_code == 200
    before, logged = stored(world), journal()
    answer = bob.get(path + suffix)
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)
    assert (stored(world), journal()) == (before, logged)  # not traced as a download


# --------------------------------------------------------------------------- rule 3


@pytest.mark.django_db
@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.requirement("REQ-E2E")
def test_what_is_not_the_callers_answers_exactly_as_what_does_not_exist(world: World) -> None:
    scene = make_scene(world)
    charlie, bob = world.client(world.c), world.client(world.b)
    missing_digest = "f" * 64
    before = stored(world)
    pairs: list[tuple[str, Client, tuple[str, str, dict[str, Any]], tuple[str, str, Any]]] = []
    for theirs, nothing in zip(
        _message_endpoints(scene.message, scene.digest),
        _message_endpoints(MISSING_MESSAGE, missing_digest),
        strict=True,
    ):
        pairs.append(("C, a message of A and B", charlie, theirs, nothing))
    for theirs, nothing in zip(
        _upload_endpoints(scene.complete), _upload_endpoints(MISSING_UPLOAD), strict=True
    ):
        pairs.append(("C, an upload of A", charlie, theirs, nothing))
    pairs += [
        (
            "C names A's mailbox",
            charlie,
            ("get", f"{MESSAGES}/{scene.message}?mailbox={A}", {}),
            ("get", f"{MESSAGES}/{scene.message}?mailbox=personne@nulle-part.pli.test", {}),
        ),
        (
            "C, a receipt for a message of A and B",
            charlie,
            ("post", f"{MESSAGES}/{scene.message}/read", {"receipt": encoded(b"lu")}),
            ("post", f"{MESSAGES}/{MISSING_MESSAGE}/read", {"receipt": encoded(b"lu")}),
        ),
        (
            "B, the blob of a message to D through a message of his",
            bob,
            ("get", f"{MESSAGES}/{scene.message}/blobs/{scene.digest_to_d}", {}),
            ("get", f"{MESSAGES}/{scene.message}/blobs/{missing_digest}", {}),
        ),
        (
            "B, a message to D",
            bob,
            ("get", f"{MESSAGES}/{scene.to_d}/blobs/{scene.digest_to_d}", {}),
            ("get", f"{MESSAGES}/{MISSING_MESSAGE}/blobs/{scene.digest_to_d}", {}),
        ),
    ]
    for label, client, theirs, nothing in pairs:
        answer, reference = ask(client, *theirs), ask(client, *nothing)
        assert answer.status_code == reference.status_code == 404, (label, theirs)
        assert answer.json() == reference.json() == NOT_FOUND, (label, theirs)
    assert stored(world) == before

    # A send by C naming what it cannot see: the refusal of what does not exist.
    def send_as_c(**extra: Any) -> Any:
        body = {"from": C, "recipients": [A], "envelope": encoded(a_to_b(world)), **extra}
        return post_json(charlie, MESSAGES, body)

    logged = journal()
    for field_name, theirs_id, missing_id in (
        ("in_reply_to", scene.message, MISSING_MESSAGE),
        ("blobs", scene.complete, MISSING_UPLOAD),
    ):
        value: Any = [theirs_id] if field_name == "blobs" else theirs_id
        other: Any = [missing_id] if field_name == "blobs" else missing_id
        answer, reference = send_as_c(**{field_name: value}), send_as_c(**{field_name: other})
        assert answer.status_code == reference.status_code == 422, field_name
        assert answer.content.replace(theirs_id.encode(), b"ID") == reference.content.replace(
            missing_id.encode(), b"ID"
        ), field_name
    codes = ["in_reply_to_not_found"] * 2 + ["blob_not_found"] * 2
    assert journal() == logged + [refused_send(code) for code in codes]
    assert stored(world) == before
