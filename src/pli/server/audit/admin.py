"""The audit trail in the admin console: read-only for everyone, superusers included.

Viewing needs the ``audit.view_auditevent`` permission (the only one the
models define). Nobody can add, change or delete an event from here: the
trail changes only through ``do_record_event`` and the retention purge
(REQ-TRACE, REQ-TRACE-RETENTION).
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from pli.server.audit.models import AuditAction, AuditCheckpoint, AuditEvent, AuditOutcome

_ACTION_LABELS = dict(AuditAction.choices)
_OUTCOME_LABELS = dict(AuditOutcome.choices)


_Model = TypeVar("_Model", AuditEvent, AuditCheckpoint)


class _ReadOnlyAdmin(admin.ModelAdmin[_Model]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ActionFilter(admin.SimpleListFilter):
    title = _("action")
    parameter_name = "action"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(AuditAction.choices)

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = self.value()
        return queryset.filter(action=value) if value else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(_ReadOnlyAdmin[AuditEvent]):
    list_display = (
        "seq",
        "occurred_at",
        "action_label",
        "outcome_label",
        "actor_username",
        "actor_role",
        "target",
        "source_address",
    )
    list_filter = (ActionFilter, "outcome", "actor_role")
    search_fields = ("=actor_username", "=target", "=source_address")
    date_hierarchy = "occurred_at"
    # Counting a year of events for every page is slow and says nothing useful.
    show_full_result_count = False
    fields = (
        "seq",
        "occurred_at",
        "action",
        "outcome",
        "actor_id",
        "actor_username",
        "actor_role",
        "target",
        "source_address",
        "user_agent",
        "detail",
        "prev_hash",
        "hash",
    )

    @admin.display(description=_("action"), ordering="action")
    def action_label(self, event: AuditEvent) -> str:
        return str(_ACTION_LABELS.get(event.action, event.action))

    @admin.display(description=_("résultat"), ordering="outcome")
    def outcome_label(self, event: AuditEvent) -> str:
        return str(_OUTCOME_LABELS.get(event.outcome, event.outcome))


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(_ReadOnlyAdmin[AuditCheckpoint]):
    list_display = ("event_seq", "signed_at", "key_fingerprint")
    fields = ("event_seq", "event_hash", "signed_at", "key_fingerprint", "signature")
