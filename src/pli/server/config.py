"""The one place that reads Pli's settings from the environment (CONVENTIONS: one door).

Every setting is ``PLI_<NAME>``; a secret may also come from the file named
by ``PLI_<NAME>_FILE``. A missing or contradictory setting stops start-up
with a message naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit


class ConfigurationError(Exception):
    """Start-up cannot go on; the message names the setting."""

    code = "configuration_error"


def setting(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"PLI_{name}")
    return value if value not in (None, "") else default


def positive_setting(name: str, default: int) -> int:
    """``PLI_<name>``, a whole number of at least 1; a configuration error naming it otherwise."""
    raw = setting(name, str(default)) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"PLI_{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ConfigurationError(f"PLI_{name} must be at least 1, not {value}")
    return value


def flag(name: str, default: bool = False) -> bool:
    value = setting(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"PLI_{name} must be true or false, not {value!r}")


def secret(name: str, *, fallback_file: Path | None = None) -> str:
    """``PLI_<NAME>``, or the content of ``PLI_<NAME>_FILE`` (or of ``fallback_file``)."""
    direct = setting(name)
    file_name = setting(f"{name}_FILE")
    if direct and file_name:
        raise ConfigurationError(f"set PLI_{name} or PLI_{name}_FILE, not both")
    if direct:
        return direct
    path = Path(file_name) if file_name else fallback_file
    if path is not None and (file_name or path.exists()):
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigurationError(
                f"PLI_{name}_FILE: cannot read {path}: {error.strerror}"
            ) from None
        if not value:
            raise ConfigurationError(f"PLI_{name}_FILE: {path} is empty")
        return value
    raise ConfigurationError(
        f"PLI_{name} is not set (give it, or PLI_{name}_FILE, or run `pli init`)"
    )


def data_dir() -> Path:
    return Path(setting("DATA_DIR", "pli-data") or "pli-data").resolve()


def database(data: Path) -> dict[str, object]:
    """SQLite in the data directory by default; PostgreSQL from ``PLI_DATABASE_URL``."""
    url = setting("DATABASE_URL")
    if url is None:
        return {
            # Django's, with one queue for writers (pli/server/sqlite/base.py).
            "ENGINE": "pli.server.sqlite",
            "NAME": str(data / "pli.sqlite3"),
            # Kept between requests, as on PostgreSQL: opening a connection runs the
            # PRAGMAs below, and closing the last one checkpoints the WAL (about 3 ms a
            # request on the messaging benchmark's sends).
            "CONN_MAX_AGE": 60,
            # WAL: readers do not block the writer (one machine, several workers).
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
            },
            # Django's default for SQLite, said outright: pytest-django recognises the
            # SQLite engine by Django's module path only, not this one.
            "TEST": {"NAME": ":memory:"},
        }
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError("PLI_DATABASE_URL must be a postgres:// URL")
    name = parts.path.lstrip("/")
    if not name:
        raise ConfigurationError("PLI_DATABASE_URL names no database")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(name),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or "") or setting("DATABASE_PASSWORD", "") or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": 60,
        # Values bound by the server, and a statement run 5 times in a connection
        # prepared there: PostgreSQL then plans it once, not at every request (a
        # send's statements cost about 1 ms of planning; issue 5's ingest rate).
        # PLI_DATABASE_PREPARED=false for a pooler that cannot carry prepared
        # statements (PgBouncer in transaction mode before 1.21).
        "OPTIONS": {
            "server_side_binding": True,
            "prepare_threshold": 5 if flag("DATABASE_PREPARED", default=True) else None,
        },
    }
