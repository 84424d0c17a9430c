"""Memory of a process tree, read from /proc: shared by the benchmark scripts.

``RssSampler`` samples, every 50 ms, the sum of VmRSS over a process and its
descendants (pages shared since a fork counted in each process) and the sum
of their PSS (each shared page counted once: the memory really used).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

MB = 1_000_000
JSON = dict[str, Any]


def status_mb(field: str, pid: int | str = "self") -> float:
    """A ``/proc/<pid>/status`` value (VmRSS, VmHWM), in MB; 0 if the process is gone."""
    return status_fields_mb(pid, (field,))[field]


def status_fields_mb(pid: int | str, fields: tuple[str, ...]) -> dict[str, float]:
    """Several ``/proc/<pid>/status`` values from one read, in MB (0 if gone)."""
    found = dict.fromkeys(fields, 0.0)
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name = line.split(":", 1)[0]
        if name in found:
            found[name] = int(line.split()[1]) * 1024 / MB
    return found


#: What a process's resident set is made of: its own memory, mapped files, shared memory.
_PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (gunicorn's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += children.get(pid, [])
    return found


def pss_mb(pid: int) -> float:
    """Proportional set size: pages shared since gunicorn's fork counted once in all."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


class RssSampler:
    """Peaks over gunicorn's processes, sampled every ``interval`` (50 ms) while active.

    ``peak`` is the largest sum of VmRSS over the master and the workers (pages
    shared since the fork are counted in each process), ``peak_workers`` the
    same over the workers only, ``peak_pss`` the largest sum of PSS (each
    shared page counted once: the memory really used), ``peak_process`` the
    largest VmRSS of one process, and ``peak_process_parts`` what that
    process's resident set was made of at that moment (anonymous memory,
    mapped files, shared memory; whether the master or a worker): a peak
    that appears in some runs only (benchmarks/README.md) can then be told
    apart from the page cache of a mapped file.
    """

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        #: Seconds between samples. A sample reads every process's ``/proc/<pid>/stat``
        #: (to find the tree) and three ``smaps_rollup``: every 50 ms, about a fifth of a
        #: core, taken from the server while a throughput phase runs (issue 5).
        self.interval = interval
        self.peak = self.peak_workers = self.peak_pss = self.peak_process = 0.0
        self.peak_process_parts: JSON = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _measure(self) -> None:
        pids = process_tree(self.root)
        parts = {pid: status_fields_mb(pid, _PARTS) for pid in pids}
        rss = {pid: found["VmRSS"] for pid, found in parts.items()}
        self.peak = max(self.peak, sum(rss.values()))
        workers = sum(v for pid, v in rss.items() if pid != self.root)
        self.peak_workers = max(self.peak_workers, workers)
        largest = max(rss, key=lambda pid: rss[pid])
        if rss[largest] > self.peak_process:
            self.peak_process = rss[largest]
            self.peak_process_parts = {
                "process": "master" if largest == self.root else "worker",
                "anon_mb": round(parts[largest]["RssAnon"], 1),
                "file_mb": round(parts[largest]["RssFile"], 1),
                "shmem_mb": round(parts[largest]["RssShmem"], 1),
            }
        self.peak_pss = max(self.peak_pss, sum(pss_mb(pid) for pid in pids))

    def figures(self) -> JSON:
        return {
            "server_peak_rss_mb": round(self.peak, 1),
            "server_peak_rss_workers_mb": round(self.peak_workers, 1),
            "server_peak_pss_mb": round(self.peak_pss, 1),
            "server_peak_rss_one_process_mb": round(self.peak_process, 1),
            "server_peak_one_process_parts": self.peak_process_parts,
        }

    def __enter__(self) -> RssSampler:
        self.peak = self.peak_workers = self.peak_pss = self.peak_process = 0.0
        self.peak_process_parts = {}
        self._measure()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._measure()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
