"""Messages in the admin console: routing metadata only, read-only (REQ-ADMIN-LIMITS).

There is nothing else to show: the server holds no subject, body or
attachment in clear (REQ-AT-REST), only the sealed envelope (in the
database or the blob store, decision 0013), which the console neither shows
nor offers to download. The patient
key (a keyed hash) is not shown either: it is for opposition checks, not for
browsing. Nothing is editable or deletable here: deleting goes through the
messaging actions, which also remove the blobs.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from pli.server.messaging.models import Delivery, Message


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(_ReadOnly, admin.TabularInline[Delivery, Message]):
    model = Delivery
    extra = 0
    fields = ("recipient_address", "state", "delivered_at", "read_at")
    readonly_fields = fields


@admin.register(Message)
class MessageAdmin(_ReadOnly, admin.ModelAdmin[Message]):
    list_display = ("public_id", "sender_address", "sender_person", "created_at", "size")
    list_filter = ("created_at",)
    search_fields = ("=public_id", "=sender_address", "=thread_id")
    fields = (
        "public_id",
        "sender_address",
        "sender_person",
        "created_at",
        "size",
        "thread_id",
        "in_reply_to",
    )
    readonly_fields = fields
    inlines = [DeliveryInline]
    show_full_result_count = False
