"""FHIR R4 read API of the directory (filled by the FHIR export)."""

from django.urls import path  # noqa: F401 - routes are added by the FHIR module

urlpatterns: list[object] = []
