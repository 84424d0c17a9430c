#!/usr/bin/env python3
"""Directory benchmark: import of a generated RPPS extraction, then searches, on both databases.

Prints one JSON document on stdout (progress goes to stderr). The extraction
is generated in the real format by ``pli.server.directory.sample`` into a
temporary directory (deleted at the end). Each database is a case run in a
fresh child process (``--child``), which configures Django from ``PLI_*``
variables, migrates an empty database, imports the file, reads its own peak
RSS (``VmHWM``), then measures searches through the JSON API. PostgreSQL gets
a throw-away database ``pli_bench_<pid>``, dropped at the end.

    .venv/bin/python benchmarks/bench_directory_import.py            # 2,000,000 lines
    .venv/bin/python benchmarks/bench_directory_import.py --quick    # 200,000 lines
    .venv/bin/python benchmarks/bench_directory_import.py --lines 50000 --skip-postgres
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from procmem import RssSampler

JSON = dict[str, Any]

DEFAULT_LINES = 2_000_000
QUICK_LINES = 200_000
SEED = 2026
MB = 1_000_000
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
TARGETS = {"lines_per_s_min": 30_000, "peak_rss_mb_max": 300, "search_p95_ms_max": 50}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` value in KiB (VmHWM: this process's own peak RSS).

    Not ``ru_maxrss``: Linux carries it across fork and exec, so a child would
    report its parent's peak when that is higher.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def status_mb(field: str) -> float:
    return round(status_kib(field) * 1024 / MB, 1)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages: other work shares the cores."""
    return [round(float(x), 2) for x in Path("/proc/loadavg").read_text().split()[:3]]


def backend_cpu_s(vendor: str) -> float | None:
    """CPU seconds of this connection's PostgreSQL backend, when it runs on this machine.

    The import's database work happens in that process: with the child's own
    CPU time, it tells what the import cost apart from what other work on
    the machine took from it.
    """
    if vendor != "postgresql":
        return None
    from django.db import connection  # noqa: PLC0415 - Django is set up by now

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # a server elsewhere, or another user's process
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- child


def search_queries(count: int) -> list[tuple[str, dict[str, str]]]:
    """A realistic mix of searches, drawn from the people actually imported."""
    from django.db.models import Max, Min  # noqa: PLC0415 - Django is set up by now

    from pli.server.directory.models import Professional, search_key  # noqa: PLC0415

    rng = random.Random(SEED)
    bounds = Professional.objects.aggregate(low=Min("pk"), high=Max("pk"))
    people: list[Professional] = []
    while len(people) < count:
        pk = rng.randint(bounds["low"], bounds["high"])
        found = Professional.objects.filter(pk__gte=pk).select_related(None).first()
        if found is not None:
            people.append(found)
    activities = {
        p.pk: p.activities.select_related("organisation").first() for p in people[: count // 4]
    }
    queries: list[tuple[str, dict[str, str]]] = []
    for number, person in enumerate(people):
        last = search_key(person.last_name).split()[0]
        first = search_key(person.first_name).split()[0]
        kind = number % 6
        if kind == 0:  # one word, a prefix, as typed
            queries.append(("one_word_prefix", {"q": last[: rng.randint(3, max(3, len(last)))]}))
        elif kind == 1:  # two words, first name first
            queries.append(
                ("two_words_any_order", {"q": f"{person.first_name} {person.last_name}"})
            )
        elif kind == 2:  # two prefixes, in the other order, without accents
            queries.append(("two_words_any_order", {"q": f"{last[:4]} {first[:3]}"}))
        elif kind == 3:  # a name and a profession
            queries.append(
                ("name_and_profession", {"q": last, "profession": person.profession_code})
            )
        elif kind == 4:  # profession and postcode, no name
            activity = activities.get(person.pk)
            organisation = activity.organisation if activity is not None else None
            postcode = organisation.postcode if organisation is not None else "75013"
            queries.append(
                (
                    "profession_and_postcode",
                    {"profession": person.profession_code, "postcode": postcode},
                )
            )
        else:  # an identifier
            queries.append(("identifier", {"q": person.identifier}))
    return queries


def member_client() -> Any:
    """A client signed in as a member: the directory answers members only.

    As tests/accounts_support.py does it: ``force_login``, then the session
    registered as Pli's login flow registers it (SessionGuardMiddleware
    refuses any other) and the charter acknowledged.
    """
    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from pli.server.accounts.actions import current_charter  # noqa: PLC0415
    from pli.server.accounts.models import CharterAcknowledgement, UserSession  # noqa: PLC0415
    from pli.server.accounts.tokens import session_key_hash  # noqa: PLC0415

    member = get_user_model().objects.create_user("bench-member@pli.test", "bench-member@pli.test")
    client = Client()
    client.force_login(member)
    now = timezone.now()
    UserSession.objects.create(
        user=member,
        key_hash=session_key_hash(client.session.session_key or ""),
        method="bench",
        created_at=now,
        last_seen_at=now,
    )
    charter = current_charter()
    if charter is not None:
        CharterAcknowledgement.objects.get_or_create(user=member, charter=charter)
    return client


def measure_searches(count: int) -> JSON:
    import importlib.util  # noqa: PLC0415

    from django.urls import NoReverseMatch, reverse  # noqa: PLC0415

    if importlib.util.find_spec("pli.server.directory.queries") is None:
        return {"available": False, "reason": "pli.server.directory.queries does not exist"}
    try:
        url = reverse("api-1.0.0:directory-search-api")
    except NoReverseMatch:
        url = "/api/directory/search"
    client = member_client()
    if client.get(url, {"q": "martin"}).status_code == 404:
        return {"available": False, "reason": f"GET {url} answers 404"}
    queries = search_queries(count)
    for _kind, params in queries[:30]:  # warm-up: caches, prepared plans
        client.get(url, params)
    times: dict[str, list[float]] = {}
    failures = 0
    for kind, params in queries:
        started = time.perf_counter()
        response = client.get(url, params)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            failures += 1
        times.setdefault(kind, []).append(elapsed)
    every = sorted(t for values in times.values() for t in values)

    def percentiles(values: list[float]) -> JSON:
        ordered = sorted(values)
        return {
            "count": len(ordered),
            "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 2),
            "max_ms": round(ordered[-1], 2),
        }

    return {
        "available": True,
        "url": f"{url}?{urlencode(queries[0][1])}",
        **percentiles(every),
        "non_200": failures,
        "by_kind": {kind: percentiles(values) for kind, values in sorted(times.items())},
    }


def database_version(vendor: str) -> str:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW server_version" if vendor == "postgresql" else "SELECT sqlite_version()"
        )
        return str(cursor.fetchone()[0])


def database_mb(vendor: str) -> float | None:
    from django.conf import settings  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("SELECT pg_database_size(current_database())")
            return round(int(cursor.fetchone()[0]) / MB, 1)
    name = Path(str(settings.DATABASES["default"]["NAME"]))
    return round(sum(p.stat().st_size for p in name.parent.glob(name.name + "*")) / MB, 1)


def child(file: Path, searches: int) -> JSON:
    os.environ["DJANGO_SETTINGS_MODULE"] = "pli.server.settings"
    import django  # noqa: PLC0415

    django.setup()
    from django.db import connection  # noqa: PLC0415

    from pli.server.directory.importing import import_extraction  # noqa: PLC0415
    from pli.server.directory.models import Activity, Organisation, Professional  # noqa: PLC0415

    # The schema was created by another process (migrate_child), as an operator runs
    # `pli migrate` once and `pli directory import` later: the migration graph is not
    # resident here, nor in the second reader this process forks.
    before = status_mb("VmHWM")
    backend_before = backend_cpu_s(connection.vendor)
    load_before = load_average()
    started, cpu_started = time.perf_counter(), time.process_time()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The importing process and the second reader it forks, together.
    with RssSampler(os.getpid()) as family:
        summary = import_extraction(file)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = status_mb("VmHWM")
    # A first import of a large text file forks a second reader (importing._SecondHalf):
    # its CPU, and its peak RSS (most of it pages it shares with this process).
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    backend_after = backend_cpu_s(connection.vendor)
    result: JSON = {
        "database": connection.vendor,
        "database_version": database_version(connection.vendor),
        "lines": summary.lines,
        "imported": summary.imported,
        "rejected": summary.rejected,
        "seconds": round(seconds, 1),
        "lines_per_s": round(summary.lines / seconds),
        "peak_rss_mb": peak,
        "before_rss_mb": before,
        # CPU seconds of this process (all its threads), of the second reader it forks,
        # and of its PostgreSQL backend.
        "cpu_s": round(cpu, 1),
        "helper_cpu_s": round(helper_cpu, 1),
        "helper_peak_rss_mb": round(children.ru_maxrss * 1024 / MB, 1) if helper_cpu else None,
        # Both processes together, sampled every 50 ms (procmem.RssSampler).
        "peak_rss_sum_mb": round(family.peak, 1),
        "peak_pss_sum_mb": round(family.peak_pss, 1),
        "backend_cpu_s": (
            round(backend_after - backend_before, 1)
            if backend_after is not None and backend_before is not None
            else None
        ),
        "load_average": {"before": load_before, "after": load_average()},
        "rows": {
            "professionals": Professional.objects.count(),
            "organisations": Organisation.objects.count(),
            "activities": Activity.objects.count(),
        },
        "database_mb": database_mb(connection.vendor),
    }
    log(f"{connection.vendor}: {summary.describe()}, peak RSS {peak} MB")
    result["search"] = measure_searches(searches) if searches else {"available": False}
    return result


# --------------------------------------------------------------------------- parent


def machine() -> JSON:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def migrate_child() -> None:
    """Create the schema, in its own process (see :func:`child`)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "pli.server.settings"
    import django  # noqa: PLC0415

    django.setup()
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)


def run_case(name: str, file: Path, env: dict[str, str], searches: int) -> JSON:
    log(f"{name}: migrating, then importing {file.name} in a child process")
    migrated = subprocess.run(
        [sys.executable, __file__, "--migrate-child"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrated.returncode != 0:
        return {"error": "migrations failed", "stderr": migrated.stderr[-2000:]}
    completed = subprocess.run(
        [sys.executable, __file__, "--child", "--file", str(file), "--searches", str(searches)],
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


def verdict(case: JSON) -> JSON:
    if "error" in case:
        return {"lines_per_s": False, "peak_rss_mb": False, "search_p95_ms": None}
    search = case.get("search", {})
    return {
        "lines_per_s": case["lines_per_s"] >= TARGETS["lines_per_s_min"],
        "peak_rss_mb": case["peak_rss_mb"] < TARGETS["peak_rss_mb_max"],
        "peak_rss_sum_mb": case["peak_rss_sum_mb"] < TARGETS["peak_rss_mb_max"],
        "peak_pss_sum_mb": case["peak_pss_sum_mb"] < TARGETS["peak_rss_mb_max"],
        # Each process's peak, the importing one's and its second reader's (see README).
        "helper_peak_rss_mb": (
            case["helper_peak_rss_mb"] < TARGETS["peak_rss_mb_max"]
            if case.get("helper_peak_rss_mb") is not None
            else None
        ),
        # A search that did not answer 200 is a failure, not a fast answer.
        "search_p95_ms": (
            search["p95_ms"] < TARGETS["search_p95_ms_max"] and not search.get("non_200")
            if search.get("available")
            else None
        ),
    }


def postgres_case(file: Path, base_env: dict[str, str], url: str, searches: int) -> JSON:
    import psycopg  # noqa: PLC0415 - only when PostgreSQL is benchmarked

    name = f"pli_bench_{os.getpid()}"
    admin = url
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        return {"error": f"cannot create the database {name}: {error}"}
    try:
        env = {**base_env, "PLI_DATABASE_URL": with_database(url, name)}
        return run_case("postgresql", file, env, searches)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_LINES} lines")
    parser.add_argument("--searches", type=int, default=300, help="timed searches per database")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="an admin connection")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--migrate-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.migrate_child:
        migrate_child()
        return
    if args.child:
        print(json.dumps(child(args.file, args.searches)))
        return

    from pli.server.directory.sample import rpps_file_name, write_rpps_extraction  # noqa: PLC0415

    lines = QUICK_LINES if args.quick else args.lines
    work = Path(tempfile.mkdtemp(prefix="pli-bench-directory-", dir=args.workdir))
    try:
        log(f"generating a {lines}-line RPPS extraction in {work}")
        started = time.perf_counter()
        file = write_rpps_extraction(work / rpps_file_name(), lines=lines, seed=SEED)
        generation = time.perf_counter() - started
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
        base_env.update(
            {
                "PLI_SECRET_KEY": secrets.token_urlsafe(48),
                "PLI_ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
                "PLI_LOG_LEVEL": "WARNING",
            }
        )
        cases: JSON = {}
        if not args.skip_sqlite:
            data = work / "sqlite-data"
            (data / "static").mkdir(parents=True)  # whitenoise wants it to exist
            cases["sqlite"] = run_case(
                "sqlite", file, {**base_env, "PLI_DATA_DIR": str(data)}, args.searches
            )
        if not args.skip_postgres:
            data = work / "postgresql-data"
            (data / "static").mkdir(parents=True)
            cases["postgresql"] = postgres_case(
                file, {**base_env, "PLI_DATA_DIR": str(data)}, args.postgres_url, args.searches
            )
        document = {
            "benchmark": "directory_import",
            "date": dt.datetime.now(dt.UTC).date().isoformat(),
            "machine": machine(),
            "units": {"rss": "MB = 10^6 bytes, VmHWM of the child", "time": "seconds, ms"},
            "input": {
                "lines": lines,
                "bytes": file.stat().st_size,
                "generation_s": round(generation, 1),
                "seed": SEED,
            },
            "cases": cases,
            "targets": TARGETS,
            "verdict": {name: verdict(case) for name, case in cases.items()},
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
