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
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


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
    """Peaks over gunicorn's processes, sampled every 50 ms while active.

    ``peak`` is the largest sum of VmRSS over the master and the workers (pages
    shared since the fork are counted in each process), ``peak_workers`` the
    same over the workers only, ``peak_pss`` the largest sum of PSS (each
    shared page counted once: the memory really used), ``peak_process`` the
    largest VmRSS of one process.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = self.peak_workers = self.peak_pss = self.peak_process = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _measure(self) -> None:
        pids = process_tree(self.root)
        rss = {pid: status_mb("VmRSS", pid) for pid in pids}
        self.peak = max(self.peak, sum(rss.values()))
        workers = sum(v for pid, v in rss.items() if pid != self.root)
        self.peak_workers = max(self.peak_workers, workers)
        self.peak_process = max(self.peak_process, *rss.values())
        self.peak_pss = max(self.peak_pss, sum(pss_mb(pid) for pid in pids))

    def figures(self) -> JSON:
        return {
            "server_peak_rss_mb": round(self.peak, 1),
            "server_peak_rss_workers_mb": round(self.peak_workers, 1),
            "server_peak_pss_mb": round(self.peak_pss, 1),
            "server_peak_rss_one_process_mb": round(self.peak_process, 1),
        }

    def __enter__(self) -> RssSampler:
        self.peak = self.peak_workers = self.peak_pss = self.peak_process = 0.0
        self._measure()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._measure()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
