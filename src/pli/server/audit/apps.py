from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "pli.server.audit"
    label = "audit"
    verbose_name = _("Journal d'audit")

    def ready(self) -> None:
        # Admin changes and directory imports are traced without those apps knowing (REQ-TRACE).
        from pli.server.audit import signals  # noqa: PLC0415 - models are ready only now

        signals.connect()
