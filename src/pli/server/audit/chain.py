"""The hash chain of the audit trail: what is hashed, what is signed, and its verification.

Canonical form of an event (version ``pli-audit-1``), UTF-8 encoded, fields
separated by a line feed, in this order::

    pli-audit-1
    <seq>                      decimal
    <occurred_at>              microseconds since 1970-01-01T00:00:00Z, decimal
    <actor_id>                 decimal, or empty
    <n>:<actor_username>       n = length in characters, then the text (netstring-like)
    <n>:<actor_role>
    <n>:<action>
    <n>:<target>
    <n>:<source_address>
    <n>:<user_agent>
    <n>:<outcome>
    <n>:<detail>               the stored canonical JSON text
    <prev_hash>                64 lower-case hex digits

Every text is prefixed by its length, so no content can imitate a field
boundary whatever characters it holds; numbers and hashes have fixed
alphabets. One f-string per event keeps it cheap: verification of 1,000,000
events must take under 10 s (docs/decisions/0005-audit-trail.md). The hash of
an event is SHA-256 of that form, in hex; the first event's ``prev_hash`` is
64 zeros.

A checkpoint signs ``pli-audit-checkpoint-1\\n<seq>\\n<hash>\\n<signed_at µs>\\n<key
fingerprint>`` with the operator audit key (Ed25519).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import multiprocessing
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Max, Min
from django.utils.translation import gettext as _

from pli.crypto import CryptoError, VerifyingKey
from pli.server.audit.errors import (
    AuditCheckpointInvalid,
    AuditHashMismatch,
    AuditMissingPredecessor,
    AuditUnsigned,
    AuditValueRefused,
)
from pli.server.audit.models import AuditCheckpoint, AuditEvent, AuditOutcome

logger = logging.getLogger(__name__)

EVENT_FORM = "pli-audit-1"
CHECKPOINT_FORM = "pli-audit-checkpoint-1"
GENESIS = "0" * 64
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)

# What an event may say about its target and detail: codes and counts only, never health
# data, a subject, a file name or an address (CONVENTIONS, habit 4). No space, no dot, no
# slash, no "@": a sentence, a file name with its extension or an e-mail address cannot pass.
_KIND = r"[a-z][a-z0-9_]{0,31}"
TARGET = re.compile(rf"{_KIND}(?::[A-Za-z0-9_+-]{{1,64}})?")
DETAIL_KEY = re.compile(_KIND)
DETAIL_TEXT = re.compile(r"[A-Za-z0-9_+:-]{0,64}")
DETAIL_MAX_KEYS = 8
#: Integers stay exact in every JSON reader (2^53).
DETAIL_MAX_INT = 2**53
USER_AGENT_MAX = AuditEvent._meta.get_field("user_agent").max_length or 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- values


def check_target(target: str) -> str:
    if target and TARGET.fullmatch(target) is None:
        raise AuditValueRefused(
            "target must be an identifier like 'user:12' (a kind, then letters, digits, _ + -)"
        )
    return target


def canonical_detail(detail: Mapping[str, str | int] | None) -> str:
    """The detail as stored and hashed: JSON with sorted keys, or empty; codes and counts only."""
    if not detail:
        return ""
    if len(detail) > DETAIL_MAX_KEYS:
        raise AuditValueRefused(f"detail holds at most {DETAIL_MAX_KEYS} keys")
    for key, value in detail.items():
        if not isinstance(key, str) or DETAIL_KEY.fullmatch(key) is None:
            raise AuditValueRefused(f"detail key {key!r} is not a code")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise AuditValueRefused(f"detail {key}: a code or a count is expected")
        if isinstance(value, int) and not -DETAIL_MAX_INT < value < DETAIL_MAX_INT:
            raise AuditValueRefused(f"detail {key}: the count is out of range")
        if isinstance(value, str) and DETAIL_TEXT.fullmatch(value) is None:
            raise AuditValueRefused(
                f"detail {key}: only a code is allowed (letters, digits, _ + : -, 64 at most)"
            )
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"))


def check_outcome(outcome: str) -> str:
    """The outcome as a plain string, or :class:`AuditValueRefused`."""
    try:
        return AuditOutcome(outcome).value
    except ValueError:
        raise AuditValueRefused(
            f"outcome must be one of {', '.join(AuditOutcome.values)}"
        ) from None


def source_address(value: object) -> str:
    """The peer address as the server saw it (REMOTE_ADDR), normalised; empty if not one."""
    if not isinstance(value, str) or not value:
        return ""
    return _normalised_address(value)


@lru_cache(maxsize=4096)
def _normalised_address(value: str) -> str:
    # Every event of a request asks for the same few peers' addresses: parsed once each
    # (a send records two events; ipaddress's parse was about a third of their checks).
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return ""


def clean_user_agent(value: object) -> str:
    """The user agent without control characters, truncated: it is shown, never trusted."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub("", value)[:USER_AGENT_MAX]


def micros(value: dt.datetime | str) -> int:
    """Microseconds since the epoch of a stored time (aware, naive UTC, or SQLite's text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - EPOCH) // MICROSECOND


# --------------------------------------------------------------------------- hashes


def event_body(  # noqa: PLR0917 - the canonical fields in order
    occurred_at_us: int,
    actor_id: int | None,
    actor_username: str,
    actor_role: str,
    action: str,
    target: str,
    address: str,
    user_agent: str,
    outcome: str,
    detail: str,
) -> str:
    """The canonical form between the position's line and the previous hash (newline ended)."""
    return (
        f"{occurred_at_us}\n{'' if actor_id is None else actor_id}\n"
        f"{len(actor_username)}:{actor_username}\n{len(actor_role)}:{actor_role}\n"
        f"{len(action)}:{action}\n{len(target)}:{target}\n{len(address)}:{address}\n"
        f"{len(user_agent)}:{user_agent}\n{len(outcome)}:{outcome}\n{len(detail)}:{detail}\n"
    )


def event_hash(  # noqa: PLR0917 - the canonical fields in order; positional for speed
    seq: int,
    occurred_at_us: int,
    actor_id: int | None,
    actor_username: str,
    actor_role: str,
    action: str,
    target: str,
    address: str,
    user_agent: str,
    outcome: str,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical form of an event (see the module's documentation)."""
    body = event_body(
        occurred_at_us,
        actor_id,
        actor_username,
        actor_role,
        action,
        target,
        address,
        user_agent,
        outcome,
        detail,
    )
    return hashlib.sha256(f"{EVENT_FORM}\n{seq}\n{body}{prev_hash}".encode()).hexdigest()


def checkpoint_message(seq: int, hash_: str, signed_at_us: int, fingerprint: str) -> bytes:
    """What the operator audit key signs: (chain position, event hash, time, key)."""
    return f"{CHECKPOINT_FORM}\n{seq}\n{hash_}\n{signed_at_us}\n{fingerprint}".encode()


# --------------------------------------------------------------------------- verification

#: Columns read by the verification, in the order of :func:`event_hash` (then the hash).
_COLUMNS = (
    "seq",
    "occurred_at",
    "actor_id",
    "actor_username",
    "actor_role",
    "action",
    "target",
    "source_address",
    "user_agent",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
)
_TEXT_COLUMNS = _COLUMNS[3:11]
#: Events per keyset page: one query each (bounded memory on both databases).
CHUNK = 20_000
#: A trail this long is verified in parts, by several processes (about 1 s of work for one).
PARALLEL_FROM = 200_000
MAX_WORKERS = 4
#: Rows turned into Python objects at a time (SQLite): a batch stays in the processor's
#: caches (fetching whole pages of 20,000 rows cost about 40 % more CPU here).
_BATCH = 1_000

#: Above any chain position (bigint).
_LAST_SEQ = 2**63 - 1

#: The time of an event as integer microseconds since the epoch, computed by the database:
#: exact on both (PostgreSQL's EXTRACT gives a numeric; SQLite keeps Django's text
#: ``YYYY-MM-DD HH:MM:SS[.ffffff]`` in UTC) and much cheaper than a datetime per row.
_MICROS = {
    "postgresql": "(EXTRACT(EPOCH FROM occurred_at) * 1000000)::bigint",
    "sqlite": (
        # %% is the query's escape of %: strftime's %s, the seconds since the epoch, of
        # the text without its fraction (SQLite rounds a fraction to the millisecond,
        # which would carry .9995 into the next second), then the fraction's digits.
        "CAST(strftime('%%s', substr(occurred_at, 1, 19)) AS INTEGER) * 1000000"
        " + CAST(substr(occurred_at || '000000', 21, 6) AS INTEGER)"
    ),
}

#: PostgreSQL writes the canonical form itself, exactly as :func:`event_hash` does
#: (char_length counts code points, like Python's len): the server process builds the
#: strings on its own core while this one hashes, and each row crosses as one text
#: instead of thirteen values. The hash is still computed here, over that text, which
#: holds every field: a row altered in the database cannot give the signed hash back.
#: tests/test_audit.py checks that both forms agree on awkward values.
_POSTGRESQL_FORM = (
    f"'{EVENT_FORM}' || chr(10) || seq || chr(10) || {_MICROS['postgresql']}"
    " || chr(10) || COALESCE(actor_id::text, '')"
    + "".join(f" || chr(10) || char_length({c}) || ':' || {c}" for c in _TEXT_COLUMNS)
    + " || chr(10) || prev_hash"
)


@dataclass(frozen=True)
class VerificationReport:
    """What ``pli audit verify`` proved."""

    events: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    last_checkpoint_seq: int | None
    #: True when earlier events were purged: the chain starts at a signed checkpoint.
    from_checkpoint: bool

    @property
    def unsigned_tail(self) -> int:
        """Events after the last checkpoint: protected by the chain, not yet by a signature."""
        if self.last_seq is None:
            return 0
        return self.last_seq - (self.last_checkpoint_seq or 0)

    def describe(self) -> str:
        if self.last_seq is None:
            return _("journal d'audit vérifié : aucun événement")
        text = (
            _(
                "journal d'audit vérifié : %(events)s événement(s) (n° %(first)s à n° %(last)s,"
                " depuis un point de contrôle signé), %(checkpoints)s point(s) de contrôle"
                " signé(s), %(tail)s événement(s) après le dernier point de contrôle"
            )
            if self.from_checkpoint
            else _(
                "journal d'audit vérifié : %(events)s événement(s) (n° %(first)s à n° %(last)s,"
                " depuis le premier événement), %(checkpoints)s point(s) de contrôle signé(s),"
                " %(tail)s événement(s) après le dernier point de contrôle"
            )
        )
        return text % {
            "events": self.events,
            "first": self.first_seq,
            "last": self.last_seq,
            "checkpoints": self.checkpoints,
            "tail": self.unsigned_tail,
        }


@dataclass(frozen=True)
class _Checkpoint:
    pk: int
    seq: int
    hash: str
    signed_at: dt.datetime | str
    fingerprint: str
    signature: str


#: What the verification needs of one event: (seq, the previous hash it records,
#: its hash recomputed from its content, its stored hash).
_Digest = tuple[int, str, str, str]


def _event_query(vendor: str) -> str:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    if vendor == "postgresql":
        columns = f"seq, {_POSTGRESQL_FORM}, hash"
    else:
        columns = ", ".join(
            _MICROS.get(vendor, "occurred_at") if c == "occurred_at" else c for c in _COLUMNS
        )
    return f"SELECT {columns} FROM {table} WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"  # noqa: S608 - names are ours


#: ``"<n>:"`` for every length a text of an honest event can have (the detail's JSON
#: stays under 1,000 characters): an index instead of formatting an integer per field.
_LENGTH = tuple(f"{n}:" for n in range(1024))


def _sqlite_digests(batches: Iterator[list[tuple[Any, ...]]]) -> Iterator[_Digest]:
    """The digests of SQLite's rows: the canonical form built here, as :func:`event_hash`.

    The hot loop of ``pli audit verify`` on SQLite, written out for speed (local
    names, the length prefixes looked up). A row it cannot take that way (a text
    longer than ``_LENGTH`` knows, a NULL where the schema forbids it) goes
    through :func:`event_hash`.
    """
    sha256 = hashlib.sha256
    length = _LENGTH
    for rows in batches:
        digests: list[_Digest] = []
        append = digests.append
        for row in rows:
            (
                seq,
                occurred_us,
                actor_id,
                username,
                role,
                action,
                target,
                address,
                agent,
                outcome,
                detail,
                previous,
                stored,
            ) = row
            try:
                form = (
                    f"{EVENT_FORM}\n{seq}\n{occurred_us}\n{'' if actor_id is None else actor_id}\n"
                    f"{length[len(username)]}{username}\n{length[len(role)]}{role}\n"
                    f"{length[len(action)]}{action}\n{length[len(target)]}{target}\n"
                    f"{length[len(address)]}{address}\n{length[len(agent)]}{agent}\n"
                    f"{length[len(outcome)]}{outcome}\n{length[len(detail)]}{detail}\n"
                    f"{previous}"
                )
                computed = sha256(form.encode()).hexdigest()
            except (IndexError, TypeError):
                computed = _plain_digest(row)
            append((seq, previous, computed, stored))
        yield from digests


def _plain_digest(row: tuple[Any, ...]) -> str:
    """The hash of one row the plain way; empty if a value cannot be hashed (altered)."""
    try:
        return event_hash(row[0], row[1], *row[2:12])
    except TypeError:  # a NULL or a number where the schema puts a text: altered
        return ""


def _postgresql_digests(batches: Iterator[list[tuple[Any, ...]]]) -> Iterator[_Digest]:
    sha256 = hashlib.sha256
    for rows in batches:
        for seq, form, stored in rows:
            if form is None:  # a NULL where the schema forbids it: altered
                yield seq, "", "", stored
            else:
                yield seq, form[-64:], sha256(form.encode()).hexdigest(), stored


def _other_digests(batches: Iterator[list[tuple[Any, ...]]]) -> Iterator[_Digest]:
    """Another database (not supported by Pli's settings, kept correct): datetimes."""
    for rows in batches:
        for row in rows:
            try:
                computed = event_hash(row[0], micros(row[1]), *row[2:12])
            except TypeError:  # a NULL where the schema forbids it: altered
                computed = ""
            yield row[0], row[11], computed, row[12]


def _pages(
    cursor: Any, query: str, chunk: int, after: int, until: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The events after ``after`` up to ``until``, in chain order, in keyset pages of ``chunk``."""
    last = after
    while True:
        cursor.execute(query, [last, until, chunk])
        count = 0
        while rows := cursor.fetchmany(_BATCH):
            count += len(rows)
            last = rows[-1][0]
            yield rows
        if count < chunk:
            return


@contextmanager
def _event_digests(
    chunk: int, after: int = -1, until: int = _LAST_SEQ
) -> Iterator[Iterator[_Digest]]:
    """The digests of the events after ``after`` up to ``until``, in chain order: bounded memory.

    On SQLite the rows are read and hashed in this thread: the library runs in this
    process, and a reader thread would mostly wait for the GIL that the hashing holds
    (measured slower). On PostgreSQL a reader thread fetches the next page while this
    one hashes: the server builds the canonical texts in its own process meanwhile.
    The reader uses this thread's connection, so that it reads this transaction,
    which this thread leaves alone meanwhile.
    """
    shared = connections[DEFAULT_DB_ALIAS]
    vendor = shared.vendor
    query = _event_query(vendor)
    if vendor != "postgresql":
        with shared.cursor() as cursor:
            batches = _pages(cursor, query, chunk, after, until)
            yield _sqlite_digests(batches) if vendor == "sqlite" else _other_digests(batches)
        return

    pages: queue.Queue[list[tuple[Any, ...]] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: list[tuple[Any, ...]] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def read() -> None:
        last = after
        try:
            with shared.cursor() as cursor:
                while True:
                    cursor.execute(query, [last, until, chunk])
                    rows = cursor.fetchall()
                    if not put(rows) or len(rows) < chunk:
                        break
                    last = rows[-1][0]
        except BaseException as error:  # noqa: BLE001 - handed over to the verifying thread
            put(error)
        put(None)

    def received() -> Iterator[list[tuple[Any, ...]]]:
        while (page := pages.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield page

    shared.inc_thread_sharing()
    reader = threading.Thread(target=read, name="audit-verify-reader", daemon=True)
    reader.start()
    try:
        yield _postgresql_digests(received())
    finally:
        stop.set()
        reader.join()
        shared.dec_thread_sharing()


def _check_signature(checkpoint: _Checkpoint, keys: Mapping[str, VerifyingKey]) -> None:
    key = keys.get(checkpoint.fingerprint)
    if key is None:
        raise AuditCheckpointInvalid(
            f"checkpoint {checkpoint.pk} of event #{checkpoint.seq}: signed by an unknown key"
            f" ({checkpoint.fingerprint[:16]}…)",
            seq=checkpoint.seq,
        )
    message = checkpoint_message(
        checkpoint.seq, checkpoint.hash, micros(checkpoint.signed_at), checkpoint.fingerprint
    )
    try:
        key.verify(message, bytes.fromhex(checkpoint.signature))
    except (CryptoError, ValueError):
        raise AuditCheckpointInvalid(
            f"checkpoint {checkpoint.pk} of event #{checkpoint.seq}: bad signature",
            seq=checkpoint.seq,
        ) from None


def verify_trail(
    keys: Sequence[VerifyingKey],
    *,
    chunk: int = CHUNK,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM,
) -> VerificationReport:
    """Prove the whole kept trail, or raise at its first broken link (lowest position).

    The chain starts at event #1 (whose predecessor hash is the genesis), or,
    once older events were purged (REQ-TRACE-RETENTION), at the oldest kept
    event, which must be the event of a kept checkpoint whose signature
    vouches for its hash. Every checkpoint's signature is checked, and the
    hash it signs must be its event's.

    A trail of ``parallel_from`` events or more is first verified in parts by
    ``workers`` processes (default: the cores available, at most
    ``MAX_WORKERS``), when that is safe (:func:`_parts`). If the parts do not
    prove the whole trail, the trail is verified again in one pass, which
    names the first broken link: a broken trail is always reported by the
    same code, in the same order.
    """
    by_fingerprint = {key.fingerprint: key for key in keys}
    checkpoints = _read_checkpoints()
    parts = _parts(_workers() if workers is None else workers, parallel_from)
    named = {checkpoint.seq for checkpoint in checkpoints}
    if parts is not None and (
        (parts[0][0] != 1 and parts[0][0] not in named) or max(named, default=0) > parts[-1][1]
    ):
        parts = None  # no checkpoint vouches for the oldest event, or one names a missing event
    if parts is not None:
        try:
            report = _verify_parts(parts, chunk, checkpoints, by_fingerprint)
        except Exception:  # a part could not run (a connection refused…): the one pass will say
            logger.warning(
                "audit verification in parts failed; verifying in one pass", exc_info=True
            )
            report = None
        if report is not None:
            return _signed(_purged_by_the_purge(report))
    with _event_digests(chunk) as digests:
        return _signed(_purged_by_the_purge(_verify_digests(digests, checkpoints, by_fingerprint)))


def _signed(report: VerificationReport) -> VerificationReport:
    """A trail with events must have at least one signed checkpoint.

    Every link can be intact in a chain rewritten from the genesis with its
    checkpoints deleted: only a signature pins it (decision 0005). The first
    event always gets one, so none at all is never a normal state: before,
    ``verify`` proved such a trail and said "0 signed checkpoint(s)" (found
    by a review).
    """
    if report.events and not report.checkpoints:
        raise AuditUnsigned(
            f"no signed checkpoint vouches for the {report.events} events: their checkpoints"
            " were deleted, or the audit key could not be read when they were due (see the"
            " logs; once it can, the next event or the daily job signs the head)",
            seq=report.first_seq,
        )
    return report


def _purged_by_the_purge(report: VerificationReport) -> VerificationReport:
    """A trail that starts after event #1 must start where the last purge said it would.

    The retention purge records ``audit.purge`` with the new first event as its
    target, inside the chain it leaves (so under the hashes and the signatures
    that follow). Events deleted from the start by any other means leave a
    trail that starts at a checkpoint all the same: without this check,
    ``verify`` proved it (found by a review).
    """
    if not report.from_checkpoint or report.first_seq is None:
        return report
    named = (
        AuditEvent.objects.filter(action="audit.purge", seq__gte=report.first_seq)
        .order_by("-seq")
        .values_list("target", flat=True)
        .first()
    )
    if named != f"audit_event:{report.first_seq}":
        raise AuditMissingPredecessor(
            f"the events before #{report.first_seq} are gone, and no purge removed them",
            seq=report.first_seq,
        )
    return report


def _read_checkpoints() -> list[_Checkpoint]:
    return [
        _Checkpoint(*row)
        for row in AuditCheckpoint.objects.order_by("event_seq").values_list(
            "pk", "event_seq", "event_hash", "signed_at", "key_fingerprint", "signature"
        )
    ]


# --------------------------------------------------------------------------- in parts


@dataclass(frozen=True)
class _Part:
    """What one part proved of the events ``first`` to ``last`` (all present, in order)."""

    first: int
    last: int
    #: False: something did not verify (the one-pass verification will say what).
    intact: bool
    #: The previous hash recorded by event ``first``, and the hash of event ``last``.
    recorded_previous: str = ""
    last_hash: str = ""
    #: The hashes of the events that a checkpoint names, by position.
    hashes: Mapping[int, str] | None = None


def _workers() -> int:
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
    return min(len(available), MAX_WORKERS)


def _parts(workers: int, parallel_from: int) -> list[tuple[int, int]] | None:
    """The ranges of positions that processes may verify apart; None: verify in one pass.

    The parts read the database through their own connections, so only
    committed events, and each from a process forked from this one: only
    where ``fork`` exists, with no other thread running (a fork copies one
    thread and every lock), outside any transaction (the connection is closed
    before the fork, so that no connection is shared with a child), and for a
    database that other connections see (not SQLite in memory, as in tests).
    """
    if (
        workers < 2  # a part for this process, at least one for another
        or "fork" not in multiprocessing.get_all_start_methods()
        or threading.active_count() > 1
        or connection.vendor not in {"sqlite", "postgresql"}
        or connection.in_atomic_block
        or not connection.get_autocommit()
        or (connection.vendor == "sqlite" and getattr(connection, "is_in_memory_db")())  # noqa: B009 - SQLite's
    ):
        return None
    bounds = AuditEvent.objects.aggregate(first=Min("seq"), last=Max("seq"))
    first, last = bounds["first"], bounds["last"]
    # SQLite keeps any value in any column: a position that is not a whole number, or
    # below 0, is the one pass's to report (it reads from 0, as numbers sort).
    if not (isinstance(first, int) and isinstance(last, int)) or first < 0:
        return None
    if last - first + 1 < max(parallel_from, workers):
        return None
    return _split(first, last, workers)


def _split(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    """``first`` to ``last`` in ``parts`` consecutive ranges of (nearly) equal length."""
    size = -(-(last - first + 1) // parts)  # rounded up
    return [(start, min(start + size - 1, last)) for start in range(first, last + 1, size)]


def _verify_part(first: int, last: int, chunk: int, named: frozenset[int]) -> _Part:
    """Verify the events ``first`` to ``last`` on their own: present, hashed, linked."""
    expected = first
    previous: str | None = None
    recorded_previous = ""
    hashes: dict[int, str] = {}
    with _event_digests(chunk, first - 1, last) as digests:
        for seq, recorded, computed, stored in digests:
            if seq != expected or computed != stored:
                return _Part(first, last, intact=False)
            if previous is None:
                recorded_previous = recorded
            elif recorded != previous:
                return _Part(first, last, intact=False)
            if seq in named:
                hashes[seq] = computed
            previous = computed
            expected = seq + 1
    if previous is None or expected != last + 1:
        return _Part(first, last, intact=False)
    return _Part(first, last, True, recorded_previous, previous, hashes)


def _verify_part_in_child(first: int, last: int, chunk: int, named: frozenset[int]) -> _Part:
    """A part in a forked process: its own connection (the parent closed its own first)."""
    try:
        return _verify_part(first, last, chunk, named)
    finally:
        connections.close_all()


def _verify_parts(
    parts: list[tuple[int, int]],
    chunk: int,
    checkpoints: list[_Checkpoint],
    by_fingerprint: Mapping[str, VerifyingKey],
) -> VerificationReport | None:
    """The report if the parts prove the whole trail; None if anything is amiss."""
    named = [
        frozenset(c.seq for c in checkpoints if first <= c.seq <= last) for first, last in parts
    ]
    # No connection may cross the fork: each process opens its own (this one, again after).
    connection.close()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=len(parts) - 1, mp_context=context) as pool:
        others = [
            pool.submit(_verify_part_in_child, first, last, chunk, seqs)
            for (first, last), seqs in zip(parts[1:], named[1:], strict=True)
        ]
        results = [_verify_part(*parts[0], chunk, named[0])]
        signed = _signatures_hold(checkpoints, by_fingerprint)  # while the others work
        results += [other.result() for other in others]
    return _combine(results, checkpoints) if signed else None


def _signatures_hold(
    checkpoints: list[_Checkpoint], by_fingerprint: Mapping[str, VerifyingKey]
) -> bool:
    try:
        for checkpoint in checkpoints:
            _check_signature(checkpoint, by_fingerprint)
    except AuditCheckpointInvalid:
        return False
    return True


def _combine(results: list[_Part], checkpoints: list[_Checkpoint]) -> VerificationReport | None:
    """Join the parts into one chain, check what the (signed) checkpoints name; None: amiss."""
    start, end = results[0].first, results[-1].last
    from_checkpoint = start != 1
    previous = results[0].recorded_previous if from_checkpoint else GENESIS
    hashes: dict[int, str] = {}
    for part in results:
        if not part.intact or part.recorded_previous != previous:
            return None
        hashes.update(part.hashes or {})
        previous = part.last_hash
    last_checkpoint: int | None = None
    for checkpoint in checkpoints:
        if checkpoint.seq > end or (
            checkpoint.seq >= start and hashes.get(checkpoint.seq) != checkpoint.hash
        ):
            return None
        if checkpoint.seq >= start:
            last_checkpoint = checkpoint.seq
    if from_checkpoint and start not in hashes:
        return None  # no kept checkpoint vouches for the oldest kept event
    return VerificationReport(
        events=end - start + 1,
        first_seq=start,
        last_seq=end,
        checkpoints=len(checkpoints),
        last_checkpoint_seq=last_checkpoint,
        from_checkpoint=from_checkpoint,
    )


def _verify_digests(
    digests: Iterator[_Digest],
    checkpoints: list[_Checkpoint],
    by_fingerprint: Mapping[str, VerifyingKey],
) -> VerificationReport:
    pending = iter(checkpoints)
    checkpoint = next(pending, None)
    first = next(digests, None)
    if first is None:
        if checkpoint is not None:
            _check_signature(checkpoint, by_fingerprint)
            raise AuditCheckpointInvalid(
                f"checkpoint {checkpoint.pk} names event #{checkpoint.seq}, which is missing:"
                " the trail was emptied",
                seq=checkpoint.seq,
            )
        return VerificationReport(0, None, None, 0, None, from_checkpoint=False)

    start = first[0]
    # Checkpoints of purged events (kept a little longer than their events): signature only.
    while checkpoint is not None and checkpoint.seq < start:
        _check_signature(checkpoint, by_fingerprint)
        checkpoint = next(pending, None)
    from_checkpoint = start != 1
    if from_checkpoint and (checkpoint is None or checkpoint.seq != start):
        raise AuditMissingPredecessor(
            f"event #{start}: the events before it are missing and no kept checkpoint"
            " vouches for it",
            seq=start,
        )
    previous = first[1] if from_checkpoint else GENESIS
    expected = start
    next_checkpoint = checkpoint.seq if checkpoint is not None else -1
    last_checkpoint: int | None = None
    for seq, recorded_previous, computed, stored in _chain(first, digests):
        if seq != expected:
            raise AuditMissingPredecessor(
                f"event #{seq}: its predecessor #{seq - 1} is missing"
                + (f" (events #{expected} to #{seq - 1})" if seq - 1 > expected else ""),
                seq=seq,
            )
        if recorded_previous != previous:
            raise AuditHashMismatch(
                f"event #{seq}: the hash it records for event #{seq - 1} is not that event's"
                f" (#{seq - 1} or #{seq} was altered)",
                seq=seq,
            )
        if computed != stored:
            raise AuditHashMismatch(
                f"event #{seq}: its content does not match its hash (the event was altered)",
                seq=seq,
            )
        if seq == next_checkpoint and checkpoint is not None:
            _check_signature(checkpoint, by_fingerprint)
            if checkpoint.hash != computed:
                raise AuditCheckpointInvalid(
                    f"event #{seq}: its hash is not the one signed by checkpoint {checkpoint.pk}",
                    seq=seq,
                )
            last_checkpoint = seq
            checkpoint = next(pending, None)
            next_checkpoint = checkpoint.seq if checkpoint is not None else -1
        previous = computed
        expected = seq + 1
    if checkpoint is not None:
        _check_signature(checkpoint, by_fingerprint)
        raise AuditCheckpointInvalid(
            f"checkpoint {checkpoint.pk} names event #{checkpoint.seq}, which is missing"
            f" (the trail ends at #{expected - 1}: it was truncated)",
            seq=checkpoint.seq,
        )
    return VerificationReport(
        events=expected - start,
        first_seq=start,
        last_seq=expected - 1,
        checkpoints=len(checkpoints),
        last_checkpoint_seq=last_checkpoint,
        from_checkpoint=from_checkpoint,
    )


def _chain(first: _Digest, rest: Iterator[_Digest]) -> Iterator[_Digest]:
    yield first
    yield from rest
