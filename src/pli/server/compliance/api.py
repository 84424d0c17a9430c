"""JSON API of the opposition register (REQ-OPPOSITION), for the operator's officers.

``POST /api/compliance/oppositions`` records, ``…/oppositions/lift`` lifts,
``…/oppositions/check`` answers whether a patient opposed. The identifier
travels in the body (never in a URL, which servers log) and is validated
(``bad_patient_id``, 422).

Personas: an operator admin or the DPO may; anyone else signed in gets
``403 {"code": "not_allowed"}`` whatever the body (the role is checked before
the identifier is read, so the answer tells nothing about the register); not
signed in, 401. 403 rather than 404: there is no object to hide here, the
endpoints are public in the OpenAPI schema and the refusal is the role's, the
same code the actions give. A body that is not a well-formed request gets
ninja's 422 before any of this, for everyone signed in.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Router, Status
from ninja.security import django_auth

from pli.server.accounts.session_auth import signed_in_user
from pli.server.compliance.actions import (
    MAX_PATIENT_ID_LENGTH,
    do_check_opposition,
    do_lift_opposition,
    do_record_opposition,
)
from pli.server.compliance.errors import ComplianceError
from pli.server.compliance.models import Opposition
from pli.server.validation import StrictSchema

router = Router(tags=["compliance"], auth=django_auth)

_STATUS = {"not_allowed": 403, "not_opposed": 409}


class _Strict(StrictSchema):
    pass


class RecordIn(_Strict):
    patient_id: str = Field(max_length=MAX_PATIENT_ID_LENGTH)
    #: How the identifier was declared; inferred from it when absent (an INS is a NIR).
    kind: Literal["nir", "ins", "niss"] | None = None
    reason: Literal["patient_request", "representative_request"] = "patient_request"


class LiftIn(_Strict):
    patient_id: str = Field(max_length=MAX_PATIENT_ID_LENGTH)
    reason: Literal["patient_withdrew", "recorded_in_error"] = "patient_withdrew"


class CheckIn(_Strict):
    patient_id: str = Field(max_length=MAX_PATIENT_ID_LENGTH)


class OppositionOut(_Strict):
    opposed: bool
    #: The first hex digits of the patient key, as the console shows them.
    key_prefix: str | None = None
    kind: str | None = None
    reason: str | None = None
    recorded_at: dt.datetime | None = None
    lifted_at: dt.datetime | None = None
    lift_reason: str | None = None


class ErrorOut(_Strict):
    code: str
    message: str


def _error(failure: ComplianceError) -> Status[OppositionOut | ErrorOut]:
    return Status(
        _STATUS.get(failure.code, 422), ErrorOut(code=failure.code, message=failure.message)
    )


def _out(opposition: Opposition | None) -> OppositionOut:
    if opposition is None:
        return OppositionOut(opposed=False)
    return OppositionOut(
        opposed=opposition.active,
        key_prefix=opposition.key_prefix,
        kind=opposition.kind,
        reason=opposition.reason,
        recorded_at=opposition.recorded_at,
        lifted_at=opposition.lifted_at,
        lift_reason=opposition.lift_reason or None,
    )


_ERRORS = {403: ErrorOut, 409: ErrorOut, 422: ErrorOut}


@router.post(
    "/oppositions",
    response={200: OppositionOut, 201: OppositionOut, **_ERRORS},
    summary="Enregistrer l'opposition d'un patient",
)
def record_opposition(request: HttpRequest, body: RecordIn) -> Status[OppositionOut | ErrorOut]:
    """201 when recorded, 200 when the patient's opposition was already in force."""
    try:
        opposition, created = do_record_opposition(
            signed_in_user(request), body.patient_id, request, reason=body.reason, kind=body.kind
        )
    except ComplianceError as failure:
        return _error(failure)
    return Status(201 if created else 200, _out(opposition))


@router.post(
    "/oppositions/lift",
    response={200: OppositionOut, **_ERRORS},
    summary="Lever l'opposition d'un patient",
)
def lift_opposition(request: HttpRequest, body: LiftIn) -> Status[OppositionOut | ErrorOut]:
    """409 ``not_opposed`` when the patient has no opposition in force."""
    try:
        opposition = do_lift_opposition(
            signed_in_user(request), body.patient_id, request, reason=body.reason
        )
    except ComplianceError as failure:
        return _error(failure)
    return Status(200, _out(opposition))


@router.post(
    "/oppositions/check",
    response={200: OppositionOut, **_ERRORS},
    summary="Savoir si un patient s'est opposé",
)
def check_opposition(request: HttpRequest, body: CheckIn) -> Status[OppositionOut | ErrorOut]:
    try:
        opposition = do_check_opposition(signed_in_user(request), body.patient_id, request)
    except ComplianceError as failure:
        return _error(failure)
    return Status(200, _out(opposition))
