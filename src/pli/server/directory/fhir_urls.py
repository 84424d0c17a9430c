"""FHIR R4 read API of the directory, mounted at ``/fhir/`` (see :mod:`.fhir`)."""

from __future__ import annotations

from django.urls import path, re_path

from pli.server.directory import fhir

urlpatterns = [
    path("metadata", fhir.capability_statement, name="fhir-metadata"),
    path("Practitioner", fhir.practitioner_search, name="fhir-practitioner-search"),
    path("Practitioner/<str:resource_id>", fhir.practitioner_read, name="fhir-practitioner"),
    path(
        "PractitionerRole",
        fhir.practitioner_role_search,
        name="fhir-practitionerrole-search",
    ),
    path(
        "PractitionerRole/<str:resource_id>",
        fhir.practitioner_role_read,
        name="fhir-practitionerrole",
    ),
    path("Organization", fhir.organization_search, name="fhir-organization-search"),
    path("Organization/<str:resource_id>", fhir.organization_read, name="fhir-organization"),
    # Anything else under /fhir/ answers an OperationOutcome, not Django's HTML 404.
    re_path(r"^(?P<path>.*)$", fhir.unknown, name="fhir-unknown"),
]
