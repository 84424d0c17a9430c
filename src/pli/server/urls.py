from django.contrib import admin
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from pli.server.api import api
from pli.server.directory import views as directory_views

# The console has no login of its own: it goes through Pli's (passphrase + second
# factor, REQ-AUTH-STRONG), never Django's single-factor admin login form.
admin.site.login = RedirectView.as_view(url=reverse_lazy("accounts:login"))  # type: ignore[method-assign,assignment]
admin.site.site_header = "Pli — console d'administration"

urlpatterns = [
    # Tried in order: the API, which practice software calls most, first.
    path("api/", api.urls),
    path("admin/", admin.site.urls),
    path("compte/", include("pli.server.accounts.urls")),
    # The footer's language switch: Django's set_language (a POST with its CSRF token).
    path("i18n/", include("django.conf.urls.i18n")),
    path("fhir/", include("pli.server.directory.fhir_urls")),
    path("messagerie/", include("pli.server.webmail.urls")),
    path("", directory_views.home, name="home"),
    path("annuaire/", directory_views.search_page, name="directory-search"),
]

# Pli's answers, in the interface's language, JSON under /api/ (pli/server/errors.py).
handler400 = "pli.server.errors.bad_request"
handler403 = "pli.server.errors.permission_denied"
handler404 = "pli.server.errors.page_not_found"
handler500 = "pli.server.errors.server_error"
