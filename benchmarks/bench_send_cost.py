#!/usr/bin/env python3
"""What one API request costs the server's process, measured without the VM's noise.

Prints one JSON document on stdout (progress on stderr). The messaging
benchmark (``bench_messaging.py``) measures messages per second under load,
but on these shared 2-core machines the same code runs up to two times
faster or slower from one quarter of an hour to the next, which hides any
change smaller than that. This script measures the server-side cost of one
request in ways that do not depend on the machine's speed of the moment:

* the **application**: Django's WSGI application (``pli.server.wsgi``, every
  middleware, django-ninja, Pli's views and actions) called directly in one
  process and one thread, with the session and CSRF token of a real API login;
  gunicorn's own per-request work is not included;
* per case (the authenticated ``GET`` that ``bench_messaging`` takes as its
  baseline, then a sealed 10 KB message to 1 and to 10 recipients), after a
  warm-up: **CPU time** per request (``time.process_time``, still subject to
  the machine's speed) and **database round trips** per request (exact);
* with ``--callgrind`` (Debian package ``valgrind``): the same cases run once
  more under ``valgrind --tool=callgrind``, which counts the **instructions**
  the process executes per request. The count is repeatable to a fraction of
  a percent whatever else the machine is doing, so two versions of the code
  can be compared from one run each. Callgrind dumps its counters whenever
  the process calls ``getppid`` (``--dump-before=getppid``), which the child
  does between the cases, so each case is counted alone.

Under callgrind, the audit journal is chained by each send itself before it
answers (``PLI_AUDIT_SEQUENCER_DELAY_MS=0``, decision 0010's first form):
callgrind slows the process fifty times or more, so a background window would
gather a varying number of sends and the counts would no longer repeat. Each
send's count thus includes one chaining call of its own, more than it costs in
production, where the sends of each window share one. PostgreSQL's own work
runs in its processes and is counted by neither measure.

    .venv/bin/python benchmarks/bench_send_cost.py                 # PostgreSQL, process time
    .venv/bin/python benchmarks/bench_send_cost.py --callgrind     # and instruction counts
    .venv/bin/python benchmarks/bench_send_cost.py --sqlite
    .venv/bin/python benchmarks/bench_send_cost.py --profile send_10_recipients   # cProfile, stderr
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_messaging as messaging

JSON = dict[str, Any]
HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1:8000"
CASES = ("baseline_authenticated_get", "send_1_recipient", "send_10_recipients")


def cases_of(*, floor: bool, batch: int) -> list[str]:
    """The cases measured: with ``batch`` > 1, Pli's batch endpoint too (not the floor's)."""
    if floor or batch <= 1:
        return list(CASES)
    return [*CASES, f"batch_{batch}_of_1_recipient", f"batch_{batch}_of_10_recipients"]


def log(message: str) -> None:
    print(f"[bench_send_cost] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child


def _cpu_now() -> tuple[float, dict[int, float]]:
    """This process's CPU time, and every PostgreSQL process's (backends, WAL writer…)."""
    return time.process_time(), messaging.cpu_seconds(messaging.postgres_pids())


def _cpu_since(before: tuple[float, dict[int, float]]) -> tuple[float, float]:
    """CPU seconds spent since ``before`` by this process, and by PostgreSQL."""
    database = messaging.cpu_delta(before[1], messaging.cpu_seconds(messaging.postgres_pids()))
    return time.process_time() - before[0], database


def child_requests(
    setup: JSON,
    session: JSON,
    *,
    warmup: int,
    count: int,
    marks: bool,
    profile: str | None,
    profile_out: str | None,
    floor: bool = False,
    batch: int = 1,
) -> JSON:
    """The cases through the WSGI application, in this process; CPU and round trips.

    ``floor``: ``floor_app``'s application (the stack's floor, see its docstring)
    instead of Pli's, with the same requests and bodies.
    """
    stop: Any = None
    if floor:
        import floor_app  # noqa: PLC0415 - configures Django with the floor's settings

        application = floor_app.application
    else:
        from pli.server.commands import setup_django  # noqa: PLC0415

        setup_django()
        from pli.server.audit.actions import stop_background_sequencer as stop  # noqa: PLC0415
        from pli.server.wsgi import application  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415

    round_trips = [0]

    def counting(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        round_trips[0] += 1
        return execute(sql, params, many, context)

    def request(method: str, path: str, body: bytes, expected: int) -> None:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": HOST,
            "HTTP_COOKIE": session["cookie"],
            "HTTP_X_CSRFTOKEN": session["csrf"],
            "HTTP_ORIGIN": f"http://{HOST}",
            "HTTP_ACCEPT": "application/json",
            "CONTENT_TYPE": "application/json" if body else "",
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status: list[str] = []

        def start_response(line: str, _headers: Any, _info: Any = None) -> Any:
            status.append(line)
            return lambda _data: None

        answer = application(environ, start_response)
        b"".join(answer)
        if hasattr(answer, "close"):
            answer.close()
        if not status[0].startswith(str(expected)):
            raise RuntimeError(f"{method} {path}: {status[0]}")

    bodies = {
        "baseline_authenticated_get": ("GET", "/api/uploads/limits", b"", 200),
        **{
            f"send_{n}_recipient{'s' if n > 1 else ''}": (
                "POST",
                "/api/messages",
                json.dumps(messaging.send_body(setup, n)).encode(),
                201,
            )
            for n in (1, 10)
        },
        **{
            f"batch_{batch}_of_{n}_recipient{'s' if n > 1 else ''}": (
                "POST",
                "/api/messages/batch",
                json.dumps({"messages": [messaging.send_body(setup, n)] * batch}).encode(),
                201,
            )
            for n in (1, 10)
        },
    }
    results: JSON = {}
    with connection.execute_wrapper(counting):
        for case in cases_of(floor=floor, batch=batch):
            method, path, body, expected = bodies[case]
            for _ in range(warmup):
                request(method, path, body, expected)
            if marks:
                os.getppid()  # callgrind: the counters so far are dumped (the warm-up's)
            round_trips[0] = 0
            profiler = cProfile.Profile(time.process_time) if case == profile else None
            before = _cpu_now()
            if profiler is not None:
                profiler.enable()
            for _ in range(count):
                request(method, path, body, expected)
            spent, database = _cpu_since(before)
            if profiler is not None:
                profiler.disable()
                if profile_out:
                    profiler.dump_stats(profile_out)  # for pstats, or to compare two runs
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(60)
            if marks:
                os.getppid()  # callgrind: this case's counters are dumped
            results[case] = {
                "cpu_ms_per_request": round(1000 * spent / count, 3),
                # Every PostgreSQL process of the machine (0 on SQLite): the database's
                # share of the request, which the process time above leaves out.
                "postgresql_cpu_ms_per_request": round(1000 * database / count, 3),
                "database_round_trips_per_request": round(round_trips[0] / count, 2),
            }
    if stop is not None:
        stop()
    return results


# --------------------------------------------------------------------------- parent


def _instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def measure_cases(
    args: argparse.Namespace, child: list[str], env: dict[str, str], work: Path, what: str
) -> JSON:
    """One application's cases: process time, then (``--callgrind``) instructions."""
    log(f"{what}, process time: {args.requests} requests per case, one thread")
    # stderr is not captured: --profile writes there.
    completed = subprocess.run(
        [*child, "--requests", str(args.requests)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    cases: JSON = json.loads(completed.stdout.strip().splitlines()[-1])
    if args.callgrind:
        log(f"{what}, callgrind: {args.callgrind_requests} requests per case (a few minutes)")
        out = work / "callgrind.out"
        messaging.run_checked(
            [
                shutil.which("valgrind") or "valgrind",
                "--tool=callgrind",
                "--dump-before=getppid",
                f"--callgrind-out-file={out}",
                *child,
                "--requests",
                str(args.callgrind_requests),
                "--marks",
            ],
            # Each send chains its own events: repeatable counts (see above).
            {**env, "PLI_AUDIT_SEQUENCER_DELAY_MS": "0", "PYTHONMALLOC": "malloc"},
            f"{what} under callgrind",
        )
        # Dumps 1, 3, 5… are the warm-ups (and the start-up), 2, 4, 6… the cases.
        for index, case in enumerate(cases_of(floor="--floor" in child, batch=args.batch)):
            number = 2 * (index + 1)
            dump = Path(f"{out}.{number}")
            cases[case]["instructions_per_request"] = _instructions(dump) // args.callgrind_requests
        for dump in work.glob("callgrind.out*"):
            dump.unlink()
    return cases


def run(args: argparse.Namespace) -> JSON:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    work = Path(tempfile.mkdtemp(prefix="pli-bench-send-cost-", dir=args.workdir))
    database = f"pli_bench_send_cost_{os.getpid()}"
    env = {
        **messaging.server_env(base, work, "bench-send-cost"),
        "PLI_ALLOWED_HOSTS": "127.0.0.1",
        # bench_messaging beside this script; a PYTHONPATH given (another checkout's
        # src, to measure its code with this script) stays in front.
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p),
    }
    if not args.sqlite:
        env["PLI_DATABASE_URL"] = messaging.postgres_database(args.postgres_url, database)
    try:
        log("setup (migrations, accounts, certificates, envelopes sealed once)")
        setup = messaging.run_child("setup", env, "--work", str(work))
        with messaging.pli_serve(env, 1) as (port, _pid):
            cookie, csrf = messaging.login(f"http://127.0.0.1:{port}", work, setup)
        (work / "setup.json").write_text(json.dumps(setup))
        (work / "session.json").write_text(json.dumps({"cookie": cookie, "csrf": csrf}))
        child = [
            sys.executable,
            __file__,
            "--child",
            "--work",
            str(work),
            "--warmup",
            str(args.warmup),
            "--batch",
            str(args.batch),
            *(["--profile", args.profile] if args.profile else []),
            *(["--profile-out", args.profile_out] if args.profile_out else []),
        ]
        cases = measure_cases(args, child, env, work, "Pli")
        floor: JSON | None = None
        if not args.skip_floor:
            messaging.create_floor_tables(setup["database"], env, work)
            floor = measure_cases(args, [*child, "--floor"], env, work, "the floor")
            for case, figures in cases.items():
                if case not in floor:
                    continue  # the batch endpoint is Pli's own
                figures["times_floor"] = {
                    key: round(value / floor[case][key], 2)
                    for key, value in figures.items()
                    if key in {"cpu_ms_per_request", "instructions_per_request"}
                }
        return {
            "database": setup["database"],
            "database_version": setup["database_version"],
            "envelope_bytes": setup["envelope_bytes"],
            "cases": cases,
            # The stack's floor (floor_app.py), the same requests: Django and the
            # database driver with none of Pli's work. Its CSRF token and cookie are ignored.
            "floor_cases": floor,
        }
    finally:
        if not args.sqlite:
            messaging.drop_postgres(args.postgres_url, database)
        shutil.rmtree(work, ignore_errors=True)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per case")
    parser.add_argument("--warmup", type=int, default=50, help="requests before each case")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions")
    parser.add_argument(
        "--batch",
        type=int,
        default=20,
        help="messages per request of the batch cases (POST /api/messages/batch; 1: none)",
    )
    parser.add_argument("--callgrind-requests", type=int, default=50, help="per case, callgrind")
    parser.add_argument(
        "--profile", help="cProfile one case (its figures then include the profiler)"
    )
    parser.add_argument("--profile-out", help="with --profile: also save the statistics there")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--skip-floor", action="store_true", help="leave out the stack's floor")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--postgres-url", default=messaging.DEFAULT_POSTGRES)
    parser.add_argument("--workdir", default=None, help="where the temporary data goes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--marks", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.child:
        work = Path(args.work)
        setup = json.loads((work / "setup.json").read_text())
        session = json.loads((work / "session.json").read_text())
        print(
            json.dumps(
                child_requests(
                    setup,
                    session,
                    warmup=args.warmup,
                    count=args.requests,
                    marks=args.marks,
                    profile=args.profile,
                    profile_out=args.profile_out,
                    floor=args.floor,
                    batch=args.batch,
                )
            )
        )
        return
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = run(args)
    print(
        json.dumps(
            {
                "benchmark": "send_cost",
                "date": started,
                "machine": messaging.machine(),
                "parameters": {
                    "requests": args.requests,
                    "warmup": args.warmup,
                    "callgrind_requests": args.callgrind_requests if args.callgrind else None,
                },
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
