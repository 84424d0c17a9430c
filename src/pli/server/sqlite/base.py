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
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's private transaction hooks (not in django-stubs): hence the ignores below.
    _writers: int | None = None  # the queue's file, open for this connection
    _holding = False

    def _writers_file(self) -> int | None:
        if self._writers is None and not self.is_in_memory_db():
            path = f"{self.settings_dict['NAME']}.writers"
            self._writers = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._writers

    def _take_writers_lock(self) -> None:
        descriptor = self._writers_file()
        if descriptor is not None and not self._holding:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self._holding = True

    def _release_writers_lock(self) -> None:
        if self._holding and self._writers is not None:
            self._holding = False
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
