"""The directory in the admin console (French first)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from pli.server.directory.models import (
    Activity,
    ImportRun,
    Mailbox,
    MailboxCertificate,
    Organisation,
    Professional,
)


class ActivityInline(admin.TabularInline[Activity, Professional]):
    model = Activity
    extra = 0
    fields = ("organisation", "skill", "practice_mode", "sector", "active")
    raw_id_fields = ("organisation",)


@admin.register(Professional)
class ProfessionalAdmin(admin.ModelAdmin[Professional]):
    list_display = ("last_name", "first_name", "national_id", "profession", "active")
    list_filter = ("active", "identifier_type", "category")
    search_fields = ("name_key", "national_id", "identifier")
    readonly_fields = ("name_key", "last_import", "updated_at")
    inlines = [ActivityInline]


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin[Organisation]):
    list_display = ("name", "finess_site", "siret", "postcode", "city", "active")
    list_filter = ("active",)
    search_fields = ("name", "trade_name", "finess_site", "siret", "technical_id", "city")
    readonly_fields = ("last_import", "updated_at")


class CertificateInline(admin.TabularInline[MailboxCertificate, Mailbox]):
    model = MailboxCertificate
    extra = 0
    fields = ("serial", "fingerprint", "not_before", "not_after", "revoked_at")
    readonly_fields = ("serial", "fingerprint", "not_before", "not_after")


@admin.register(Mailbox)
class MailboxAdmin(admin.ModelAdmin[Mailbox]):
    list_display = ("address", "kind", "professional", "organisation", "red_list", "active")
    list_filter = ("kind", "red_list", "active")
    search_fields = ("address",)
    raw_id_fields = ("professional", "organisation")
    inlines = [CertificateInline]


@admin.register(ImportRun)
class ImportRunAdmin(admin.ModelAdmin[ImportRun]):
    """A read-only history: imports are run with `pli directory import`."""

    list_display = ("started_at", "kind", "file_name", "status", "lines", "imported", "rejected")
    list_filter = ("kind", "status")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
