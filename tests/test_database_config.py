"""PostgreSQL settings: values bound by the server, repeated statements prepared (issue 5).

A send's statements cost PostgreSQL about 1 ms of planning each time; a
statement that a connection runs again and again is prepared there once.
``PLI_DATABASE_PREPARED=false`` turns preparing off for a pooler that cannot
keep prepared statements.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from pli.server.accounts.models import User
from pli.server.config import database


def test_postgresql_binds_on_the_server_and_prepares_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLI_DATABASE_URL", "postgres://pli@db.example:5432/pli")
    monkeypatch.delenv("PLI_DATABASE_PREPARED", raising=False)
    options = database(tmp_path)["OPTIONS"]
    assert options == {"server_side_binding": True, "prepare_threshold": 5}


def test_preparing_can_be_turned_off_for_a_transaction_pooler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLI_DATABASE_URL", "postgres://pli@db.example:5432/pli")
    monkeypatch.setenv("PLI_DATABASE_PREPARED", "false")
    options = database(tmp_path)["OPTIONS"]
    assert options == {"server_side_binding": True, "prepare_threshold": None}


@pytest.mark.django_db
def test_a_repeated_query_is_prepared_in_its_connection() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no server-side prepared statements")
    for _ in range(6):
        assert not User.objects.filter(username="personne@pli.test").exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE NOT from_sql AND statement LIKE %s",
            ['%"accounts_user"%'],
        )
        prepared = [row[0] for row in cursor.fetchall()]
    assert prepared, "the query run six times was not prepared"
