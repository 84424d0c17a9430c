from typing import Any

from django.db import migrations


def create_first_charter(apps: Any, schema_editor: Any) -> None:
    from pli.server.accounts.charter_default import TEXT_EN, TEXT_FR  # noqa: PLC0415

    charter = apps.get_model("accounts", "Charter")
    if not charter.objects.exists():
        charter.objects.create(version=1, text_fr=TEXT_FR, text_en=TEXT_EN)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(create_first_charter, migrations.RunPython.noop)]
