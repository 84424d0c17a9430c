"""Small envelopes in the database, beside their message (decision 0013)."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def _no_compression(apps: Any, schema_editor: Any) -> None:
    # Ciphertext does not compress: PostgreSQL would try pglz on every value over
    # 2 kB before storing it out of line anyway (TOAST); EXTERNAL skips the try.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE messaging_messageenvelope ALTER COLUMN data SET STORAGE EXTERNAL"
        )


def _refuse_to_drop_envelopes(apps: Any, schema_editor: Any) -> None:
    # Rolling back drops the table: the envelopes kept there would be lost for good,
    # and their messages unreadable (envelope_unavailable). Only an empty table goes.
    kept = apps.get_model("messaging", "MessageEnvelope").objects.using(
        schema_editor.connection.alias
    )
    if kept.exists():
        raise RuntimeError(
            f"{kept.count()} messages keep their envelope in the database (decision 0013):"
            " rolling back messaging 0003 would lose them; keep this migration"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0002_uploads"),
    ]

    operations = [
        migrations.CreateModel(
            name="MessageEnvelope",
            fields=[
                (
                    "message",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="messaging.message",
                    ),
                ),
                ("data", models.BinaryField()),
            ],
            options={
                "verbose_name": "enveloppe chiffrée",
                "verbose_name_plural": "enveloppes chiffrées",
            },
        ),
        # After the table's creation, hence before its removal when rolled back.
        migrations.RunPython(_no_compression, _refuse_to_drop_envelopes),
        migrations.AlterField(
            model_name="message",
            name="envelope_blob",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
