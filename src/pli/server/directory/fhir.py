"""FHIR R4 read API of the directory, for other systems (REQ-INTEROP, REQ-DIRECTORY-NATIONAL).

Plain Django views that answer ``application/fhir+json``:

- ``GET /fhir/Practitioner/{id}`` (a professional), ``/fhir/PractitionerRole/{id}``
  (one per activity: a professional at a site), ``/fhir/Organization/{id}`` (a site);
- search on each type by ``identifier`` (FHIR token: ``system|value`` or ``value``)
  and ``mailbox-mss`` (FHIR string, modifiers ``:exact`` and ``:contains``), answered
  with a ``searchset`` Bundle, paged with ``_count`` / ``_offset``;
- ``GET /fhir/metadata``: the CapabilityStatement saying exactly that.

Sources: FHIR R4 (hl7.org/fhir/R4: resources, search §3.1.1, http §3.1.0) and the ANS
"Annuaire Santé" implementation guide (interop.esante.gouv.fr/ig/fhir/annuaire):
identifier systems and types (as-practitioner, as-organization), the MSSanté mailbox
as a ``telecom`` (as-mailbox-mss) with its metadata extension
(as-ext-mailbox-mss-metadata), the ``mailbox-mss`` search parameter (as-sp-mailbox-mss),
and the ANS terminologies (NOS, mos.esante.gouv.fr) for professions, categories,
practice modes and savoir-faire.

Privacy: a red-listed mailbox never appears in FHIR output, not even when searched
by its exact address (REQ-DIRECTORY: red-listed mailboxes are never listed, and this
API is open to any system). Inactive or closed mailboxes do not appear either.
"""

from __future__ import annotations

import functools
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from pli.server.directory.models import (
    Activity,
    IdentifierType,
    Mailbox,
    Organisation,
    Professional,
)
from pli.server.directory.queries import has_control_characters

Json = dict[str, Any]

#: FHIR R4 §3.1.0.1.4 (http.html#mime-type).
FHIR_JSON = "application/fhir+json; charset=utf-8"
FHIR_VERSION = "4.0.1"

# --- identifier systems (ANS Annuaire Santé IG: as-practitioner, as-organization) -------------
#: Identification nationale des personnes (IDNPS): 8 + RPPS, 0 + ADELI.
IDNPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
#: The 11-digit RPPS number alone.
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"
#: Identification nationale des structures (IDNST): 1 + FINESS, 3 + SIRET, or the technical id.
IDNST_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
FINESS_SYSTEM = "https://finess.esante.gouv.fr"
SIRET_SYSTEM = "https://sirene.fr"
#: Belgian NIHII / INAMI professional number (be-core NamingSystem "nihdi", REQ-NON-HEALTH).
NIHII_SYSTEM = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi"
#: Pli's own local directory (psychologists, social workers…): no national system exists.
LOCAL_SYSTEM = "urn:pli:local-directory"
#: FR Core identifier types (IDNPS, RPPS, IDNST, FINEG, SIRET).
IDENTIFIER_TYPE_SYSTEM = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"

# --- MSSanté mailbox as a ContactPoint (as-mailbox-mss) ----------------------------------------
MAILBOX_METADATA_URL = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata"
EMAIL_TYPE_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
MESSAGING_TYPE_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie"
)
MAILBOX_TYPE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"

#: Stable error codes of this API, carried in ``OperationOutcome.issue.details``.
ERROR_SYSTEM = "urn:pli:error"


def _nos(table: str) -> str:
    """The FHIR URL of an ANS NOS terminology, e.g. ``TRE_R23-ModeExercice``."""
    return f"https://mos.esante.gouv.fr/NOS/{table}/FHIR/{table.replace('_', '-')}"


#: JDV_J106-EnsembleProfession-RASS: which terminology each RPPS profession code is from.
_PROFESSION_TABLES: dict[str, str] = {
    **dict.fromkeys(
        (
            *("10", "21", "26", "28", "31", "32", "40", "50", "60", "70", "80", "81"),
            *("82", "83", "84", "85", "86", "91", "92", "94", "95", "96", "98"),
        ),
        "TRE_G15-ProfessionSante",
    ),
    **dict.fromkeys(("71", "72", "73", "93"), "TRE_R95-UsagerTitre"),
    "41": "TRE_R94-ProfessionSocial",
    "99": "TRE_R291-AutreProfession",
}
#: TRE_R04-TypeSavoirFaire code -> the terminology of the savoir-faire itself
#: (slices savoirFaireRxx of the ANS as-practitionerrole profile).
_SKILL_TABLES: dict[str, str] = {
    "S": "TRE_R38-SpecialiteOrdinale",
    "C": "TRE_R39-Competence",
    "CEX": "TRE_R40-CompetenceExclusive",
    "DNQ": "TRE_R42-DESCnonQualifiant",
    "CAPA": "TRE_R43-CapaciteSavoirFaire",
    "PAC": "TRE_R44-QualificationPAC",
    "FQ": "TRE_R45-FonctionQualifiee",
    "DEC": "TRE_R97-DroitExerciceCompl",
    "OP": "TRE_G13-OrientationParticuliere",
    "SST": "TRE_R359-SurspecialiteTransversale",
}
_NATIONAL_TYPES = (IdentifierType.RPPS, IdentifierType.ADELI)
_OUTSIDE_TYPES = (IdentifierType.NIHII, IdentifierType.LOCAL)

_MAX_COUNT = 100
#: Values OR-ed and AND-ed in one search: each is a subquery, so they are bounded.
_MAX_CRITERIA = 20
_ID = re.compile(r"[0-9]{1,18}")
_NUMBER = re.compile(r"[0-9]{1,10}")


# --- errors: OperationOutcome (FHIR R4 operationoutcome.html) ----------------------------------
class FhirError(Exception):
    """Answered as an OperationOutcome; ``code`` is Pli's stable code, ``issue`` FHIR's."""

    def __init__(self, status: int, issue: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.issue = issue
        self.code = code
        self.message = message


def _not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(
        404,
        "not-found",
        "resource_not_found",
        _("Ressource introuvable : %(type)s/%(id)s.") % {"type": resource_type, "id": resource_id},
    )


def _bad_search(code: str, message: str, *, issue: str = "invalid") -> FhirError:
    return FhirError(400, issue, code, message)


def _fhir_response(body: Json, status: int = 200) -> HttpResponse:
    return JsonResponse(
        body,
        status=status,
        content_type=FHIR_JSON,
        json_dumps_params={"ensure_ascii": False},
    )


def operation_outcome(error: FhirError) -> Json:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": error.issue,
                "details": {
                    "coding": [{"system": ERROR_SYSTEM, "code": error.code}],
                    "text": error.message,
                },
                "diagnostics": error.message,
            }
        ],
    }


#: Views answered without authentication (FHIR R4 http.html#capabilities).
_PUBLIC_VIEWS = frozenset({"capability_statement"})


def _fhir_view(
    view: Callable[..., Json],
) -> Callable[..., HttpResponse]:
    """Only GET/HEAD; every refusal is an OperationOutcome, never an HTML page.

    CSRF-exempt so that a POST gets the FHIR 405 rather than Django's HTML 403: these
    views never change anything, whatever the method.
    """

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: str, **kwargs: str) -> HttpResponse:
        try:
            if request.method not in ("GET", "HEAD"):
                raise FhirError(
                    405,
                    "not-supported",
                    "method_not_allowed",
                    _("Cette API est en lecture seule (GET)."),
                )
            _check_format(request)
            # Issue "accounts": every endpoint requires authentication but the
            # public FHIR metadata (the CapabilityStatement).
            if view.__name__ not in _PUBLIC_VIEWS and not request.user.is_authenticated:
                raise FhirError(
                    401, "login", "authentication_required", _("Authentification requise.")
                )
            return _fhir_response(view(request, *args, **kwargs))
        except FhirError as error:
            response = _fhir_response(operation_outcome(error), status=error.status)
            if error.status == 405:
                response["Allow"] = "GET, HEAD"
            return response

    return wrapper


def _check_format(request: HttpRequest) -> None:
    """FHIR R4 http.html#parameters: ``_format`` may ask for JSON; XML is not offered."""
    requested = request.GET.get("_format")
    if requested is not None and requested not in (
        "json",
        "application/json",
        "application/fhir+json",
    ):
        raise FhirError(
            406, "not-supported", "unsupported_format", _("Seul le format JSON est disponible.")
        )


# --- building blocks ---------------------------------------------------------------------------
def _coding(table: str, code: str, display: str = "") -> Json:
    coding: Json = {"system": _nos(table), "code": code}
    if display:
        coding["display"] = display
    return coding


def _concept(codings: Iterable[Json], text: str = "") -> Json | None:
    concept: Json = {}
    codings = list(codings)
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept or None


def _identifier(system: str, value: str, type_code: str | None = None) -> Json:
    identifier: Json = {"use": "official", "system": system, "value": value}
    if type_code:
        identifier["type"] = {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code}]}
    return identifier


def _published_mailboxes() -> QuerySet[Mailbox]:
    """Mailboxes FHIR may show: open ones, never red-listed (REQ-DIRECTORY)."""
    return Mailbox.objects.filter(active=True, red_list=False)


def mailbox_telecom(mailbox: Mailbox) -> Json:
    """An MSSanté mailbox as the ANS as-mailbox-mss ContactPoint."""
    metadata: list[Json] = [
        {
            "url": "type",
            "valueCodeableConcept": {
                "coding": [{"system": MAILBOX_TYPE_SYSTEM, "code": mailbox.kind}]
            },
        }
    ]
    if mailbox.description:
        metadata.append({"url": "description", "valueString": mailbox.description})
    if mailbox.service:
        metadata.append({"url": "service", "valueString": mailbox.service})
    # Always false here: red-listed mailboxes are never published through FHIR.
    metadata.append({"url": "listeRouge", "valueBoolean": False})
    return {
        "extension": [
            {
                "url": EMAIL_TYPE_URL,
                "valueCoding": {"system": MESSAGING_TYPE_SYSTEM, "code": "MSSANTE"},
            },
            {"url": MAILBOX_METADATA_URL, "extension": metadata},
        ],
        "system": "email",
        "value": mailbox.address,
    }


def _profession(professional: Professional) -> Json | None:
    codings = []
    table = _PROFESSION_TABLES.get(professional.profession_code)
    if table:
        codings.append(_coding(table, professional.profession_code, professional.profession))
    text = professional.profession or professional.profession_code
    return _concept(codings, text)


def _category(professional: Professional) -> Json | None:
    if not professional.category_code:
        return None
    return _concept(
        [
            _coding(
                "TRE_R09-CategorieProfessionnelle",
                professional.category_code,
                professional.category,
            )
        ]
    )


def _full_name(professional: Professional) -> str:
    return " ".join(p for p in (professional.first_name, professional.last_name) if p)


def _reference(request: HttpRequest, route: str, pk: int) -> str:
    return request.build_absolute_uri(reverse(route, args=[str(pk)]))


# --- resources ---------------------------------------------------------------------------------
def practitioner_identifiers(professional: Professional) -> list[Json]:
    kind = professional.identifier_type
    if kind in _NATIONAL_TYPES:
        identifiers = [_identifier(IDNPS_SYSTEM, professional.national_id, "IDNPS")]
        if kind == IdentifierType.RPPS:
            identifiers.append(_identifier(RPPS_SYSTEM, professional.identifier, "RPPS"))
    else:
        identifiers = [_identifier(LOCAL_SYSTEM, professional.national_id)]
        if kind == IdentifierType.NIHII:
            identifiers.append(_identifier(NIHII_SYSTEM, professional.identifier))
    return [i for i in identifiers if i["value"]]  # FHIR R4 json.html: no empty strings


def practitioner_resource(professional: Professional, mailboxes: Iterable[Mailbox]) -> Json:
    """ANS as-practitioner: identity, exercise name, profession, personal mailboxes."""
    name: Json = {"use": "usual"}
    if professional.last_name:
        name["family"] = professional.last_name
    if professional.first_name:
        name["given"] = [professional.first_name]
    # ANS as-practitioner: name.prefix is the civility (TRE_R81: M, MME), name.suffix the
    # exercise title (TRE_R11-CiviliteExercice: DR, PR), both as codes like the ANS API.
    prefix = professional.civility_code or professional.civility
    if prefix:
        name["prefix"] = [prefix]
    suffix = professional.civil_title_code or professional.civil_title
    if suffix:
        name["suffix"] = [suffix]
    resource: Json = {
        "resourceType": "Practitioner",
        "id": str(professional.pk),
        "identifier": practitioner_identifiers(professional),
        "active": professional.active,
        "name": [name],
    }
    telecom = [mailbox_telecom(m) for m in mailboxes]
    if telecom:
        resource["telecom"] = telecom
    # ANS qualification[exercicePro]: profession and professional category in one code.
    profession = _profession(professional)
    category = _category(professional)
    if profession or category:
        codings = [*(profession or {}).get("coding", []), *(category or {}).get("coding", [])]
        qualification = _concept(codings, (profession or {}).get("text", ""))
        resource["qualification"] = [{"code": qualification}]
    return resource


def practitioner_role_resource(activity: Activity, mailboxes: Iterable[Mailbox]) -> Json:
    """ANS as-practitionerrole: one activity (exercice professionnel at a situation)."""
    professional = activity.professional
    resource: Json = {
        "resourceType": "PractitionerRole",
        "id": str(activity.pk),
        "active": activity.active and professional.active,
        "practitioner": {
            "reference": f"Practitioner/{professional.pk}",
            "display": _full_name(professional),
        },
    }
    organisation = activity.organisation
    if organisation is not None:
        reference: Json = {"reference": f"Organization/{organisation.pk}"}
        if str(organisation):
            reference["display"] = str(organisation)
        resource["organization"] = reference
    codes = [_profession(professional), _category(professional)]
    if activity.practice_mode_code:
        codes.append(
            _concept(
                [
                    _coding(
                        "TRE_R23-ModeExercice",
                        activity.practice_mode_code,
                        activity.practice_mode,
                    )
                ]
            )
        )
    codes_present = [c for c in codes if c]
    if codes_present:
        resource["code"] = codes_present
    specialties = []
    if activity.skill_type_code:
        specialties.append(
            _concept(
                [_coding("TRE_R04-TypeSavoirFaire", activity.skill_type_code, activity.skill_type)]
            )
        )
    if activity.skill_code or activity.skill:
        table = _SKILL_TABLES.get(activity.skill_type_code)
        codings = (
            [_coding(table, activity.skill_code, activity.skill)]
            if table and activity.skill_code
            else []
        )
        specialties.append(_concept(codings, activity.skill or activity.skill_code))
    specialties_present = [s for s in specialties if s]
    if specialties_present:
        resource["specialty"] = specialties_present
    telecom = [mailbox_telecom(m) for m in mailboxes]
    if telecom:
        resource["telecom"] = telecom
    return resource


def structure_national_id(organisation: Organisation) -> str:
    """ANS IDNST: 1 + FINESS (site), 3 + SIRET, otherwise the structure's technical id."""
    if organisation.finess_site:
        return "1" + organisation.finess_site
    if organisation.siret:
        return "3" + organisation.siret
    return organisation.technical_id


def organization_identifiers(organisation: Organisation) -> list[Json]:
    identifiers = [_identifier(IDNST_SYSTEM, structure_national_id(organisation), "IDNST")]
    if organisation.finess_site:
        # FINEG: FINESS of the entité géographique (a site); the legal entity (FINEJ) is
        # another Organization in the ANS model, which Pli does not hold.
        identifiers.append(_identifier(FINESS_SYSTEM, organisation.finess_site, "FINEG"))
    if organisation.siret:
        identifiers.append(_identifier(SIRET_SYSTEM, organisation.siret, "SIRET"))
    return identifiers


def _address(organisation: Organisation) -> Json | None:
    street = " ".join(
        part
        for part in (
            organisation.street_number,
            organisation.street_repetition,
            organisation.street_type,
            organisation.street_name,
        )
        if part
    )
    lines = [
        line
        for line in (organisation.address_complement, street, organisation.distribution)
        if line
    ]
    address: Json = {}
    if lines:
        address["line"] = lines
    if organisation.city:
        address["city"] = organisation.city
    if organisation.postcode:
        address["postalCode"] = organisation.postcode
    if organisation.country:
        address["country"] = organisation.country
    return address or None


def organization_resource(organisation: Organisation, mailboxes: Iterable[Mailbox]) -> Json:
    """ANS as-organization: a site, its identifiers, address and structure mailboxes."""
    resource: Json = {
        "resourceType": "Organization",
        "id": str(organisation.pk),
        "identifier": organization_identifiers(organisation),
        "active": organisation.active,
    }
    name = organisation.name or organisation.trade_name
    if name:
        resource["name"] = name
    if organisation.trade_name and organisation.trade_name != name:
        resource["alias"] = [organisation.trade_name]
    telecom = []
    if organisation.phone:
        telecom.append({"system": "phone", "value": organisation.phone})
    telecom.extend(mailbox_telecom(m) for m in mailboxes)
    if telecom:
        resource["telecom"] = telecom
    address = _address(organisation)
    if address:
        resource["address"] = [address]
    return resource


# --- mailboxes of a page of resources: one query per page --------------------------------------
def _practitioner_mailboxes(ids: list[int]) -> dict[int, list[Mailbox]]:
    grouped: dict[int, list[Mailbox]] = defaultdict(list)
    for mailbox in _published_mailboxes().filter(professional_id__in=ids).order_by("address"):
        grouped[mailbox.professional_id or 0].append(mailbox)
    return grouped


def _role_mailboxes(activities: list[Activity]) -> dict[tuple[int, int], list[Mailbox]]:
    """A role shows the mailboxes of its professional at its site (ANS as-practitionerrole)."""
    grouped: dict[tuple[int, int], list[Mailbox]] = defaultdict(list)
    pairs = {(a.professional_id, a.organisation_id) for a in activities if a.organisation_id}
    if not pairs:
        return grouped
    mailboxes = _published_mailboxes().filter(
        professional_id__in={p for p, _ in pairs},
        organisation_id__in={o for _, o in pairs},
    )
    for mailbox in mailboxes.order_by("address"):
        key = (mailbox.professional_id or 0, mailbox.organisation_id or 0)
        if key in pairs:
            grouped[key].append(mailbox)
    return grouped


def _organization_mailboxes(ids: list[int]) -> dict[int, list[Mailbox]]:
    """A structure shows its own mailboxes (ORG/APP/CAB), not its professionals'."""
    grouped: dict[int, list[Mailbox]] = defaultdict(list)
    mailboxes = _published_mailboxes().filter(organisation_id__in=ids, professional__isnull=True)
    for mailbox in mailboxes.order_by("address"):
        grouped[mailbox.organisation_id or 0].append(mailbox)
    return grouped


# --- search ------------------------------------------------------------------------------------
_NOTHING = Q(pk__in=[])


def _any(conditions: Iterable[Q]) -> Q:
    return functools.reduce(operator.or_, conditions, _NOTHING)


def _split_or(value: str) -> list[str]:
    """FHIR R4 search §3.1.1.5.5: a comma means OR; ``\\,`` is a literal comma."""
    parts = [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", value)]
    if any(not p for p in parts):
        raise _bad_search("bad_search_value", _("Valeur de recherche vide."))
    return parts


def _token(value: str) -> tuple[str | None, str]:
    """FHIR R4 search §3.1.1.4.10 token: ``system|code``, ``|code`` or ``code``."""
    if "|" not in value:
        return None, value
    system, _sep, code = value.partition("|")
    if not code:
        raise _bad_search(
            "bad_search_value",
            _("La valeur de l'identifiant est obligatoire (système|valeur)."),
        )
    return system, code


def _practitioner_identifier_q(system: str | None, value: str, prefix: str = "") -> Q:
    def q(**lookups: object) -> Q:
        return Q(**{prefix + key: item for key, item in lookups.items()})

    by_system = {
        IDNPS_SYSTEM: q(identifier_type__in=_NATIONAL_TYPES, national_id=value),
        RPPS_SYSTEM: q(identifier_type=IdentifierType.RPPS, identifier=value),
        NIHII_SYSTEM: q(identifier_type=IdentifierType.NIHII, identifier=value),
        LOCAL_SYSTEM: q(identifier_type__in=_OUTSIDE_TYPES, national_id=value),
    }
    if system is None:
        return _any(by_system.values())
    return by_system.get(system, _NOTHING)


def _organization_identifier_q(system: str | None, value: str, prefix: str = "") -> Q:
    def q(**lookups: object) -> Q:
        return Q(**{prefix + key: item for key, item in lookups.items()})

    # The inverse of structure_national_id().
    idnst = q(finess_site="", siret="", technical_id=value)
    if value.startswith("1") and len(value) > 1:
        idnst |= q(finess_site=value[1:])
    if value.startswith("3") and len(value) > 1:
        idnst |= q(finess_site="", siret=value[1:])
    by_system = {
        IDNST_SYSTEM: idnst,
        FINESS_SYSTEM: q(finess_site=value),
        SIRET_SYSTEM: q(siret=value),
    }
    if system is None:
        return _any(by_system.values())
    return by_system.get(system, _NOTHING)


#: Characters a starts-with or contains search of an address needs at least: a shorter
#: one matches most of the directory and no index serves it (a review measured seconds).
_MIN_ADDRESS_PART = 3
#: Matches counted at most for a searchset's ``total``; beyond, ``total`` is left out
#: (FHIR R4 Bundle.total is optional) and paging goes on by the ``next`` links.
_TOTAL_CAP = 1000
#: The furthest a page may start. The database walks every row before an OFFSET: at
#: 10**9 (the previous bound) one request on a national directory read all of it (a
#: review); 10,000 is a hundred pages of the largest ``_count``, more than a search
#: for a person needs; beyond, the search must be narrowed.
_MAX_OFFSET = 10_000


def _address_q(modifier: str | None, value: str) -> Q:
    """FHIR R4 search §3.1.1.4.9 string: starts-with by default, ``:exact``, ``:contains``."""
    if modifier != "exact" and len(value) < _MIN_ADDRESS_PART:
        raise _bad_search(
            "bad_search_value",
            _("Au moins %(minimum)d caractères pour chercher une adresse par une partie.")
            % {"minimum": _MIN_ADDRESS_PART},
        )
    if modifier is None:
        return Q(address__istartswith=value)
    if modifier == "exact":
        return Q(address=value)
    return Q(address__icontains=value)


#: A search parameter: (modifier, value) -> condition on the searched model.
Condition = Callable[[str | None, str], Q]


def _no_modifier(build: Callable[[str], Q]) -> Condition:
    def condition(modifier: str | None, value: str) -> Q:
        if modifier is not None:
            raise _bad_search(
                "unsupported_modifier",
                _("Modificateur non pris en charge : :%(modifier)s.") % {"modifier": modifier},
                issue="not-supported",
            )
        return build(value)

    return condition


def _string_modifiers(build: Callable[[str | None, str], Q]) -> Condition:
    def condition(modifier: str | None, value: str) -> Q:
        if modifier not in (None, "exact", "contains"):
            raise _bad_search(
                "unsupported_modifier",
                _("Modificateur non pris en charge : :%(modifier)s.") % {"modifier": modifier},
                issue="not-supported",
            )
        return build(modifier, value)

    return condition


def _reference_id(value: str, resource_type: str) -> int | None:
    """A reference search value: ``123`` or ``Type/123`` (FHIR R4 search §3.1.1.4.12)."""
    text = value.removeprefix(f"{resource_type}/")
    return int(text) if _ID.fullmatch(text) else None


def _practitioner_conditions() -> dict[str, Condition]:
    def mailbox(modifier: str | None, value: str) -> Q:
        matching = _published_mailboxes().filter(
            _address_q(modifier, value), professional=OuterRef("pk")
        )
        return Q(Exists(matching))

    return {
        "identifier": _no_modifier(lambda v: _practitioner_identifier_q(*_token(v))),
        "mailbox-mss": _string_modifiers(mailbox),
    }


def _role_conditions() -> dict[str, Condition]:
    def identifier(value: str) -> Q:
        # The ANS as-practitionerrole profile has no identifier of its own (identifier 0..0):
        # here ``identifier`` finds the roles of the practitioner or organization holding it.
        system, code = _token(value)
        return _practitioner_identifier_q(
            system, code, "professional__"
        ) | _organization_identifier_q(system, code, "organisation__")

    def mailbox(modifier: str | None, value: str) -> Q:
        matching = _published_mailboxes().filter(
            _address_q(modifier, value),
            professional=OuterRef("professional_id"),
            organisation=OuterRef("organisation_id"),
        )
        return Q(Exists(matching))

    def practitioner(value: str) -> Q:
        pk = _reference_id(value, "Practitioner")
        return Q(professional_id=pk) if pk is not None else _NOTHING

    def organization(value: str) -> Q:
        pk = _reference_id(value, "Organization")
        return Q(organisation_id=pk) if pk is not None else _NOTHING

    return {
        "identifier": _no_modifier(identifier),
        "mailbox-mss": _string_modifiers(mailbox),
        "practitioner": _no_modifier(practitioner),
        "organization": _no_modifier(organization),
    }


def _organization_conditions() -> dict[str, Condition]:
    def mailbox(modifier: str | None, value: str) -> Q:
        matching = _published_mailboxes().filter(
            _address_q(modifier, value),
            organisation=OuterRef("pk"),
            professional__isnull=True,
        )
        return Q(Exists(matching))

    return {
        "identifier": _no_modifier(lambda v: _organization_identifier_q(*_token(v))),
        "mailbox-mss": _string_modifiers(mailbox),
    }


_RESULT_PARAMETERS = ("_count", "_offset", "_format")


def _search_filter(request: HttpRequest, conditions: dict[str, Condition]) -> Q:
    """The condition of a search: parameters AND-ed, comma-separated values OR-ed."""
    combined = Q()
    criteria = 0
    for key, values in request.GET.lists():
        if key in _RESULT_PARAMETERS:
            continue
        name, _sep, modifier = key.partition(":")
        if name not in conditions:
            raise _bad_search(
                "unknown_search_parameter",
                _("Paramètre de recherche inconnu : %(name)s.") % {"name": name},
                issue="not-supported",
            )
        for value in values:
            if has_control_characters(key) or has_control_characters(value):
                # A NUL cannot even be sent to PostgreSQL: refuse them all, as the
                # directory search does (queries._check_length).
                raise _bad_search(
                    "bad_search_value", _("La recherche contient des caractères invalides.")
                )
            parts = _split_or(value)
            criteria += len(parts)
            if criteria > _MAX_CRITERIA:
                raise _bad_search(
                    "too_many_search_values",
                    _("Au plus %(maximum)d valeurs de recherche à la fois.")
                    % {"maximum": _MAX_CRITERIA},
                )
            combined &= _any(conditions[name](modifier or None, part) for part in parts)
    if not criteria:
        raise _bad_search(
            "search_criteria_required",
            _("Indiquez au moins un critère de recherche : %(names)s.")
            % {"names": ", ".join(sorted(conditions))},
            issue="required",
        )
    return combined


def _integer_parameter(request: HttpRequest, name: str, default: int, maximum: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    if not _NUMBER.fullmatch(raw) or int(raw) > maximum:
        raise _bad_search(
            "bad_search_value",
            _("%(name)s doit être un entier entre 0 et %(maximum)d.")
            % {"name": name, "maximum": maximum},
        )
    return int(raw)


def _page(request: HttpRequest) -> tuple[int, int]:
    count = _integer_parameter(request, "_count", settings.DIRECTORY_PAGE_SIZE, _MAX_COUNT)
    offset = _integer_parameter(request, "_offset", 0, _MAX_OFFSET)
    return count, offset


def _link(request: HttpRequest, offset: int) -> str:
    query = request.GET.copy()
    query["_offset"] = str(offset)
    return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


def _total(matches: QuerySet[Any]) -> int | None:
    """How many match, counted up to :data:`_TOTAL_CAP`; None beyond."""
    counted = matches[: _TOTAL_CAP + 1].count()
    return counted if counted <= _TOTAL_CAP else None


def _searchset(
    request: HttpRequest,
    total: int | None,
    offset: int,
    count: int,
    entries: list[tuple[str, Json]],
) -> Json:
    """FHIR R4 bundle.html#searchset: total (when counted), links, one entry per match."""
    links = [{"relation": "self", "url": request.build_absolute_uri()}]
    more = len(entries) == count if total is None else offset + count < total
    if count and more:  # _count=0 asks for the total only
        links.append({"relation": "next", "url": _link(request, offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": _link(request, max(offset - count, 0))})
    bundle: Json = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if total is not None:
        bundle["total"] = total
    if entries:  # FHIR R4 json.html: arrays are never empty, an absent element is left out
        bundle["entry"] = [
            {"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}}
            for full_url, resource in entries
        ]
    return bundle


def _resource_id(resource_type: str, resource_id: str) -> int:
    if not _ID.fullmatch(resource_id):
        raise _not_found(resource_type, resource_id)
    return int(resource_id)


# --- views -------------------------------------------------------------------------------------
@_fhir_view
def practitioner_read(request: HttpRequest, resource_id: str) -> Json:
    professional = Professional.objects.filter(pk=_resource_id("Practitioner", resource_id)).first()
    if professional is None:
        raise _not_found("Practitioner", resource_id)
    mailboxes = _practitioner_mailboxes([professional.pk])
    return practitioner_resource(professional, mailboxes[professional.pk])


@_fhir_view
def practitioner_search(request: HttpRequest) -> Json:
    condition = _search_filter(request, _practitioner_conditions())
    count, offset = _page(request)
    matches = Professional.objects.filter(condition)
    page = list(matches.order_by("pk")[offset : offset + count])
    mailboxes = _practitioner_mailboxes([p.pk for p in page])
    entries = [
        (
            _reference(request, "fhir-practitioner", p.pk),
            practitioner_resource(p, mailboxes[p.pk]),
        )
        for p in page
    ]
    return _searchset(request, _total(matches), offset, count, entries)


@_fhir_view
def practitioner_role_read(request: HttpRequest, resource_id: str) -> Json:
    activity = (
        Activity.objects.select_related("professional", "organisation")
        .filter(pk=_resource_id("PractitionerRole", resource_id))
        .first()
    )
    if activity is None:
        raise _not_found("PractitionerRole", resource_id)
    mailboxes = _role_mailboxes([activity])
    key = (activity.professional_id, activity.organisation_id or 0)
    return practitioner_role_resource(activity, mailboxes[key])


@_fhir_view
def practitioner_role_search(request: HttpRequest) -> Json:
    condition = _search_filter(request, _role_conditions())
    count, offset = _page(request)
    matches = Activity.objects.filter(condition)
    page = list(
        matches.select_related("professional", "organisation").order_by("pk")[
            offset : offset + count
        ]
    )
    mailboxes = _role_mailboxes(page)
    entries = [
        (
            _reference(request, "fhir-practitionerrole", a.pk),
            practitioner_role_resource(a, mailboxes[(a.professional_id, a.organisation_id or 0)]),
        )
        for a in page
    ]
    return _searchset(request, _total(matches), offset, count, entries)


@_fhir_view
def organization_read(request: HttpRequest, resource_id: str) -> Json:
    organisation = Organisation.objects.filter(pk=_resource_id("Organization", resource_id)).first()
    if organisation is None:
        raise _not_found("Organization", resource_id)
    mailboxes = _organization_mailboxes([organisation.pk])
    return organization_resource(organisation, mailboxes[organisation.pk])


@_fhir_view
def organization_search(request: HttpRequest) -> Json:
    condition = _search_filter(request, _organization_conditions())
    count, offset = _page(request)
    matches = Organisation.objects.filter(condition)
    page = list(matches.order_by("pk")[offset : offset + count])
    mailboxes = _organization_mailboxes([o.pk for o in page])
    entries = [
        (
            _reference(request, "fhir-organization", o.pk),
            organization_resource(o, mailboxes[o.pk]),
        )
        for o in page
    ]
    return _searchset(request, _total(matches), offset, count, entries)


@_fhir_view
def capability_statement(request: HttpRequest) -> Json:
    """FHIR R4 capabilitystatement.html: what this server answers (``GET /fhir/metadata``)."""

    def resource(kind: str, parameters: list[tuple[str, str, str]]) -> Json:
        return {
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {"name": name, "type": kind_, "documentation": documentation}
                for name, kind_, documentation in parameters
            ],
        }

    identifier = ("identifier", "token", "système|valeur ou valeur seule")
    mailbox = (
        "mailbox-mss",
        "string",
        "adresse MSSanté (début par défaut, :exact, :contains); jamais de liste rouge",
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-01",
        "kind": "instance",
        "software": {"name": "Pli"},
        "implementation": {
            "description": "Annuaire Pli (lecture seule)",
            "url": request.build_absolute_uri(reverse("fhir-metadata")).removesuffix("metadata"),
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    resource("Practitioner", [identifier, mailbox]),
                    resource(
                        "PractitionerRole",
                        [
                            (
                                "identifier",
                                "token",
                                "identifiant du professionnel ou de la structure",
                            ),
                            mailbox,
                            ("practitioner", "reference", "Practitioner/id"),
                            ("organization", "reference", "Organization/id"),
                        ],
                    ),
                    resource("Organization", [identifier, mailbox]),
                ],
            }
        ],
    }


@_fhir_view
def unknown(request: HttpRequest, path: str) -> Json:
    raise FhirError(
        404,
        "not-supported",
        "unknown_resource_type",
        _("Ressource FHIR non prise en charge : %(path)s.") % {"path": path},
    )
