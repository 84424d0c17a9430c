"""gunicorn's master for ``pli serve`` and ``pli demo``: a process that imports almost nothing.

``pli serve`` replaces itself with ``python -m pli.server.serve`` (same
process id, for a supervisor) once the database is prepared, so that the
master that forks and watches the workers holds neither Django nor the
command line's modules (click, the cryptography of the client commands):
about 20 MB instead of 45 or, after ``pli demo``'s set-up, 100. Every
process of the server counts in the 200 MB target of the messaging
benchmark (issue 5, ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

#: The access log's line. Query strings can hold search terms: the path only.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


def access_logger_class() -> type:
    """gunicorn's logger, computing only the fields of :data:`ACCESS_LOG_FORMAT`.

    gunicorn builds, for every request, a dictionary of every field it knows
    (a formatted time, every request and response header, every WSGI environ
    variable) before formatting the line: a few per cent of a worker's time
    on the messaging benchmark (issue 5). The line is the same
    (``tests/test_serve.py`` compares them).
    """
    from gunicorn.glogging import Logger  # noqa: PLC0415

    class AccessLogger(Logger):  # type: ignore[misc]
        def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
            status = resp.status
            if isinstance(status, str):
                status = status.split(None, 1)[0]
            return {
                "h": environ.get("REMOTE_ADDR", "-"),
                "m": environ.get("REQUEST_METHOD"),
                "U": environ.get("PATH_INFO"),
                "s": status,
                "B": getattr(resp, "sent", None),
                "M": request_time.seconds * 1000 + int(request_time.microseconds / 1000),
            }

    return AccessLogger


def balanced_thread_worker() -> type:
    """gunicorn's ``gthread`` worker, taking a new connection only while one of its
    threads is free.

    Every worker listens on the same socket and gthread accepts whenever it
    is woken, up to ``worker_connections`` (1,000): when several clients
    connect at once, the first worker to wake can take them all, and with
    keep-alive they stay there. The messaging benchmark (issue 5) saw it: its
    eight connections on one worker, held to one core by its interpreter lock
    at 88 %, while the other worker sat idle and the machine was a quarter
    unused (``benchmarks/README.md``). Here a worker whose threads are all
    busy leaves a new connection in the kernel's queue, for a worker with a
    free thread. Idle keep-alive connections do not count: a worker holding
    browsers' idle connections still takes new ones. gunicorn's loop reads
    ``worker_connections`` before each wait, so the limit is that attribute,
    computed (``tests/test_serve.py`` checks the balance on a live server).
    """
    from gunicorn.workers.gthread import ThreadWorker  # noqa: PLC0415

    class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
        @property
        def worker_connections(self) -> int:
            idle = len(self.keepalived_conns) + len(self.pending_conns)
            return min(self._connection_cap, idle + int(self.cfg.threads))

        @worker_connections.setter
        def worker_connections(self, value: int) -> None:
            # ThreadWorker.__init__ sets it from the configuration: the overall cap.
            self._connection_cap = value

    return BalancedThreadWorker


def warm_worker() -> Any:
    """The WSGI application, with what its first request would otherwise do done now.

    Called in each worker after the fork, before it takes a request: Django's
    set-up, every view module (the URLconf, which Django imports at the first
    request) and the passphrase check's timing-equaliser hash (an Argon2id run,
    64 MiB while it runs; ``accounts/hashers.py``). Without this, a worker's
    first request paid for all of it: a slower first answer, and a worker 64
    MiB larger for a moment in the middle of whatever it served first (the 1 GiB
    upload of issue 5's benchmark, in some runs: decision 0015).
    """
    # Django's set-up first (DJANGO_SETTINGS_MODULE, django.setup): the modules
    # imported after it read its settings and models.
    from pli.server.wsgi import application  # noqa: PLC0415

    wrapped = application
    from django.urls import get_resolver  # noqa: PLC0415

    from pli.server.accounts.hashers import timing_equaliser_hash  # noqa: PLC0415
    from pli.server.tls import PeerCertificateMiddleware  # noqa: PLC0415

    get_resolver().url_patterns  # noqa: B018 - imports every view module now
    timing_equaliser_hash()
    return PeerCertificateMiddleware(wrapped)


def run(bind: str, workers: int, application: Callable[[], Any] = warm_worker) -> None:
    """gunicorn, in this process (never Django's development server).

    ``application`` gives each worker its WSGI application (Pli's; the messaging
    benchmark passes its floor application, served the same way).

    The application is loaded by each worker (``load()``), not by the master.
    Workers are ``gthread``, 4 threads each, ``PLI_WORKERS`` (default 2) of
    them: on 2 cores, two processes use both cores for Python while a request
    waits for the database or a ``fsync`` in another thread (decision 0010).
    A worker takes a new connection only while it has a free thread
    (:func:`balanced_thread_worker`).
    """
    from gunicorn.app.base import BaseApplication  # noqa: PLC0415

    from pli.server.tls import gunicorn_tls_options  # noqa: PLC0415

    # TLS terminated by Pli itself (PLI_TLS_CERT_FILE/KEY_FILE), asking for an optional
    # client certificate when PLI_CLIENT_CA_FILE is set (REQ-AUTH-CARD). Read before the
    # workers fork, so that a bad configuration stops here.
    tls = gunicorn_tls_options()

    class PliApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", balanced_thread_worker())
            self.cfg.set("threads", 4)
            self.cfg.set("accesslog", "-")
            self.cfg.set("access_log_format", ACCESS_LOG_FORMAT)
            self.cfg.set("logger_class", access_logger_class())
            for name, value in tls.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            # In the worker (no preload_app): Django is imported there, after the fork.
            return application()

    PliApplication().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pli serve", description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", required=True, type=int)
    arguments = parser.parse_args(argv)
    run(arguments.bind, arguments.workers)


if __name__ == "__main__":
    main()
