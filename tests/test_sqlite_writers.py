"""SQLite's writers wait in one queue (``pli.server.sqlite``), not in the busy handler's sleeps.

The lock is held from ``BEGIN IMMEDIATE`` to the commit or the rollback, by
one connection at a time, across threads and processes (issue 5: p99 of the
SQLite ingest).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.utils import ConnectionHandler, OperationalError


@pytest.fixture
def database(tmp_path: Path, django_db_blocker: Any) -> Iterator[tuple[ConnectionHandler, Path]]:
    """Two connections to a database file of its own (not the tests' in-memory one)."""
    with django_db_blocker.unblock():
        yield from _database(tmp_path)


def _database(tmp_path: Path) -> Iterator[tuple[ConnectionHandler, Path]]:
    name = tmp_path / "queue.sqlite3"
    handler = ConnectionHandler(
        {
            alias: {
                "ENGINE": "pli.server.sqlite",
                "NAME": str(name),
                "OPTIONS": {"transaction_mode": "IMMEDIATE"},
            }
            for alias in ("default", "a", "b")
        }
    )
    with handler["a"].cursor() as cursor:
        cursor.execute("CREATE TABLE counter (n INTEGER)")
        cursor.execute("INSERT INTO counter VALUES (0)")
    yield handler, Path(f"{name}.writers")
    handler["a"].close()


def _free(lock_file: Path, mode: int = fcntl.LOCK_EX) -> bool:
    """Whether another open file description could take the writers' lock now
    (``mode`` LOCK_SH: even a shared lock, which only an exclusive holder refuses)."""
    descriptor = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # closing releases it
    return True


def _begin(connection: Any) -> None:
    # What transaction.atomic does on entering its outermost block.
    connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)


def test_the_lock_is_held_from_begin_to_commit_or_rollback(
    database: tuple[ConnectionHandler, Path],
) -> None:
    handler, lock_file = database
    connection = handler["a"]
    _begin(connection)
    assert not _free(lock_file)
    assert not _free(lock_file, fcntl.LOCK_SH)  # held exclusively: one writer at a time
    with connection.cursor() as cursor:
        cursor.execute("UPDATE counter SET n = n + 1")
    connection.commit()
    connection.set_autocommit(True)
    assert _free(lock_file)
    _begin(connection)
    assert not _free(lock_file)
    connection.rollback()  # a refused action: the next writer must not wait for it
    connection.set_autocommit(True)
    assert _free(lock_file)
    _begin(connection)
    connection.close()  # a connection dropped mid-transaction
    assert _free(lock_file)


def test_a_second_writer_waits_for_the_first_then_goes_on(
    database: tuple[ConnectionHandler, Path],
) -> None:
    handler, lock_file = database
    first = handler["a"]
    _begin(first)
    with first.cursor() as cursor:
        cursor.execute("UPDATE counter SET n = n + 1")
    waited: list[float] = []

    def second_writer() -> None:
        second = handler["b"]
        started = time.perf_counter()
        _begin(second)  # blocks in the queue, not in SQLite's busy handler
        waited.append(time.perf_counter() - started)
        with second.cursor() as cursor:
            cursor.execute("UPDATE counter SET n = n + 10")
        second.commit()
        second.set_autocommit(True)
        second.close()

    # A ConnectionHandler's connections belong to their thread: "b" is made in it.
    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive() and not waited  # still queued behind the first
    first.commit()
    first.set_autocommit(True)
    thread.join(timeout=10)
    assert waited and waited[0] >= 0.25
    with first.cursor() as cursor:
        cursor.execute("SELECT n FROM counter")
        assert cursor.fetchone() == (11,)
    assert _free(lock_file)


def test_a_thread_that_holds_the_queue_is_refused_a_second_turn_at_once(
    database: tuple[ConnectionHandler, Path],
) -> None:
    """A second connection of the thread that holds the queue would wait for itself for
    ever: "database is locked" at once, as from SQLite's own handler after its timeout.
    The first connection's transaction goes on, and the queue is free after it."""
    handler, lock_file = database
    outcome: list[object] = []

    def writer_with_two_connections() -> None:
        # Made in this thread: a ConnectionHandler's connections belong to their thread.
        first, second = handler["a"], handler["b"]
        _begin(first)
        started = time.perf_counter()
        try:
            _begin(second)
        except OperationalError as error:
            outcome.extend([str(error), time.perf_counter() - started, second.get_autocommit()])
        with first.cursor() as cursor:
            cursor.execute("UPDATE counter SET n = n + 1")
        first.commit()
        first.set_autocommit(True)
        _begin(second)  # its turn now
        second.rollback()
        second.set_autocommit(True)
        first.close()
        second.close()

    # In a thread of its own, so that a regression shows as a failure, not as a hang.
    thread = threading.Thread(target=writer_with_two_connections, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the thread waits for itself"
    message, waited, autocommit = outcome
    assert message == "database is locked" and float(str(waited)) < 1
    assert autocommit is True  # nothing begun on the second connection
    assert _free(lock_file)
    with handler["a"].cursor() as cursor:
        cursor.execute("SELECT n FROM counter")
        assert cursor.fetchone() == (1,)
