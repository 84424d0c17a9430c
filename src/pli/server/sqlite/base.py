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

Within a process, threads first queue on a lock of that process (one per
database file), which they wait for at most the connection's ``timeout``
(SQLite's busy timeout, 5 s by default): past it, the write fails with
"database is locked", as SQLite's own busy handler would, instead of waiting
for ever (a thread that opened a second connection inside its own
transaction would otherwise wait for itself). Only that lock's holder then
waits on the ``flock``, for the other processes' writers.
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

#: Seconds a writer waits in its process's queue when the settings give no ``timeout``
#: (the default of Python's ``sqlite3.connect``).
DEFAULT_TIMEOUT = 5.0

_process_queues: dict[str, threading.Lock] = {}
_process_queues_lock = threading.Lock()


def _process_queue(path: str) -> threading.Lock:
    """The lock this process's writers of the database file ``path`` take first."""
    with _process_queues_lock:
        return _process_queues.setdefault(path, threading.Lock())


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
        if descriptor is None or self._holding:
            return
        queue = _process_queue(str(self.settings_dict["NAME"]))
        timeout = float(self.settings_dict["OPTIONS"].get("timeout", DEFAULT_TIMEOUT))
        if not queue.acquire(timeout=timeout):
            # What SQLite's busy handler gives when its timeout runs out.
            raise OperationalError("database is locked")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            queue.release()
            raise
        self._holding = True

    def _release_writers_lock(self) -> None:
        if self._holding and self._writers is not None:
            self._holding = False
            try:
                fcntl.flock(self._writers, fcntl.LOCK_UN)
            finally:
                _process_queue(str(self.settings_dict["NAME"])).release()

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
