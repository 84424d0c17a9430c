"""The directory's FHIR R4 read API, as another system reads it (REQ-INTEROP).

Every resource and Bundle the API returns is parsed with ``fhir.resources``'
R4B models (R4B is R4 for Practitioner, PractitionerRole, Organization, Bundle and
OperationOutcome; the package has no plain R4 module), then its content is checked
against the ANS Annuaire Santé conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole

from pli.server.directory import fhir
from pli.server.directory.fhir import (
    FINESS_SYSTEM,
    IDENTIFIER_TYPE_SYSTEM,
    IDNPS_SYSTEM,
    IDNST_SYSTEM,
    LOCAL_SYSTEM,
    MAILBOX_METADATA_URL,
    MAILBOX_TYPE_SYSTEM,
    NIHII_SYSTEM,
    RPPS_SYSTEM,
    SIRET_SYSTEM,
)
from pli.server.directory.models import (
    Activity,
    IdentifierType,
    Mailbox,
    MailboxType,
    Organisation,
    Professional,
    search_key,
)
from tests.conftest import ALICE, ALICE_IDNPS

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(member_client: Client) -> Client:
    """Every request of these tests comes from a signed-in member (issue "accounts")."""
    return member_client


Json = dict[str, Any]

G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
R95 = "https://mos.esante.gouv.fr/NOS/TRE_R95-UsagerTitre/FHIR/TRE-R95-UsagerTitre"
R09 = (
    "https://mos.esante.gouv.fr/NOS/TRE_R09-CategorieProfessionnelle/FHIR/"
    "TRE-R09-CategorieProfessionnelle"
)
R23 = "https://mos.esante.gouv.fr/NOS/TRE_R23-ModeExercice/FHIR/TRE-R23-ModeExercice"
R04 = "https://mos.esante.gouv.fr/NOS/TRE_R04-TypeSavoirFaire/FHIR/TRE-R04-TypeSavoirFaire"
R38 = "https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale"
EMAIL_TYPE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"

ALICE_AT_SITE = "alice.martin@chu-test.pli.test"
ALICE_SECRET = "dr.martin.prive@pli.test"
SECRETARIAT = "secretariat.cardio@chu-test.pli.test"
SECRET_WARD = "addictologie@chu-test.pli.test"


@dataclass(frozen=True)
class Directory:
    site: Organisation
    cabinet: Organisation
    bare: Organisation
    alice: Professional
    bob: Professional
    carol: Professional
    dave: Professional
    alice_at_site: Activity
    alice_at_cabinet: Activity


@pytest.fixture
def directory() -> Directory:
    site = Organisation.objects.create(
        technical_id="F750000001",
        finess_site="750000001",
        finess_legal="750000019",
        siret="26750000100011",
        name="CENTRE HOSPITALIER DE TEST",
        trade_name="CHU Test",
        street_number="12",
        street_repetition="B",
        street_type="R",
        street_name="DE LA PAIX",
        distribution="BP 42",
        postcode="75002",
        city="PARIS",
        country="France",
        phone="0140000000",
    )
    cabinet = Organisation.objects.create(
        technical_id="S13000000100012",
        siret="13000000100012",
        name="CABINET DU PORT",
        postcode="13002",
        city="MARSEILLE",
    )
    bare = Organisation.objects.create(technical_id="R10000000012345", name="CABINET SANS SIRET")
    alice = Professional.objects.create(
        identifier_type=IdentifierType.RPPS,
        identifier=ALICE_IDNPS[1:],
        national_id=ALICE_IDNPS,
        civil_title_code="DR",
        civil_title="Docteur",
        civility_code="MME",
        civility="Madame",
        last_name="MARTIN",
        first_name="Alice",
        profession_code="10",
        profession="Médecin",
        category_code="C",
        category="Civil",
    )
    bob = Professional.objects.create(
        identifier_type=IdentifierType.ADELI,
        identifier="751234567",
        national_id="0751234567",
        last_name="DURAND",
        first_name="Bob",
        profession_code="60",
        profession="Infirmier",
        active=False,
    )
    carol = Professional.objects.create(
        identifier_type=IdentifierType.LOCAL,
        identifier="PSY-0001",
        national_id="L-PSY-0001",
        last_name="PETIT",
        first_name="Carol",
        profession_code="93",
        profession="Psychologue",
    )
    dave = Professional.objects.create(
        identifier_type=IdentifierType.NIHII,
        identifier="10829059104",
        national_id="N10829059104",
        last_name="JANSSENS",
        first_name="Dave",
        profession="Médecin (Belgique)",
    )
    alice_at_site = Activity.objects.create(
        professional=alice,
        organisation=site,
        activity_key="alice-site",
        skill_type_code="S",
        skill_type="Spécialité ordinale",
        skill_code="SM26",
        skill="Qualifié en Médecine Générale",
        practice_mode_code="S",
        practice_mode="Salarié",
    )
    alice_at_cabinet = Activity.objects.create(
        professional=alice,
        organisation=cabinet,
        activity_key="alice-cabinet",
        practice_mode_code="L",
        practice_mode="Libéral, indépendant, artisan, commerçant",
    )
    Mailbox.objects.bulk_create(
        [
            Mailbox(address=ALICE, kind=MailboxType.PERSONAL, professional=alice),
            Mailbox(
                address=ALICE_AT_SITE,
                kind=MailboxType.PERSONAL,
                professional=alice,
                organisation=site,
                service="Cardiologie",
            ),
            Mailbox(
                address=ALICE_SECRET, kind=MailboxType.PERSONAL, professional=alice, red_list=True
            ),
            Mailbox(
                address="alice.ancienne@pli.test",
                kind=MailboxType.PERSONAL,
                professional=alice,
                active=False,
            ),
            Mailbox(
                address=SECRETARIAT,
                kind=MailboxType.ORGANISATIONAL,
                organisation=site,
                service="Cardiologie",
                description="Secrétariat de cardiologie",
            ),
            Mailbox(
                address=SECRET_WARD,
                kind=MailboxType.ORGANISATIONAL,
                organisation=site,
                red_list=True,
            ),
            Mailbox(address="carol.petit@pli.test", kind=MailboxType.PERSONAL, professional=carol),
        ]
    )
    return Directory(site, cabinet, bare, alice, bob, carol, dave, alice_at_site, alice_at_cabinet)


# --- helpers ---------------------------------------------------------------------------------
def validate(model: Any, body: Json) -> Any:
    """Parse with a fhir.resources model: raises unless ``body`` is a valid FHIR resource.

    Typed ``Any`` on purpose: the tests read optional elements they have just asserted.
    """
    return model.model_validate(body)


def get_fhir(client: Client, url: str, status: int = 200) -> Json:
    """GET a FHIR URL (absolute or not) and check status and media type."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    response = client.get(path)
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    body: Json = response.json()
    assert_json_representation(body)
    return body


def assert_json_representation(value: object, path: str = "$") -> None:
    """FHIR R4 json.html: no empty arrays, objects or strings (fhir.resources lets them by)."""
    assert value not in ([], {}, ""), f"empty value at {path}"
    if isinstance(value, dict):
        for key, item in value.items():
            assert_json_representation(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_json_representation(item, f"{path}[{index}]")


def search(client: Client, url: str) -> Any:
    body = get_fhir(client, url)
    bundle = validate(Bundle, body)
    assert bundle.type == "searchset"
    assert bundle.total is not None
    return bundle


def outcome(client: Client, url: str, status: int) -> Any:
    body = get_fhir(client, url, status)
    parsed = validate(OperationOutcome, body)
    assert len(parsed.issue) == 1
    return parsed.issue[0]


def identifiers(resource: Any) -> dict[str, str]:
    return {i.system: i.value for i in resource.identifier or []}


def identifier_types(resource: Any) -> dict[str, str]:
    return {
        i.system: i.type.coding[0].code
        for i in resource.identifier or []
        if i.type is not None and i.type.coding[0].system == IDENTIFIER_TYPE_SYSTEM
    }


def mailbox_metadata(telecom: Any) -> dict[str, Any]:
    """The sub-extensions of as-ext-mailbox-mss-metadata, by url."""
    [metadata] = [e for e in telecom.extension if e.url == MAILBOX_METADATA_URL]
    result: dict[str, Any] = {}
    for sub in metadata.extension:
        if sub.valueCodeableConcept is not None:
            result[sub.url] = sub.valueCodeableConcept.coding[0]
        elif sub.valueBoolean is not None:
            result[sub.url] = sub.valueBoolean
        else:
            result[sub.url] = sub.valueString
    return result


def emails(resource: Any) -> list[str]:
    return [t.value for t in resource.telecom or [] if t.system == "email"]


def ids(bundle: Any) -> list[str]:
    return [entry.resource.id for entry in bundle.entry or []]


# --- Practitioner ----------------------------------------------------------------------------
@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_carries_ans_identifiers_name_and_profession(
    client: Client, directory: Directory
) -> None:
    practitioner = validate(
        Practitioner, get_fhir(client, f"/fhir/Practitioner/{directory.alice.pk}")
    )
    assert practitioner.id == str(directory.alice.pk)
    assert practitioner.active is True
    assert identifiers(practitioner) == {IDNPS_SYSTEM: ALICE_IDNPS, RPPS_SYSTEM: ALICE_IDNPS[1:]}
    assert identifier_types(practitioner) == {IDNPS_SYSTEM: "IDNPS", RPPS_SYSTEM: "RPPS"}
    [name] = practitioner.name
    assert (name.family, name.given, name.prefix, name.suffix) == (
        "MARTIN",
        ["Alice"],
        ["MME"],
        ["DR"],
    )
    [qualification] = practitioner.qualification
    codings = {(c.system, c.code, c.display) for c in qualification.code.coding}
    assert codings == {(G15, "10", "Médecin"), (R09, "C", "Civil")}


@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_telecom_is_published_mailboxes_with_ans_metadata(
    client: Client, directory: Directory
) -> None:
    practitioner = validate(
        Practitioner, get_fhir(client, f"/fhir/Practitioner/{directory.alice.pk}")
    )
    # Red-listed and closed mailboxes are never shown; the one at a site is the person's too.
    # Sorted by address, so that the output is stable.
    assert emails(practitioner) == [ALICE_AT_SITE, ALICE]
    telecom = practitioner.telecom[0]
    [email_type] = [e for e in telecom.extension if e.url == EMAIL_TYPE]
    assert email_type.valueCoding.code == "MSSANTE"
    metadata = mailbox_metadata(telecom)
    assert (metadata["type"].system, metadata["type"].code) == (MAILBOX_TYPE_SYSTEM, "PER")
    assert metadata["service"] == "Cardiologie"
    assert metadata["listeRouge"] is False
    assert "description" not in metadata  # empty fields are left out, not sent empty


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_inactive_professional_reads_as_active_false(client: Client, directory: Directory) -> None:
    practitioner = validate(
        Practitioner, get_fhir(client, f"/fhir/Practitioner/{directory.bob.pk}")
    )
    assert practitioner.active is False
    # ADELI: only the national form 0 + ADELI, under the IDNPS system.
    assert identifiers(practitioner) == {IDNPS_SYSTEM: "0751234567"}


@pytest.mark.requirement("REQ-NON-HEALTH")
def test_professionals_outside_the_rpps_have_their_own_identifiers(
    client: Client, directory: Directory
) -> None:
    carol = validate(Practitioner, get_fhir(client, f"/fhir/Practitioner/{directory.carol.pk}"))
    assert identifiers(carol) == {LOCAL_SYSTEM: "L-PSY-0001"}
    [qualification] = carol.qualification
    assert [(c.system, c.code) for c in qualification.code.coding] == [(R95, "93")]
    dave = validate(Practitioner, get_fhir(client, f"/fhir/Practitioner/{directory.dave.pk}"))
    assert identifiers(dave) == {LOCAL_SYSTEM: "N10829059104", NIHII_SYSTEM: "10829059104"}
    # A profession outside the ANS terminologies is sent as text, never under a wrong system.
    assert dave.qualification[0].code.coding is None
    assert dave.qualification[0].code.text == "Médecin (Belgique)"


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.requirement("REQ-INTEROP")
@pytest.mark.parametrize(
    "query",
    [
        f"{IDNPS_SYSTEM}|{ALICE_IDNPS}",
        f"{RPPS_SYSTEM}|{ALICE_IDNPS[1:]}",
        ALICE_IDNPS,
        ALICE_IDNPS[1:],
        f"19999999999,{ALICE_IDNPS}",  # a comma is OR (FHIR search §3.1.1.5.5)
    ],
)
def test_practitioner_search_by_identifier(
    client: Client, directory: Directory, query: str
) -> None:
    bundle = search(client, f"/fhir/Practitioner?identifier={query}")
    assert bundle.total == 1
    [entry] = bundle.entry
    assert entry.search.mode == "match"
    assert isinstance(entry.resource, Practitioner)
    assert entry.resource.id == str(directory.alice.pk)
    # fullUrl is where the resource lives.
    assert get_fhir(client, entry.fullUrl) == entry.resource.model_dump(mode="json")


@pytest.mark.parametrize(
    "query",
    [
        f"{RPPS_SYSTEM}|0751234567",  # an ADELI national id is not an RPPS number
        f"{IDNST_SYSTEM}|{ALICE_IDNPS}",  # a structure system
        f"https://example.org/other|{ALICE_IDNPS}",  # a system this directory does not know
        f"|{ALICE_IDNPS}",  # explicitly no system: Pli has no such identifiers
        "19999999999",
    ],
)
def test_practitioner_search_matching_nothing_is_an_empty_bundle(
    client: Client, directory: Directory, query: str
) -> None:
    bundle = search(client, f"/fhir/Practitioner?identifier={query}")
    assert bundle.total == 0
    assert not bundle.entry


@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_search_by_mailbox(client: Client, directory: Directory) -> None:
    alice = str(directory.alice.pk)
    assert ids(search(client, f"/fhir/Practitioner?mailbox-mss:exact={ALICE}")) == [alice]
    assert ids(search(client, f"/fhir/Practitioner?mailbox-mss={ALICE_AT_SITE}")) == [alice]
    # FHIR string search: case-insensitive prefix by default; :contains anywhere.
    assert ids(search(client, "/fhir/Practitioner?mailbox-mss=ALICE.MARTIN@")) == [alice]
    assert ids(search(client, "/fhir/Practitioner?mailbox-mss:contains=PETIT@")) == [
        str(directory.carol.pk)
    ]
    assert search(client, f"/fhir/Practitioner?mailbox-mss:exact={ALICE.upper()}").total == 0


@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.parametrize("resource_type", ["Practitioner", "PractitionerRole", "Organization"])
@pytest.mark.parametrize(
    "parameter",
    [
        f"mailbox-mss:exact={ALICE_SECRET}",
        f"mailbox-mss={ALICE_SECRET}",
        f"mailbox-mss:exact={SECRET_WARD}",
        "mailbox-mss:contains=prive",
        "mailbox-mss:exact=alice.ancienne@pli.test",  # closed mailbox
    ],
)
def test_red_listed_or_closed_mailboxes_never_appear(
    client: Client, directory: Directory, resource_type: str, parameter: str
) -> None:
    bundle = search(client, f"/fhir/{resource_type}?{parameter}")
    assert bundle.total == 0
    body = str(get_fhir(client, f"/fhir/Practitioner/{directory.alice.pk}"))
    body += str(get_fhir(client, f"/fhir/Organization/{directory.site.pk}"))
    body += str(get_fhir(client, f"/fhir/PractitionerRole/{directory.alice_at_site.pk}"))
    assert ALICE_SECRET not in body
    assert SECRET_WARD not in body
    assert "alice.ancienne" not in body


# --- PractitionerRole ------------------------------------------------------------------------
@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_role_references_resolve(client: Client, directory: Directory) -> None:
    role = validate(
        PractitionerRole, get_fhir(client, f"/fhir/PractitionerRole/{directory.alice_at_site.pk}")
    )
    assert role.active is True
    practitioner = validate(Practitioner, get_fhir(client, f"/fhir/{role.practitioner.reference}"))
    assert practitioner.id == str(directory.alice.pk)
    assert role.practitioner.display == "Alice MARTIN"
    organization = validate(Organization, get_fhir(client, f"/fhir/{role.organization.reference}"))
    assert organization.id == str(directory.site.pk)
    assert identifiers(organization)[FINESS_SYSTEM] == "750000001"


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_role_codes_specialty_and_site_mailboxes(
    client: Client, directory: Directory
) -> None:
    role = validate(
        PractitionerRole, get_fhir(client, f"/fhir/PractitionerRole/{directory.alice_at_site.pk}")
    )
    codes = {(c.coding[0].system, c.coding[0].code) for c in role.code}
    assert codes == {(G15, "10"), (R09, "C"), (R23, "S")}
    specialties = {(s.coding[0].system, s.coding[0].code) for s in role.specialty}
    assert specialties == {(R04, "S"), (R38, "SM26")}
    # Only the mailboxes of this professional at this site.
    assert emails(role) == [ALICE_AT_SITE]
    other = validate(
        PractitionerRole,
        get_fhir(client, f"/fhir/PractitionerRole/{directory.alice_at_cabinet.pk}"),
    )
    assert other.telecom is None
    assert other.specialty is None
    assert {(c.coding[0].system, c.coding[0].code) for c in other.code} >= {(R23, "L")}


def test_role_of_an_inactive_professional_is_inactive(client: Client, directory: Directory) -> None:
    activity = Activity.objects.create(
        professional=directory.bob, organisation=directory.site, activity_key="bob-site"
    )
    role = validate(PractitionerRole, get_fhir(client, f"/fhir/PractitionerRole/{activity.pk}"))
    assert role.active is False
    assert role.code[0].coding[0].code == "60"


@pytest.mark.requirement("REQ-INTEROP")
def test_practitioner_role_search(client: Client, directory: Directory) -> None:
    both = sorted([str(directory.alice_at_site.pk), str(directory.alice_at_cabinet.pk)])
    # identifier: the roles of the practitioner or organization holding it.
    bundle = search(client, f"/fhir/PractitionerRole?identifier={IDNPS_SYSTEM}|{ALICE_IDNPS}")
    assert sorted(ids(bundle)) == both
    assert all(isinstance(e.resource, PractitionerRole) for e in bundle.entry)
    bundle = search(client, f"/fhir/PractitionerRole?identifier={FINESS_SYSTEM}|750000001")
    assert ids(bundle) == [str(directory.alice_at_site.pk)]
    bundle = search(client, f"/fhir/PractitionerRole?mailbox-mss:exact={ALICE_AT_SITE}")
    assert ids(bundle) == [str(directory.alice_at_site.pk)]
    # The personal mailbox attached to no site belongs to the Practitioner, not to a role.
    assert search(client, f"/fhir/PractitionerRole?mailbox-mss:exact={ALICE}").total == 0
    bundle = search(
        client, f"/fhir/PractitionerRole?practitioner=Practitioner/{directory.alice.pk}"
    )
    assert sorted(ids(bundle)) == both
    bundle = search(
        client,
        f"/fhir/PractitionerRole?practitioner={directory.alice.pk}"
        f"&organization=Organization/{directory.cabinet.pk}",
    )
    assert ids(bundle) == [str(directory.alice_at_cabinet.pk)]


# --- Organization ----------------------------------------------------------------------------
@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.requirement("REQ-INTEROP")
def test_organization_identifiers_address_and_mailboxes(
    client: Client, directory: Directory
) -> None:
    organization = validate(
        Organization, get_fhir(client, f"/fhir/Organization/{directory.site.pk}")
    )
    assert organization.active is True
    assert identifiers(organization) == {
        IDNST_SYSTEM: "1750000001",
        FINESS_SYSTEM: "750000001",
        SIRET_SYSTEM: "26750000100011",
    }
    assert identifier_types(organization) == {
        IDNST_SYSTEM: "IDNST",
        FINESS_SYSTEM: "FINEG",
        SIRET_SYSTEM: "SIRET",
    }
    assert organization.name == "CENTRE HOSPITALIER DE TEST"
    assert organization.alias == ["CHU Test"]
    [address] = organization.address
    assert address.line == ["12 B R DE LA PAIX", "BP 42"]
    assert (address.postalCode, address.city, address.country) == ("75002", "PARIS", "France")
    phones = [t.value for t in organization.telecom if t.system == "phone"]
    assert phones == ["0140000000"]
    # The structure's own mailboxes only: not its professionals', never the red-listed one.
    assert emails(organization) == [SECRETARIAT]
    metadata = mailbox_metadata(organization.telecom[1])
    assert metadata["type"].code == "ORG"
    assert metadata["description"] == "Secrétariat de cardiologie"
    assert metadata["service"] == "Cardiologie"


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.parametrize(
    ("attribute", "query"),
    [
        ("site", f"{IDNST_SYSTEM}|1750000001"),
        ("site", f"{FINESS_SYSTEM}|750000001"),
        ("site", f"{SIRET_SYSTEM}|26750000100011"),
        ("site", "1750000001"),
        ("cabinet", f"{IDNST_SYSTEM}|313000000100012"),
        ("cabinet", "13000000100012"),
        ("bare", f"{IDNST_SYSTEM}|R10000000012345"),
    ],
)
def test_organization_search_by_identifier(
    client: Client, directory: Directory, attribute: str, query: str
) -> None:
    expected: Organisation = getattr(directory, attribute)
    bundle = search(client, f"/fhir/Organization?identifier={query}")
    assert ids(bundle) == [str(expected.pk)]
    [entry] = bundle.entry
    assert isinstance(entry.resource, Organization)
    assert IDNST_SYSTEM in identifiers(entry.resource)


def test_organization_search_by_mailbox(client: Client, directory: Directory) -> None:
    bundle = search(client, f"/fhir/Organization?mailbox-mss:exact={SECRETARIAT}")
    assert ids(bundle) == [str(directory.site.pk)]
    # A professional's mailbox at the site does not make the site match.
    assert search(client, f"/fhir/Organization?mailbox-mss:exact={ALICE_AT_SITE}").total == 0


# --- paging ----------------------------------------------------------------------------------
def test_search_pages_with_count_and_next_links(
    client: Client, directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = [
        Professional(
            identifier_type=IdentifierType.LOCAL,
            identifier=f"P{n}",
            national_id=f"L-PAGE{n}",
            last_name=f"PAGE{n}",
            name_key=search_key(f"PAGE{n}"),
        )
        for n in range(5)
    ]
    Professional.objects.bulk_create(people)
    created = Professional.objects.filter(national_id__startswith="L-PAGE").order_by("pk")
    Mailbox.objects.bulk_create(
        Mailbox(address=f"page{n}@pages.pli.test", kind=MailboxType.PERSONAL, professional=p)
        for n, p in enumerate(created)
    )
    seen: list[str] = []
    url = "/fhir/Practitioner?mailbox-mss=page&_count=2"
    pages = 0
    while url:
        bundle = search(client, url)
        assert bundle.total == 5
        assert len(bundle.entry) <= 2
        seen += ids(bundle)
        links = {link.relation: link.url for link in bundle.link}
        assert "self" in links
        url = links.get("next", "")
        pages += 1
    assert pages == 3
    assert seen == [str(p.pk) for p in created]
    # _count=0: the total alone, and no endless "next" link.
    bundle = search(client, "/fhir/Practitioner?mailbox-mss=page&_count=0")
    assert (bundle.total, bundle.entry) == (5, None)
    assert [link.relation for link in bundle.link] == ["self"]

    # The furthest page start is allowed (empty here); one further is refused (see errors).
    bundle = search(client, "/fhir/Practitioner?mailbox-mss=page&_count=2&_offset=10000")
    assert (bundle.total, bundle.entry) == (5, None)
    assert "previous" in [link.relation for link in bundle.link]

    # Beyond the count's cap, no total: the pages go on by their "next" links alone.
    monkeypatch.setattr(fhir, "_TOTAL_CAP", 3)
    url, seen = "/fhir/Practitioner?mailbox-mss=page&_count=2", []
    while url:
        body = get_fhir(client, url)
        bundle = validate(Bundle, body)
        assert "total" not in body and bundle.total is None
        seen += ids(bundle)
        url = {link.relation: link.url for link in bundle.link}.get("next", "")
    assert seen == [str(p.pk) for p in created]


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Practitioner/999999",
        "/fhir/PractitionerRole/999999",
        "/fhir/Organization/999999",
        "/fhir/Practitioner/not-a-number",
        "/fhir/Practitioner/1;DROP",
    ],
)
def test_unknown_id_is_404_operation_outcome(client: Client, url: str) -> None:
    issue = outcome(client, url, 404)
    assert issue.severity == "error"
    assert issue.code == "not-found"
    assert issue.details.coding[0].code == "resource_not_found"
    assert issue.diagnostics.startswith("Ressource introuvable")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("name=martin", "unknown_search_parameter"),
        ("identifier:text=martin", "unsupported_modifier"),
        ("mailbox-mss:missing=true", "unsupported_modifier"),
        ("identifier=", "bad_search_value"),
        (f"identifier={IDNPS_SYSTEM}|", "bad_search_value"),
        ("identifier=a,,b", "bad_search_value"),
        ("mailbox-mss=", "bad_search_value"),
        ("", "search_criteria_required"),
        ("_count=5", "search_criteria_required"),
        ("identifier=1&_count=-1", "bad_search_value"),
        ("identifier=1&_count=1000", "bad_search_value"),
        ("identifier=1&_offset=x", "bad_search_value"),
        # The database walks every row before an OFFSET: bounded (a review).
        ("identifier=1&_offset=10001", "bad_search_value"),
        ("identifier=1&_count=\u00b2", "bad_search_value"),
        # Control characters (a NUL cannot reach PostgreSQL): refused, never a 500.
        ("identifier=%00", "bad_search_value"),
        ("identifier=abc%00", "bad_search_value"),
        ("mailbox-mss=a%00", "bad_search_value"),
        ("mailbox-mss:contains=a%0Ab", "bad_search_value"),
        # A part of an address too short to narrow anything (no index serves it).
        ("mailbox-mss=dr", "bad_search_value"),
        ("mailbox-mss:contains=ab", "bad_search_value"),
        ("identifier=" + ",".join(str(n) for n in range(21)), "too_many_search_values"),
    ],
)
def test_bad_search_is_400_operation_outcome(
    client: Client, directory: Directory, query: str, code: str
) -> None:
    issue = outcome(client, f"/fhir/Practitioner?{query}", 400)
    assert issue.details.coding[0].code == code
    assert issue.code in ("invalid", "not-supported", "required")
    assert issue.diagnostics  # a French sentence for the person reading the logs


def test_other_resource_types_and_methods_are_refused(client: Client) -> None:
    issue = outcome(client, "/fhir/Patient/1", 404)
    assert issue.details.coding[0].code == "unknown_resource_type"
    # As a real server answers: with CSRF checks on, a POST still gets the FHIR 405.
    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/fhir/Practitioner", data={}, content_type="application/fhir+json")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    parsed = validate(OperationOutcome, response.json())
    assert parsed.issue[0].details.coding[0].code == "method_not_allowed"
    issue = outcome(client, "/fhir/Practitioner/1?_format=xml", 406)
    assert issue.details.coding[0].code == "unsupported_format"


@pytest.mark.requirement("REQ-INTEROP")
def test_capability_statement_describes_the_api(client: Client) -> None:
    statement = validate(CapabilityStatement, get_fhir(client, "/fhir/metadata"))
    assert statement.fhirVersion == "4.0.1"
    [rest] = statement.rest
    described = {r.type: {p.name for p in r.searchParam} for r in rest.resource}
    assert described == {
        "Practitioner": {"identifier", "mailbox-mss"},
        "PractitionerRole": {"identifier", "mailbox-mss", "practitioner", "organization"},
        "Organization": {"identifier", "mailbox-mss"},
    }
