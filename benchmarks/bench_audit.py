#!/usr/bin/env python3
"""Audit trail benchmark: appends while gunicorn serves requests, and verification of the chain.

Prints one JSON document on stdout (progress goes to stderr). For each
database (SQLite, PostgreSQL):

* **serving**: a real gunicorn (gthread, as ``pli serve``) serves
  ``benchmarks/audit_server.py``: ``/work/`` updates one row in a
  transaction, ``/append/`` does the same and appends its audit event in that
  transaction. Sequential requests, alternating, give the latency each adds
  (with vs without the append); then client threads load ``/append/`` (and
  ``/work/``, for comparison) for a few seconds: events appended per second
  while requests are served. The trail they wrote is then verified.
* **in process**: the same two transactions timed inside one process, with no
  HTTP: the append's own cost.
* **verification**: a fresh database gets N events (default 1,000,000) by bulk
  inserts, the chain computed in Python and a signed checkpoint every 1,000;
  then ``verify_trail`` proves them, timed.

    .venv/bin/python benchmarks/bench_audit.py                 # 1,000,000 events to verify
    .venv/bin/python benchmarks/bench_audit.py --quick         # 100,000, shorter loads
    .venv/bin/python benchmarks/bench_audit.py --events 200000 --skip-postgres
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

JSON = dict[str, Any]

HERE = Path(__file__).resolve().parent
DEFAULT_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
CHECKPOINT_EVERY = 1000
MB = 1_000_000
TARGETS = {"verify_1m_events_s_max": 10.0, "append_added_ms_max": 1.0}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    """The 1-minute load average: the machine is shared, so every figure goes with it."""
    return round(os.getloadavg()[0], 2)


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` value (VmHWM: this process's own peak RSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) * 1024 / MB, 1)
    return 0.0


def percentiles(values: list[float]) -> JSON:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
    }


# --------------------------------------------------------------------------- children


def django_setup() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "audit_server"
    sys.path.insert(0, str(HERE))
    import django  # noqa: PLC0415 - configured only in the children

    django.setup()


def child_setup() -> JSON:
    """Migrate an empty database, and make the rows the requests update."""
    django_setup()
    from django.core.management import call_command  # noqa: PLC0415
    from django.db import connection, transaction  # noqa: PLC0415

    from audit_server import WORK_ROWS, WORK_TABLE  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {WORK_TABLE} (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)")
        cursor.executemany(
            f"INSERT INTO {WORK_TABLE} (id, n) VALUES (%s, 0)",  # noqa: S608 - constant name
            [(n,) for n in range(1, WORK_ROWS + 1)],
        )
    return {"database": connection.vendor, "version": database_version()}


def database_version() -> str:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW server_version"
            if connection.vendor == "postgresql"
            else "SELECT sqlite_version()"
        )
        row = cursor.fetchone()
    return str(row[0]) if row else "unknown"


def database_mb() -> float:
    from django.conf import settings  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            row = cursor.fetchone()
        return round(int(row[0]) / MB, 1) if row else 0.0
    name = Path(str(settings.DATABASES["default"]["NAME"]))
    return round(sum(p.stat().st_size for p in name.parent.glob(name.name + "*")) / MB, 1)


def child_measure(appends: int) -> JSON:
    """The append's own cost in one process, then the verification of the served trail."""
    django_setup()
    from django.db import transaction  # noqa: PLC0415

    from audit_server import _write  # noqa: PLC0415
    from pli.server.audit.actions import do_record_event  # noqa: PLC0415
    from pli.server.audit.chain import verify_trail  # noqa: PLC0415
    from pli.server.audit.keys import operator_verifying_key  # noqa: PLC0415

    started = time.perf_counter()
    served = verify_trail([operator_verifying_key()])
    served_seconds = time.perf_counter() - started

    without: list[float] = []
    with_append: list[float] = []
    for number in range(appends + 100):
        began = time.perf_counter()
        with transaction.atomic():
            _write()
        middle = time.perf_counter()
        with transaction.atomic():
            _write()
            do_record_event("auth.login", target="session:1", detail={"method": "bench"})
        ended = time.perf_counter()
        if number >= 100:  # warm-up: connections, caches, the key
            without.append((middle - began) * 1000)
            with_append.append((ended - middle) * 1000)
    base, appended = percentiles(without), percentiles(with_append)
    return {
        "served_trail": {
            "events": served.events,
            "checkpoints": served.checkpoints,
            "verified_s": round(served_seconds, 3),
        },
        "in_process": {
            "transactions": appends,
            "write_only": base,
            "write_and_append": appended,
            "added_median_ms": round(appended["median_ms"] - base["median_ms"], 3),
            "added_mean_ms": round(appended["mean_ms"] - base["mean_ms"], 3),
        },
    }


_AGENTS = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/131.0 Safari/537.36"
    ),
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "pli/0.1.0 (python-httpx)",
)
_ACTIONS = (
    ("auth.login", "session", {"method": "password+totp"}),
    ("auth.login_failed", "user", {"factor": "password"}),
    ("accounts.session_revoked", "session", None),
    ("keys.unlocked", "mailbox", None),
    ("admin.change", "mailbox", {"app": "directory", "flag": "change"}),
    ("accounts.factor_added", "user", {"factor": "totp"}),
)


def generated_rows(count: int, start_us: int) -> Iterator[tuple[Any, ...]]:
    """``count`` realistic events from #1, 50 ms apart, chained: database-ready tuples."""
    from pli.server.audit.chain import GENESIS, canonical_detail, event_hash  # noqa: PLC0415

    actions = [(a, t, canonical_detail(d)) for a, t, d in _ACTIONS]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    previous = GENESIS
    for seq in range(1, count + 1):
        action, kind, detail = actions[seq % len(actions)]
        user = seq % 5000
        occurred_us = start_us + seq * 50_000
        actor_id = None if action == "auth.login_failed" else user
        username = "" if actor_id is None else f"dr.user{user}@pli.test"
        role = "" if actor_id is None else "professional"
        target = f"{kind}:{seq % 100_000}"
        address = f"10.{seq % 7}.{seq % 251}.{seq % 253}"
        agent = _AGENTS[seq % len(_AGENTS)]
        outcome = "failure" if action == "auth.login_failed" else "success"
        hash_ = event_hash(
            seq,
            occurred_us,
            actor_id,
            username,
            role,
            action,
            target,
            address,
            agent,
            outcome,
            detail,
            previous,
        )
        yield (
            seq,
            epoch + dt.timedelta(microseconds=occurred_us),
            actor_id,
            username,
            role,
            action,
            target,
            address,
            agent,
            outcome,
            detail,
            previous,
            hash_,
        )
        previous = hash_


def generate_trail(count: int) -> int:
    """Bulk-insert ``count`` events and their signed checkpoints; returns the checkpoints."""
    from django.db import connection, transaction  # noqa: PLC0415

    from pli.server.audit.chain import checkpoint_message  # noqa: PLC0415
    from pli.server.audit.keys import operator_signing_key  # noqa: PLC0415
    from pli.server.audit.models import AuditCheckpoint  # noqa: PLC0415

    key = operator_signing_key()
    fingerprint = key.verifying_key().fingerprint
    now = dt.datetime.now(dt.UTC)
    start_us = (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    start_us -= (count + 1) * 50_000
    columns = (
        "seq, occurred_at, actor_id, actor_username, actor_role, action, target,"
        " source_address, user_agent, outcome, detail, prev_hash, hash"
    )
    checkpoints: list[AuditCheckpoint] = []
    adapt = connection.ops.adapt_datetimefield_value
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY audit_auditevent ({columns}) FROM STDIN") as copy:
                for row in generated_rows(count, start_us):
                    copy.write_row(row)
                    if row[0] % CHECKPOINT_EVERY == 1:
                        checkpoints.append(_checkpoint(row, key, fingerprint, checkpoint_message))
        else:
            batch: list[tuple[Any, ...]] = []
            insert = f"INSERT INTO audit_auditevent ({columns}) VALUES ({', '.join(['%s'] * 13)})"  # noqa: S608
            for row in generated_rows(count, start_us):
                batch.append((row[0], adapt(row[1]), *row[2:]))
                if row[0] % CHECKPOINT_EVERY == 1:
                    checkpoints.append(_checkpoint(row, key, fingerprint, checkpoint_message))
                if len(batch) == 10_000:
                    cursor.executemany(insert, batch)
                    batch.clear()
            if batch:
                cursor.executemany(insert, batch)
        AuditCheckpoint.objects.bulk_create(checkpoints)
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE audit_auditevent")
    return len(checkpoints)


def _checkpoint(row: tuple[Any, ...], key: Any, fingerprint: str, message: Any) -> Any:
    from pli.server.audit.chain import micros  # noqa: PLC0415
    from pli.server.audit.models import AuditCheckpoint  # noqa: PLC0415

    signed = message(row[0], row[12], micros(row[1]), fingerprint)
    return AuditCheckpoint(
        event_seq=row[0],
        event_hash=row[12],
        signed_at=row[1],
        key_fingerprint=fingerprint,
        signature=key.sign(signed).hex(),
    )


def child_verify(events: int) -> JSON:
    django_setup()
    from django.core.management import call_command  # noqa: PLC0415

    from pli.server.audit.chain import verify_trail  # noqa: PLC0415
    from pli.server.audit.keys import operator_verifying_key  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)
    started = time.perf_counter()
    checkpoints = generate_trail(events)
    generation = time.perf_counter() - started
    log(f"{events} events written in {generation:.1f} s; verifying")
    before = status_mb("VmHWM")
    load_before = load_average()
    started = time.perf_counter()
    report = verify_trail([operator_verifying_key()])
    seconds = time.perf_counter() - started
    return {
        "load_average_1m": [load_before, load_average()],
        "database": database_version(),
        "events": report.events,
        "checkpoints": checkpoints,
        "generation_s": round(generation, 1),
        "verify_s": round(seconds, 2),
        "events_per_s": round(report.events / seconds),
        "peak_rss_mb": status_mb("VmHWM"),
        "before_rss_mb": before,
        "database_mb": database_mb(),
    }


# --------------------------------------------------------------------------- HTTP client


def _get(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path, headers={"User-Agent": "bench-audit/1"})
    response = connection.getresponse()
    response.read()
    return response.status


def measure_latency(port: int, pairs: int) -> JSON:
    """Sequential requests, alternating: what the append adds to one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: dict[str, list[float]] = {"/work/": [], "/append/": []}
    failures = 0
    for number in range(pairs + 50):
        for path, values in times.items():
            began = time.perf_counter()
            status = _get(connection, path)
            elapsed = (time.perf_counter() - began) * 1000
            failures += status != 200
            if number >= 50:
                values.append(elapsed)
    connection.close()
    work, append = percentiles(times["/work/"]), percentiles(times["/append/"])
    return {
        "pairs": pairs,
        "work_only": work,
        "work_and_append": append,
        "added_median_ms": round(append["median_ms"] - work["median_ms"], 3),
        "added_mean_ms": round(append["mean_ms"] - work["mean_ms"], 3),
        "non_200": failures,
    }


def measure_load(port: int, path: str, clients: int, seconds: float) -> JSON:
    """``clients`` threads, each on its own keep-alive connection, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            status = _get(connection, path)
            latencies[number].append((time.perf_counter() - began) * 1000)
            failures[number] += status != 200
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = [t for values in latencies for t in values]
    ok = len(every) - sum(failures)
    return {
        "path": path,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(every),
        "non_200": sum(failures),
        "requests_per_s": round(ok / elapsed, 1),
        "latency": percentiles(every),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--log-level",
            "warning",
            "django.core.wsgi:get_wsgi_application()",
        ],
        env={**env, "DJANGO_SETTINGS_MODULE": "audit_server", "PYTHONPATH": str(HERE)},
    )
    try:
        for _ in range(150):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                if _get(connection, "/work/") == 200:
                    connection.close()
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("gunicorn did not answer")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------------- parent


def run_child(kind: str, env: dict[str, str], *extra: str) -> JSON:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", kind, *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"child {kind} exited with {completed.returncode}")
    result: JSON = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def serving_case(env: dict[str, str], args: argparse.Namespace) -> JSON:
    setup = run_child("setup", env)
    load_before = load_average()
    with gunicorn(env, args.workers) as port:
        log(f"{setup['database']}: latency, {args.pairs} request pairs")
        latency = measure_latency(port, args.pairs)
        log(f"{setup['database']}: load on /work/ then /append/, {args.seconds} s each")
        work = measure_load(port, "/work/", args.clients, args.seconds)
        append = measure_load(port, "/append/", args.clients, args.seconds)
    load_served = load_average()
    measured = run_child("measure", env, "--appends", str(args.appends))
    return {
        "database_version": setup["version"],
        "load_average_1m": [load_before, load_served, load_average()],
        "gunicorn": {"workers": args.workers, "worker_class": "gthread", "threads": 4},
        "latency": latency,
        "load": {
            "work_only": work,
            "work_and_append": append,
            "events_per_s": append["requests_per_s"],
        },
        **measured,
    }


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def postgres_database(url: str, name: str) -> Iterator[str]:
    import psycopg  # noqa: PLC0415 - only when PostgreSQL is benchmarked

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_cases(name: str, work: Path, env: dict[str, str], args: argparse.Namespace) -> JSON:
    result: JSON = {}
    for phase in ("serving", "verification"):
        data = work / f"{name}-{phase}"
        (data / "static").mkdir(parents=True)  # whitenoise wants it to exist
        phase_env = {**env, "PLI_DATA_DIR": str(data)}
        with contextlib.ExitStack() as stack:
            if name == "postgresql":
                database = f"pli_bench_audit_{os.getpid()}_{phase}"
                url = stack.enter_context(postgres_database(args.postgres_url, database))
                phase_env["PLI_DATABASE_URL"] = url
            try:
                if phase == "serving":
                    result[phase] = serving_case(phase_env, args)
                else:
                    log(f"{name}: generating {args.events} events, then verifying them")
                    result[phase] = run_child("verify", phase_env, "--events", str(args.events))
            except (RuntimeError, OSError) as error:
                result[phase] = {"error": str(error)}
    return result


def verdict(case: JSON, events: int) -> JSON:
    verification = case.get("verification", {})
    serving = case.get("serving", {})
    verify_s = verification.get("verify_s")
    added = serving.get("latency", {}).get("added_median_ms")
    return {
        "verify_1m_events_s": (
            verify_s * 1_000_000 / events < TARGETS["verify_1m_events_s_max"]
            if verify_s is not None and events == 1_000_000
            else None
        ),
        "append_added_ms": added < TARGETS["append_added_ms_max"] if added is not None else None,
    }


def machine() -> JSON:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events to verify")
    parser.add_argument("--quick", action="store_true", help="100,000 events, shorter loads")
    parser.add_argument("--pairs", type=int, default=1000, help="sequential request pairs")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load")
    parser.add_argument("--clients", type=int, default=4, help="client threads of the load")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--appends", type=int, default=2000, help="in-process transactions")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="an admin connection")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", choices=["setup", "measure", "verify"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "setup":
        print(json.dumps(child_setup()))
        return
    if args.child == "measure":
        print(json.dumps(child_measure(args.appends)))
        return
    if args.child == "verify":
        print(json.dumps(child_verify(args.events)))
        return
    if args.quick:
        args.events, args.pairs, args.seconds, args.appends = QUICK_EVENTS, 300, 4.0, 500

    work = Path(tempfile.mkdtemp(prefix="pli-bench-audit-", dir=args.workdir))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
        env.update(
            {
                "PLI_SECRET_KEY": secrets.token_urlsafe(48),
                "PLI_LOG_LEVEL": "WARNING",
                "PLI_AUDIT_CHECKPOINT_EVENTS": str(CHECKPOINT_EVERY),
            }
        )
        cases: JSON = {}
        if not args.skip_sqlite:
            cases["sqlite"] = database_cases("sqlite", work, env, args)
        if not args.skip_postgres:
            cases["postgresql"] = database_cases("postgresql", work, env, args)
        document = {
            "benchmark": "audit",
            "date": dt.datetime.now(dt.UTC).date().isoformat(),
            "machine": machine(),
            "units": {"time": "ms per request or transaction; s for verification"},
            "parameters": {
                "events": args.events,
                "pairs": args.pairs,
                "seconds": args.seconds,
                "clients": args.clients,
                "workers": args.workers,
                "checkpoint_every": CHECKPOINT_EVERY,
            },
            "cases": cases,
            "targets": TARGETS,
            "verdict": {name: verdict(case, args.events) for name, case in cases.items()},
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
