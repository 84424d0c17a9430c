#!/usr/bin/env python3
"""Pli login latency with the production Argon2id cost, against bare argon2-cffi calls.

Prints one JSON document on stdout (progress goes to stderr). Each database
is a child process (``--child``) whose environment sets the production
Argon2id parameters (``PLI_ARGON2_MEMORY_KIB=65536``, ``PLI_ARGON2_TIME=3``,
``PLI_ARGON2_PARALLELISM=4``: the defaults of pli.server.settings, which the
test settings lower) *before* Django loads its settings, a fresh data
directory and, for PostgreSQL, a throw-away database.

A login is what a browser does: the passphrase step (``POST
/compte/connexion/``: Argon2id verification, throttles, session key rotation)
then the TOTP step (``POST /compte/connexion/second-facteur/``: the code, the
session registry, the audit event), through Django's test client, so the
whole request stack runs (middleware, sessions, templates) but no socket.
The baseline is ``argon2.PasswordHasher(...).verify`` (and ``.hash``) with
the same parameters, in the same process.

    .venv/bin/python benchmarks/bench_login.py                      # SQLite
    .venv/bin/python benchmarks/bench_login.py --logins 100
    .venv/bin/python benchmarks/bench_login.py \\
        --database-url postgres://postgres@127.0.0.1:5432/postgres  # and PostgreSQL
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

JSON = dict[str, Any]

#: DESIGN "Passwords: Argon2id"; pli.server.settings' defaults (RFC 9106 §4, second option).
PRODUCTION_ARGON2 = {
    "PLI_ARGON2_MEMORY_KIB": "65536",
    "PLI_ARGON2_TIME": "3",
    "PLI_ARGON2_PARALLELISM": "4",
}
ADDRESS = "alice.martin@bench.test"
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a throw-away benchmark account
WARMUP = 3


def log(message: str) -> None:
    print(f"[bench_login] {message}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> JSON:
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "p50_ms": round(rank(0.50), 2),
        "p95_ms": round(rank(0.95), 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


# --------------------------------------------------------------------------- child


def make_account() -> str:
    """An enrolled professional (passphrase, confirmed TOTP, charter); returns the TOTP seed."""
    import pyotp  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415 - Django is set up by the caller

    from pli.server.accounts import factors  # noqa: PLC0415
    from pli.server.accounts.actions import current_charter  # noqa: PLC0415
    from pli.server.accounts.models import CharterAcknowledgement, User  # noqa: PLC0415
    from pli.server.directory.models import Mailbox, Professional  # noqa: PLC0415

    professional = Professional.objects.create(
        identifier_type="8",
        identifier="10100000008",
        national_id="810100000008",
        last_name="Martin",
        first_name="Alice",
        profession_code="10",
        profession="Médecin",
    )
    Mailbox.objects.create(address=ADDRESS, kind="PER", professional=professional)
    user = User.objects.create_user(
        username=ADDRESS, email=ADDRESS, password=PASSPHRASE, professional=professional
    )
    secret = factors.new_totp_seed()
    # Confirmed with the previous step's code: the current one still logs in (RFC 6238 §5.2).
    previous = pyotp.TOTP(secret).at(time.time() - factors.TOTP_PERIOD)
    assert factors.confirm_totp(user, secret, previous)  # noqa: S101 - a benchmark's set-up
    charter = current_charter()
    if charter is not None:
        CharterAcknowledgement.objects.create(user=user, charter=charter)
    user.enrolled_at = timezone.now()
    user.save(update_fields=["enrolled_at"])
    return secret


def _argon2_hasher() -> Any:
    import argon2  # noqa: PLC0415

    return argon2.PasswordHasher(
        time_cost=int(PRODUCTION_ARGON2["PLI_ARGON2_TIME"]),
        memory_cost=int(PRODUCTION_ARGON2["PLI_ARGON2_MEMORY_KIB"]),
        parallelism=int(PRODUCTION_ARGON2["PLI_ARGON2_PARALLELISM"]),
        type=argon2.Type.ID,
    )


def measure(secret: str, logins: int) -> tuple[JSON, JSON]:
    """Logins and bare argon2-cffi calls, interleaved: a busy neighbour slows both alike."""
    import pyotp  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    from pli.server.accounts.models import TotpDevice  # noqa: PLC0415

    totp = pyotp.TOTP(secret)
    hasher = _argon2_hasher()
    encoded = hasher.hash(PASSPHRASE)
    times: dict[str, list[float]] = {
        name: [] for name in ("passphrase_step", "totp_step", "total", "verify", "hash")
    }
    for number in range(WARMUP + logins):
        # A TOTP code is accepted once per time step (RFC 6238 §5.2): forget the last
        # one, outside the timed part, so that every login can use the current code.
        TotpDevice.objects.update(last_step=0)
        code = totp.now()
        client = Client()
        started = time.perf_counter()
        first = client.post("/compte/connexion/", {"username": ADDRESS, "passphrase": PASSPHRASE})
        middle = time.perf_counter()
        second = client.post("/compte/connexion/second-facteur/", {"code": code})
        ended = time.perf_counter()
        if first.status_code != 302 or second.status_code != 302:
            raise SystemExit(
                f"login {number} failed: {first.status_code} then {second.status_code}"
            )
        verify_started = time.perf_counter()
        hasher.verify(encoded, PASSPHRASE)
        hash_started = time.perf_counter()
        hasher.hash(PASSPHRASE)
        hash_ended = time.perf_counter()
        if number >= WARMUP:
            times["passphrase_step"].append((middle - started) * 1000)
            times["totp_step"].append((ended - middle) * 1000)
            times["total"].append((ended - started) * 1000)
            times["verify"].append((hash_started - verify_started) * 1000)
            times["hash"].append((hash_ended - hash_started) * 1000)
    login = {name: percentiles(times[name]) for name in ("passphrase_step", "totp_step", "total")}
    baseline = {name: percentiles(times[name]) for name in ("verify", "hash")}
    return login, baseline


def database_version(vendor: str) -> str:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW server_version" if vendor == "postgresql" else "SELECT sqlite_version()"
        )
        row = cursor.fetchone()
    return str(row[0]) if row else "unknown"


def child(logins: int) -> JSON:
    os.environ["DJANGO_SETTINGS_MODULE"] = "pli.server.settings"
    import django  # noqa: PLC0415

    django.setup()
    from django.conf import settings  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415

    from pli.server.accounts.models import User  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)
    secret = make_account()
    stored = User.objects.get(username=ADDRESS).password
    parameters = stored.split("$")[3]  # argon2$argon2id$v=19$m=65536,t=3,p=4$salt$hash
    expected = "m={PLI_ARGON2_MEMORY_KIB},t={PLI_ARGON2_TIME},p={PLI_ARGON2_PARALLELISM}".format(
        **PRODUCTION_ARGON2
    )
    if not stored.startswith("argon2$argon2id$") or parameters != expected:
        raise SystemExit(f"the stored hash does not use the production parameters: {parameters}")
    log(
        f"{connection.vendor}: {logins} logins (+{WARMUP} warm-up), hash {parameters},"
        " each followed by a bare argon2-cffi verify and hash"
    )
    login, baseline = measure(secret, logins)
    return {
        "database": connection.vendor,
        "database_version": database_version(connection.vendor),
        "hash_parameters": parameters,
        "argon2_settings": {
            "memory_kib": settings.PLI_ARGON2_MEMORY_KIB,
            "time": settings.PLI_ARGON2_TIME,
            "parallelism": settings.PLI_ARGON2_PARALLELISM,
        },
        "login": login,
        "argon2_cffi": baseline,
        "overhead_vs_verify": {
            "passphrase_step_p50_ms": round(
                login["passphrase_step"]["p50_ms"] - baseline["verify"]["p50_ms"], 2
            ),
            "login_p50_ms": round(login["total"]["p50_ms"] - baseline["verify"]["p50_ms"], 2),
            "login_p50_ratio": round(login["total"]["p50_ms"] / baseline["verify"]["p50_ms"], 3),
        },
    }


# --------------------------------------------------------------------------- parent


def machine() -> JSON:
    import django  # noqa: PLC0415

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "argon2_cffi": importlib.metadata.version("argon2-cffi"),
    }


def run_case(name: str, env: dict[str, str], logins: int) -> JSON:
    log(f"{name}: child process")
    completed = subprocess.run(
        [sys.executable, __file__, "--child", "--logins", str(logins)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        return {
            "error": f"child exited with {completed.returncode}",
            "stderr": completed.stderr[-2000:],
        }
    result: JSON = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def postgres_case(env: dict[str, str], url: str, logins: int) -> JSON:
    import psycopg  # noqa: PLC0415 - only when PostgreSQL is benchmarked

    name = f"pli_bench_login_{os.getpid()}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        return {"error": f"cannot create the database {name}: {error}"}
    try:
        target = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
        return run_case("postgresql", {**env, "PLI_DATABASE_URL": target}, logins)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=50, help="timed logins per database")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL administrator connection: a throw-away database is created"
        " and dropped there, and PostgreSQL is measured after SQLite",
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.logins < 1:
        parser.error("--logins must be at least 1")

    if args.child:
        print(json.dumps(child(args.logins)))
        return

    cases: JSON = {}
    with tempfile.TemporaryDirectory(prefix="pli-bench-login-") as work:
        # Only our own PLI_* settings reach the children: the production Argon2id cost,
        # whatever the caller's environment says.
        base = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
        base.update(PRODUCTION_ARGON2)
        base.update(
            {
                "PLI_SECRET_KEY": "bench-login-secret-key-" + "x" * 32,
                "PLI_ALLOWED_HOSTS": "testserver",
                "PLI_EMAIL": "file",
                "PLI_LOG_LEVEL": "WARNING",
            }
        )
        if not args.skip_sqlite:
            data = Path(work) / "sqlite-data"
            (data / "static").mkdir(mode=0o700, parents=True)  # whitenoise's STATIC_ROOT
            cases["sqlite"] = run_case("sqlite", {**base, "PLI_DATA_DIR": str(data)}, args.logins)
        if args.database_url:
            data = Path(work) / "postgresql-data"
            (data / "static").mkdir(mode=0o700, parents=True)  # whitenoise's STATIC_ROOT
            cases["postgresql"] = postgres_case(
                {**base, "PLI_DATA_DIR": str(data)}, args.database_url, args.logins
            )
    print(
        json.dumps(
            {
                "benchmark": "login",
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "argon2": PRODUCTION_ARGON2,
                "logins": args.logins,
                "warmup": WARMUP,
                "cases": cases,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
