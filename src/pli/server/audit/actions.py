"""State changes of the audit trail: appending an event, checkpoints, export, purge.

Every other app records what it does with :func:`do_record_event`, inside its
own transaction, so that an action and its event commit together or not at
all (DESIGN: actions are transactions; REQ-TRACE). Appends are serialised so
the chain never forks: on PostgreSQL by a transaction-level advisory lock, on
SQLite by the write lock that ``BEGIN IMMEDIATE`` takes (pli.server.config);
the chain position is also the primary key, so a fork could not be written
anyway. The lock is held until the caller's transaction ends: record the
event at the end of the action, after any slow work.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import IO, TYPE_CHECKING

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Max, Min
from django.http import HttpRequest
from django.utils import timezone

from pli.server.audit.chain import (
    EPOCH,
    EVENT_FORM,
    MICROSECOND,
    canonical_detail,
    check_outcome,
    check_target,
    checkpoint_message,
    clean_user_agent,
    event_body,
    event_hash,
    micros,
    source_address,
)
from pli.server.audit.errors import AuditError, UnknownAuditAction
from pli.server.audit.keys import operator_signing_key
from pli.server.audit.models import AuditAction, AuditCheckpoint, AuditEvent, AuditPendingEvent
from pli.server.config import ConfigurationError, setting

if TYPE_CHECKING:
    from pli.server.accounts.models import User

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
#: The PostgreSQL advisory lock that serialises appends: "pli.audi" in ASCII.
CHAIN_LOCK = 0x706C_692E_6175_6469
#: REQ-TRACE-RETENTION: one year. Shorter is refused (the database triggers refuse it too).
MIN_RETENTION_DAYS = 365


#: Columns of an event, in the order of :func:`event_hash` (then the hash).
_EVENT_COLUMNS = (
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


@cache
def _head_query(postgresql: bool) -> str:
    """Take the chain and read its head and last checkpoint, in one round trip.

    On PostgreSQL the lock and the read are two statements of one query
    (Django's client-side binding sends them together): the read is a later
    statement, so under READ COMMITTED its snapshot is taken once the lock is
    held and it sees the previous append's commit.
    """
    event = connection.ops.quote_name(AuditEvent._meta.db_table)
    checkpoint = connection.ops.quote_name(AuditCheckpoint._meta.db_table)
    read = (
        "SELECT e.seq, e.hash, c.event_seq, c.signed_at FROM (SELECT 1 AS one) AS o"  # noqa: S608 - our table names
        f" LEFT JOIN (SELECT seq, hash FROM {event} ORDER BY seq DESC LIMIT 1) AS e ON 1 = 1"
        f" LEFT JOIN (SELECT event_seq, signed_at FROM {checkpoint}"
        " ORDER BY event_seq DESC LIMIT 1) AS c ON 1 = 1"
    )
    return f"SELECT pg_advisory_xact_lock({CHAIN_LOCK}); {read}" if postgresql else read


@cache
def _insert_query() -> str:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = ", ".join(_EVENT_COLUMNS)
    values = ", ".join(["%s"] * len(_EVENT_COLUMNS))
    return f"INSERT INTO {table} ({columns}) VALUES ({values})"  # noqa: S608 - our names


#: The statements an append runs on PostgreSQL, prepared once per database session
#: (:func:`_postgresql_append_query`). Their parameters: the event's time, then its
#: fields from ``actor_id`` to ``detail``, then the canonical text between them
#: (:func:`~pli.server.audit.chain.event_body`).
_APPEND = "pli_audit_append"
_LAST_CHECKPOINT = "pli_audit_last_checkpoint"
_APPEND_TYPES = "timestamptz, bigint, text, text, text, text, text, text, text, text, text"
_APPEND_PARAMETERS = 11


@cache
def _prepare_statements() -> dict[str, str]:
    event = connection.ops.quote_name(AuditEvent._meta.db_table)
    checkpoint = connection.ops.quote_name(AuditCheckpoint._meta.db_table)
    columns = ", ".join(_EVENT_COLUMNS)
    values = ", ".join(f"${n}" for n in range(1, _APPEND_PARAMETERS))
    return {
        _APPEND: (
            f"PREPARE {_APPEND} ({_APPEND_TYPES}) AS"  # noqa: S608 - our names; values are parameters
            f" INSERT INTO {event} ({columns})"
            f" SELECT h.seq + 1, {values}, h.hash,"
            f" encode(sha256(convert_to('{EVENT_FORM}' || chr(10) || (h.seq + 1) || chr(10)"
            f" || ${_APPEND_PARAMETERS} || h.hash, 'UTF8')), 'hex')"
            f" FROM (SELECT seq, hash FROM {event} ORDER BY seq DESC LIMIT 1) AS h"
            " RETURNING seq, prev_hash, hash"
        ),
        _LAST_CHECKPOINT: (
            f"PREPARE {_LAST_CHECKPOINT} AS SELECT event_seq,"  # noqa: S608 - our names
            " (EXTRACT(EPOCH FROM signed_at) * 1000000)::bigint"
            f" FROM {checkpoint} ORDER BY event_seq DESC LIMIT 1"
        ),
    }


@cache
def _prepare_if_missing() -> str:
    """A ``DO`` block that prepares the append's statements when this session lacks them.

    Asked in the append's own round trip, at every append: a session loses
    its prepared statements when psycopg, which prepares the connection's
    repeated statements (decision 0011), answers a ``ROLLBACK`` or a ``DROP``
    with ``DEALLOCATE ALL``. A record of "this session has them" kept in
    Python would then be wrong, and the ``EXECUTE`` would fail the caller's
    transaction.
    """
    checks = " ".join(
        f"IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = '{name}')"  # noqa: S608 - ours
        f" THEN EXECUTE '{statement.replace(chr(39), chr(39) * 2)}'; END IF;"
        for name, statement in sorted(_prepare_statements().items())
    )
    return f"DO $pli$ BEGIN {checks} END $pli$"


@cache
def _postgresql_append_query() -> str:
    """Take the chain, chain and insert the event, read the last checkpoint: one round trip.

    Statements of one query (sent with client-side binding,
    :func:`several_statements_cursor`), as :func:`_head_query`: the
    ``INSERT`` is a later statement than the lock, so under READ COMMITTED its
    snapshot is taken once the lock is held, and the head it reads is the
    previous append's, committed. (A lock taken inside the statement that
    reads the head would not do: that statement's snapshot would predate the
    lock and could miss the previous append.) The head is only known there, so
    the server hashes the canonical form, from the head and the text Python
    prepared; ``do_record_event`` checks the hash against :func:`event_hash`
    before going on. An empty trail gives no head and inserts nothing:
    :func:`_append_postgresql` writes event #1.

    The insert and the checkpoint's read are prepared statements, prepared
    first when the session lacks them (:func:`_prepare_if_missing`): planning
    them again at every append cost more than running them.
    """
    values = ", ".join(["%s"] * _APPEND_PARAMETERS)
    return "; ".join(
        [
            _prepare_if_missing(),
            f"SELECT pg_advisory_xact_lock({CHAIN_LOCK})",
            f"EXECUTE {_APPEND} ({values})",
            f"EXECUTE {_LAST_CHECKPOINT}",
        ]
    )


# --------------------------------------------------------------------------- settings


def _whole_number(name: str, default: int, minimum: int) -> int:
    raw = setting(name, str(default)) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"PLI_{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"PLI_{name} must be at least {minimum}, not {value}")
    return value


def checkpoint_every_events() -> int:
    return _whole_number("AUDIT_CHECKPOINT_EVENTS", 1000, 1)


def checkpoint_every_minutes() -> int:
    return _whole_number("AUDIT_CHECKPOINT_MINUTES", 10, 1)


#: Longest coalescing window an operator may set (decision 0010): a second.
MAX_SEQUENCER_DELAY_MS = 1000


def sequencer_delay_ms() -> int:
    """How long the background sequencer waits after a commit before chaining (decision 0010).

    ``PLI_AUDIT_SEQUENCER_DELAY_MS``, default 10. ``0`` chains in the request
    that committed, before its answer (the first form of 0010).
    """
    value = _whole_number("AUDIT_SEQUENCER_DELAY_MS", 10, 0)
    if value > MAX_SEQUENCER_DELAY_MS:
        raise ConfigurationError(
            f"PLI_AUDIT_SEQUENCER_DELAY_MS must be at most {MAX_SEQUENCER_DELAY_MS}, not {value}"
        )
    return value


def retention_days() -> int:
    return _whole_number("AUDIT_RETENTION_DAYS", MIN_RETENTION_DAYS, MIN_RETENTION_DAYS)


# --------------------------------------------------------------------------- appending


def several_statements_cursor() -> CursorWrapper:
    """A cursor that binds values in the client, so that one query may hold several
    statements with parameters (one round trip, PostgreSQL's simple query protocol).

    The connection's own cursors bind on the server (prepared statements,
    ``pli.server.config.database``), which allows one statement per query.
    """
    from django.db.backends.postgresql.base import Cursor  # type: ignore[attr-defined]  # noqa: PLC0415

    connection.ensure_connection()
    return connection.make_cursor(Cursor(connection.connection))


def _lock_head() -> tuple[int, str, int | None, int | None]:
    """Take the chain (until the transaction ends); its last seq and hash, last checkpoint."""
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(_head_query(postgresql))
        if postgresql:
            cursor.nextset()  # past the lock's result, to the head's
        row = cursor.fetchone()
    seq, hash_, checkpoint_seq, signed_at = row if row is not None else (None, None, None, None)
    return (
        seq or 0,
        hash_ or GENESIS,
        checkpoint_seq,
        None if signed_at is None else micros(signed_at),
    )


#: An event's fields from ``actor_id`` to ``detail``, checked (see :func:`event_fields`).
EventFields = tuple[int | None, str, str, str, str, str, str, str, str]


def event_fields(
    action: str,
    *,
    actor: User | None = None,
    request: HttpRequest | None = None,
    target: str = "",
    outcome: str = "success",
    detail: Mapping[str, str | int] | None = None,
) -> EventFields:
    """The fields of an event as stored and hashed, or the refusal of a bad value.

    ``action`` is a code of :class:`AuditAction` (anything else is refused, so
    that a typo cannot slip through); ``target`` an identifier such as
    ``"user:12"``; ``detail`` at most 8 codes and counts. Never health data, a
    subject, a file name or content: values that could hold them are refused
    (:class:`~pli.server.audit.errors.AuditValueRefused`). The actor is copied
    as plain values, the source address is REMOTE_ADDR (never a header the
    client chooses), the user agent is truncated.
    """
    try:
        action = AuditAction(action).value
    except ValueError:
        raise UnknownAuditAction(f"unknown audit action {action!r} (see AuditAction)") from None
    target = check_target(str(target))
    outcome = check_outcome(outcome)
    detail_text = canonical_detail(detail)
    actor_id: int | None = None
    username = role = ""
    if actor is not None and actor.is_authenticated:
        actor_id, username, role = actor.pk, actor.get_username(), getattr(actor, "role", "")
    address = agent = ""
    if request is not None:
        address = source_address(request.META.get("REMOTE_ADDR"))
        agent = clean_user_agent(request.META.get("HTTP_USER_AGENT"))
    return (actor_id, username, role, action, target, address, agent, outcome, detail_text)


def do_record_event(
    action: str,
    *,
    actor: User | None = None,
    request: HttpRequest | None = None,
    target: str = "",
    outcome: str = "success",
    detail: Mapping[str, str | int] | None = None,
) -> AuditEvent:
    """Append one event to the trail, in the caller's transaction (REQ-TRACE).

    ``action`` is a code of :class:`AuditAction` (anything else is refused, so
    that a typo cannot slip through); ``target`` an identifier such as
    ``"user:12"``; ``detail`` at most 8 codes and counts. Never health data, a
    subject, a file name or content: values that could hold them are refused
    (:class:`~pli.server.audit.errors.AuditValueRefused`). The actor is copied
    as plain values, the source address is REMOTE_ADDR (never a header the
    client chooses), the user agent is truncated.
    """
    return _append(
        event_fields(
            action, actor=actor, request=request, target=target, outcome=outcome, detail=detail
        )
    )


def do_record_events(events: Sequence[EventFields]) -> None:
    """Append several events (:func:`event_fields`) to the trail, in the caller's transaction.

    On SQLite, with one read of the chain's head and one insert for all of
    them: a send's transaction holds the database's writers' queue (decision
    0012), and each statement in it is time every other writer waits. The
    events are chained in order, exactly as one :func:`do_record_event` each
    would chain them; a checkpoint, when due, signs the last one. On
    PostgreSQL, one append each (a send there writes its events to the
    journal instead, decision 0010).
    """
    if connection.vendor == "postgresql" or len(events) < 2:
        for fields in events:
            _append(fields)
        return
    every_events, every_us = checkpoint_every_events(), checkpoint_every_minutes() * 60_000_000
    with transaction.atomic(savepoint=False):
        now = timezone.now()
        now_us = (now - EPOCH) // MICROSECOND
        seq, _previous, hash_, checkpoint_seq, checkpoint_us = _append_sqlite(now, now_us, events)
        if _checkpoint_due(seq, now_us, checkpoint_seq, checkpoint_us, every_events, every_us):
            _write_checkpoint(seq, hash_, now, first=checkpoint_seq is None)


def _append(fields: EventFields) -> AuditEvent:
    """Chain checked fields in the caller's transaction, under the chain's lock (0005)."""
    # Read before the transaction: a bad setting must not spoil the caller's.
    every_events, every_us = checkpoint_every_events(), checkpoint_every_minutes() * 60_000_000
    # A plain INSERT rather than Model.save(): the ORM's path costs more than the rest
    # of the append (the target is under 1 ms per request), and nothing listens to
    # this model's signals.
    with transaction.atomic(savepoint=False):
        now = timezone.now()
        now_us = (now - EPOCH) // MICROSECOND
        if connection.vendor == "postgresql":
            seq, last_hash, hash_, checkpoint_seq, checkpoint_us = _append_postgresql(
                now, now_us, fields
            )
        else:
            seq, last_hash, hash_, checkpoint_seq, checkpoint_us = _append_sqlite(
                now, now_us, [fields]
            )
        event = AuditEvent.from_db(
            connection.alias, _EVENT_COLUMNS, (seq, now, *fields, last_hash, hash_)
        )
        if _checkpoint_due(seq, now_us, checkpoint_seq, checkpoint_us, every_events, every_us):
            _write_checkpoint(seq, hash_, now, first=checkpoint_seq is None)
    return event


def _append_sqlite(
    now: dt.datetime, now_us: int, events: Sequence[EventFields]
) -> tuple[int, str, str, int | None, int | None]:
    """Chain events after the head (the transaction holds the database's write lock)
    and insert them in one statement; (last seq, its prev hash, its hash, last checkpoint)."""
    seq, hash_, checkpoint_seq, checkpoint_us = _lock_head()
    at = connection.ops.adapt_datetimefield_value(now)
    previous = hash_
    rows = []
    for fields in events:
        previous, seq = hash_, seq + 1
        hash_ = event_hash(seq, now_us, *fields, previous)
        rows.append([seq, at, *fields, previous, hash_])
    with connection.cursor() as cursor:
        cursor.executemany(_insert_query(), rows)
    return seq, previous, hash_, checkpoint_seq, checkpoint_us


def _checkpoint_due(  # noqa: PLR0917 - the head, the last checkpoint, the policy
    seq: int,
    now_us: int,
    checkpoint_seq: int | None,
    checkpoint_us: int | None,
    every_events: int,
    every_us: int,
) -> bool:
    return (
        checkpoint_seq is None
        or checkpoint_us is None
        or seq - checkpoint_seq >= every_events
        or now_us - checkpoint_us >= every_us
    )


def _append_postgresql(
    now: dt.datetime, now_us: int, fields: EventFields
) -> tuple[int, str, str, int | None, int | None]:
    """Lock, chain and insert in one round trip; (seq, prev hash, hash, last checkpoint)."""
    with several_statements_cursor() as cursor:
        cursor.execute(_postgresql_append_query(), [now, *fields, event_body(now_us, *fields)])
        cursor.nextset()  # past the DO block
        cursor.nextset()  # and the lock, to the inserted event
        inserted = cursor.fetchone()
        cursor.nextset()
        last_checkpoint = cursor.fetchone()
        if inserted is None:  # an empty trail: event #1, under the lock already taken
            seq, last_hash = 1, GENESIS
            hash_ = event_hash(seq, now_us, *fields, last_hash)
            cursor.execute(_insert_query(), [seq, now, *fields, last_hash, hash_])
        else:
            seq, last_hash, hash_ = inserted
            # The server hashed the text Python prepared: it must be event_hash's, exactly.
            if hash_ != event_hash(seq, now_us, *fields, last_hash):
                raise AuditError(f"event #{seq}: the database computed another hash than Python")
    checkpoint_seq, signed_at_us = last_checkpoint or (None, None)
    return seq, last_hash, hash_, checkpoint_seq, signed_at_us


def _write_checkpoint(
    seq: int, hash_: str, now: dt.datetime, *, first: bool
) -> AuditCheckpoint | None:
    """Sign (position, hash, time) of the head with the operator audit key.

    A key that cannot be read must not stop the action being recorded: the
    event is chained all the same, the failure is logged, and the next append
    tries again (the checkpoint is still due). ``pli audit verify`` reports
    how many events follow the last checkpoint.
    """
    try:
        key = operator_signing_key()
    except AuditError as error:
        logger.exception("audit checkpoint not written: %s: %s", error.code, error.detail)
        return None
    if first:  # the caller read the last checkpoint: there is none
        _warn_if_checkpoints_vanished(seq, now)
    fingerprint = key.verifying_key().fingerprint
    message = checkpoint_message(seq, hash_, micros(now), fingerprint)
    checkpoint = AuditCheckpoint.objects.create(
        event_seq=seq,
        event_hash=hash_,
        signed_at=now,
        key_fingerprint=fingerprint,
        signature=key.sign(message).hex(),
    )
    # The log is a second copy, outside the database, of what the chain must reach.
    logger.info("audit checkpoint: event #%d hash %s", seq, hash_)
    return checkpoint


def _warn_if_checkpoints_vanished(seq: int, now: dt.datetime) -> None:
    """Say so, loudly, when the head about to be signed follows older unsigned events.

    The first event of a trail is signed with it, by the same append or
    sequencer run: a trail whose first kept event is older than the policy's
    interval and that has no checkpoint at all had its checkpoints deleted
    (or its key unreadable all along, logged then). Signing its head vouches
    for whatever chain is there, possibly rewritten (decision 0005): the
    operator must check it against the logged checkpoints. Called only when
    the caller found no checkpoint, so it costs nothing otherwise.
    """
    first = AuditEvent.objects.order_by("seq").values_list("seq", "occurred_at").first()
    if first is None:
        return
    first_seq, first_at = first
    interval = dt.timedelta(minutes=checkpoint_every_minutes())
    if seq - first_seq < checkpoint_every_events() and now - first_at < interval:
        return  # a new trail's first checkpoint
    logger.error(
        "audit: events #%d to #%d have no checkpoint at all: signing the head now; if"
        " checkpoints were written before, they were deleted and the chain may have been"
        " rewritten: compare it with the logged 'audit checkpoint' lines",
        first_seq,
        seq,
    )


# --------------------------------------------------------------------------- the sequencer

#: The journal's table and the columns an action writes (decision 0010).
PENDING_TABLE = AuditPendingEvent._meta.db_table
PENDING_COLUMNS = ("occurred_at", *_EVENT_COLUMNS[2:11])
#: Events chained per call of the sequencer's function (a round trip each).
SEQUENCE_BATCH = 1000
_LAST_CHECKPOINT_QUERY = (
    "SELECT event_seq, (EXTRACT(EPOCH FROM signed_at) * 1000000)::bigint"  # noqa: S608 - our names
    f" FROM {AuditCheckpoint._meta.db_table} ORDER BY event_seq DESC LIMIT 1"
)


def pending_insert_query(events: int) -> str:
    """``INSERT`` of ``events`` journal rows; parameters: the time, then :data:`EventFields`."""
    columns = ", ".join(PENDING_COLUMNS)
    row = "(" + ", ".join(["%s"] * len(PENDING_COLUMNS)) + ")"
    return f"INSERT INTO {PENDING_TABLE} ({columns}) VALUES {', '.join([row] * events)}"  # noqa: S608 - our names


def defers_events() -> bool:
    """Whether an action starting now writes its events to the journal (decision 0010).

    On PostgreSQL, for an action that is its own transaction: its events are
    chained by the sequencer right after its commit, so the chain's lock is
    no longer held across the action and its commit (the cap of about 174
    appending transactions per second, ``benchmarks/README.md``). Inside a
    caller's transaction (a test, a read receipt sent while marking read),
    or on SQLite, whose single write lock serialises writers anyway, events
    are chained in the transaction as :func:`do_record_event` does.
    """
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def do_record_event_deferred(
    action: str,
    *,
    actor: User | None = None,
    request: HttpRequest | None = None,
    target: str = "",
    outcome: str = "success",
    detail: Mapping[str, str | int] | None = None,
) -> None:
    """Record an event that is chained once the caller's transaction commits.

    The same checks and fields as :func:`do_record_event`; the event is written
    in the caller's transaction (it commits with the action or not at all) to
    the journal, without the chain's lock, and the sequencer chains it right
    after the commit. Where events are not deferred (:func:`defers_events`,
    SQLite), this is :func:`do_record_event`.
    """
    fields = event_fields(
        action, actor=actor, request=request, target=target, outcome=outcome, detail=detail
    )
    if connection.vendor != "postgresql":
        _append(fields)
        return
    with connection.cursor() as cursor:
        cursor.execute(pending_insert_query(1), [timezone.now(), *fields])
    transaction.on_commit(sequence_after_commit)


#: One sequencer at a time per process; a commit that finds it busy asks it for one more run.
_SEQUENCING = threading.Lock()
_SEQUENCE_AGAIN = threading.Event()


def sequence_after_commit() -> None:
    """Have the journal chained now that an action committed rows to it (decision 0010).

    With a coalescing window (``PLI_AUDIT_SEQUENCER_DELAY_MS``, default 10 ms),
    the process's background sequencer is woken and the caller returns at
    once: the events are chained within that window after the commit,
    together with every other commit of the window, in one round trip. With
    ``0``, the caller chains them itself before it returns
    (:func:`sequence_now`). Either way this never fails the action.
    """
    delay = sequencer_delay_ms()
    if delay == 0:
        sequence_now()
    else:
        _BACKGROUND.wake(delay / 1000)


def stop_background_sequencer(timeout: float = 10.0) -> None:
    """Chain what is pending, then stop this process's background sequencer and
    close its connection (at exit, and for tests that must drop their database)."""
    _BACKGROUND.stop(timeout)


class _BackgroundSequencer:
    """One thread per process that chains the journal a few milliseconds after commits.

    Started by the first commit that wakes it, in the process that commits
    (a gunicorn worker after its fork: a forked child starts its own). It
    waits for a wake, lets the window pass so that other commits join the
    run, clears the wake, then chains: a commit whose wake came before the
    clear was committed before the run starts, and the run sees it; a wake
    after the clear makes another run. At exit (``atexit``: gunicorn's worker
    leaves through ``sys.exit``) it chains what is left without waiting, and
    closes its connection. If a process dies without that, its events wait,
    committed, for the next run anywhere (decision 0010, "Catch-up").
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._wake = threading.Event()
        #: Set by stop(): the thread makes its last run at once (the window cut short,
        #: so that a leaving worker does not wait it out), then ends.
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._registered = False

    def wake(self, delay: float) -> None:
        with self._guard:
            thread = self._thread
            if thread is None or self._pid != os.getpid() or not thread.is_alive():
                self._halt.clear()
                self._pid = os.getpid()
                thread = threading.Thread(
                    target=self._run, args=(delay,), name="pli-audit-sequencer", daemon=True
                )
                self._thread = thread
                thread.start()
                if not self._registered:
                    atexit.register(self.stop)
                    self._registered = True
        self._wake.set()

    def _run(self, delay: float) -> None:
        try:
            while True:
                self._wake.wait()
                self._halt.wait(delay)  # the coalescing window, unless stopping
                self._wake.clear()
                sequence_now()
                # As Django does between requests: a broken connection (the database
                # restarted) is dropped so that the next run connects again.
                connection.close_if_unusable_or_obsolete()
                if self._halt.is_set():
                    return
        finally:
            connection.close()  # this thread's own connection

    def stop(self, timeout: float = 10.0) -> None:
        with self._guard:
            thread = self._thread
            if thread is None or self._pid != os.getpid():
                return
            self._halt.set()
            self._wake.set()
        thread.join(timeout)
        with self._guard:
            if self._thread is thread and not thread.is_alive():
                self._thread = None


_BACKGROUND = _BackgroundSequencer()


def sequence_now() -> None:
    """The sequencer run by whoever must see the journal chained now: never fails the action.

    The action is committed (a ``201`` means stored): if chaining fails here,
    the events stay in the journal, committed, and the next run (another
    action's, ``pli audit verify``, the daily job) chains them.

    Coalesced per process (decision 0010): while one thread runs the
    sequencer, another thread's commit only asks for one more run, which the
    running thread makes before it lets go, so no commit is left unchained
    and a busy worker chains several sends per round trip instead of one.
    The flag is raised before the lock is tried, and checked after it is
    released: whichever order two threads take, one of them runs again.
    """
    _SEQUENCE_AGAIN.set()
    while _SEQUENCE_AGAIN.is_set():
        if not _SEQUENCING.acquire(blocking=False):
            return  # the running sequencer sees the flag and runs once more
        try:
            _SEQUENCE_AGAIN.clear()
            sequence_pending_events()
        except Exception:  # the action stands; its events wait for the next run
            logger.exception("audit: the journal could not be chained now; it will be later")
            return
        finally:
            _SEQUENCING.release()


def sequence_pending_events(batch: int = SEQUENCE_BATCH) -> int:
    """Chain every event of the journal, in ``id`` order; how many (decision 0010).

    Idempotent, and safe from any number of processes at once: on PostgreSQL
    the chaining runs in the database (``pli_audit_sequence``, migration 0003)
    under the chain's advisory lock, so whoever takes the lock after an
    action's commit chains that action's events, or finds them already
    chained by the previous holder. Python then checks every hash the server
    computed against :func:`event_hash`, and writes a checkpoint when one is due.
    """
    every_events, every_us = checkpoint_every_events(), checkpoint_every_minutes() * 60_000_000
    total = 0
    while True:
        if connection.vendor == "postgresql":
            chained, last_checkpoint = _sequence_postgresql(batch)
        else:
            chained, last_checkpoint = _sequence_in_python(batch)
        total += len(chained)
        if chained:
            seq, hash_ = chained[-1]
            now = timezone.now()
            checkpoint_seq, checkpoint_us = last_checkpoint or (None, None)
            if _checkpoint_due(
                seq, micros(now), checkpoint_seq, checkpoint_us, every_events, every_us
            ):
                _write_checkpoint(seq, hash_, now, first=checkpoint_seq is None)
        if len(chained) < batch:
            return total


def _sequence_postgresql(
    batch: int,
) -> tuple[list[tuple[int, str]], tuple[int, int] | None]:
    """One round trip: chain up to ``batch`` events, then read the last checkpoint."""
    with several_statements_cursor() as cursor:
        # Two statements of one query: outside a transaction, one implicit transaction,
        # so the chain's lock is released as soon as the server has run both.
        query = f"SELECT * FROM pli_audit_sequence(%s); {_LAST_CHECKPOINT_QUERY}"  # noqa: S608
        cursor.execute(query, [batch])
        rows = cursor.fetchall()
        cursor.nextset()
        last_checkpoint = cursor.fetchone()
    chained: list[tuple[int, str]] = []
    for row in rows:
        # (seq, µs, actor_id … detail, prev_hash, hash): the server hashed the canonical form.
        if row[12] != event_hash(*row[:12]):
            raise AuditError(f"event #{row[0]}: the database computed another hash than Python")
        chained.append((row[0], row[12]))
    return chained, (last_checkpoint[0], last_checkpoint[1]) if last_checkpoint else None


def _sequence_in_python(
    batch: int,
) -> tuple[list[tuple[int, str]], tuple[int, int] | None]:
    """SQLite (which does not defer events, but may be handed a journal): as an append does."""
    chained: list[tuple[int, str]] = []
    with transaction.atomic():
        pending = list(AuditPendingEvent.objects.order_by("id")[:batch])
        if not pending:
            return chained, None
        seq, hash_, checkpoint_seq, checkpoint_us = _lock_head()
        with connection.cursor() as cursor:
            for event in pending:
                fields: EventFields = (
                    event.actor_id,
                    event.actor_username,
                    event.actor_role,
                    event.action,
                    event.target,
                    event.source_address,
                    event.user_agent,
                    event.outcome,
                    event.detail,
                )
                previous, seq = hash_, seq + 1
                hash_ = event_hash(seq, micros(event.occurred_at), *fields, previous)
                at = connection.ops.adapt_datetimefield_value(event.occurred_at)
                cursor.execute(_insert_query(), [seq, at, *fields, previous, hash_])
                chained.append((seq, hash_))
        AuditPendingEvent.objects.filter(pk__in=[event.pk for event in pending]).delete()
    last = (
        None if checkpoint_seq is None or checkpoint_us is None else (checkpoint_seq, checkpoint_us)
    )
    return chained, last


def pending_events() -> int:
    """Events of the journal not chained yet (``pli audit verify`` reports them)."""
    return AuditPendingEvent.objects.count()


def do_write_checkpoint() -> AuditCheckpoint | None:
    """Sign the current head now if it has no checkpoint yet (for a scheduled job).

    The journal is chained first (the daily job's catch-up, decision 0010).
    """
    sequence_pending_events()
    with transaction.atomic():
        last_seq, last_hash, checkpoint_seq, _ = _lock_head()
        if last_seq in (0, checkpoint_seq):
            return None
        return _write_checkpoint(last_seq, last_hash, timezone.now(), first=checkpoint_seq is None)


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class PurgeResult:
    events: int
    checkpoints: int
    #: The oldest event kept: the event of the oldest kept checkpoint (None: nothing purged).
    kept_from: int | None
    cutoff: dt.datetime


def _database_now() -> dt.datetime:
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        row = cursor.fetchone()
    if row is None:  # pragma: no cover - SELECT now() returns one row
        return timezone.now()
    value: dt.datetime = row[0]
    return value


def purge_expired_events(now: dt.datetime | None = None, *, dry_run: bool = False) -> PurgeResult:
    """Delete the events older than the retention period (REQ-TRACE-RETENTION), idempotent.

    Only up to a checkpoint: the oldest kept event is always the event of a
    kept checkpoint, whose signature vouches for its hash, so the chain stays
    verifiable from there. Events past the retention period but after that
    checkpoint wait for the next daily run. Records an ``audit.purge`` event
    with the counts (not for a dry run).
    """
    now = now or timezone.now()
    if not dry_run:
        sequence_pending_events()  # nothing waits in the journal across the purge
    with transaction.atomic():
        # The PostgreSQL trigger compares with the database's clock: never ask it for more.
        # A dry run deletes nothing, so it may rehearse another day (``pli jobs --now``).
        cutoff = (now if dry_run else min(now, _database_now())) - dt.timedelta(
            days=retention_days()
        )
        first_young = AuditEvent.objects.filter(occurred_at__gte=cutoff).aggregate(seq=Min("seq"))[
            "seq"
        ]
        if first_young is None:
            first_young = (AuditEvent.objects.aggregate(seq=Max("seq"))["seq"] or 0) + 1
        boundary = AuditCheckpoint.objects.filter(event_seq__lte=first_young).aggregate(
            seq=Max("event_seq")
        )["seq"]
        if boundary is None:
            return PurgeResult(0, 0, None, cutoff)
        events = AuditEvent.objects.filter(seq__lt=boundary)
        # Checkpoints of purged events go too, once themselves past the retention period.
        checkpoints = AuditCheckpoint.objects.filter(event_seq__lt=boundary, signed_at__lt=cutoff)
        if dry_run:
            return PurgeResult(events.count(), checkpoints.count(), boundary, cutoff)
        deleted_events = events.delete()[0]
        deleted_checkpoints = checkpoints.delete()[0]
        do_record_event(
            AuditAction.AUDIT_PURGE,
            target=f"audit_event:{boundary}",
            detail={"events": deleted_events, "checkpoints": deleted_checkpoints},
        )
    return PurgeResult(deleted_events, deleted_checkpoints, boundary, cutoff)


# --------------------------------------------------------------------------- export


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_events(since: dt.datetime, until: dt.datetime, output: IO[str]) -> int:
    """Write the events of ``[since, until)`` as JSON lines, in chain order; how many.

    Each line holds every hashed field (``detail`` parsed), so that the chain
    of an export can be checked again from the canonical form documented in
    :mod:`pli.server.audit.chain`.
    """
    count = 0
    rows = (
        AuditEvent.objects.filter(occurred_at__gte=since, occurred_at__lt=until)
        .order_by("seq")
        .values_list(
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
        .iterator(chunk_size=2000)
    )
    for seq, at, actor_id, username, role, action, target, address, agent, *rest in rows:
        outcome, detail, prev_hash, hash_ = rest
        line = {
            "seq": seq,
            "occurred_at": _iso(at),
            "occurred_at_us": micros(at),
            "actor_id": actor_id,
            "actor_username": username,
            "actor_role": role,
            "action": action,
            "target": target,
            "source_address": address,
            "user_agent": agent,
            "outcome": outcome,
            "detail": json.loads(detail) if detail else {},
            "prev_hash": prev_hash,
            "hash": hash_,
        }
        output.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def do_record_export(
    count: int, since: dt.datetime, until: dt.datetime, *, actor: User | None = None
) -> AuditEvent:
    """The export of the trail is itself an operation that is traced (REQ-TRACE)."""
    return do_record_event(
        AuditAction.AUDIT_EXPORT,
        actor=actor,
        detail={
            "events": count,
            "since": since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "until": until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
