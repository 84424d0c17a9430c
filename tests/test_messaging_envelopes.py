"""``pli envelopes move``: stored envelopes change place, intact, readable (decision 0013)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from django.db import connection
from pytest_django.fixtures import Settings

from pli.client.cli import main
from pli.server.messaging.envelopes import do_move_envelopes
from pli.server.messaging.models import Message, MessageEnvelope
from tests.conftest import Pki
from tests.test_messaging_api import (
    MESSAGES,
    A,
    B,
    World,
    a_to_b,
    blob_files,
    envelope_place,
    envelopes_kept,
    make_world,
    send,
)

pytestmark = [pytest.mark.django_db, pytest.mark.requirement("REQ-AT-REST")]


@pytest.fixture
def blob_dir(settings: Settings, tmp_path: Path) -> Path:
    settings.BLOB_DIR = tmp_path / "blobs"
    return Path(settings.BLOB_DIR)


@pytest.fixture
def world(pki: Pki, blob_dir: Path) -> World:
    return make_world(pki, blob_dir)


def sent(world: World, count: int) -> dict[str, bytes]:
    """``count`` messages A → B, each larger than the one before: ids and envelopes."""
    alice = world.client(world.a)
    envelopes = {}
    for number in range(count):
        # Of different sizes: a longer body each time (the move to the database has a limit).
        envelope = a_to_b(world, body="Cher confrère,\n" + "voir le compte rendu.\n" * 40 * number)
        answer = send(alice, A, [B], envelope)
        assert answer.status_code == 201, answer.content
        envelopes[answer.json()["id"]] = envelope
    return envelopes


def readable(world: World, envelopes: dict[str, bytes]) -> bool:
    bob = world.client(world.b)
    return all(
        bob.get(f"{MESSAGES}/{message_id}/envelope").content == envelope
        for message_id, envelope in envelopes.items()
    )


def move(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(main, ["envelopes", "move", "--json", *args])
    # The JSON is the last line (log lines may come before it in the runner's output).
    return result.exit_code, json.loads(result.output.splitlines()[-1])


def test_envelopes_move_to_the_blob_store_and_back(
    world: World, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    envelopes = sent(world, 3)
    assert MessageEnvelope.objects.count() == 3 and blob_files(world.blob_dir) == []

    assert move("--to", "blob-store", "--dry-run") == (
        0,
        {
            "to": "blob_store",
            "moved": 3,
            "bytes": sum(map(len, envelopes.values())),
            "damaged": 0,
            "dry_run": True,
        },
    )
    assert MessageEnvelope.objects.count() == 3  # a dry run changes nothing

    code, result = move("--to", "blob-store")
    assert (code, result["moved"], result["damaged"]) == (0, 3, 0)
    assert not MessageEnvelope.objects.exists()
    assert blob_files(world.blob_dir) == sorted(envelope_place(m) for m in Message.objects.all())
    assert readable(world, envelopes)
    assert move("--to", "blob-store")[1]["moved"] == 0  # idempotent

    # Back, within the limit only: a limit under one envelope's size leaves it in its file.
    smallest = min(Message.objects.all(), key=lambda m: (m.size, m.pk))
    largest = max(Message.objects.all(), key=lambda m: (m.size, m.pk))
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", str(largest.size - 1))
    expected = Message.objects.filter(size__lt=largest.size).count()
    assert expected >= 1 and smallest.size < largest.size
    with django_capture_on_commit_callbacks(execute=True):
        code, result = move("--to", "database")
    assert (code, result["moved"], result["damaged"]) == (0, expected, 0)
    assert MessageEnvelope.objects.count() == expected
    # Each envelope in one place only: the moved files went once their rows were committed.
    assert len(envelopes_kept(world.blob_dir)) == 3
    assert readable(world, envelopes)


def test_a_damaged_envelope_stays_where_it_is_and_fails_the_command(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    envelopes = sent(world, 2)
    damaged, intact = Message.objects.order_by("pk")
    kept = MessageEnvelope.objects.get(pk=damaged.pk)
    # Flipped, not overwritten: a last byte that already was 0x00 (one envelope in 256,
    # as a CI run found) would not be damaged by writing 0x00.
    data = bytes(kept.data)
    MessageEnvelope.objects.filter(pk=damaged.pk).update(data=data[:-1] + bytes([data[-1] ^ 0xFF]))

    code, result = move("--to", "blob-store")
    assert (code, result["moved"], result["damaged"]) == (1, 1, 1)
    damaged.refresh_from_db()
    intact.refresh_from_db()
    assert damaged.envelope_blob == "" and MessageEnvelope.objects.filter(pk=damaged.pk).exists()
    assert blob_files(world.blob_dir) == [envelope_place(intact)]
    assert readable(world, {intact.public_id: envelopes[intact.public_id]})

    # A blob that is missing is named too, and nothing else changes.
    (world.blob_dir / envelope_place(intact)).unlink()
    with django_capture_on_commit_callbacks(execute=True):
        code, result = move("--to", "database")
    assert (code, result["moved"], result["damaged"]) == (1, 0, 1)
    intact.refresh_from_db()
    assert intact.envelope_blob != ""


def test_nothing_moves_to_the_database_when_the_setting_is_zero(
    world: World, monkeypatch: pytest.MonkeyPatch, blob_dir: Path
) -> None:
    monkeypatch.setenv("PLI_ENVELOPE_IN_DATABASE_BYTES", "0")
    envelopes = sent(world, 2)
    assert len(blob_files(blob_dir)) == 2
    result = do_move_envelopes(to_database=True)
    assert (result.moved, result.damaged) == (0, 0)
    assert not MessageEnvelope.objects.exists() and readable(world, envelopes)


def test_postgresql_does_not_try_to_compress_ciphertext() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's column storage (TOAST)")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attstorage FROM pg_attribute"
            " WHERE attrelid = 'messaging_messageenvelope'::regclass AND attname = 'data'"
        )
        assert cursor.fetchone() == ("e",)  # EXTERNAL: out of line, never pglz
