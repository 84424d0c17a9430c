"""JSON API of the signed-in account: who am I, my sessions (list, revoke).

Authentication comes from the API's default (an authenticated session); a
session that is not the caller's answers 404 exactly like a missing one.
"""

from __future__ import annotations

import datetime as dt

from django.http import HttpRequest
from django.utils.translation import gettext as _
from ninja import Router, Schema, Status
from ninja.security import django_auth

from pli.server.accounts.models import UserSession
from pli.server.accounts.session_auth import signed_in_user
from pli.server.accounts.sessions import current_record, do_revoke_session

router = Router(tags=["accounts"], auth=django_auth)


class MeOut(Schema):
    username: str
    role: str
    custody: str
    enrolled: bool
    national_id: str | None


class SessionOut(Schema):
    id: int
    method: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    source_address: str | None
    user_agent: str
    current: bool


class ErrorOut(Schema):
    code: str
    message: str


@router.get("/me", response=MeOut)
def me(request: HttpRequest) -> MeOut:
    user = signed_in_user(request)
    return MeOut(
        username=user.username,
        role=user.role,
        custody=user.custody,
        enrolled=user.enrolled_at is not None,
        national_id=user.professional.national_id if user.professional else None,
    )


@router.get("/sessions", response=list[SessionOut])
def list_sessions(request: HttpRequest) -> list[SessionOut]:
    user = signed_in_user(request)
    current = current_record(request)
    rows = UserSession.objects.filter(user=user, revoked_at__isnull=True).order_by("-last_seen_at")
    return [
        SessionOut(
            id=row.pk,
            method=row.method,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            source_address=row.source_address,
            user_agent=row.user_agent,
            current=current is not None and current.pk == row.pk,
        )
        for row in rows
    ]


@router.delete("/sessions/{session_id}", response={204: None, 404: ErrorOut})
def revoke_session(request: HttpRequest, session_id: int) -> Status[ErrorOut | None]:
    if not do_revoke_session(signed_in_user(request), session_id, request):
        return Status(404, ErrorOut(code="not_found", message=_("Session introuvable.")))
    return Status(204, None)
