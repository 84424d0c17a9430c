"""Settings for the test suite: Pli's own, with a throw-away data directory and secret.

``PLI_DATABASE_URL`` is left to the caller: ``./run test`` runs the suite on
SQLite, then the database tests again on PostgreSQL.
"""

import os
import tempfile

os.environ.setdefault("PLI_DATA_DIR", tempfile.mkdtemp(prefix="pli-test-"))
# Argon2id stays the algorithm, with a cost fit for hundreds of test logins.
os.environ.setdefault("PLI_ARGON2_MEMORY_KIB", "1024")
os.environ.setdefault("PLI_ARGON2_TIME", "1")
os.environ.setdefault("PLI_ARGON2_PARALLELISM", "1")
os.environ.setdefault("PLI_SECRET_KEY", "test-secret-key-" + "x" * 32)
# The suite chains the audit journal in the committing request (decision 0010's
# first form): pytest-django empties the tables between tests, and a background
# run could write a checkpoint after that. tests/test_audit_sequencer.py runs the
# background sequencer itself, and stops it before its test ends.
os.environ.setdefault("PLI_AUDIT_SEQUENCER_DELAY_MS", "0")

from pli.server.settings import *  # noqa: F403

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise wants it to exist
