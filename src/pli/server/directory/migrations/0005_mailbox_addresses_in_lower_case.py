"""Every mailbox address in lower case, as ``normalise_address`` gives it.

Lookups by address were exact on the unique index, then, for what they did not
find, case-insensitive (``iexact``): one condition per address, which no index
serves (a scan of the directory for each unknown address) and which SQLite
refuses past about a thousand ("Expression tree is too large"). Only an entry
made by hand (the admin) could hold capitals; ``Mailbox.save`` now lowers
them, and this migration lowers those already stored (addresses are ASCII:
SQL's ``LOWER`` and Python's agree on them).

Two entries that differ only by case are one mailbox twice: the migration stops
and names them, for the operator to merge or remove one before migrating again.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps
from django.db.models import Count
from django.db.models.functions import Lower


def lower_addresses(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    mailbox = apps.get_model("directory", "Mailbox")
    twice = list(
        mailbox.objects.annotate(lowered=Lower("address"))
        .values("lowered")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("lowered", flat=True)[:20]
    )
    if twice:
        raise RuntimeError(
            "mailbox addresses that differ only by case (merge or remove one, then migrate"
            " again): " + ", ".join(twice)
        )
    mailbox.objects.exclude(address=Lower("address")).update(address=Lower("address"))


class Migration(migrations.Migration):
    dependencies = [
        ("directory", "0004_identifier_keys_in_c_collation"),
    ]

    operations = [
        migrations.RunPython(lower_addresses, migrations.RunPython.noop, elidable=True),
    ]
