"""The opposition register (REQ-OPPOSITION): record, lift, consult; and the send path's check.

Each state change is one transaction with its audit event (CONVENTIONS habit
3): ``oppositions.recorded``, ``oppositions.lifted``, and
``oppositions.checked`` when an officer consults the register. Events carry
the row's id and codes, never the identifier nor its key. A refused attempt
(a role that may not) is recorded with the outcome ``denied``.

The patient's identifier is turned into :func:`patient_key` at once and never
stored: ``HMAC-SHA256(derive_key(SECRET_KEY, "compliance:patient-key"),
"nir:<15 characters>" or "niss:<11 digits>")`` in hex, over the number as
:mod:`pli.identifiers` normalises it (no separators, Corsican ``2A``/``2B`` in
upper case). The key depends on the number only, not on how it was declared
(an INS is a NIR). A NIR has few enough plausible values to be guessed by
brute force, so the secret, not the hash, is what protects it: a database
stolen without ``PLI_SECRET_KEY`` does not give the identifiers back.
Changing ``PLI_SECRET_KEY`` changes every key: the register (and the keys
stored with messages) would no longer match, so the secret must be kept for
the life of the data.

The messaging send path computes :func:`patient_key` (``bad_patient_id``) and
asks the register in its own directory query (:func:`opposed_among_query`,
``patient_opposed``), then stores the key; the web mail's check before sealing
calls :func:`check_not_opposed`; :func:`is_opposed` is the plain yes/no.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _

from pli.crypto import derive_key
from pli.identifiers import Identifier, IdentifierError, IdentifierKind, parse_nir, parse_niss
from pli.server.accounts.models import User
from pli.server.audit.actions import do_record_event
from pli.server.compliance.access import may_manage_oppositions, not_allowed
from pli.server.compliance.errors import ComplianceError
from pli.server.compliance.models import LiftReason, Opposition, OppositionReason, PatientIdKind

#: HKDF purpose of the patient key: never reuse it for anything else.
_KEY_PURPOSE = "compliance:patient-key"
#: A patient identifier as typed is short; anything far longer is not one (and not parsed).
MAX_PATIENT_ID_LENGTH = 64
#: The kinds each identifier may be declared as.
_DECLARABLE = {
    IdentifierKind.NIR: frozenset({PatientIdKind.NIR, PatientIdKind.INS}),
    IdentifierKind.NISS: frozenset({PatientIdKind.NISS}),
}


def bad_patient_id() -> ComplianceError:
    return ComplianceError(
        "bad_patient_id",
        _(
            "Identifiant de patient invalide : donnez un NIR/INS (15 caractères) "
            "ou un NISS (11 chiffres)."
        ),
    )


def patient_opposed() -> ComplianceError:
    # REQ-OPPOSITION: the service refuses and says why, and what to do instead.
    return ComplianceError(
        "patient_opposed",
        _(
            "Ce patient s'est opposé aux échanges le concernant par cette messagerie : "
            "transmettez ces informations par un autre moyen (courrier postal)."
        ),
    )


def parse_patient_id(text: str) -> Identifier:
    """A valid NIR/INS or NISS (check digits verified), or :func:`bad_patient_id`."""
    if not isinstance(text, str) or len(text) > MAX_PATIENT_ID_LENGTH:
        raise bad_patient_id()
    for parser in (parse_nir, parse_niss):
        try:
            return parser(text)
        except IdentifierError:
            continue
    raise bad_patient_id()


def patient_key(identifier: str | Identifier) -> str:
    """HMAC-SHA256 (hex) of the normalised identifier under a key derived from the secret."""
    if isinstance(identifier, str):
        identifier = parse_patient_id(identifier)
    if not identifier.is_patient_identifier:
        raise bad_patient_id()
    key = derive_key(settings.SECRET_KEY.encode(), _KEY_PURPOSE)
    message = f"{identifier.kind.value}:{identifier.value}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _active(key: str) -> Opposition | None:
    return Opposition.objects.filter(patient_key=key, lifted_at__isnull=True).first()


def is_opposed(identifier: str | Identifier) -> bool:
    """Whether the patient opposed exchanges about them; :func:`bad_patient_id` if invalid."""
    key = patient_key(identifier)
    return Opposition.objects.filter(patient_key=key, lifted_at__isnull=True).exists()


def opposed_among(keys: Iterable[str]) -> set[str]:
    """Of these patient keys, those with an active opposition: one query (a batch of sends)."""
    wanted = set(keys)
    if not wanted:
        return set()
    return set(
        Opposition.objects.filter(patient_key__in=wanted, lifted_at__isnull=True).values_list(
            "patient_key", flat=True
        )
    )


def opposed_among_query(count: int) -> str:
    """SQL for :func:`opposed_among` inside a caller's own query (its ``count`` keys as
    parameters): a send asks the register in the query that reads its directory rows,
    one round trip instead of two."""
    table = connection.ops.quote_name(Opposition._meta.db_table)
    places = ", ".join(["%s"] * count) or "NULL"
    return f"SELECT patient_key FROM {table} WHERE lifted_at IS NULL AND patient_key IN ({places})"  # noqa: S608 - our names


def check_not_opposed(identifier: str | Identifier) -> str:
    """For the send path: the patient key to store with the message, or a refusal.

    ``bad_patient_id`` for anything but a valid NIR/INS or NISS,
    ``patient_opposed`` when an opposition is active (REQ-OPPOSITION).
    """
    key = patient_key(identifier)
    if Opposition.objects.filter(patient_key=key, lifted_at__isnull=True).exists():
        raise patient_opposed()
    return key


def declared_kind(identifier: Identifier, kind: str | None) -> str:
    allowed = _DECLARABLE[identifier.kind]
    if kind is None:
        return identifier.kind.value
    if kind not in allowed:
        raise bad_patient_id()
    return kind


def do_record_opposition(
    actor: User,
    identifier: str,
    request: HttpRequest | None,
    *,
    reason: str = OppositionReason.PATIENT_REQUEST,
    kind: str | None = None,
) -> tuple[Opposition, bool]:
    """Record that the patient opposes exchanges about them; ``(opposition, created)``.

    Recording again while an opposition is active changes nothing and returns
    it (``created`` false): the patient's wish is already in force.
    """
    if not may_manage_oppositions(actor):
        # Refused before the identifier is even read: no answer depends on it.
        with transaction.atomic():
            do_record_event(
                "oppositions.recorded",
                actor=actor,
                request=request,
                target="opposition",
                outcome="denied",
            )
        raise not_allowed()
    parsed = parse_patient_id(identifier)
    declared = declared_kind(parsed, kind)
    if reason not in OppositionReason.values:
        raise ComplianceError("bad_reason", _("Motif inconnu."))
    key = patient_key(parsed)
    with transaction.atomic():
        existing = _active(key)
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                opposition = Opposition.objects.create(
                    patient_key=key,
                    kind=declared,
                    reason=reason,
                    recorded_at=timezone.now(),
                    recorded_by=actor,
                    recorded_by_role=actor.role,
                )
        except IntegrityError:
            # Another officer recorded it meanwhile (the partial unique index): that one stands.
            concurrent = _active(key)
            if concurrent is None:  # pragma: no cover - lifted again in between
                raise
            return concurrent, False
        do_record_event(
            "oppositions.recorded",
            actor=actor,
            request=request,
            target=f"opposition:{opposition.pk}",
            detail={"kind": declared, "reason": reason},
        )
    return opposition, True


def do_lift_opposition(
    actor: User,
    identifier: str,
    request: HttpRequest | None,
    *,
    reason: str = LiftReason.PATIENT_WITHDREW,
) -> Opposition:
    """Lift the patient's active opposition (the row stays, lifted); ``not_opposed`` if none."""
    if not may_manage_oppositions(actor):
        # Refused before the identifier is even read: no answer depends on it.
        with transaction.atomic():
            do_record_event(
                "oppositions.lifted",
                actor=actor,
                request=request,
                target="opposition",
                outcome="denied",
            )
        raise not_allowed()
    key = patient_key(parse_patient_id(identifier))
    if reason not in LiftReason.values:
        raise ComplianceError("bad_reason", _("Motif inconnu."))
    with transaction.atomic():
        opposition = (
            Opposition.objects.select_for_update()
            .filter(patient_key=key, lifted_at__isnull=True)
            .first()
        )
        if opposition is None:
            raise ComplianceError("not_opposed", _("Aucune opposition en cours pour ce patient."))
        opposition.lifted_at = timezone.now()
        opposition.lifted_by = actor
        opposition.lifted_by_role = actor.role
        opposition.lift_reason = reason
        opposition.save(update_fields=["lifted_at", "lifted_by", "lifted_by_role", "lift_reason"])
        do_record_event(
            "oppositions.lifted",
            actor=actor,
            request=request,
            target=f"opposition:{opposition.pk}",
            detail={"reason": reason},
        )
    return opposition


def do_check_opposition(
    actor: User, identifier: str, request: HttpRequest | None
) -> Opposition | None:
    """An officer consults the register about one patient: the active opposition, if any.

    Consulting is recorded (``oppositions.checked``): whether a patient opposed
    is personal data, and who looked it up must be traceable (REQ-TRACE).
    """
    if not may_manage_oppositions(actor):
        # Refused before the identifier is even read: no answer depends on it.
        with transaction.atomic():
            do_record_event(
                "oppositions.checked",
                actor=actor,
                request=request,
                target="opposition",
                outcome="denied",
            )
        raise not_allowed()
    key = patient_key(parse_patient_id(identifier))
    with transaction.atomic():
        opposition = _active(key)
        do_record_event(
            "oppositions.checked",
            actor=actor,
            request=request,
            target=f"opposition:{opposition.pk}" if opposition else "opposition",
            detail={"result": "opposed" if opposition else "not_opposed"},
        )
    return opposition
