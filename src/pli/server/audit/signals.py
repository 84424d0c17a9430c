"""Events recorded from other apps' signals, so that those apps need not know the trail.

* ``admin.change``: every change made in the admin console (REQ-DATA-ADMIN),
  from the ``LogEntry`` Django writes for it: the administrator, the model and
  the object's identifier, the kind of change. Never the object's text
  (``object_repr`` may be a name or an address) nor the change message.
* ``directory.import``: a directory import run that is saved finished, with
  its kind, status and counts. Never the file name.

Both are recorded in the transaction that writes the row.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any, cast

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.db.models.signals import post_save

from pli.server.audit.actions import do_record_event
from pli.server.audit.models import AuditAction, AuditOutcome
from pli.server.directory.models import ImportRun

if TYPE_CHECKING:
    from django.contrib.contenttypes.models import ContentType

    from pli.server.accounts.models import User

_FLAGS = {ADDITION: "addition", CHANGE: "change", DELETION: "deletion"}
_OBJECT_ID = re.compile(r"[A-Za-z0-9_+-]{1,64}")
_MODEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_IMPORT_COUNTS = ("lines", "imported", "rejected", "deactivated")


def _object_identifier(object_id: str) -> str:
    """The object's primary key as a target identifier; hashed if it is not a plain one."""
    if _OBJECT_ID.fullmatch(object_id):
        return object_id
    return "sha256-" + hashlib.sha256(object_id.encode()).hexdigest()[:32]


def record_admin_change(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    # django-stubs leaves LogEntry's foreign keys untyped.
    content_type = cast("ContentType | None", instance.content_type)
    model = content_type.model if content_type is not None else ""
    app = content_type.app_label if content_type is not None else ""
    kind = model if _MODEL.fullmatch(model) else "object"
    # ``object_id`` is the primary key as given (an int) until the row is read back.
    object_id = "" if instance.object_id is None else str(instance.object_id)
    target = f"{kind}:{_object_identifier(object_id)}" if object_id else kind
    detail: dict[str, str | int] = {"flag": _FLAGS.get(instance.action_flag, "other")}
    if _MODEL.fullmatch(app):
        detail["app"] = app
    do_record_event(
        AuditAction.ADMIN_CHANGE, actor=cast("User", instance.user), target=target, detail=detail
    )


def record_directory_import(
    sender: Any,
    instance: ImportRun,
    created: bool,
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    """A run saved finished (its status and end time set): once, when those are written."""
    if instance.finished_at is None:
        return
    if update_fields is not None and not {"status", "finished_at"} & update_fields:
        return
    detail: dict[str, str | int] = {"kind": instance.kind, "status": instance.status}
    detail.update({name: getattr(instance, name) for name in _IMPORT_COUNTS})
    if instance.error_code:
        detail["error"] = instance.error_code
    do_record_event(
        AuditAction.DIRECTORY_IMPORT,
        target=f"import:{instance.pk}",
        outcome=AuditOutcome.SUCCESS if instance.status == "done" else AuditOutcome.FAILURE,
        detail=detail,
    )


def connect() -> None:
    """Called once from :meth:`AuditConfig.ready`."""
    post_save.connect(record_admin_change, sender=LogEntry, dispatch_uid="audit.admin_change")
    post_save.connect(
        record_directory_import, sender=ImportRun, dispatch_uid="audit.directory_import"
    )
