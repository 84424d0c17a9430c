"""A first import into an empty directory is a bulk load (importing._SetAside, _BulkRows).

Ids given by the import, plain appends, the unique keys set aside and a file
read by two processes: none of it may show. The same file, with repeated
people, structures and activities and bad lines inside, must leave the same
rows (but their ids), in the same order, and give the same search answers,
as the key-by-key upserts of an import into a directory that is not empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from pli.server.directory import importing
from pli.server.directory.importing import ImportSummary, import_extraction
from pli.server.directory.models import Activity, Organisation, Professional
from pli.server.directory.sample import RPPS_COLUMNS, rpps_file_name, rpps_sample_lines

pytestmark = pytest.mark.django_db

HEADER = "|".join(RPPS_COLUMNS).encode() + b"|\n"
SEARCH = "/api/directory/search"
SEARCHES: list[dict[str, str]] = [
    {"q": "martin"},
    {"q": "ma"},
    {"q": "bern"},
    {"profession": "10"},
    {"profession": "21", "postcode": "7"},
    {"q": "jean"},
]


def tricky_file(folder: Path) -> Path:
    """Sample lines with bad ones, then people, structures and activities listed again.

    Later in the file, as a newer line of the same thing: a person with another
    first name, a structure with another name, an activity (same key) with
    another registration authority; and a person's line listed again, unchanged.
    """
    lines = [line.data for line in rpps_sample_lines(lines=400, seed=61, bad_every=9)]
    fields = [line.decode("utf-8", "replace").split("|") for line in lines]
    good = [i for i, f in enumerate(fields) if len(f) == len(RPPS_COLUMNS) + 1 and f[23]]
    person = list(fields[good[3]])
    person[8] = "Autreprénom"
    place = list(fields[good[10]])
    place[24] = "Nouvelle raison sociale"
    activity = list(fields[good[20]])
    activity[47] = "AUTRE AUTORITÉ"
    again = lines[good[30]]
    extra = [("|".join(f)).encode() for f in (person, place, activity)] + [again]
    data = HEADER + b"".join(line + b"\n" for line in [*lines[:200], *extra, *lines[200:], *extra])
    path = folder / rpps_file_name()
    path.write_bytes(data)
    return path


def rows() -> dict[str, Any]:
    """Every row of the directory by its natural key, and the order of the ids."""
    skip = {"id", "updated_at", "last_import"}

    def values(model: Any, *related: str) -> list[tuple[Any, ...]]:
        names = [f.attname for f in model._meta.concrete_fields if f.name not in skip]
        names = [n for n in names if n not in ("professional_id", "organisation_id")]
        return list(model.objects.order_by("pk").values_list(*names, *related))

    return {
        "professionals": values(Professional),
        "organisations": values(Organisation),
        # On PostgreSQL the upsert's join decides the order of new activities: compared as a set.
        "activities": sorted(
            values(Activity, "professional__national_id", "organisation__technical_id")
        ),
    }


def searches(client: Client) -> list[Any]:
    """The answers, a person's activities as a set: they are listed in the order of their
    ids, which on PostgreSQL the upserts' join decides, not the file (see rows())."""
    answers = []
    for params in SEARCHES:
        response = client.get(SEARCH, params)
        assert response.status_code == 200, response.content
        body = response.json()
        for person in body["results"]:
            person["specialties"] = sorted(person["specialties"])
            person["organisations"] = sorted(person["organisations"], key=repr)
        answers.append(body)
    return answers


def incremental(path: Path, monkeypatch: pytest.MonkeyPatch) -> ImportSummary:
    """The same file through the upserts of an import into a directory that is not empty."""
    with monkeypatch.context() as patch:
        patch.setattr(importing._SetAside, "applies", classmethod(lambda cls, kind: False))
        return import_extraction(path, force=True)


def empty_directory() -> None:
    Activity.objects.all().delete()
    Professional.objects.all().delete()
    Organisation.objects.all().delete()


def index_state() -> set[str]:
    with connection.cursor() as cursor:
        return {
            name
            for model in (Professional, Organisation, Activity)
            for name in connection.introspection.get_constraints(cursor, model._meta.db_table)
        }


def check_same_as_incremental(
    path: Path, monkeypatch: pytest.MonkeyPatch, client: Client, *, split: bool
) -> None:
    splits: list[object] = []
    find_split = importing._find_split

    def spy(*args: Any) -> Any:
        found = find_split(*args)
        splits.append(found)
        return found

    monkeypatch.setattr(importing, "_find_split", spy)
    before = index_state()
    assert importing._SetAside.applies("rpps")

    bulk = import_extraction(path)

    assert any(found is not None for found in splits) == split
    assert index_state() == before
    bulk_rows, bulk_answers = rows(), searches(client)
    rejects = bulk.rejects_file.read_text(encoding="utf-8") if bulk.rejects_file else ""
    empty_directory()

    upserted = incremental(path, monkeypatch)

    assert (bulk.lines, bulk.imported, bulk.rejected, bulk.corrected) == (
        upserted.lines,
        upserted.imported,
        upserted.rejected,
        upserted.corrected,
    )
    assert rejects == (
        upserted.rejects_file.read_text(encoding="utf-8") if upserted.rejects_file else ""
    )
    assert rows() == bulk_rows
    assert searches(client) == bulk_answers
    assert any(answer["results"] for answer in bulk_answers)


def test_a_bulk_load_leaves_what_the_upserts_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_client: Client
) -> None:
    # Small batches: people, structures and activities cross many batch boundaries.
    monkeypatch.setattr(importing, "BATCH_LINES", 7)
    check_same_as_incremental(tricky_file(tmp_path), monkeypatch, member_client, split=False)


@pytest.mark.django_db(transaction=True)
def test_a_file_read_by_two_processes_leaves_what_the_upserts_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_client: Client
) -> None:
    # Outside a transaction, as the command runs: SQLite attaches the second half's database.
    monkeypatch.setattr(importing, "BATCH_LINES", 7)
    monkeypatch.setattr(importing, "_PARALLEL_MIN_BYTES", 0)
    check_same_as_incremental(tricky_file(tmp_path), monkeypatch, member_client, split=True)


def test_ids_given_by_a_bulk_load_are_not_given_again(tmp_path: Path) -> None:
    path = tmp_path / rpps_file_name()
    path.write_bytes(HEADER + b"".join(s.data + b"\n" for s in rpps_sample_lines(lines=50)))
    import_extraction(path)
    highest = max(Professional.objects.values_list("pk", flat=True))

    local = Professional.objects.create(
        identifier_type="L", identifier="x1", national_id="Lx1", last_name="LOCAL"
    )

    assert local.pk == highest + 1


def test_repeated_keys_left_by_an_interrupted_bulk_load_are_merged_by_the_next_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tricky_file(tmp_path)
    monkeypatch.setattr(importing, "BATCH_LINES", 7)
    import_extraction(path)
    expected = rows()
    empty_directory()

    def crash(self: importing._SetAside) -> None:
        raise KeyboardInterrupt  # the process stops before the keys are back

    with monkeypatch.context() as patch:
        patch.setattr(importing._SetAside, "rebuild", crash)
        with pytest.raises(KeyboardInterrupt):
            import_extraction(path)
    national_ids = list(Professional.objects.values_list("national_id", flat=True))
    assert len(national_ids) > len(set(national_ids))  # the person listed again, twice

    import_extraction(path, force=True)  # recovers first, then an ordinary import

    assert rows() == expected
