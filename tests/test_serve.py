"""``pli serve``'s gunicorn: the access log's line, computed from its own fields only."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from pli.server.serve import ACCESS_LOG_FORMAT, access_logger_class


def line(logger_class: type, response: Any, request: Any, environ: dict[str, Any]) -> str:
    logger = logger_class(Config())
    took = dt.timedelta(seconds=1, microseconds=234_567)
    atoms = logger.atoms_wrapper_class(logger.atoms(response, request, environ, took))
    return str(ACCESS_LOG_FORMAT % atoms)


@pytest.mark.parametrize(
    ("status", "sent"), [("201 Created", 1234), ("404 Not Found", None), (200, 0)]
)
def test_the_access_log_line_is_gunicorns_own(status: Any, sent: int | None) -> None:
    response = SimpleNamespace(
        status=status, sent=sent, headers=[("Set-Cookie", "sessionid=SECRET-SESSION")]
    )
    request = SimpleNamespace(headers=[("COOKIE", "sessionid=SECRET-SESSION")])
    environ = {
        "REMOTE_ADDR": "192.0.2.7",
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/directory",
        "QUERY_STRING": "q=Dupont",
        "RAW_URI": "/api/directory?q=Dupont",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_COOKIE": "sessionid=SECRET-SESSION",
    }
    ours = line(access_logger_class(), response, request, environ)
    assert ours == line(Logger, response, request, environ)
    assert ours.startswith('192.0.2.7 "GET /api/directory" ') and ours.endswith(" 1234ms")
    # A search term (query string) and the session never reach the log.
    assert "Dupont" not in ours and "SECRET" not in ours
