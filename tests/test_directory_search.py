"""Searching the directory: names, filters, identifiers, paging, the red list (REQ-DIRECTORY).

Everything goes through the JSON API or the page, as a client would, on the
real database (SQLite, and PostgreSQL when PLI_DATABASE_URL names one).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pli.identifiers import luhn_is_valid
from pli.server.directory import queries
from pli.server.directory.models import (
    Activity,
    IdentifierType,
    Mailbox,
    MailboxType,
    Organisation,
    Professional,
    search_key,
)
from pli.server.directory.queries import SearchPage, search_directory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(member_client: Client) -> Client:
    """Every request of these tests comes from a signed-in member (issue "accounts")."""
    return member_client


SEARCH = "/api/directory/search"

_serial = itertools.count(1)


def rpps_number() -> str:
    """A fresh, valid RPPS number (11 digits, Luhn)."""
    base = f"1{next(_serial):09d}"
    return next(base + d for d in "0123456789" if luhn_is_valid(base + d))


def make_organisation(
    name: str = "Cabinet médical",
    *,
    postcode: str = "75011",
    city: str = "Paris",
    active: bool = True,
) -> Organisation:
    return Organisation.objects.create(
        technical_id=f"R10{next(_serial):07d}",
        name=name,
        postcode=postcode,
        city=city,
        city_key=search_key(city),
        active=active,
    )


@dataclass
class Person:
    professional: Professional
    mailboxes: list[Mailbox] = field(default_factory=list)


def make_professional(
    last_name: str,
    first_name: str,
    *,
    profession: tuple[str, str] = ("10", "Médecin"),
    at: Iterable[Organisation] = (),
    skill: str = "",
    addresses: Iterable[str] = (),
    red_listed: Iterable[str] = (),
    active: bool = True,
    identifier_type: str = IdentifierType.RPPS,
    identifier: str | None = None,
) -> Person:
    number = identifier or rpps_number()
    prefixes = {IdentifierType.RPPS.value: "8", IdentifierType.ADELI.value: "0"}
    national_id = prefixes.get(identifier_type, "")
    professional = Professional.objects.create(
        identifier_type=identifier_type,
        identifier=number,
        national_id=national_id + number if national_id else f"{identifier_type}{number}",
        civil_title="Docteur",
        last_name=last_name,
        first_name=first_name,
        name_key=search_key(last_name, first_name),
        profession_code=profession[0],
        profession=profession[1],
        active=active,
    )
    for organisation in at:
        Activity.objects.create(
            professional=professional,
            organisation=organisation,
            activity_key=f"A{next(_serial)}",
            skill=skill,
        )
    person = Person(professional)
    for address, red in [(a, False) for a in addresses] + [(a, True) for a in red_listed]:
        person.mailboxes.append(
            Mailbox.objects.create(
                address=address, kind=MailboxType.PERSONAL, professional=professional, red_list=red
            )
        )
    return person


def search(client: Client, **params: str | int) -> dict[str, Any]:
    response = client.get(SEARCH, params)
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def names(body: dict[str, Any]) -> list[str]:
    return [f"{r['first_name']} {r['last_name']}" for r in body["results"]]


def error_of(client: Client, **params: str | int) -> dict[str, Any]:
    response = client.get(SEARCH, params)
    assert response.status_code == 422, response.content
    assert b"Traceback" not in response.content
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------- names


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_professional_is_found_by_the_prefix_of_their_name(client: Client) -> None:
    clinic = make_organisation("Centre de santé du Marais", postcode="75003", city="Paris")
    make_professional(
        "MARTIN",
        "Claire",
        at=[clinic],
        skill="Médecine générale",
        addresses=["claire.martin@medecin.mssante.test"],
    )
    make_professional("DURAND", "Paul")

    body = search(client, q="mart")

    assert body["total"] == 1 and body["total_capped"] is False
    (found,) = body["results"]
    assert found["last_name"] == "MARTIN" and found["first_name"] == "Claire"
    assert found["identifier_type"] == "rpps"
    assert found["national_id"] == "8" + found["identifier"]
    assert found["profession"] == "Médecin" and found["profession_code"] == "10"
    assert found["specialties"] == ["Médecine générale"]
    assert found["organisations"] == [
        {"name": "Centre de santé du Marais", "postcode": "75003", "city": "Paris"}
    ]
    assert found["mailboxes"] == [{"address": "claire.martin@medecin.mssante.test", "type": "PER"}]


@pytest.mark.requirement("REQ-DIRECTORY")
@pytest.mark.parametrize("q", ["mart cla", "cla mart", "Claire Martin", "MARTIN claire", "c m"])
def test_every_word_is_a_prefix_of_some_word_in_any_order(client: Client, q: str) -> None:
    make_professional("MARTIN", "Claire")
    make_professional("MARTIN", "Paul")
    make_professional("CLAVEL", "Anne")

    assert names(search(client, q=q)) == ["Claire MARTIN"]


@pytest.mark.parametrize("q", ["artin", "laire", "martinez", "mart paul claire"])
def test_words_must_start_name_words(client: Client, q: str) -> None:
    make_professional("MARTIN", "Claire")

    assert search(client, q=q)["results"] == []


@pytest.mark.parametrize(
    ("q", "last_name", "first_name"),
    [
        ("élise", "Durand", "Elise"),
        ("ELISE", "Durand", "Élise"),
        ("helene", "LEFÈVRE", "Hélène"),
        ("lefevre h", "LEFÈVRE", "Hélène"),
        ("çé", "ÇÉLINE", "Anne"),
        ("pierre", "ROUX", "Jean-Pierre"),
        ("jean pierre", "ROUX", "Jean-Pierre"),
        ("d'arc", "D'ARC", "Jeanne"),
        ("arc jea", "D'ARC", "Jeanne"),
    ],
)
def test_case_accents_hyphens_and_apostrophes_do_not_matter(
    client: Client, q: str, last_name: str, first_name: str
) -> None:
    make_professional(last_name, first_name)
    make_professional("AUTRE", "Personne")

    assert names(search(client, q=q)) == [f"{first_name} {last_name}"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("gall", "Yann LE GALL"),  # second word
        ("le gall", "Yann LE GALL"),
        ("yann", "Yann LE GALL"),  # third word
        ("tour", "Marie-Claire DE LA TOUR D'AUVERGNE"),  # third word
        ("d", "Marie-Claire DE LA TOUR D'AUVERGNE"),  # first and fourth words
        ("auvergne", "Marie-Claire DE LA TOUR D'AUVERGNE"),  # beyond the fourth word
        ("claire", "Marie-Claire DE LA TOUR D'AUVERGNE"),
        ("claire de la tour", "Marie-Claire DE LA TOUR D'AUVERGNE"),
    ],
)
def test_any_word_of_a_long_name_is_found(client: Client, q: str, expected: str) -> None:
    make_professional("LE GALL", "Yann")
    make_professional("DE LA TOUR D'AUVERGNE", "Marie-Claire")
    make_professional("MARTIN", "Paul")

    assert names(search(client, q=q)) == [expected]


@pytest.mark.requirement("REQ-DIRECTORY")
def test_inactive_professionals_are_not_found(client: Client) -> None:
    gone = make_professional("MARTIN", "Claire", active=False)
    make_professional("MARTIN", "Paul")

    assert names(search(client, q="martin")) == ["Paul MARTIN"]
    assert search(client, identifier=gone.professional.identifier)["results"] == []


def test_results_come_in_name_order(client: Client) -> None:
    for last_name, first_name in [("ROUX", "Zoé"), ("ROUX", "Anne"), ("ROUSSEL", "Marc")]:
        make_professional(last_name, first_name)

    assert names(search(client, q="rou")) == ["Marc ROUSSEL", "Anne ROUX", "Zoé ROUX"]


# ---------------------------------------------------------------- filters


@pytest.mark.requirement("REQ-DIRECTORY")
def test_profession_filter_takes_a_code_or_a_label(client: Client) -> None:
    make_professional("MARTIN", "Claire", profession=("10", "Médecin"))
    make_professional("MARTIN", "Léa", profession=("60", "Infirmier"))
    make_professional("MARTIN", "Hugo", profession=("93", "Psychologue"))

    assert names(search(client, q="martin", profession="10")) == ["Claire MARTIN"]
    assert names(search(client, q="martin", profession="medecin")) == ["Claire MARTIN"]
    assert names(search(client, q="martin", profession="INFIRM")) == ["Léa MARTIN"]
    assert names(search(client, profession="Psychologue")) == ["Hugo MARTIN"]
    assert search(client, q="martin", profession="Sage-femme")["results"] == []


def test_place_filters_by_postcode_prefix_and_city(client: Client) -> None:
    paris = make_organisation("Hôpital", postcode="75012", city="Paris")
    lyon = make_organisation("Clinique", postcode="69003", city="Lyon")
    saint_etienne = make_organisation("Cabinet", postcode="42000", city="Saint-Étienne")
    closed = make_organisation("Ancien cabinet", postcode="75005", city="Paris", active=False)
    make_professional("MARTIN", "Claire", at=[paris])
    make_professional("MARTIN", "Léa", at=[lyon, saint_etienne])
    make_professional("MARTIN", "Hugo", at=[closed])

    assert names(search(client, q="martin", postcode="75")) == ["Claire MARTIN"]
    assert names(search(client, postcode="69 0")) == ["Léa MARTIN"]
    assert names(search(client, city="saint etienne")) == ["Léa MARTIN"]
    assert names(search(client, city="SAINT-ÉT")) == ["Léa MARTIN"]
    assert names(search(client, q="mar", city="paris")) == ["Claire MARTIN"]
    assert search(client, q="martin", postcode="13")["results"] == []


# ---------------------------------------------------------------- identifiers


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_professional_is_found_by_rpps_or_national_identifier(client: Client) -> None:
    claire = make_professional("MARTIN", "Claire").professional
    make_professional("MARTIN", "Paul")
    rpps = claire.identifier
    spaced = f"{rpps[:3]} {rpps[3:6]} {rpps[6:]}"

    for value in (rpps, "8" + rpps, spaced):
        assert names(search(client, identifier=value)) == ["Claire MARTIN"], value
        assert names(search(client, q=value)) == ["Claire MARTIN"], value
    assert search(client, identifier="10000000000")["results"] == []


def test_adeli_nihii_and_local_identifiers_are_found(client: Client) -> None:
    adeli = make_professional(
        "PETIT", "Anne", identifier_type=IdentifierType.ADELI, identifier="751234565"
    )
    belgian = make_professional(
        "PEETERS", "Jan", identifier_type=IdentifierType.NIHII, identifier="10000297005"
    )
    local = make_professional(
        "BLANC", "Léo", identifier_type=IdentifierType.LOCAL, identifier="PSY42"
    )

    assert names(search(client, identifier="0751234565")) == ["Anne PETIT"]
    assert names(search(client, q="751234565")) == ["Anne PETIT"]
    assert names(search(client, identifier=belgian.professional.identifier)) == ["Jan PEETERS"]
    assert names(search(client, identifier="PSY42")) == ["Léo BLANC"]
    assert adeli.professional.national_id == "0751234565"
    assert local.professional.identifier == "PSY42"


# ---------------------------------------------------------------- red list


@pytest.mark.requirement("REQ-DIRECTORY")
def test_red_listed_mailboxes_are_never_listed(client: Client) -> None:
    make_professional(
        "MARTIN",
        "Claire",
        addresses=["claire.martin@medecin.mssante.test"],
        red_listed=["claire.martin.prive@medecin.mssante.test"],
    )
    make_professional("MARTIN", "Paul", red_listed=["paul.martin@medecin.mssante.test"])

    response = client.get(SEARCH, {"q": "martin"})

    assert response.status_code == 200
    assert b"prive@" not in response.content and b"paul.martin@" not in response.content
    by_name = {f"{r['first_name']}": r["mailboxes"] for r in response.json()["results"]}
    assert by_name == {
        "Claire": [{"address": "claire.martin@medecin.mssante.test", "type": "PER"}],
        "Paul": [],  # the person is listed, without the red-listed address
    }
    page = client.get("/annuaire/", {"q": "martin"}).content.decode()
    assert "claire.martin@medecin.mssante.test" in page
    assert "prive@" not in page and "paul.martin@" not in page


def _member(client: Client) -> None:
    user = get_user_model().objects.create_user(username="alice")
    client.force_login(user)


@pytest.mark.requirement("REQ-DIRECTORY")
def test_a_member_resolves_a_red_listed_address_exactly(client: Client) -> None:
    make_professional("MARTIN", "Paul", red_listed=["paul.martin@medecin.mssante.test"])
    _member(client)

    response = client.get("/api/directory/mailboxes/paul.martin@medecin.mssante.test")

    assert response.status_code == 200
    body = response.json()
    assert body["address"] == "paul.martin@medecin.mssante.test" and body["type"] == "PER"
    assert body["professional"]["last_name"] == "MARTIN"
    assert body["organisation"] is None
    upper = client.get("/api/directory/mailboxes/Paul.Martin@medecin.mssante.test")
    assert upper.status_code == 200


@pytest.mark.requirement("REQ-DIRECTORY")
def test_strangers_get_the_same_404_as_for_a_missing_address(client: Client) -> None:
    make_professional("MARTIN", "Paul", red_listed=["paul.martin@medecin.mssante.test"])

    # Anonymous callers get nothing (the API requires authentication).
    anonymous = Client().get("/api/directory/mailboxes/paul.martin@medecin.mssante.test")
    assert anonymous.status_code == 401
    _member(client)
    missing = client.get("/api/directory/mailboxes/nobody@medecin.mssante.test")
    partial = client.get("/api/directory/mailboxes/paul.martin@medecin")

    assert missing.status_code == partial.status_code == 404
    assert missing.json() == partial.json()
    assert missing.json()["code"] == "mailbox_not_found"


def test_inactive_mailboxes_and_owners_are_not_resolved(client: Client) -> None:
    person = make_professional("MARTIN", "Paul", addresses=["paul.martin@medecin.mssante.test"])
    gone = make_professional("DURAND", "Luc", addresses=["luc.durand@medecin.mssante.test"])
    Mailbox.objects.filter(pk=person.mailboxes[0].pk).update(active=False)
    Professional.objects.filter(pk=gone.professional.pk).update(active=False)
    _member(client)

    assert (
        client.get("/api/directory/mailboxes/paul.martin@medecin.mssante.test").status_code == 404
    )
    assert client.get("/api/directory/mailboxes/luc.durand@medecin.mssante.test").status_code == 404


# ---------------------------------------------------------------- paging and bad input


def test_pages_split_results_in_name_order(client: Client) -> None:
    Professional.objects.bulk_create(
        Professional(
            identifier_type=IdentifierType.RPPS,
            identifier=(number := rpps_number()),
            national_id="8" + number,
            last_name="DUPONT",
            first_name=f"Prénom{i:02d}",
            name_key=search_key("DUPONT", f"Prénom{i:02d}"),
        )
        for i in range(45)
    )

    pages = [search(client, q="dupont", page=n) for n in (1, 2, 3)]

    assert [p["total"] for p in pages] == [45, 45, 45]
    assert [len(p["results"]) for p in pages] == [20, 20, 5]
    assert [p["page"] for p in pages] == [1, 2, 3] and pages[0]["page_size"] == 20
    everyone = [name for p in pages for name in names(p)]
    assert everyone == [f"Prénom{i:02d} DUPONT" for i in range(45)]
    assert search(client, q="dupont", page=4)["results"] == []


def test_counting_stops_at_the_cap(client: Client) -> None:
    Professional.objects.bulk_create(
        Professional(
            identifier_type=IdentifierType.RPPS,
            identifier=(number := rpps_number()),
            national_id="8" + number,
            last_name=f"NOM{i:04d}",
            first_name="Jean",
            name_key=search_key(f"NOM{i:04d}", "Jean"),
        )
        for i in range(queries.COUNT_CAP + 5)
    )

    body = search(client, q="jean")

    assert body["total"] == queries.COUNT_CAP and body["total_capped"] is True
    assert names(body)[:2] == ["Jean NOM0000", "Jean NOM0001"]
    last = search(client, q="jean", page=queries.COUNT_CAP // 20)
    assert names(last)[-1] == f"Jean NOM{queries.COUNT_CAP - 1:04d}"


@pytest.mark.parametrize(
    ("params", "code", "in_message"),
    [
        ({"q": "a" * 101}, "query_too_long", "100 caractères"),
        ({"q": "martin", "city": "x" * 101}, "query_too_long", "100 caractères"),
        ({"q": "martin", "page": "0"}, "invalid_page", "page"),
        ({"q": "martin", "page": "-1"}, "invalid_page", "page"),
        ({"q": "martin", "page": "deux"}, "invalid_page", "page"),
        ({"q": "martin", "page": "9" * 40}, "invalid_page", "page"),
        ({"q": "martin", "page": "51"}, "page_too_far", "précisez"),
        ({}, "no_criteria", "critère"),
        ({"q": "   "}, "no_criteria", "critère"),
        ({"q": "-- '"}, "empty_query", "mot"),
        ({"identifier": "8101<script>"}, "invalid_identifier", "identifiant"),
        ({"postcode": "75%"}, "invalid_postcode", "code postal"),
    ],
)
def test_bad_input_gets_a_stable_code_and_a_french_message(
    client: Client, params: dict[str, str], code: str, in_message: str
) -> None:
    body = error_of(client, **params)

    assert body["code"] == code
    assert in_message in body["message"]
    assert set(body) == {"code", "message", "field"}


def test_unknown_parameters_are_ignored(client: Client) -> None:
    make_professional("MARTIN", "Claire")

    assert names(search(client, q="martin", sort="name", debug="1")) == ["Claire MARTIN"]


def test_hostile_words_are_only_text(client: Client) -> None:
    make_professional("MARTIN", "Claire")

    for q in ["%", "_", "mar%", "' OR 1=1 --", "\\", "*", "m.*"]:
        assert search(client, q=q)["results"] == [], q
    for q in ["m\x00", "mar\x1b[0m"]:
        assert error_of(client, q=q)["code"] == "invalid_characters"
    _member(client)
    assert client.get("/api/directory/mailboxes/a%00b@x.fr").status_code == 404


def test_search_is_documented_in_openapi(client: Client) -> None:
    spec = client.get("/api/openapi.json").json()

    search_op = spec["paths"]["/api/directory/search"]["get"]
    assert {p["name"] for p in search_op["parameters"]} >= {
        "q",
        "profession",
        "postcode",
        "city",
        "identifier",
        "page",
    }
    assert {"200", "422"} <= set(search_op["responses"])
    resolve = spec["paths"]["/api/directory/mailboxes/{address}"]["get"]
    assert {"200", "404"} <= set(resolve["responses"])


# ---------------------------------------------------------------- the page


@pytest.mark.requirement("REQ-DIRECTORY")
def test_the_page_lists_results_in_french(client: Client) -> None:
    make_professional("MARTIN", "Claire", addresses=["claire.martin@medecin.mssante.test"])

    empty = client.get("/annuaire/", HTTP_ACCEPT_LANGUAGE="fr")
    found = client.get("/annuaire/", {"q": "mar cla"}, HTTP_ACCEPT_LANGUAGE="fr")
    nothing = client.get("/annuaire/", {"q": "zzz"}, HTTP_ACCEPT_LANGUAGE="fr")

    assert empty.status_code == found.status_code == nothing.status_code == 200
    assert '<html lang="fr">' in empty.content.decode()
    assert "Annuaire des professionnels" in empty.content.decode()
    assert "<table" not in empty.content.decode()
    page = found.content.decode()
    assert (
        "1 résultat" in page and "MARTIN" in page and "claire.martin@medecin.mssante.test" in page
    )
    assert "Aucun résultat" in nothing.content.decode()


def test_english_speakers_get_english(client: Client) -> None:
    make_professional("MARTIN", "Claire")

    page = client.get("/annuaire/", {"q": "martin"}, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    error = client.get(SEARCH, {"q": "x" * 101}, HTTP_ACCEPT_LANGUAGE="en").json()

    assert '<html lang="en">' in page and "Directory of professionals" in page
    assert "1 result" in page
    assert error == {
        "code": "query_too_long",
        "message": "A search cannot be longer than 100 characters.",
        "field": "q",
    }


def test_the_page_shows_bad_input_without_a_trace(client: Client) -> None:
    response = client.get("/annuaire/", {"q": "a" * 150}, HTTP_ACCEPT_LANGUAGE="fr")

    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert "100 caractères" in response.content.decode()


def test_the_page_offers_professions_and_places(client: Client) -> None:
    lyon = make_organisation("Clinique", postcode="69003", city="Lyon")
    make_professional("MARTIN", "Claire", profession=("10", "Médecin"), at=[lyon])
    make_professional("MARTIN", "Léa", profession=("60", "Infirmier"))

    page = client.get("/annuaire/", {"profession": "60"}).content.decode()
    by_place = client.get("/annuaire/", {"q": "martin", "place": "lyon"}).content.decode()
    by_postcode = client.get("/annuaire/", {"q": "martin", "place": "69"}).content.decode()

    assert '<option value="60" selected>Infirmier</option>' in page
    assert '<option value="10">Médecin</option>' in page
    assert "Léa" in page and "Claire" not in page
    assert "Claire" in by_place and "Léa" not in by_place
    assert "Claire" in by_postcode and "Léa" not in by_postcode


# ---------------------------------------------------------------- the same answers as brute force


VOCABULARY = [
    "martin",
    "marie",
    "mar",
    "claire",
    "clavel",
    "le",
    "gall",
    "de",
    "la",
    "jean",
    "yann",
]


def brute_force(people: list[Professional], q: str) -> list[int]:
    words = search_key(q).split()
    matching = [
        p
        for p in people
        if all(any(w.startswith(word) for w in p.name_key.split()) for word in words)
    ]
    return [p.pk for p in sorted(matching, key=lambda p: (p.name_key, p.pk))]


def all_pages(q: str) -> Iterator[SearchPage]:
    page = 1
    while True:
        found = search_directory(q=q, page=page, page_size=3)
        yield found
        if not found.has_next:
            return
        page += 1


@pytest.mark.parametrize("cap", [1000, 7])
def test_every_way_of_reading_gives_the_brute_force_answer(
    monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    # With a low cap, the capped ways (the dense walk, the long last-name range) run too.
    monkeypatch.setattr(queries, "COUNT_CAP", cap)
    chooser = random.Random(7)  # noqa: S311 - reproducible test names, not secrets
    people = []
    for _ in range(120):
        words = chooser.sample(VOCABULARY, chooser.choice([1, 2, 3, 4, 5, 6]))
        last, first = " ".join(words[:-1]) or words[0], words[-1]
        people.append(make_professional(last.upper(), first.capitalize()).professional)
    people = list(Professional.objects.all())

    for q in ["mar", "ma", "cla", "gall", "mar cla", "jean le", "la de", "yann", "martin marie"]:
        expected = brute_force(people, q)
        national_ids = {p.pk: p.national_id for p in people}
        read: list[str] = []
        totals = set()
        for found in all_pages(q):
            read += [r.national_id for r in found.results]
            totals.add((found.total, found.total_capped))
        visible = expected[: (cap // 3 + (cap % 3 > 0)) * 3]
        assert read[: len(visible)] == [national_ids[pk] for pk in visible], q
        assert totals == {(min(len(expected), cap), len(expected) > cap)}, q


@pytest.mark.parametrize(("count_cap", "fetch_cap"), [(1000, 5000), (5, 3), (5, 40)])
def test_filters_and_names_together_give_the_brute_force_answer(
    monkeypatch: pytest.MonkeyPatch, count_cap: int, fetch_cap: int
) -> None:
    # Low caps send the filters' matches down every way: sorted here, walked, name-driven.
    monkeypatch.setattr(queries, "COUNT_CAP", count_cap)
    monkeypatch.setattr(queries, "FETCH_CAP", fetch_cap)
    monkeypatch.setattr(queries, "SITE_CAP", fetch_cap)
    chooser = random.Random(11)  # noqa: S311 - reproducible test data, not secrets
    places = [
        make_organisation("Nord", postcode="59000", city="Lille"),
        make_organisation("Sud", postcode="34000", city="Montpellier"),
        make_organisation("Sud bis", postcode="34090", city="Montpellier"),
        make_organisation("Fermé", postcode="34000", city="Montpellier", active=False),
    ]
    professions = [("10", "Médecin"), ("60", "Infirmier")]
    for _ in range(80):
        words = chooser.sample(VOCABULARY, chooser.choice([2, 3]))
        make_professional(
            " ".join(words[:-1]).upper(),
            words[-1].capitalize(),
            profession=chooser.choice(professions),
            at=chooser.sample(places, chooser.choice([0, 1, 2])),
        )
    people = list(Professional.objects.all())
    working = set(
        Activity.objects.filter(active=True, organisation__active=True).values_list(
            "professional_id", "organisation__postcode", "organisation__city_key"
        )
    )

    def expected(q: str, profession: str, postcode: str, city: str) -> list[str]:
        ids = set(brute_force(people, q)) if q else {p.pk for p in people}
        return [
            p.national_id
            for p in sorted(people, key=lambda p: (p.name_key, p.pk))
            if p.pk in ids
            and (not profession or p.profession_code == profession)
            and (
                not (postcode or city)
                or any(
                    pk == p.pk and code.startswith(postcode) and key.startswith(city)
                    for pk, code, key in working
                )
            )
        ]

    for q, profession, postcode, city in [
        ("", "10", "", ""),
        ("", "", "34", ""),
        ("", "60", "", "montpellier"),
        ("mar", "", "59", ""),
        ("ma", "10", "", "lille"),
        ("cla", "60", "34", ""),
        ("le", "", "", "montp"),
    ]:
        want = expected(q, profession, postcode, city)
        got: list[str] = []
        page = 1
        while True:
            found = search_directory(
                q=q, profession=profession, postcode=postcode, city=city, page=page, page_size=2
            )
            got += [r.national_id for r in found.results]
            assert (found.total, found.total_capped) == (
                min(len(want), count_cap),
                len(want) > count_cap,
            ), (q, profession, postcode, city)
            if not found.has_next:
                break
            page += 1
        assert got == want[: len(got)], (q, profession, postcode, city)
        assert len(got) >= min(len(want), count_cap)


def test_long_last_name_ranges_and_broad_filters_read_in_name_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More people share a last name (or a profession) than the cap: the first rows of
    # the range are merged with the few later-word matches, or read in name order.
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    for first_name in ["Zoé", "Anne", "Marc", "Léa", "Hugo", "Inès", "Paul"]:
        make_professional("PETIT", first_name, profession=("60", "Infirmier"))
    make_professional("MOREAU", "Petitjean", profession=("60", "Infirmier"))
    make_professional("ABEL", "Petra", profession=("10", "Médecin"))

    by_name = [search_directory(q="petit", page=n, page_size=3) for n in (1, 2)]
    by_profession = [search_directory(profession="60", page=n, page_size=3) for n in (1, 2)]

    assert [[r.first_name for r in p.results] for p in by_name] == [
        ["Petitjean", "Anne", "Hugo"],
        ["Inès", "Léa", "Marc"],
    ]
    assert [[r.first_name for r in p.results] for p in by_profession] == [
        ["Petitjean", "Anne", "Hugo"],
        ["Inès", "Léa", "Marc"],
    ]
    assert {(p.total, p.total_capped) for p in by_name + by_profession} == {(5, True)}


def test_two_words_with_many_later_word_matches_read_in_name_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More first names "Jean..." than the cap, all with the last name MARTIN: the
    # matches gather at MARTIN in name order, and are read there, not by a walk.
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    for first_name in [
        "Jean",
        "Jeanne",
        "Jean-Paul",
        "Jeannot",
        "Jean-Marc",
        "Jeanine",
        "Jean-Luc",
    ]:
        make_professional("MARTIN", first_name)
    make_professional("SAINT-MARTIN", "Jean")
    make_professional("ABEL", "Jean")
    make_professional("MARTINEZ", "Paul")

    pages = [search_directory(q="jean martin", page=n, page_size=3) for n in (1, 2)]

    assert [[r.first_name for r in p.results] for p in pages] == [
        ["Jean", "Jean-Luc", "Jean-Marc"],
        ["Jean-Paul", "Jeanine", "Jeanne"],
    ]
    assert {(p.total, p.total_capped) for p in pages} == {(5, True)}


def test_a_walk_that_reaches_the_end_counts_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    # More structures in the place than SITE_CAP, more people of the profession than
    # FETCH_CAP: the matches are read by walking the names, which sees them all when
    # they are few.
    monkeypatch.setattr(queries, "FETCH_CAP", 3)
    monkeypatch.setattr(queries, "SITE_CAP", 3)
    sites = [make_organisation(f"Site {n}", postcode="34000", city="Montpellier") for n in range(4)]
    for n in range(10):
        make_professional("INFIRMIER", f"Nom{n}", profession=("60", "Infirmier"))
    make_professional("BLANC", "Anne", profession=("60", "Infirmier"), at=sites[:2])
    make_professional("NOIR", "Paul", profession=("60", "Infirmier"), at=sites[3:])
    make_professional("VERT", "Léa", profession=("10", "Médecin"), at=sites)

    found = search_directory(profession="60", postcode="34")

    assert [r.last_name for r in found.results] == ["BLANC", "NOIR"]
    assert (found.total, found.total_capped) == (2, False)


# ---------------------------------------------------------------- query plans


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN " + sql)
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return "\n".join(
            str(row[-1] if connection.vendor == "sqlite" else row[0]) for row in cursor
        )


def test_name_searches_use_the_indexes() -> None:
    """The expressions of queries.py and of migration 0002 must stay the same."""
    make_professional("LE GALL", "Yann")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # A tiny table is read whole otherwise; the point is that the indexes *can* serve.
            cursor.execute("SET LOCAL enable_seqscan = off")
    with CaptureQueriesContext(connection) as captured:
        search_directory(q="gall yann")
    plans = "\n".join(
        _plan(query["sql"])
        for query in captured.captured_queries
        # Not PostgreSQL's estimates of the lead word (EXPLAIN), nor its transaction
        # and settings around the search.
        if query["sql"].startswith(("SELECT", "WITH"))
    )

    for index in (
        "directory_pro_name_w2_idx",
        "directory_pro_name_w3_idx",
        "directory_pro_name_w4_idx",
        "directory_pro_name_spaces_idx",
    ):
        assert index in plans, plans
    first_word = "directory_pro_name_order_idx" if connection.vendor == "postgresql" else "name_key"
    assert first_word in plans, plans


def test_api_answers_are_plain_json(client: Client) -> None:
    make_professional("MARTIN", "Claire")

    response = client.get(SEARCH, {"q": "martin"})

    assert response["Content-Type"].startswith("application/json")
    assert json.loads(response.content)["results"][0]["civil_title"] == "Docteur"
