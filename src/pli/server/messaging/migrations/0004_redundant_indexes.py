"""No index that another index of the same table already begins with.

A send writes one delivery per recipient and one copy per mailbox; each index
of those tables is one more insertion per row, paid inside the send's
transaction (benchmarks/README.md, "Messaging"). Five single-column indexes
duplicated the leading column of a unique constraint or of a listing index,
which serve the same lookups (a B-tree is read by any prefix of its columns).

The indexes are dropped by name, the same on both databases: on SQLite,
Django's ``AlterField`` would rebuild each table, copying every row.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

#: (index, table, column): Django's own names for the ``db_index`` of each field.
_DROPPED = [
    ("messaging_delivery_message_id_e5d46cf3", "messaging_delivery", "message_id"),
    ("messaging_messageblob_message_id_8c68a664", "messaging_messageblob", "message_id"),
    ("messaging_messagecopy_mailbox_id_5f440d6d", "messaging_messagecopy", "mailbox_id"),
    ("messaging_messagecopy_message_id_7b58cf27", "messaging_messagecopy", "message_id"),
    ("messaging_upload_owner_id_01d33973", "messaging_upload", "owner_id"),
]


#: What the models now say: no ``db_index`` on these five foreign keys.
_STATE = [
    migrations.AlterField(
        model_name="delivery",
        name="message",
        field=models.ForeignKey(
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="deliveries",
            to="messaging.message",
        ),
    ),
    migrations.AlterField(
        model_name="messageblob",
        name="message",
        field=models.ForeignKey(
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="blobs",
            to="messaging.message",
        ),
    ),
    migrations.AlterField(
        model_name="messagecopy",
        name="mailbox",
        field=models.ForeignKey(
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="+",
            to="directory.mailbox",
        ),
    ),
    migrations.AlterField(
        model_name="messagecopy",
        name="message",
        field=models.ForeignKey(
            db_index=False,
            on_delete=django.db.models.deletion.CASCADE,
            related_name="copies",
            to="messaging.message",
        ),
    ),
    migrations.AlterField(
        model_name="upload",
        name="owner",
        field=models.ForeignKey(
            db_index=False,
            null=True,
            on_delete=django.db.models.deletion.SET_NULL,
            related_name="+",
            to=settings.AUTH_USER_MODEL,
        ),
    ),
]


class Migration(migrations.Migration):
    dependencies = [
        ("directory", "0004_identifier_keys_in_c_collation"),
        ("messaging", "0003_envelopes_in_database"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=_STATE,
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{index}"',
                    reverse_sql=f'CREATE INDEX "{index}" ON "{table}" ("{column}")',
                )
                for index, table, column in _DROPPED
            ],
        )
    ]
