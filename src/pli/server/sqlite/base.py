"""Django's SQLite backend, with the writers of one database file waiting in one queue.

SQLite lets one writer at a time hold a database (WAL mode: readers go on).
Pli's write transactions start with ``BEGIN IMMEDIATE`` (``config.database``),
and a writer that finds the file taken retries from SQLite's busy handler,
which sleeps between tries: 1, 2, 5 … then 25, 50 and 100 ms. With two
gunicorn workers of four threads each, a send that lost a few rounds waited
hundreds of milliseconds after the file was free again (issue 5's benchmark:
p99 of 340 to 660 ms on SQLite while the median was 40 ms).

Here a write transaction first takes an exclusive ``flock`` on a file beside
the database (``<database>.writers``), one open file per connection, so
threads of one process and other processes queue in the kernel and the next
one starts as soon as the previous one commits or rolls back; ``BEGIN
IMMEDIATE`` then finds the database free. The lock is released on commit,
rollback and close, and by the kernel if the process dies. Writes outside a
transaction (autocommit) and other programs keep SQLite's own busy handler.
An in-memory database (the tests' default) has no file, hence no queue.

A thread never waits for itself: one that already holds the queue through
another connection (a second connection opened inside its own transaction)
gets "database is locked" at once, as SQLite's own handler would give it
after its timeout, instead of waiting for ever. Every other writer waits its
turn, however long (a first directory import).
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

#: Which thread of this process holds each queue (by the ``.writers`` file's device and
#: inode), to refuse at once a thread that would wait for itself.
_holders: dict[tuple[int, int], int] = {}
_holders_lock = threading.Lock()
# A child process holds none of its parent's queues (its threads are gone).
os.register_at_fork(after_in_child=_holders.clear)


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's private transaction hooks (not in django-stubs): hence the ignores below.
    _writers: int | None = None  # the queue's file, open for this connection
    _holding = False
    _queue: tuple[int, int] = (0, 0)  # the queue file's device and inode

    def _writers_file(self) -> int | None:
        if self._writers is None and not self.is_in_memory_db():
            path = f"{self.settings_dict['NAME']}.writers"
            self._writers = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            status = os.fstat(self._writers)
            self._queue = (status.st_dev, status.st_ino)
        return self._writers

    def _take_writers_lock(self) -> None:
        descriptor = self._writers_file()
        if descriptor is None or self._holding:
            return
        me = threading.get_ident()
        with _holders_lock:
            if _holders.get(self._queue) == me:
                # This thread holds the queue through another connection: its turn would
                # never come. What SQLite's busy handler gives when its timeout runs out.
                raise OperationalError("database is locked")
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with _holders_lock:
            _holders[self._queue] = me
        self._holding = True

    def _release_writers_lock(self) -> None:
        if self._holding and self._writers is not None:
            self._holding = False
            with _holders_lock:  # before the unlock: the next holder records itself after it
                _holders.pop(self._queue, None)
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    def _start_transaction_under_autocommit(self) -> None:
        self._take_writers_lock()
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._release_writers_lock()
            raise

    def _commit(self) -> Any:
        try:
            return super()._commit()  # type: ignore[misc]
        finally:
            self._release_writers_lock()

    def _rollback(self) -> Any:
        try:
            return super()._rollback()  # type: ignore[misc]
        finally:
            self._release_writers_lock()

    def _close(self) -> Any:
        try:
            return super()._close()  # type: ignore[misc]
        finally:
            self._release_writers_lock()
            if self._writers is not None:
                os.close(self._writers)
                self._writers = None
