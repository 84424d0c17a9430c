"""The web mail's attachments being encrypted are uploads too (state ``sealing``).

Only the field's choices change: no SQL on either database.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0004_redundant_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="upload",
            name="state",
            field=models.CharField(
                choices=[
                    ("receiving", "En cours"),
                    ("sealing", "Chiffrement en cours"),
                    ("complete", "Terminé"),
                ],
                max_length=16,
            ),
        ),
    ]
