"""Identifier keys in the ``C`` collation on PostgreSQL (REQ-DIRECTORY).

These columns hold codes (the national identification, the RPPS or ADELI
number, the structure's technical id, FINESS and SIRET numbers, the key of an
activity) and are only ever compared for equality. In the database's default
collation (``C.UTF-8`` on the project's machines) every comparison goes through
the C library, and PostgreSQL sorts such text without abbreviated keys:
building the unique index of the 2,000,000 activity keys, after a first import
(see ``importing._SetAside``), took 7.7 s of its 70 s. In ``C`` the same
comparisons are of bytes. Equality is the same in both (deterministic
collations compare equal only what is byte for byte equal), so no lookup and
no unique key changes meaning.

SQLite compares text as bytes already (``BINARY``): nothing to do there. The
models do not say it (``db_collation`` would be written on SQLite too, which
has no collation of that name): a later ``AlterField`` of one of these columns
must write ``COLLATE "C"`` again on PostgreSQL.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

#: (table, column, varchar length) as the models declare them.
COLUMNS = (
    ("directory_professional", "national_id", 40),
    ("directory_professional", "identifier", 32),
    ("directory_organisation", "technical_id", 64),
    ("directory_organisation", "finess_site", 9),
    ("directory_organisation", "siret", 14),
    ("directory_activity", "activity_key", 64),
)


def _collate(schema_editor: BaseDatabaseSchemaEditor, collation: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for table, column, length in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)}"
            f" TYPE varchar({length:d}) COLLATE {collation}"
        )


def to_c(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _collate(schema_editor, '"C"')


def to_default(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _collate(schema_editor, '"default"')


class Migration(migrations.Migration):
    dependencies = [
        ("directory", "0003_lean_import_search_indexes"),
    ]

    operations = [
        migrations.RunPython(to_c, to_default, elidable=False),
    ]
