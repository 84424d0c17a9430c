"""Benchmark-only Django settings *and* URLconf for ``bench_audit.py`` (never deployed).

Pli's own settings, plus two views that each stand for a request doing one
small write in a transaction; the second also appends its audit event there,
as every action of Pli does (REQ-TRACE). gunicorn serves them with
``DJANGO_SETTINGS_MODULE=audit_server`` and the application
``django.core.wsgi:get_wsgi_application()``.
"""

from __future__ import annotations

import random

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path

from pli.server.settings import *  # noqa: F403 - Pli's settings, unchanged but the URLs

ROOT_URLCONF = "audit_server"

#: The rows the requests update (made by ``bench_audit.py --child setup``).
WORK_TABLE = "bench_audit_work"
WORK_ROWS = 1000


def _write() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {WORK_TABLE} SET n = n + 1 WHERE id = %s",  # noqa: S608 - constant name
            [random.randint(1, WORK_ROWS)],
        )


def work(request: HttpRequest) -> HttpResponse:
    """A request that writes one row: the baseline."""
    with transaction.atomic():
        _write()
    return HttpResponse(b"ok", content_type="text/plain")


def work_and_append(request: HttpRequest) -> HttpResponse:
    """The same request, with its audit event appended in its transaction."""
    from pli.server.audit.actions import do_record_event  # noqa: PLC0415 - apps are ready now

    with transaction.atomic():
        _write()
        do_record_event(
            "auth.login", request=request, target="session:1", detail={"method": "bench"}
        )
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [
    path("work/", work),
    path("append/", work_and_append),
]
