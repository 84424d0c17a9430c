from django.contrib import admin
from django.urls import include, path

from pli.server.api import api
from pli.server.directory import views as directory_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("fhir/", include("pli.server.directory.fhir_urls")),
    path("", directory_views.home, name="home"),
    path("annuaire/", directory_views.search_page, name="directory-search"),
]
