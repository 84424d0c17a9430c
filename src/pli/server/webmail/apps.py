from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WebmailConfig(AppConfig):
    name = "pli.server.webmail"
    label = "webmail"
    verbose_name = _("Messagerie web")
