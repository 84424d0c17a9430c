"""Serve ``floor_app`` exactly as ``pli serve`` serves Pli: ``pli.server.serve.run``.

The same gunicorn master, worker class, workers, threads and access log
(format and logger), so that the messaging benchmark's floor differs from
Pli's server only by the application. Started by ``bench_messaging.py``::

    python benchmarks/floor_serve.py --bind 127.0.0.1:PORT --workers 2
"""

from __future__ import annotations

import argparse
from typing import Any

from pli.server.serve import run


def floor_application() -> Any:
    """In each worker, after the fork (as Pli's application is loaded)."""
    from floor_app import application  # noqa: PLC0415 - Django is configured there

    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--workers", required=True, type=int)
    arguments = parser.parse_args()
    run(arguments.bind, arguments.workers, floor_application)


if __name__ == "__main__":
    main()
