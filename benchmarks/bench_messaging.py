#!/usr/bin/env python3
"""Messaging benchmark: API ingest of sealed messages, and a 1 GiB attachment up and down.

Prints one JSON document on stdout (progress goes to stderr). For each
database (SQLite, PostgreSQL), in a fresh data directory:

* **setup** (a child process with Django): migrations, an operator CA, an
  enrolled sender (passphrase + TOTP, workstation custody) and ten recipient
  mailboxes with certificates, all in the directory; then envelopes sealed
  **once** (sealing is the workstation's cost, not the server's): a 10 KB
  letter to one recipient, and to ten.
* **the server runs as in production**: ``pli serve`` (gunicorn, gthread,
  ``--workers`` processes of 4 threads), its access log included.
* **ingest**: the SDK logs in through the API (the TOTP step included), then
  ``--clients`` threads, each on its own keep-alive connection with that
  session, ``POST /api/messages`` the same sealed envelope ``--messages``
  times in all (after a warm-up): messages/s, p50 and p99 latency. Every
  answer must be ``201``. The server's peak RSS is the largest sum of
  ``VmRSS`` over gunicorn's processes, sampled every 50 ms from ``/proc``.
* **1 GiB attachment** (PostgreSQL, or SQLite when alone), first, on the
  freshly started server: a child
  process sends a 1 GiB PDF through the SDK (stream encryption to a
  temporary file, chunked upload, send), another reads the message from the
  sender's copy and saves the attachment (streamed download and decryption).
  Each child reports its own peak RSS (``VmHWM``); the server's is sampled
  during each phase.

    .venv/bin/python benchmarks/bench_messaging.py                 # 3000 messages per case, 1 GiB
    .venv/bin/python benchmarks/bench_messaging.py --quick         # 500 messages, 50 MB
    .venv/bin/python benchmarks/bench_messaging.py --skip-sqlite --attachment-mb 0
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
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

from procmem import RssSampler, process_tree, status_mb

JSON = dict[str, Any]

HERE = Path(__file__).resolve().parent
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
MB = 1_000_000
MIB = 1024 * 1024
SENDER = "dr.martin@bench.test"
RECIPIENTS = [f"dr.destinataire{n:02d}@bench.test" for n in range(10)]
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a throw-away benchmark account
IDENTITY_PASSPHRASE = "bench identity passphrase"  # noqa: S105
CA_PASSPHRASE = "bench operator CA passphrase"  # noqa: S105
LETTER_BYTES = 10_000
WARMUP = 100
#: The other load generator (``--load-generator wrk``, Debian package ``wrk``).
WRK = shutil.which("wrk") or "wrk"
#: floor_app.py's tables, created in the benchmark's database before the floor server starts.
#: ``{id}``: the key's type (BIGSERIAL, INTEGER); ``{blob}``: the bytes' (BYTEA, BLOB).
FLOOR_SCHEMA = (
    "CREATE TABLE floor_message (id {id} PRIMARY KEY, envelope {blob} NOT NULL)",
    (
        "CREATE TABLE floor_delivery (id {id} PRIMARY KEY,"
        " message_id BIGINT NOT NULL REFERENCES floor_message (id), recipient TEXT NOT NULL)"
    ),
    "CREATE INDEX floor_delivery_message ON floor_delivery (message_id)",
)
#: PostgreSQL only: as Pli's envelopes (decision 0013), ciphertext is not compressed.
FLOOR_SCHEMA_POSTGRESQL = ("ALTER TABLE floor_message ALTER COLUMN envelope SET STORAGE EXTERNAL",)

#: The floor asks for no session, no CSRF token, no origin.
FLOOR_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
TARGETS = {
    "postgresql_messages_per_s_min": 500,
    "p99_ms_max": 100,
    "attachment_peak_rss_mb_max": 200,
}


def log(message: str) -> None:
    print(f"[bench_messaging] {message}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return 0.0
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(len(ordered), rank) - 1]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------------- children, Django


def bench_mailbox(address: str, number: int) -> Any:
    """A personal mailbox of the directory, for a professional of RPPS 1010000<number>."""
    from pli.server.directory.models import Mailbox, Professional  # noqa: PLC0415

    rpps = f"1010000{number:04d}"
    professional = Professional.objects.create(
        identifier_type="8",
        identifier=rpps,
        national_id=f"8{rpps}",
        last_name=f"Nom{number}",
        first_name="Bench",
        profession_code="10",
        profession="Médecin",
    )
    return Mailbox.objects.create(address=address, kind="PER", professional=professional)


def enrolled_account(mailbox: Any, custody: str) -> tuple[Any, str]:
    """The mailbox's professional's account, enrolled (TOTP, charter); (user, TOTP seed)."""
    import pyotp  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from pli.server.accounts import factors  # noqa: PLC0415
    from pli.server.accounts.actions import current_charter  # noqa: PLC0415
    from pli.server.accounts.models import CharterAcknowledgement, User  # noqa: PLC0415

    user = User.objects.create_user(
        username=mailbox.address,
        email=mailbox.address,
        password=PASSPHRASE,
        professional=mailbox.professional,
    )
    user.custody = custody
    secret = factors.new_totp_seed()
    # Confirmed with the previous step's code: the current one still logs in (RFC 6238 §5.2).
    previous = pyotp.TOTP(secret).at(time.time() - factors.TOTP_PERIOD)
    assert factors.confirm_totp(user, secret, previous)  # noqa: S101 - a benchmark's set-up
    charter = current_charter()
    if charter is not None:
        CharterAcknowledgement.objects.create(user=user, charter=charter)
    user.enrolled_at = timezone.now()
    user.save()
    return user, secret


def child_setup(work: Path) -> JSON:
    """Migrate; a CA, the sender (enrolled) and ten recipient mailboxes; envelopes sealed once."""
    from pli.server.commands import (  # noqa: PLC0415
        ensure_data_dir,
        prepare_database,
        setup_django,
    )

    ensure_data_dir()
    setup_django()
    prepare_database()
    from django.db import connection  # noqa: PLC0415

    from pli.client.castore import CaDirectory  # noqa: PLC0415
    from pli.crypto import (  # noqa: PLC0415
        build_certificate_request,
        certificate_pem,
        dump_pkcs12,
        generate_private_key,
        load_pkcs12,
        seal,
    )
    from pli.mime import Draft, build_inner_message  # noqa: PLC0415
    from pli.server.accounts.actions import do_set_send_limits  # noqa: PLC0415
    from pli.server.accounts.models import (  # noqa: PLC0415
        Custody,
    )
    from pli.server.directory.actions import do_publish_mailbox_certificate  # noqa: PLC0415
    from pli.server.directory.models import Mailbox  # noqa: PLC0415

    ca = CaDirectory.create(work / "ca", "Pli Bench Operator CA", CA_PASSPHRASE)
    sender_key, recipient_key = generate_private_key(), generate_private_key()

    def certify(mailbox: Mailbox, key: Any) -> Any:
        certificate = ca.issue(
            build_certificate_request(key, email=mailbox.address, common_name=mailbox.address)
        )
        do_publish_mailbox_certificate(mailbox, certificate_pem(certificate))
        return certificate

    sender_box = bench_mailbox(SENDER, 0)
    sender_certificate = certify(sender_box, sender_key)
    recipient_certificates = [
        certify(bench_mailbox(address, n + 1), recipient_key)
        for n, address in enumerate(RECIPIENTS)
    ]
    sender, secret = enrolled_account(sender_box, Custody.WORKSTATION)
    # The sender is practice software (a laboratory's system) that sends far more than a
    # person's default daily limits: its operator gives it its own, as `pli accounts
    # send-limits` does. The limits are still checked and counted at every send.
    do_set_send_limits(None, sender.username, messages=10_000_000, size=1024**4)

    identity = work / "sender.p12"
    identity.write_bytes(
        dump_pkcs12(
            sender_key,
            sender_certificate,
            IDENTITY_PASSPHRASE,
            chain=[ca.certificate],
            iterations=1000,
        )
    )
    identity.chmod(0o600)
    signer = load_pkcs12(identity.read_bytes(), IDENTITY_PASSPHRASE).software_key()
    body = ("Cher confrère, voici le compte rendu. " * 400)[:LETTER_BYTES]
    envelopes = {}
    for count in (1, 10):
        inner = build_inner_message(
            Draft(
                from_address=SENDER,
                to=RECIPIENTS[:count] if count == 1 else [SENDER],
                subject="Compte rendu, réf. 2026-117",
                body_text=body,
            )
        )
        envelope = seal(inner, signer, recipient_certificates[:count], chain=[ca.certificate])
        envelopes[str(count)] = base64.b64encode(envelope).decode()
    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW server_version"
            if connection.vendor == "postgresql"
            else "SELECT sqlite_version()"
        )
        row = cursor.fetchone()
    return {
        "database": connection.vendor,
        "database_version": str(row[0]) if row else "unknown",
        "totp": secret,
        "identity": str(identity),
        "trust": str(ca.path / "ca.pem"),
        "envelopes": envelopes,
        "envelope_bytes": {k: len(base64.b64decode(v)) for k, v in envelopes.items()},
    }


def child_count() -> JSON:
    """What the server stored (checked after the load)."""
    from pli.server.commands import setup_django  # noqa: PLC0415

    setup_django()
    from pli.server.audit.models import AuditEvent  # noqa: PLC0415
    from pli.server.messaging.models import Delivery, Message  # noqa: PLC0415

    return {
        "messages": Message.objects.count(),
        "deliveries": Delivery.objects.count(),
        "sent_events": AuditEvent.objects.filter(action="messages.sent", outcome="success").count(),
    }


# --------------------------------------------------------------------------- children, the SDK


def _client(url: str, work: Path, setup: JSON) -> Any:
    from pli.client import Client  # noqa: PLC0415

    return Client(
        url,
        identity=setup["identity"],
        passphrase=IDENTITY_PASSPHRASE,
        trust=[setup["trust"]],
        session_file=work / "session.json",
        work_dir=work,
        timeout=600,
    )


def child_upload(url: str, work: Path, setup: JSON, size: int) -> JSON:
    """Send a ``size``-byte PDF through the SDK: encrypt, upload in chunks, send."""
    client = _client(url, work, setup)
    source = work / "scan.pdf"
    block = os.urandom(MIB)
    with source.open("wb") as handle:
        handle.write(b"%PDF-1.7\n")
        left = size - 9
        while left > 0:
            handle.write(block[: min(left, MIB)])
            left -= MIB
    subprocess.run(["sync"], check=False)
    before = status_mb("VmHWM")
    began = time.perf_counter()
    sent = client.send(
        SENDER, [RECIPIENTS[0]], "Scanner", "Images jointes.\n", attachments=[source]
    )
    seconds = time.perf_counter() - began
    return {
        "message": sent.id,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / MB / seconds, 1),
        "peak_rss_mb": round(status_mb("VmHWM"), 1),
        "before_rss_mb": round(before, 1),
    }


def child_download(url: str, work: Path, setup: JSON, message_id: str) -> JSON:
    """Read the sender's copy and save the attachment: streamed download and decryption."""
    client = _client(url, work, setup)
    before = status_mb("VmHWM")
    began = time.perf_counter()
    message = client.read(message_id, mark_read=False)
    [saved] = message.save_attachments(work / "received")
    seconds = time.perf_counter() - began
    size = saved.stat().st_size
    identical = _same_file(saved, work / "scan.pdf")
    saved.unlink()
    return {
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / MB / seconds, 1),
        "bytes": size,
        "identical": identical,
        "peak_rss_mb": round(status_mb("VmHWM"), 1),
        "before_rss_mb": round(before, 1),
    }


def _same_file(first: Path, second: Path) -> bool:
    with first.open("rb") as a, second.open("rb") as b:
        while True:
            left, right = a.read(MIB), b.read(MIB)
            if left != right:
                return False
            if not left:
                return True


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each of these processes (``/proc/<pid>/stat``), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings by the processes alive at the second one.

    A process that ended in between (another user's PostgreSQL backend) is left
    out rather than subtracted; one that started counts from zero.
    """
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def postgres_pids() -> list[int]:
    """Every PostgreSQL process of this machine (backends, WAL writer, checkpointer)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class CpuMeter:
    """CPU seconds of the server (gunicorn's processes) and of PostgreSQL over a phase.

    On a shared machine the wall-clock rate depends on the other work; the CPU
    spent per message by the server and the database does much less.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.server = self.database = 0.0
        self._server: dict[int, float] = {}
        self._database: dict[int, float] = {}

    def __enter__(self) -> CpuMeter:
        self._server = cpu_seconds(process_tree(self.root))
        self._database = cpu_seconds(postgres_pids())
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = cpu_delta(self._server, cpu_seconds(process_tree(self.root)))
        self.database = cpu_delta(self._database, cpu_seconds(postgres_pids()))

    def per_message(self, messages: int) -> JSON:
        return {
            "server_cpu_ms_per_message": round(1000 * self.server / messages, 2),
            "postgresql_cpu_ms_per_message": round(1000 * self.database / messages, 2),
        }


@contextlib.contextmanager
def served(
    command: list[str], env: dict[str, str], workers: int, ready_path: str, what: str
) -> Iterator[tuple[int, int]]:
    """``command`` (a gunicorn master, on ``--bind 127.0.0.1:PORT``) until every worker
    has booted and ``GET ready_path`` answers 200; (port, pid). Stopped at the end,
    its errors (tracebacks, ``ERROR`` lines on stderr) logged."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,  # the access log: written, as in production, then dropped
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode} at start")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", ready_path)
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{what} did not answer")
        # Every worker has booted (imports done) before anything is measured.
        deadline = time.time() + 60
        while len(process_tree(process.pid)) < workers + 1 and time.time() < deadline:
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            _out, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, errors = process.communicate()
        tail = [
            line for line in (errors or "").splitlines() if "Traceback" in line or "ERROR" in line
        ]
        if tail:
            log(f"{what} errors: {tail[:5]}")


def pli_serve(
    env: dict[str, str], workers: int
) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """``pli serve`` (migrations, then gunicorn) on a free port; (port, pid)."""
    pli = Path(sys.executable).parent / "pli"
    return served([str(pli), "serve"], env, workers, "/api/health", "pli serve")


def floor_serve(
    env: dict[str, str], workers: int
) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """``floor_app`` served by ``pli.server.serve.run``, as Pli is (floor_serve.py); (port, pid)."""
    command = [sys.executable, str(HERE / "floor_serve.py")]
    return served(command, env, workers, "/api/uploads/limits", "the floor server")


def settle(name: str, env: dict[str, str]) -> None:
    """Before each measured phase: the dirty pages written back and, on PostgreSQL, a
    checkpoint, so that a phase does not pay for the writes of the one before it
    (the floor's and Pli's phases alternate on the same database)."""
    os.sync()
    if name == "postgresql":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(env["PLI_DATABASE_URL"], autocommit=True) as server:
            server.execute("CHECKPOINT")


def expect_statuses(measured: JSON, expected: str, what: str) -> None:
    """Every answer ``expected``: a phase that failed must not pass for a fast one."""
    wrong = {status: n for status, n in measured["statuses"].items() if status != expected}
    if wrong or measured.get("socket_errors"):
        raise RuntimeError(
            f"{what}: answers other than {expected}: {wrong},"
            f" socket errors {measured.get('socket_errors', 0)}"
        )


# --------------------------------------------------------------------------- ingest


def login(url: str, work: Path, setup: JSON) -> tuple[str, str]:
    """Log in through the API as practice software does; (Cookie header, CSRF token)."""
    import pyotp  # noqa: PLC0415

    client = _client(url, work, setup)
    client.login(SENDER, PASSPHRASE, lambda: pyotp.TOTP(setup["totp"]).now())
    cookies = "; ".join(f"{k}={v}" for k, v in client._cookies.items())
    return cookies, str(client._csrf)


def ingest(
    port: int,
    headers: dict[str, str],
    body: bytes | None,
    *,
    clients: int,
    messages: int,
    warmup: int,
    path: str = "/api/messages",
    work: Path | None = None,  # unused: the signature of ingest_wrk
) -> JSON:
    """``clients`` threads on keep-alive connections send ``messages`` in all (after a warm-up).

    ``body`` None: ``GET path`` instead (the baseline: the same stack, no send).
    """
    counter = iter(range(warmup + messages))
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = threading.Barrier(clients + 1)
    measured_from = [0.0]
    ended = [0.0]

    def take() -> int | None:
        with lock:
            return next(counter, None)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start.wait()
        while (number := take()) is not None:
            if number == warmup:
                measured_from[0] = time.perf_counter()
            began = time.perf_counter()
            connection.request("GET" if body is None else "POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            took = (time.perf_counter() - began) * 1000
            with lock:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if number >= warmup:
                    latencies.append(took)
                ended[0] = time.perf_counter()
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    before = os.times()
    start.wait()
    for thread in threads:
        thread.join()
    after = os.times()
    # This process's CPU (the client threads, and the memory sampler's few reads),
    # over the warm-up and the measured requests: taken from the same 2 cores.
    client_cpu = (after.user - before.user) + (after.system - before.system)
    elapsed = ended[0] - measured_from[0]
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "load_generator": "python",
        "messages": len(latencies),
        "warmup": warmup,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "max_ms": round(ordered[-1], 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "client_cpu_ms_per_message": round(1000 * client_cpu / (warmup + messages), 2),
    }


#: wrk's script: the request, a count of answers by status, a summary line on stdout.
#: ``{...}`` are filled by :func:`ingest_wrk`.
_WRK_SCRIPT = """
local body_path = {body_path}
if body_path ~= "" then
  local file = assert(io.open(body_path, "rb"))
  wrk.body = file:read("*a")
  file:close()
end
wrk.method = {method}
wrk.headers = {headers}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
statuses = {{}}
function response(status, headers, body)
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(counts, string.format('"%s": %d', status, n))
    end
  end
  io.write(string.format(
    'PLI_WRK {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d,'
    .. ' "mean_us": %.1f, "max_us": %d, "socket_errors": %d, "statuses": {{%s}}}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    table.concat(counts, ", ")))
end
"""
#: wrk runs for a time, not a count: the warm-up's, then the measurement's.
WRK_WARMUP_SECONDS = 2
WRK_SECONDS = 8


def _lua(value: str) -> str:
    """A Lua string literal: printable ASCII as is, every other byte as ``\\ddd``
    (the escape every Lua reads; a work directory's name may be UTF-8)."""
    return (
        '"'
        + "".join(
            char
            if " " <= char <= "~" and char not in '"\\'
            else "".join(f"\\{byte:03d}" for byte in char.encode())
            for char in value
        )
        + '"'
    )


def ingest_wrk(
    port: int,
    headers: dict[str, str],
    body: bytes | None,
    *,
    clients: int,
    messages: int,  # unused: wrk runs for WRK_SECONDS
    warmup: int,  # unused: the warm-up lasts WRK_WARMUP_SECONDS
    path: str = "/api/messages",
    work: Path | None = None,
) -> JSON:
    """The same load as :func:`ingest`, generated by ``wrk`` (C, one thread, ``clients``
    keep-alive connections) so that the client takes little of the 2 cores the
    server and the database share with it: a warm-up run, then the measured one."""
    assert work is not None  # noqa: S101 - its files go there
    body_path = work / "wrk-body"
    if body is not None:
        body_path.write_bytes(body)
    script = work / "wrk.lua"
    lua_headers = "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()) + "}"
    script.write_text(
        _WRK_SCRIPT.format(
            body_path=_lua(str(body_path) if body is not None else ""),
            method=_lua("GET" if body is None else "POST"),
            headers=lua_headers,
        )
    )

    def run(seconds: int) -> JSON:
        completed = subprocess.run(
            [
                WRK,
                "-t1",
                f"-c{clients}",
                f"-d{seconds}s",
                "--timeout",
                "60s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in completed.stdout.splitlines() if x.startswith("PLI_WRK "))
        figures: JSON = json.loads(line.removeprefix("PLI_WRK "))
        return figures

    first = run(WRK_WARMUP_SECONDS)
    measured = run(WRK_SECONDS)
    seconds = measured["duration_us"] / 1e6
    statuses: dict[str, int] = {}
    for counts in (first["statuses"], measured["statuses"]):
        for status, count in counts.items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "clients": clients,
        "load_generator": "wrk",
        "messages": measured["requests"],
        "warmup": first["requests"],
        "seconds": round(seconds, 2),
        "messages_per_s": round(measured["requests"] / seconds, 1),
        "p50_ms": round(measured["p50_us"] / 1000, 2),
        "p99_ms": round(measured["p99_us"] / 1000, 2),
        "mean_ms": round(measured["mean_us"] / 1000, 2),
        "max_ms": round(measured["max_us"] / 1000, 2),
        # Warm-up and measurement; a request in flight when wrk stops is answered
        # (and stored) but not counted here.
        "statuses": dict(sorted(statuses.items())),
        "socket_errors": first["socket_errors"] + measured["socket_errors"],
    }


# --------------------------------------------------------------------------- parent


def run_checked(command: list[str], env: dict[str, str], what: str) -> str:
    """``command``'s stdout; if it fails, the end of its stderr, then an error naming ``what``."""
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-5000:])
        raise RuntimeError(f"{what} exited with {completed.returncode}")
    return completed.stdout


def run_child(kind: str, env: dict[str, str], *extra: str) -> JSON:
    output = run_checked([sys.executable, __file__, "--child", kind, *extra], env, f"child {kind}")
    result: JSON = json.loads(output.strip().splitlines()[-1])
    return result


def run_database(
    name: str, env: dict[str, str], work: Path, args: argparse.Namespace, attachment: int
) -> JSON:
    log(f"{name}: setup (migrations, accounts, certificates, envelopes sealed once)")
    setup = run_child("setup", env, "--work", str(work))
    json_path = work / "setup.json"
    json_path.write_text(json.dumps(setup))
    result: JSON = {
        "database_version": setup["database_version"],
        "envelope_bytes": setup["envelope_bytes"],
        "letter_bytes": LETTER_BYTES,
    }
    with pli_serve(env, args.workers) as (port, pid):
        url = f"http://127.0.0.1:{port}"
        # The login verifies the passphrase with Argon2id (64 MiB each, PLI_ARGON2_*):
        # a worker briefly holds 50-60 MB more. Measured here, and over before the
        # next phase starts, so that it is not counted as the attachment's.
        during_login = RssSampler(pid)
        with during_login:
            cookies, csrf = login(url, work, setup)
            time.sleep(0.5)
        result["server_during_login"] = during_login.figures()
        headers = {
            "Cookie": cookies,
            "X-CSRFToken": csrf,
            "Origin": url,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        sampler = RssSampler(pid)
        with sampler:
            pass
        result["server_idle"] = sampler.figures()
        if attachment:
            # First, on the freshly started server: what the 1 GiB costs, not what the load left.
            result["attachment"] = run_attachment(
                url, pid, env, work=work, setup=json_path, size=attachment
            )
            # The case left gigabytes of dirty pages (the file, its ciphertext, the
            # server's spool and blob, the decrypted copy): written back now, so that
            # their write-back does not land in the ingest cases' fsyncs.
            started = time.perf_counter()
            os.sync()
            result["attachment"]["sync_seconds_after"] = round(time.perf_counter() - started, 2)
        with contextlib.ExitStack() as stack:
            floor: tuple[int, int] | None = None
            if not args.skip_floor:
                create_floor_tables(name, env, work)
                floor = stack.enter_context(floor_serve(env, args.workers))
                result["floor"] = {}
            cases: list[tuple[str, str, bytes | None, str]] = [
                ("baseline_authenticated_get", "get", None, "/api/uploads/limits"),
                *(
                    (
                        f"ingest_{count}_recipient{'s' if count > 1 else ''}",
                        f"send_{count}_recipient{'s' if count > 1 else ''}",
                        json.dumps(send_body(setup, count, patient=args.patient)).encode(),
                        "/api/messages",
                    )
                    for count in (1, 10)
                ),
            ]
            for case, floor_case, body, path in cases:
                # The floor just before Pli, for each case: the machine's speed moves
                # within minutes, and the two are read side by side.
                if floor is not None:
                    result["floor"][floor_case] = measure(
                        name,
                        f"floor {floor_case}",
                        floor,
                        headers=FLOOR_HEADERS,
                        body=body,
                        path=path,
                        args=args,
                        work=work,
                        env=env,
                    )
                result[case] = measure(
                    name,
                    case,
                    (port, pid),
                    headers=headers,
                    body=body,
                    path=path,
                    args=args,
                    work=work,
                    env=env,
                )
            # The same messages, args.batch per request (POST /api/messages/batch, REQ-LPS),
            # from args.batch_clients connections: a few practice systems sending in bulk.
            for count in (1, 10) if args.batch > 1 else ():
                item = send_body(setup, count, patient=args.patient)
                case = f"ingest_batch_{count}_recipient{'s' if count > 1 else ''}"
                result[case] = measure(
                    name,
                    case,
                    (port, pid),
                    headers=headers,
                    body=json.dumps({"messages": [item] * args.batch}).encode(),
                    path="/api/messages/batch",
                    args=args,
                    work=work,
                    env=env,
                    batch=args.batch,
                    clients=args.batch_clients,
                )
    if "floor" in result:
        # Pli's rate as a share of the floor's, measured just before it on the same load.
        result["share_of_floor"] = {
            case: round(result[case]["messages_per_s"] / base["messages_per_s"], 3)
            for case, base in (
                ("baseline_authenticated_get", result["floor"]["get"]),
                ("ingest_1_recipient", result["floor"]["send_1_recipient"]),
                ("ingest_10_recipients", result["floor"]["send_10_recipients"]),
            )
        }
    result["stored"] = run_child("count", env)
    return result


#: The patient a benchmark's messages are about: a valid NIR (its key checks), whom no
#: opposition names. A real send declares its patient (issue 5; REQ-OPPOSITION), and the
#: server then checks the opposition register: one more query per send, measured here.
PATIENT_NIR = "185057800608491"


def send_body(setup: JSON, count: int, *, patient: bool = True) -> JSON:
    """The body of a send of the pre-sealed envelope to ``count`` recipients (1 or 10);
    a batch's items have the same fields. ``patient``: with the patient's identifier."""
    body: JSON = {
        "from": SENDER,
        "recipients": RECIPIENTS[:count],
        "envelope": setup["envelopes"][str(count)],
    }
    if patient:
        body["patient_id"] = PATIENT_NIR
    return body


def create_floor_tables(name: str, env: dict[str, str], work: Path) -> None:
    """floor_app's tables, beside Pli's in its database (floor_* names: they do not meet)."""
    if name == "postgresql":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(env["PLI_DATABASE_URL"], autocommit=True) as server:
            for statement in (*FLOOR_SCHEMA, *FLOOR_SCHEMA_POSTGRESQL):
                server.execute(statement.format(id="BIGSERIAL", blob="BYTEA"))
        return
    import sqlite3  # noqa: PLC0415

    connection = sqlite3.connect(work / "data" / "pli.sqlite3")
    try:
        for statement in FLOOR_SCHEMA:
            connection.execute(statement.format(id="INTEGER", blob="BLOB"))
        connection.commit()
    finally:
        connection.close()


def measure(
    name: str,
    label: str,
    server: tuple[int, int],
    *,
    headers: dict[str, str],
    body: bytes | None,
    path: str,
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    batch: int = 1,
    clients: int | None = None,
) -> JSON:
    """One phase against ``server`` (port, pid), measured the same way for Pli and the floor:
    the rate and latencies, the server's memory, the CPU of the server and of PostgreSQL.

    ``batch``: messages per request (``POST /api/messages/batch``); the rate and the CPU
    are then given per message, the latencies per request (a message is accepted when
    its batch's answer comes)."""
    port, pid = server
    settle(name, env)
    load_generator = ingest_wrk if args.load_generator == "wrk" else ingest
    load = load_average()
    # Every second, not every 50 ms: the sampler's own reading of /proc took about a
    # fifth of a core from the server it measures. The memory target is the 1 GiB case's,
    # sampled every 50 ms (run_attachment).
    sampler = RssSampler(pid, interval=1.0)
    with sampler, CpuMeter(pid) as cpu:
        measured = load_generator(
            port,
            headers,
            body,
            clients=clients or args.clients,
            messages=max(args.messages // batch, 100),
            warmup=WARMUP,
            path=path,
            work=work,
        )
    measured |= sampler.figures()
    if batch > 1:
        measured["batch"] = batch
        measured["requests"] = measured["messages"]
        measured["requests_per_s"] = measured["messages_per_s"]
        measured["messages"] = measured["requests"] * batch
        measured["messages_per_s"] = round(measured["requests_per_s"] * batch, 1)
        measured["warmup"] *= batch
    # Over the warm-up and the measured requests (the meter cannot tell them apart).
    measured |= cpu.per_message(measured["messages"] + measured["warmup"])
    measured["load_average_before"] = load
    measured["load_average_after"] = load_average()
    expect_statuses(measured, "200" if body is None else "201", f"{name}: {label}")
    log(
        f"{name}: {label}: {measured['messages_per_s']}"
        f" {'messages' if batch > 1 else 'requests'}/s,"
        f" p50 {measured['p50_ms']} ms, p99 {measured['p99_ms']} ms,"
        f" CPU {measured['server_cpu_ms_per_message']} ms (server)"
        f" + {measured['postgresql_cpu_ms_per_message']} ms (PostgreSQL) per"
        f" {'message' if batch > 1 else 'request'}"
    )
    return measured


def run_attachment(
    url: str, pid: int, env: dict[str, str], *, work: Path, setup: Path, size: int
) -> JSON:
    log(f"attachment: {size} bytes up (encrypt, chunked upload, send)")
    sampler = RssSampler(pid)
    with sampler:
        pass
    idle = sampler.figures()
    load = load_average()
    with sampler:
        up = run_child(
            "upload",
            env,
            "--url",
            url,
            "--work",
            str(work),
            "--setup",
            str(setup),
            "--size",
            str(size),
        )
    up |= sampler.figures()
    log(f"attachment: up in {up['seconds']} s; down (streamed download and decryption)")
    with sampler:
        down = run_child(
            "download",
            env,
            "--url",
            url,
            "--work",
            str(work),
            "--setup",
            str(setup),
            "--message",
            up["message"],
        )
    down |= sampler.figures()
    (work / "scan.pdf").unlink(missing_ok=True)
    if not down["identical"]:
        # A transfer that lost or changed a byte must not pass for a fast one.
        raise RuntimeError("attachment: the file downloaded is not the file uploaded")
    for phase in (up, down):
        # What the transfer added to the server at its peak: whether memory grows with the
        # attachment's size (issue 5, item 5), apart from what the idle server already holds.
        phase["server_growth_over_idle_mb"] = {
            "rss_sum": round(phase["server_peak_rss_mb"] - idle["server_peak_rss_mb"], 1),
            "pss_sum": round(phase["server_peak_pss_mb"] - idle["server_peak_pss_mb"], 1),
        }
    return {
        "bytes": size,
        "server_idle": idle,
        "upload": up,
        "download": down,
        "load_average_before": load,
        "load_average_after": load_average(),
    }


def server_env(base: dict[str, str], work: Path, name: str) -> dict[str, str]:
    """``base`` and a throw-away Pli's settings: data directory and CA under ``work``."""
    return {
        **base,
        "PLI_DATA_DIR": str(work / "data"),
        "PLI_SECRET_KEY": f"{name}-secret-key-" + "x" * 32,
        "PLI_EMAIL": "file",
        "PLI_LOG_LEVEL": "WARNING",
        "PLI_CA_DIR": str(work / "ca"),
        "PLI_CA_PASSPHRASE": CA_PASSPHRASE,
    }


def postgres_database(admin_url: str, name: str) -> str:
    import psycopg  # noqa: PLC0415

    parts = urlsplit(admin_url)
    with psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg  # noqa: PLC0415

    parts = urlsplit(admin_url)
    with psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> JSON:
    import importlib.metadata  # noqa: PLC0415

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": importlib.metadata.version("django"),
        "gunicorn": importlib.metadata.version("gunicorn"),
        "psycopg": importlib.metadata.version("psycopg"),
    }


def verdict(cases: JSON) -> JSON:
    result: JSON = {}
    postgres = cases.get("postgresql")
    # One message per request, then the batch endpoint (POST /api/messages/batch), each
    # judged on its own: a reader sees which way of sending meets which target.
    for suffix, prefix in (("", "ingest_"), ("_batch", "ingest_batch_")):

        def chosen(key: str, prefix: str = prefix) -> bool:
            return key.startswith(prefix) and (prefix != "ingest_" or "batch" not in key)

        if postgres:
            rates = [postgres[k]["messages_per_s"] for k in postgres if chosen(k)]
            if rates:
                result[f"postgresql_messages_per_s_min{suffix}"] = (
                    min(rates) >= TARGETS["postgresql_messages_per_s_min"]
                )
        p99 = [c[k]["p99_ms"] for c in cases.values() for k in c if chosen(k)]
        if p99:
            result[f"p99_ms_max{suffix}"] = max(p99) < TARGETS["p99_ms_max"]
    for case in cases.values():
        attachment = case.get("attachment")
        if attachment:
            limit = TARGETS["attachment_peak_rss_mb_max"]
            phases = (attachment["upload"], attachment["download"])
            result["attachment_client_peak_rss_mb"] = max(p["peak_rss_mb"] for p in phases) < limit
            result["attachment_server_peak_rss_sum_mb"] = (
                max(p["server_peak_rss_mb"] for p in phases) < limit
            )
            # Judged on the sum of PSS (decision 0015); the sum of RSS, which counts every
            # page shared since the fork once per process, stays beside it.
            result["attachment_server_peak_pss_sum_mb"] = (
                max(p["server_peak_pss_mb"] for p in phases) < limit
            )
            result["attachment_server_peak_one_process_rss_mb"] = (
                max(p["server_peak_rss_one_process_mb"] for p in phases) < limit
            )
    return result


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="measured sends per case")
    parser.add_argument(
        "--clients", type=int, default=8, help="keep-alive connections (client threads)"
    )
    parser.add_argument(
        "--load-generator",
        choices=["wrk", "python"],
        default="python",
        help="Python threads on http.client (default), or wrk (Debian package wrk)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (pli serve)")
    parser.add_argument(
        "--batch",
        type=int,
        default=20,
        help="messages per request in the batch cases (POST /api/messages/batch; 1: none)",
    )
    parser.add_argument(
        "--batch-clients", type=int, default=2, help="keep-alive connections, batch cases"
    )
    parser.add_argument(
        "--attachment-mb",
        type=float,
        default=1024.0,
        help="attachment size in MiB (0: none); default 1 GiB",
    )
    parser.add_argument(
        "--no-patient",
        dest="patient",
        action="store_false",
        help="sends without a patient identifier (no opposition-register query)",
    )
    parser.add_argument("--quick", action="store_true", help="500 messages, a 50 MiB attachment")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--skip-floor",
        action="store_true",
        help="leave out the stack's floor (floor_app.py: gunicorn and Django, none of Pli)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--workdir", default=None, help="where the data directories go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--message", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.child:
        work = Path(args.work) if args.work else Path()
        setup = json.loads(Path(args.setup).read_text()) if args.setup else {}
        if args.child == "setup":
            output = child_setup(work)
        elif args.child == "count":
            output = child_count()
        elif args.child == "upload":
            output = child_upload(args.url, work, setup, args.size)
        else:
            output = child_download(args.url, work, setup, args.message)
        print(json.dumps(output))
        return

    if args.quick:
        args.messages = min(args.messages, 500)
        args.attachment_mb = min(args.attachment_mb, 50)
    attachment = int(args.attachment_mb * MIB)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    root = Path(tempfile.mkdtemp(prefix="pli-bench-messaging-", dir=args.workdir))
    cases: JSON = {}
    started = dt.datetime.now(dt.UTC)
    databases = [
        name
        for name, skipped in (("sqlite", args.skip_sqlite), ("postgresql", args.skip_postgres))
        if not skipped
    ]
    try:
        for name in databases:
            work = root / name
            work.mkdir()
            env = server_env(base, work, "bench-messaging")
            database = f"pli_bench_messaging_{os.getpid()}"
            if name == "postgresql":
                env["PLI_DATABASE_URL"] = postgres_database(args.postgres_url, database)
            # The attachment once: on PostgreSQL (production), or on SQLite alone.
            with_attachment = attachment if name == databases[-1] else 0
            try:
                cases[name] = run_database(name, env, work, args, with_attachment)
            finally:
                if name == "postgresql":
                    drop_postgres(args.postgres_url, database)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "messaging",
                "date": started.isoformat(timespec="seconds"),
                "machine": machine(),
                "parameters": {
                    "messages": args.messages,
                    "warmup": WARMUP,
                    "clients": args.clients,
                    "load_generator": args.load_generator,
                    "workers": args.workers,
                    "threads_per_worker": 4,
                    "attachment_bytes": attachment,
                    "batch": args.batch,
                    "batch_clients": args.batch_clients,
                    "patient_id": PATIENT_NIR if args.patient else None,
                },
                "cases": cases,
                "targets": TARGETS,
                "verdict": verdict(cases),
                "client_peak_rss_mb": round(status_mb("VmHWM"), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
