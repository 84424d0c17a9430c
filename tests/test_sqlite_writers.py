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

#: The test databases' busy timeout: how long a writer waits in its process's queue.
TIMEOUT = 1.0


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
                "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": TIMEOUT},
            }
            for alias in ("default", "a", "b")
        }
    )
    with handler["a"].cursor() as cursor:
        cursor.execute("CREATE TABLE counter (n INTEGER)")
        cursor.execute("INSERT INTO counter VALUES (0)")
    yield handler, Path(f"{name}.writers")
    handler["a"].close()


def _free(lock_file: Path) -> bool:
    """Whether another open file description could take the writers' lock now."""
    descriptor = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
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


def test_a_writer_of_the_same_process_gives_up_after_the_timeout(
    database: tuple[ConnectionHandler, Path],
) -> None:
    """Past the busy timeout, "database is locked", as from SQLite's own handler: never a
    wait without end (a thread that opened a second connection inside its own
    transaction would wait for itself)."""
    handler, lock_file = database
    first = handler["a"]
    _begin(first)
    outcome: list[object] = []

    def second_writer() -> None:
        second = handler["b"]  # made in this thread: connections belong to their thread
        started = time.perf_counter()
        try:
            _begin(second)
        except OperationalError as error:
            outcome.extend([str(error), time.perf_counter() - started, second.get_autocommit()])
        second.close()

    thread = threading.Thread(target=second_writer, daemon=True)
    thread.start()
    thread.join(timeout=TIMEOUT + 3)
    alive = thread.is_alive()
    first.rollback()  # lets a writer still queued in the kernel go, whatever happened
    first.set_autocommit(True)
    assert not alive, "the second writer is still waiting"
    message, waited, autocommit = outcome
    assert message == "database is locked" and TIMEOUT <= float(str(waited)) < TIMEOUT + 2
    assert autocommit is True  # nothing begun
    assert _free(lock_file)
