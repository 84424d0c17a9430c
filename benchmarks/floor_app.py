"""The stack's floor for the messaging benchmark: gunicorn and Django with none of Pli's work.

``bench_messaging.py`` serves this module through ``floor_serve.py``, that is
``pli.server.serve.run`` (the same gunicorn master, gthread workers and
threads, access log format and logger as ``pli serve``), and loads it with the
same clients and the same request bodies, in the same run, so that Pli's
figures can be read beside what the framework alone does on the machine of
the moment (the quality bar: every figure beside the same run's baseline).

* ``GET /api/uploads/limits``: Django's request and response, a small JSON
  answer; no middleware, no session, no database.
* ``POST /api/messages``: the body parsed as JSON, the envelope decoded from
  base64, then, in one transaction on the same database settings as Pli
  (``pli.server.config.database``: server-side binding and prepared
  statements on PostgreSQL, the writer queue on SQLite), the envelope stored in
  one row and one row per recipient: the least a durable send writes. No
  authentication, no CSRF check, no directory lookup, no envelope inspection,
  no audit event: everything Pli adds is missing here on purpose.

The tables are created by the benchmark before the server starts
(``bench_messaging.FLOOR_SCHEMA``).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import django
from django.conf import settings

from pli.server.config import database

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ["PLI_SECRET_KEY"],
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={"default": database(Path(os.environ["PLI_DATA_DIR"]))},
    USE_TZ=True,
    USE_I18N=False,
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    # A failing request is written to stderr with its traceback, which the benchmark
    # reports (Django's default sends it only to the site's admins, and there are none).
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
    },
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def limits(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"inline_max_bytes": 10 * 1024 * 1024})


def send(request: HttpRequest) -> JsonResponse:
    data: dict[str, Any] = json.loads(request.body)
    envelope = base64.b64decode(data["envelope"], validate=True)
    recipients: list[str] = data["recipients"]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO floor_message (envelope) VALUES (%s) RETURNING id", [envelope])
        row = cursor.fetchone()
        assert row is not None  # noqa: S101 - INSERT … RETURNING gives one row
        message_id = row[0]
        # One placeholder pair per recipient: values are bound, never formatted in.
        cursor.execute(
            "INSERT INTO floor_delivery (message_id, recipient) VALUES "  # noqa: S608
            + ", ".join(["(%s, %s)"] * len(recipients)),
            [value for recipient in recipients for value in (message_id, recipient)],
        )
    return JsonResponse({"id": message_id}, status=201)


urlpatterns = [path("api/uploads/limits", limits), path("api/messages", send)]
application = get_wsgi_application()
