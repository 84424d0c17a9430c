"""Moving envelopes between the database and the blob store (decision 0013).

``PLI_ENVELOPE_IN_DATABASE_BYTES`` decides where a send puts its envelope;
changing it changes nothing for the envelopes already stored. An operator
who moves to object storage (setting ``0``), or who raises the limit, moves
the existing ones with :func:`do_move_envelopes` (``pli envelopes move``).

One envelope at a time, each in its own transaction, so that a long move
never holds the database (SQLite's writers' queue, decision 0012) and can be
stopped and started again: an envelope is read, checked against the SHA-256
recorded at send, written to its new place, and the message switched to it;
the old copy goes only after that commit. An envelope that fails its digest
is left where it is and counted (``damaged``). Only ciphertext moves; no
audit event is written (nothing is read or disclosed, REQ-TRACE's events are
about people's access to messages).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import transaction

from pli.server.blobs import BlobError, BlobStore, blob_store
from pli.server.messaging.actions import envelope_in_database_bytes, envelope_intact
from pli.server.messaging.models import Message, MessageEnvelope

logger = logging.getLogger(__name__)

#: Messages read per query while looking for envelopes to move.
BATCH = 200


@dataclass(frozen=True)
class MoveResult:
    #: "database" or "blob_store": where the envelopes were moved to.
    to: str
    moved: int
    bytes: int
    #: Envelopes left where they were: they failed their digest, or their blob is missing.
    damaged: int
    dry_run: bool


def _candidates(to_database: bool) -> Iterator[Message]:
    """The messages whose envelope is to move, by key, a batch at a time."""
    if to_database:
        limit = envelope_in_database_bytes()
        if limit == 0:
            return
        wanted = Message.objects.exclude(envelope_blob="").filter(size__lte=limit)
    else:
        wanted = Message.objects.filter(envelope_blob="")
    last = 0
    while True:
        batch = list(
            wanted.filter(pk__gt=last)
            .order_by("pk")
            .only("pk", "public_id", "envelope_blob", "envelope_sha256", "size")[:BATCH]
        )
        if not batch:
            return
        yield from batch
        last = batch[-1].pk


def _to_blob_store(message: Message, store: BlobStore) -> int | None:
    """Bytes moved; 0 when the message went meanwhile; None when its envelope is damaged."""
    data = (
        MessageEnvelope.objects.filter(message_id=message.pk).values_list("data", flat=True).first()
    )
    if data is None:  # deleted (or moved) meanwhile
        return 0
    if not envelope_intact(message, bytes(data)):
        return None
    stored = store.write(bytes(data))
    try:
        with transaction.atomic():
            switched = Message.objects.filter(pk=message.pk, envelope_blob="").update(
                envelope_blob=stored.blob_id
            )
            if switched:
                MessageEnvelope.objects.filter(message_id=message.pk).delete()
    except BaseException:
        store.delete(stored.blob_id)
        raise
    if not switched:  # deleted (or moved) meanwhile: the new file names nothing
        store.delete(stored.blob_id)
        return 0
    return stored.size


def _to_database(message: Message, store: BlobStore) -> int | None:
    try:
        data = b"".join(store.read_chunks(message.envelope_blob))
    except BlobError:
        logger.error("messaging: envelope blob of %s is missing; not moved", message.public_id)  # noqa: TRY400 - expected, named; no traceback
        return None
    if not envelope_intact(message, data):
        return None
    old = message.envelope_blob
    with transaction.atomic():
        switched = Message.objects.filter(pk=message.pk, envelope_blob=old).update(envelope_blob="")
        if not switched:  # deleted (or moved) meanwhile
            return 0
        MessageEnvelope.objects.create(message_id=message.pk, data=data)
        # The file goes once the row that replaces it is committed, never before.
        transaction.on_commit(lambda: store.delete(old))
    return len(data)


def do_move_envelopes(
    *, to_database: bool, dry_run: bool = False, store: BlobStore | None = None
) -> MoveResult:
    """Move every envelope to the database (those within the setting's limit) or to the
    blob store; each in its own transaction, idempotent, safe to stop and run again."""
    target = store or blob_store()
    moved = total = damaged = 0
    for message in _candidates(to_database):
        if dry_run:
            moved += 1
            total += message.size
            continue
        size = (_to_database if to_database else _to_blob_store)(message, target)
        if size is None:
            damaged += 1
        elif size:
            moved += 1
            total += size
    to = "database" if to_database else "blob_store"
    logger.info(
        "messaging: %s envelopes %s to %s (%s damaged)",
        moved,
        "would move" if dry_run else "moved",
        to,
        damaged,
    )
    return MoveResult(to, moved, total, damaged, dry_run)
