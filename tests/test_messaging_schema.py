"""The messaging tables carry no index that another index of theirs already gives.

Each index is one more insertion per row a send writes (a delivery per
recipient, a copy per mailbox), inside the send's transaction: the three such
duplicates on the send's tables took PostgreSQL's CPU for a ten-recipient
send's one statement from 0.595 to 0.835 ms (one pair of runs,
benchmarks/README.md, "Messaging"). Checked on the database itself, SQLite
or PostgreSQL, as the migrations leave it.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection

#: The send's tables, and the foreign keys whose own index messaging 0004 dropped.
_DROPPED = {
    ("messaging_delivery", "message_id"),
    ("messaging_messageblob", "message_id"),
    ("messaging_messagecopy", "mailbox_id"),
    ("messaging_messagecopy", "message_id"),
    ("messaging_upload", "owner_id"),
}


def _indexes(table: str) -> list[tuple[str, list[str], bool]]:
    """(name, columns, unique) of every index and unique constraint of ``table``."""
    with connection.cursor() as cursor:
        found: dict[str, dict[str, Any]] = connection.introspection.get_constraints(cursor, table)
    return [
        (name, list(c["columns"]), bool(c["unique"]))
        for name, c in found.items()
        if (c["index"] or c["unique"]) and c["columns"]
    ]


def _redundant(table: str) -> list[str]:
    """Non-unique indexes whose columns begin another index (a B-tree serves any prefix)."""
    indexes = _indexes(table)
    return [
        f"{name} {columns} <= {other} {other_columns}"
        for name, columns, unique in indexes
        if not unique
        for other, other_columns, _unique in indexes
        if other != name and other_columns[: len(columns)] == columns
    ]


def _messaging_tables() -> list[str]:
    return [model._meta.db_table for model in apps.get_app_config("messaging").get_models()]


@pytest.mark.django_db
def test_no_messaging_table_has_an_index_that_another_begins_with() -> None:
    tables = _messaging_tables()
    assert {"messaging_delivery", "messaging_messagecopy", "messaging_message"} <= set(tables)
    assert {table: _redundant(table) for table in tables} == {table: [] for table in tables}
    # The lookups those indexes served are still served by an index that begins with them.
    for table, column in _DROPPED:
        assert any(columns[0] == column for _n, columns, _u in _indexes(table)), (table, column)


@pytest.mark.django_db(transaction=True)
def test_rolling_back_messaging_0004_puts_the_indexes_back() -> None:
    def single_column(table: str, column: str) -> bool:
        return any(cols == [column] and not u for _n, cols, u in _indexes(table))

    try:
        call_command("migrate", "messaging", "0003", verbosity=0)
        assert all(single_column(table, column) for table, column in _DROPPED)
        assert _redundant("messaging_messagecopy")  # what 0004 removes
    finally:
        call_command("migrate", "messaging", verbosity=0)
    assert not any(single_column(table, column) for table, column in _DROPPED)
    assert _redundant("messaging_messagecopy") == []
