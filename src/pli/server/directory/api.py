"""Directory API: search, and resolution of an exact address (REQ-DIRECTORY).

Thin: input checks and the shape of the answers live here, the queries in
``queries.py``. Errors carry a stable code and a translated message, never a
stack trace.
"""

from __future__ import annotations

from typing import Literal

from django.http import HttpRequest
from django.utils.translation import gettext as _
from ninja import Query, Router, Schema, Status
from pydantic import ConfigDict, Field

from pli.server.directory.models import Mailbox, Organisation, Professional
from pli.server.directory.queries import (
    COUNT_CAP,
    MAX_QUERY_LENGTH,
    ProfessionalResult,
    SearchError,
    identifier_type_name,
    parse_page,
    resolve_address,
    search_directory,
)

router = Router(tags=["directory"])

IdentifierTypeName = Literal["rpps", "adeli", "nihii", "local"]
MailboxTypeCode = Literal["PER", "ORG", "APP", "CAB"]


class _Out(Schema):
    """Answers are strict: exactly these fields, of exactly these types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ErrorOut(_Out):
    code: str = Field(description="Code stable de l'erreur, par exemple `query_too_long`.")
    message: str = Field(description="Explication pour une personne, dans sa langue.")
    field: str | None = Field(default=None, description="Paramètre en cause, s'il y en a un.")


class OrganisationOut(_Out):
    name: str
    postcode: str
    city: str


class MailboxOut(_Out):
    address: str
    type: MailboxTypeCode = Field(
        description="PER personnelle, ORG organisationnelle, APP applicative, CAB cabinet."
    )


class ProfessionalOut(_Out):
    national_id: str = Field(
        description="Identification nationale : 8 + RPPS, 0 + ADELI, ou la forme locale."
    )
    identifier_type: IdentifierTypeName
    identifier: str
    civil_title: str = Field(description="Civilité d'exercice (Docteur, Professeur…).")
    first_name: str
    last_name: str
    profession_code: str
    profession: str
    specialties: list[str] = Field(description="Savoir-faire (spécialités) des activités.")
    organisations: list[OrganisationOut] = Field(description="Structures d'exercice actives.")
    mailboxes: list[MailboxOut] = Field(
        description="Boîtes aux lettres actives, jamais celles en liste rouge."
    )


class SearchPageOut(_Out):
    results: list[ProfessionalOut]
    page: int
    page_size: int
    total: int = Field(description=f"Nombre de réponses, au plus {COUNT_CAP}.")
    total_capped: bool = Field(description=f"Plus de {COUNT_CAP} réponses : préciser la recherche.")


class ProfessionalSummaryOut(_Out):
    national_id: str
    identifier_type: IdentifierTypeName
    civil_title: str
    first_name: str
    last_name: str
    profession: str


class ResolvedMailboxOut(_Out):
    address: str
    type: MailboxTypeCode
    service: str
    description: str
    professional: ProfessionalSummaryOut | None
    organisation: OrganisationOut | None


class SearchFilters(Schema):
    """The query string of a search. Plain text here: queries.py checks it and answers with
    stable error codes, rather than the framework's generic validation errors."""

    q: str = Field(
        "",
        description=f"Nom et prénom (débuts de mots, dans n'importe quel ordre), ou identifiant ; "
        f"{MAX_QUERY_LENGTH} caractères au plus.",
    )
    profession: str = Field("", description="Code ou libellé de la profession.")
    postcode: str = Field("", description="Début du code postal d'un lieu d'exercice.")
    city: str = Field("", description="Début du nom de la commune d'un lieu d'exercice.")
    identifier: str = Field(
        "", description="RPPS, ADELI, identification nationale (8 + RPPS, 0 + ADELI) ou local."
    )
    page: str = Field("1", description="Numéro de page, entier à partir de 1.")


def _error(status: int, code: str, message: str, field: str | None = None) -> Status[ErrorOut]:
    return Status(status, ErrorOut(code=code, message=message, field=field))


def _professional_out(result: ProfessionalResult) -> ProfessionalOut:
    return ProfessionalOut(
        national_id=result.national_id,
        identifier_type=_identifier_type(result.identifier_type),
        identifier=result.identifier,
        civil_title=result.civil_title,
        first_name=result.first_name,
        last_name=result.last_name,
        profession_code=result.profession_code,
        profession=result.profession,
        specialties=list(result.specialties),
        organisations=[
            OrganisationOut(name=o.name, postcode=o.postcode, city=o.city)
            for o in result.organisations
        ],
        mailboxes=[
            MailboxOut(address=m.address, type=_mailbox_type(m.kind)) for m in result.mailboxes
        ],
    )


def _identifier_type(name: str) -> IdentifierTypeName:
    for known in ("rpps", "adeli", "nihii", "local"):
        if name == known:
            return known
    raise ValueError(f"unknown identifier type {name!r}")


def _mailbox_type(kind: str) -> MailboxTypeCode:
    for code in ("PER", "ORG", "APP", "CAB"):
        if kind == code:
            return code
    raise ValueError(f"unknown mailbox type {kind!r}")


@router.get(
    "/search",
    response={200: SearchPageOut, 422: ErrorOut},
    operation_id="directory_search",
    url_name="directory-search-api",
    summary="Rechercher un professionnel dans l'annuaire",
    description=(
        "Professionnels actifs de l'annuaire (REQ-DIRECTORY). Le nom est cherché sans tenir "
        "compte de la casse ni des accents, chaque mot étant le début d'un mot du nom, dans "
        "n'importe quel ordre. Un identifiant (RPPS, ADELI, identification nationale, INAMI) "
        "peut être donné dans `q` ou dans `identifier`. Les boîtes aux lettres en liste rouge "
        f"ne sont jamais listées. Au moins un critère est requis ; le total s'arrête à "
        f"{COUNT_CAP} (`total_capped`). Erreurs (422) : `query_too_long`, `invalid_page`, "
        "`page_too_far`, `no_criteria`, `empty_query`, `invalid_characters`, "
        "`invalid_identifier`, `invalid_postcode`, `invalid_city`."
    ),
)
def search(
    request: HttpRequest, filters: Query[SearchFilters]
) -> Status[SearchPageOut] | Status[ErrorOut]:
    try:
        found = search_directory(
            q=filters.q,
            profession=filters.profession,
            postcode=filters.postcode,
            city=filters.city,
            identifier=filters.identifier,
            page=parse_page(filters.page),
        )
    except SearchError as error:
        return _error(422, error.code, error.message, error.field)
    return Status(
        200,
        SearchPageOut(
            results=[_professional_out(r) for r in found.results],
            page=found.page,
            page_size=found.page_size,
            total=found.total,
            total_capped=found.total_capped,
        ),
    )


def _owner_professional(person: Professional | None) -> ProfessionalSummaryOut | None:
    if person is None:
        return None
    return ProfessionalSummaryOut(
        national_id=person.national_id,
        identifier_type=_identifier_type(identifier_type_name(person.identifier_type)),
        civil_title=person.civil_title,
        first_name=person.first_name,
        last_name=person.last_name,
        profession=person.profession,
    )


def _owner_organisation(organisation: Organisation | None) -> OrganisationOut | None:
    if organisation is None:
        return None
    return OrganisationOut(
        name=organisation.name or organisation.trade_name,
        postcode=organisation.postcode,
        city=organisation.city,
    )


@router.get(
    "/mailboxes/{address}",
    response={200: ResolvedMailboxOut, 404: ErrorOut},
    operation_id="directory_resolve_mailbox",
    url_name="directory-resolve-mailbox",
    summary="Retrouver une boîte aux lettres par son adresse exacte",
    description=(
        "Pour les membres connectés seulement : l'adresse exacte d'une boîte active, liste "
        "rouge comprise (REQ-DIRECTORY). Sans connexion, ou pour une adresse inconnue, la "
        "même réponse 404 `mailbox_not_found`."
    ),
)
def resolve_mailbox(
    request: HttpRequest, address: str
) -> Status[ResolvedMailboxOut] | Status[ErrorOut]:
    # The same 404 for "not signed in" and "no such address": a stranger must not learn
    # that a red-listed address exists (CONVENTIONS: access errors look like absence).
    mailbox: Mailbox | None = None
    if request.user.is_authenticated:
        mailbox = resolve_address(address)
    if mailbox is None:
        return _error(
            404,
            "mailbox_not_found",
            _("Aucune boîte aux lettres active ne correspond à cette adresse."),
            "address",
        )
    return Status(
        200,
        ResolvedMailboxOut(
            address=mailbox.address,
            type=_mailbox_type(mailbox.kind),
            service=mailbox.service,
            description=mailbox.description,
            professional=_owner_professional(mailbox.professional),
            organisation=_owner_organisation(mailbox.organisation),
        ),
    )
