"""Import of the RPPS and MSSanté extractions into the directory, on a real database.

Files are generated in the real formats by ``pli.server.directory.sample``,
which also says, line by line, what the importer must do with each one.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from django.utils import translation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pli.client.cli import main
from pli.identifiers import parse_national_id
from pli.server.audit.models import AuditEvent
from pli.server.directory import importing
from pli.server.directory.importing import ImportFailed, ImportSummary, import_extraction
from pli.server.directory.models import (
    Activity,
    ImportRun,
    Mailbox,
    Organisation,
    Professional,
)
from pli.server.directory.sample import (
    MSSANTE_BAD_KINDS,
    MSSANTE_COLUMNS,
    RPPS_BAD_KINDS,
    RPPS_COLUMNS,
    SampleLine,
    mssante_sample_lines,
    rpps_file_name,
    rpps_sample_lines,
    write_mssante_extraction,
    write_rpps_extraction,
    zip_extraction,
)

pytestmark = pytest.mark.django_db

RPPS_HEADER = "|".join(RPPS_COLUMNS).encode() + b"|\n"
MSSANTE_HEADER = "|".join(MSSANTE_COLUMNS).encode() + b"|\n"
LAST_COLUMN = "|Libellé section tableau pharmaciens|".encode()
CIVILITY = "Code civilité|".encode()


def counts() -> dict[str, int]:
    models = (Professional, Organisation, Activity, Mailbox, ImportRun)
    return {model.__name__: model.objects.count() for model in models}


def snapshot() -> list[tuple[str, bool, int | None]]:
    return sorted(Professional.objects.values_list("national_id", "active", "last_import_id"))


def read_rejects(path: Path | None) -> dict[int, str]:
    """Line number -> reason code, from a rejects file (``line<TAB>reason<TAB>detail``)."""
    if path is None:
        return {}
    rejects = {}
    for row in path.read_text(encoding="utf-8").splitlines():
        number, reason, detail = row.split("\t")
        assert detail  # every reason is explained
        rejects[int(number)] = reason
    return rejects


def run_of(summary: ImportSummary) -> ImportRun:
    assert summary.run_id is not None
    return ImportRun.objects.get(pk=summary.run_id)


def expected_rejects(sample: list[SampleLine]) -> dict[int, str]:
    # Line 1 is the header: the first data line is line 2.
    return {number: line.reason for number, line in enumerate(sample, start=2) if line.reason}


def write_lines(path: Path, header: bytes, *lines: bytes) -> Path:
    path.write_bytes(header + b"".join(line + b"\n" for line in lines))
    return path


def good_rpps_line(number: int = 0) -> bytes:
    return next(iter(rpps_sample_lines(lines=number + 1, seed=9))).data


# --------------------------------------------------------------------------- RPPS


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_every_good_line_is_in_and_every_bad_line_is_listed_with_its_reason(
    tmp_path: Path,
) -> None:
    sample = list(rpps_sample_lines(persons=60, seed=3, bad_every=4))
    assert {line.reason for line in sample} >= set(RPPS_BAD_KINDS)  # every kind of bad line
    path = write_rpps_extraction(tmp_path, persons=60, seed=3, bad_every=4)

    summary = import_extraction(path)

    imported = [line for line in sample if line.imported]
    assert (summary.kind, summary.lines, summary.imported) == ("rpps", len(sample), len(imported))
    assert summary.rejected == len(sample) - len(imported)
    assert summary.corrected == sum(line.reason == "finess_blanked" for line in sample)
    assert (
        summary.rejects_file
        == tmp_path / "PS_LibreAcces_Personne_activite_202611220000.rejects.txt"
    )
    assert read_rejects(summary.rejects_file) == expected_rejects(sample)
    # Every good line is in: its professional, and one activity per line.
    assert set(Professional.objects.values_list("national_id", flat=True)) == {
        line.national_id for line in imported
    }
    assert Activity.objects.count() == len(imported)
    assert not Activity.objects.filter(active=False).exists()
    # Only valid national identifiers entered the directory (REQ-DIRECTORY-NATIONAL).
    for national_id, identifier_type in Professional.objects.values_list(
        "national_id", "identifier_type"
    ):
        assert parse_national_id(national_id).national_id == national_id
        assert national_id[0] == identifier_type
    run = run_of(summary)
    assert (run.status, run.lines, run.imported, run.rejected) == (
        "done",
        summary.lines,
        summary.imported,
        summary.rejected,
    )
    assert run.rejects_file == str(summary.rejects_file)


def test_rejects_file_copies_nothing_of_the_lines(tmp_path: Path) -> None:
    path = write_rpps_extraction(tmp_path, persons=40, seed=4, bad_every=3)
    summary = import_extraction(path)
    text = (summary.rejects_file or Path("/nonexistent")).read_text(encoding="utf-8")
    names = {
        line.data.split(b"|")[7].decode("utf-8", "replace")
        for line in rpps_sample_lines(persons=40, seed=4)
    }
    assert not [name for name in names if name and name in text]
    assert "|" not in text


def test_fields_are_stored_where_they_belong(tmp_path: Path) -> None:
    line = good_rpps_line()
    fields = line.decode().split("|")
    import_extraction(write_lines(tmp_path / rpps_file_name(), RPPS_HEADER, line))

    professional = Professional.objects.get()
    assert (professional.identifier_type, professional.identifier) == (fields[0], fields[1])
    assert (professional.last_name, professional.first_name) == (fields[7], fields[8])
    assert professional.name_key == professional.name_key.lower()  # search_key, not save()
    assert (professional.profession_code, professional.profession) == (fields[9], fields[10])
    activity = Activity.objects.get()
    assert activity.professional == professional
    assert (activity.practice_mode_code, activity.registration_authority) == (
        fields[17],
        fields[47],
    )
    assert len(activity.activity_key) == 64
    if fields[23]:
        organisation = Organisation.objects.get()
        assert activity.organisation == organisation
        assert (organisation.technical_id, organisation.postcode) == (fields[23], fields[35])
        assert organisation.city == fields[37]
        assert organisation.city_key == organisation.city_key.lower()


def test_invalid_finess_is_blanked_and_the_line_kept(tmp_path: Path) -> None:
    fields = good_rpps_line().decode().split("|")
    fields[21], fields[22], fields[23] = "750000011", "", "F750000011"  # Luhn fails
    summary = import_extraction(
        write_lines(tmp_path / rpps_file_name(), RPPS_HEADER, "|".join(fields).encode())
    )
    assert (summary.imported, summary.rejected, summary.corrected) == (1, 0, 1)
    assert read_rejects(summary.rejects_file) == {2: "finess_blanked"}
    assert Organisation.objects.get().finess_site == ""
    assert Activity.objects.get().organisation is not None


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.__setitem__(0, "9"), "unknown_identifier_type"),
        (lambda f: f.__setitem__(0, ""), "unknown_identifier_type"),
        (lambda f: f.__setitem__(1, f[1][:-1] + str((int(f[1][-1]) + 1) % 10)), "bad_check_digit"),
        (lambda f: f.__setitem__(1, f[1] + "0"), "bad_identifier"),
        (lambda f: f.__setitem__(1, f[1][:5] + "A" + f[1][6:]), "bad_identifier"),
        (lambda f: f.__setitem__(1, "\uff11" + f[1][1:]), "bad_identifier"),  # a wide digit
        (lambda f: f.__setitem__(2, f[2][1:]), "national_id_mismatch"),
        (lambda f: f.__setitem__(7, ""), "missing_name"),
        (lambda f: f.__setitem__(7, "X" * 129), "field_too_long"),
        (lambda f: f.__setitem__(35, "7" * 17), "field_too_long"),
        (lambda f: f.__setitem__(8, "A\x00B"), "bad_characters"),
        (lambda f: f.append("extra"), "wrong_field_count"),
        (lambda f: f.pop(), "wrong_field_count"),
        (lambda f: f.__setitem__(52, "not empty"), "wrong_field_count"),
    ],
)
def test_a_bad_line_is_rejected_with_its_reason(
    tmp_path: Path, change: object, reason: str
) -> None:
    fields = good_rpps_line().decode().split("|")
    change(fields)  # type: ignore[operator]
    path = write_lines(
        tmp_path / rpps_file_name(), RPPS_HEADER, good_rpps_line(1), "|".join(fields).encode()
    )
    summary = import_extraction(path)
    assert (summary.lines, summary.imported, summary.rejected) == (2, 1, 1)
    assert read_rejects(summary.rejects_file) == {3: reason}


def test_bad_utf8_rejects_that_line_only(tmp_path: Path) -> None:
    latin1 = good_rpps_line().decode().replace("|C|Civil|", "|C|Civil é|").encode("latin-1")
    path = write_lines(tmp_path / rpps_file_name(), RPPS_HEADER, latin1, good_rpps_line(1))
    summary = import_extraction(path)
    assert (summary.imported, summary.rejected) == (1, 1)
    assert read_rejects(summary.rejects_file) == {2: "bad_encoding"}


def test_an_overlong_line_is_rejected_without_holding_it(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / rpps_file_name(),
        RPPS_HEADER,
        good_rpps_line(0),
        b"x" * 3_000_000,  # longer than a read, without a line break
        good_rpps_line(1),
    )
    summary = import_extraction(path)
    assert (summary.lines, summary.imported, summary.rejected) == (3, 2, 1)
    assert read_rejects(summary.rejects_file) == {3: "line_too_long"}


def test_crlf_line_endings_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    lines = [line.data for line in rpps_sample_lines(lines=5, seed=5)]
    path = tmp_path / rpps_file_name()
    path.write_bytes(
        b"\xef\xbb\xbf" + b"".join(line + b"\r\n" for line in [RPPS_HEADER[:-1], *lines])
    )
    summary = import_extraction(path)
    assert (summary.lines, summary.imported, summary.rejected) == (5, 5, 0)
    assert summary.rejects_file is None
    assert not (tmp_path / "PS_LibreAcces_Personne_activite_202611220000.rejects.txt").exists()


def test_last_line_without_line_break_is_read(tmp_path: Path) -> None:
    path = tmp_path / rpps_file_name()
    path.write_bytes(RPPS_HEADER + good_rpps_line(0) + b"\n" + good_rpps_line(1))
    assert import_extraction(path).imported == 2


def test_rejects_path_can_be_chosen(tmp_path: Path) -> None:
    path = write_rpps_extraction(tmp_path, persons=10, seed=6, bad_every=2)
    chosen = tmp_path / "out" / "rejects.tsv"
    chosen.parent.mkdir()
    summary = import_extraction(path, rejects_path=chosen)
    assert summary.rejects_file == chosen
    assert len(read_rejects(chosen)) == summary.rejected + summary.corrected


def test_large_file_goes_through_several_batches_and_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importing, "TRANSACTION_SECONDS", 0.0)  # one batch per transaction
    path = write_rpps_extraction(tmp_path, lines=12_000, seed=7, bad_every=500)
    summary = import_extraction(path)
    sample = list(rpps_sample_lines(lines=12_000, seed=7, bad_every=500))
    assert summary.lines == 12_000
    assert summary.imported == sum(line.imported for line in sample)
    assert read_rejects(summary.rejects_file) == expected_rejects(sample)
    assert Activity.objects.count() == summary.imported
    assert Professional.objects.count() == len(
        {line.national_id for line in sample if line.imported}
    )
    assert summary.lines_per_second > 0


# --------------------------------------------------------------------------- the zip form


def test_zip_form_imports_like_the_text(tmp_path: Path) -> None:
    path = write_rpps_extraction(tmp_path, persons=50, seed=8, bad_every=7)
    archive = zip_extraction(path)
    summary = import_extraction(archive)
    sample = list(rpps_sample_lines(persons=50, seed=8, bad_every=7))
    assert (summary.lines, summary.imported) == (len(sample), sum(s.imported for s in sample))
    assert (
        summary.rejects_file
        == tmp_path / "PS_LibreAcces_Personne_activite_202611220000.rejects.txt"
    )
    assert read_rejects(summary.rejects_file) == expected_rejects(sample)


def test_zip_is_recognised_by_its_content(tmp_path: Path) -> None:
    archive = zip_extraction(write_rpps_extraction(tmp_path, persons=5, seed=8))
    renamed = archive.rename(tmp_path / "extraction.bin")
    assert import_extraction(renamed).kind == "rpps"


def _truncated(archive: Path) -> None:
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])


def _corrupted(archive: Path) -> None:
    # Flip bytes inside the compressed member: its central directory stays
    # readable, and the damage shows only when the member is read (zlib or CRC).
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    archive.write_bytes(bytes(data))


def _without_text(archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as replaced:
        replaced.writestr("lisez-moi.pdf", b"%PDF-1.4")


def _two_texts(archive: Path) -> None:
    with zipfile.ZipFile(archive, "a") as more:
        more.writestr("autre.txt", RPPS_HEADER)


@pytest.mark.parametrize("damage", [_truncated, _corrupted, _without_text, _two_texts])
def test_bad_archive_is_refused_and_changes_nothing(tmp_path: Path, damage: object) -> None:
    import_extraction(
        write_rpps_extraction(tmp_path / rpps_file_name("202601010000"), persons=20, seed=1)
    )
    before, rows = counts(), snapshot()
    archive = zip_extraction(write_rpps_extraction(tmp_path, persons=200, seed=2))
    damage(archive)  # type: ignore[operator]

    with pytest.raises(ImportFailed) as refused:
        import_extraction(archive)

    assert refused.value.code == "bad_archive"
    assert (counts(), snapshot()) == (before, rows)
    assert not (tmp_path / "PS_LibreAcces_Personne_activite_202611220000.rejects.txt").exists()


# --------------------------------------------------------------------------- whole-file refusals


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("extraction.txt", b"", "unknown_file_kind"),
        ("extraction.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "unknown_file_kind"),
        ("extraction.txt", b"\x00\x01\x02" * 1000, "unknown_file_kind"),
        ("extraction.csv", b"nom;prenom;rpps\nMartin;Claire;10000000000\n", "unknown_file_kind"),
        ("extraction.txt", b"A" * 2_000_000, "unknown_file_kind"),  # no line break at all
        ("extraction.txt", RPPS_HEADER.replace(b"Nom d'exercice", b"Nom"), "wrong_header"),
        ("extraction.txt", RPPS_HEADER.replace(LAST_COLUMN, b"|"), "wrong_header"),
        ("extraction.txt", RPPS_HEADER.replace(CIVILITY, b"") + b"x|", "wrong_header"),
        (rpps_file_name(), RPPS_HEADER.lower(), "wrong_header"),
        (rpps_file_name(), b"", "wrong_header"),  # the name says RPPS, the first line is data
        ("extraction.txt", b"|".join(MSSANTE_HEADER.split(b"|")[:29]) + b"|\n", "wrong_header"),
        ("extraction.txt", MSSANTE_HEADER.replace(b"Adresse BAL", b"Courriel"), "wrong_header"),
    ],
    ids=[
        "empty", "pdf", "binary", "csv", "no-line-break", "renamed-column", "missing-column",
        "shifted-columns", "lower-case", "no-header", "mssante-short", "mssante-renamed",
    ],
)  # fmt: skip
def test_file_of_wrong_kind_or_header_is_refused_and_changes_nothing(
    tmp_path: Path, name: str, content: bytes, code: str
) -> None:
    import_extraction(write_rpps_extraction(tmp_path, persons=20, seed=1))
    before, rows = counts(), snapshot()
    path = tmp_path / "new" / name
    path.parent.mkdir()
    path.write_bytes(content + (good_rpps_line(40) + b"\n" if content.endswith(b"\n") else b""))

    with pytest.raises(ImportFailed) as refused:
        import_extraction(path)

    assert refused.value.code == code
    assert refused.value.detail
    assert (counts(), snapshot()) == (before, rows)
    assert list(path.parent.iterdir()) == [path]  # no rejects file either


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed) as refused:
        import_extraction(tmp_path / "absent.txt")
    assert refused.value.code == "unreadable_file"
    assert counts()["ImportRun"] == 0


# --------------------------------------------------------------------------- importing again


@pytest.mark.requirement("REQ-DIRECTORY")
def test_reimport_of_the_same_file_changes_nothing(tmp_path: Path) -> None:
    path = write_rpps_extraction(tmp_path, persons=80, seed=11, bad_every=9)
    first = import_extraction(path)
    after_first = counts()
    details = sorted(Organisation.objects.values_list("technical_id", "name", "finess_site"))

    second = import_extraction(path)

    assert second.deactivated == 0
    assert (second.lines, second.imported, second.rejected) == (
        first.lines,
        first.imported,
        first.rejected,
    )
    assert counts() == {**after_first, "ImportRun": after_first["ImportRun"] + 1}
    assert (
        sorted(Organisation.objects.values_list("technical_id", "name", "finess_site")) == details
    )
    assert set(Professional.objects.values_list("last_import_id", flat=True)) == {second.run_id}
    assert not Professional.objects.filter(active=False).exists()


@pytest.mark.requirement("REQ-DIRECTORY")
def test_newer_extraction_deactivates_who_left_and_reactivates_who_returns(
    tmp_path: Path,
) -> None:
    def extraction(stamp: str, persons: int, skip: tuple[int, ...] = ()) -> Path:
        path = tmp_path / rpps_file_name(stamp)
        return write_rpps_extraction(
            path, persons=persons, seed=12, skip_persons=skip, structures=40
        )

    def ids(persons: int, numbers: tuple[int, ...]) -> set[str]:
        lines = list(rpps_sample_lines(persons=persons, seed=12, structures=40))
        everyone = list(dict.fromkeys(line.national_id for line in lines))
        return {everyone[n] for n in numbers}

    import_extraction(extraction("202609010000", 30))
    left = ids(30, (2, 5))
    newcomers = ids(33, (30, 31, 32))
    local = Professional.objects.create(
        identifier_type="L", identifier="psy-17", national_id="L:psy-17", last_name="Local"
    )

    newer = import_extraction(extraction("202610010000", 33, skip=(2, 5)))

    assert newer.deactivated == 2
    inactive = set(Professional.objects.filter(active=False).values_list("national_id", flat=True))
    assert inactive == left
    assert (
        set(
            Activity.objects.filter(active=False).values_list(
                "professional__national_id", flat=True
            )
        )
        == left
    )
    assert Professional.objects.filter(national_id__in=newcomers, active=True).count() == 3
    assert Professional.objects.filter(national_id__in=left).count() == 2  # never deleted
    local.refresh_from_db()
    assert local.active  # not from the national extraction: untouched

    again = import_extraction(extraction("202611010000", 30))

    assert again.deactivated == 3
    assert set(Professional.objects.filter(active=False).values_list("national_id", flat=True)) == (
        newcomers
    )
    assert Professional.objects.filter(national_id__in=left, active=True).count() == 2
    assert not Activity.objects.filter(professional__national_id__in=left, active=False).exists()


def test_read_error_half_way_fails_the_run_and_deactivates_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_extraction(write_rpps_extraction(tmp_path, lines=12_000, seed=15))
    newer = write_rpps_extraction(
        tmp_path / rpps_file_name("202612010000"), lines=12_000, seed=15, skip_persons=range(100)
    )
    real_batches = importing._line_batches

    def failing_disk(source: object, batch_lines: int) -> Iterator[tuple[list[bytes | None], int]]:
        batches = real_batches(source, batch_lines)  # type: ignore[arg-type]
        yield next(batches)
        raise OSError(5, "Input/output error")  # the disk, half-way through

    monkeypatch.setattr(importing, "_line_batches", failing_disk)
    monkeypatch.setattr(importing, "TRANSACTION_SECONDS", 0.0)

    with pytest.raises(ImportFailed) as failed:
        import_extraction(newer)

    assert failed.value.code == "read_error"
    run = ImportRun.objects.order_by("-pk").first()
    assert run is not None and (run.status, run.error_code) == ("failed", "read_error")
    assert not Professional.objects.filter(active=False).exists()


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_a_file_cut_short_deactivates_nobody_unless_forced(tmp_path: Path) -> None:
    def extraction(stamp: str, skip: range = range(0)) -> Path:
        path = tmp_path / rpps_file_name(stamp)
        return write_rpps_extraction(path, persons=200, seed=16, skip_persons=skip)

    import_extraction(extraction("202609010000"))
    active = Professional.objects.filter(active=True).count()
    assert active >= importing.MIN_CHECKED_DIRECTORY
    # The first 30 people of 200 only: a download that stopped, under the same name.
    with pytest.raises(ImportFailed) as refused:
        import_extraction(extraction("202610010000", range(30, 200)))
    assert refused.value.code == "too_many_deactivations"
    assert Professional.objects.filter(active=True).count() == active  # nobody deactivated
    run = ImportRun.objects.order_by("-pk").first()
    assert run is not None and (run.status, run.error_code) == ("failed", "too_many_deactivations")
    failed = AuditEvent.objects.filter(action="directory.import", outcome="failure").get()
    assert json.loads(failed.detail)["code"] == "too_many_deactivations"

    forced = import_extraction(extraction("202610010000", range(30, 200)), force=True)
    assert forced.deactivated == Professional.objects.filter(active=False).count() > 0


def test_file_of_only_bad_lines_deactivates_nobody(tmp_path: Path) -> None:
    import_extraction(write_rpps_extraction(tmp_path, persons=20, seed=13))
    bad = tmp_path / rpps_file_name("202612010000")
    write_lines(bad, RPPS_HEADER, b"1|2|3", b"junk")
    summary = import_extraction(bad)
    assert (summary.lines, summary.imported, summary.rejected, summary.deactivated) == (2, 0, 2, 0)
    assert not Professional.objects.filter(active=False).exists()


def test_file_with_a_header_only_imports_nothing(tmp_path: Path) -> None:
    import_extraction(write_rpps_extraction(tmp_path, persons=5, seed=13))
    summary = import_extraction(write_lines(tmp_path / rpps_file_name("202612010000"), RPPS_HEADER))
    assert (summary.lines, summary.imported, summary.deactivated) == (0, 0, 0)
    assert run_of(summary).status == "done"


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=400),
            st.lists(st.text(max_size=12), min_size=50, max_size=56).map(
                lambda fields: "|".join(fields).encode()
            ),
            st.sampled_from([line.data for line in rpps_sample_lines(lines=20, seed=14)]),
        ),
        max_size=12,
    )
)
def test_hostile_lines_are_imported_or_rejected_never_a_crash(
    tmp_path: Path, lines: list[bytes]
) -> None:
    path = tmp_path / rpps_file_name()
    path.write_bytes(RPPS_HEADER + b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
    summary = import_extraction(path)
    assert summary.lines == len(lines)
    assert summary.imported + summary.rejected == summary.lines
    assert len(read_rejects(summary.rejects_file)) == summary.rejected + summary.corrected


# --------------------------------------------------------------------------- MSSanté


@pytest.fixture
def rpps_imported(tmp_path: Path) -> Path:
    path = write_rpps_extraction(tmp_path, persons=80, seed=21)
    import_extraction(path)
    return path


@pytest.mark.requirement("REQ-DIRECTORY-NATIONAL")
def test_mssante_attaches_mailboxes_and_rejects_unknown_or_malformed_owners(
    tmp_path: Path, rpps_imported: Path
) -> None:
    sample = list(mssante_sample_lines(rpps_imported, seed=21, bad_every=3))
    assert {line.reason for line in sample} >= set(MSSANTE_BAD_KINDS)
    path = write_mssante_extraction(tmp_path, rpps_imported, seed=21, bad_every=3)

    summary = import_extraction(path)

    good = [line for line in sample if line.imported]
    assert (summary.kind, summary.lines, summary.imported) == ("mssante", len(sample), len(good))
    assert read_rejects(summary.rejects_file) == expected_rejects(sample)
    assert Mailbox.objects.count() == len(good)
    kinds = Counter(Mailbox.objects.values_list("kind", flat=True))
    assert kinds["PER"] and kinds["ORG"]
    for line in good:
        fields = line.data.decode().split("|")
        mailbox = Mailbox.objects.get(address=fields[1])
        assert mailbox.active and not mailbox.red_list
        if fields[0] == "PER":
            assert mailbox.professional is not None
            assert mailbox.professional.national_id == line.national_id == fields[4]
        else:
            assert mailbox.professional is None
            assert mailbox.organisation is not None
            finess_or_siret = fields[6][1:]
            assert finess_or_siret in (mailbox.organisation.finess_site, mailbox.organisation.siret)


def test_an_mssante_address_that_grows_when_lower_cased_is_one_rejected_line(
    tmp_path: Path, rpps_imported: Path
) -> None:
    full = write_mssante_extraction(tmp_path, rpps_imported, seed=23)
    header, first, *_rest = full.read_bytes().splitlines(keepends=True)
    fields = first.split(b"|")
    # "İ" is one character, and two once lower-cased: 205 characters would become 405.
    fields[1] = ("\u0130" * 200 + "@x.fr").encode()
    hostile = tmp_path / "Extraction_Correspondance_MSSante_202612010000.txt"
    hostile.write_bytes(header + first + b"|".join(fields))

    summary = import_extraction(hostile)

    assert (summary.lines, summary.imported, summary.rejected) == (2, 1, 1)
    assert read_rejects(summary.rejects_file) == {3: "bad_address"}


def test_mssante_reimport_deactivates_missing_mailboxes_but_not_local_ones(
    tmp_path: Path, rpps_imported: Path
) -> None:
    full = write_mssante_extraction(tmp_path, rpps_imported, seed=22)
    first = import_extraction(full)
    local = Mailbox.objects.create(
        address="secretariat@cabinet.pli.test",
        kind="ORG",
        organisation=Organisation.objects.first(),
    )
    lines = full.read_bytes().splitlines(keepends=True)
    shorter = tmp_path / "Extraction_Correspondance_MSSante_202612010000.txt"
    shorter.write_bytes(b"".join(lines[:-3]))

    second = import_extraction(shorter)

    assert (second.imported, second.deactivated) == (first.imported - 3, 3)
    gone = {line.split(b"|")[1].decode() for line in lines[-3:]}
    assert set(Mailbox.objects.filter(active=False).values_list("address", flat=True)) == gone
    local.refresh_from_db()
    assert local.active


def test_mssante_line_without_trailing_separator_is_read(
    tmp_path: Path, rpps_imported: Path
) -> None:
    line = next(iter(mssante_sample_lines(rpps_imported, seed=23))).data.removesuffix(b"|")
    path = write_lines(tmp_path / "Extraction_Correspondance_MSSante_x.txt", MSSANTE_HEADER, line)
    summary = import_extraction(path)
    assert (summary.imported, summary.rejected) == (1, 0)


def test_mssante_addresses_are_compared_without_case(tmp_path: Path, rpps_imported: Path) -> None:
    line = next(iter(mssante_sample_lines(rpps_imported, seed=23))).data
    fields = line.split(b"|")
    fields[1] = fields[1].upper()
    path = write_lines(
        tmp_path / "Extraction_Correspondance_MSSante_x.txt",
        MSSANTE_HEADER,
        line,
        b"|".join(fields),
    )
    summary = import_extraction(path)
    assert (summary.imported, Mailbox.objects.count()) == (2, 1)


# --------------------------------------------------------------------------- the command


@pytest.mark.requirement("REQ-DIRECTORY")
def test_pli_directory_import_prints_the_summary(tmp_path: Path) -> None:
    path = write_rpps_extraction(tmp_path, persons=30, seed=31, bad_every=6)
    result = CliRunner().invoke(main, ["directory", "import", str(path)])
    assert result.exit_code == 0, result.output
    summary = ImportRun.objects.get()
    assert f"rpps : {summary.lines} lignes, {summary.imported} importées" in result.output
    assert f"{summary.rejected} rejetées" in result.output
    assert (
        f"lignes rejetées : {tmp_path / 'PS_LibreAcces_Personne_activite_202611220000.rejects.txt'}"
        in result.output
    )
    assert Professional.objects.exists()


def test_pli_directory_import_refuses_a_wrong_header_with_its_code(tmp_path: Path) -> None:
    path = write_lines(tmp_path / rpps_file_name(), RPPS_HEADER.replace(b"Nom d'exercice", b"Nom"))
    result = CliRunner().invoke(main, ["directory", "import", str(path)])
    assert result.exit_code == 1
    assert 'pli: error: wrong_header: column 8 should be "Nom d\'exercice"' in result.output
    assert "Traceback" not in result.output
    assert counts()["ImportRun"] == 0


def test_summary_describes_the_run() -> None:
    summary = ImportSummary("rpps", 10, 8, 2, 1, None, duration=2.0, corrected=1)
    assert summary.describe() == (
        "rpps : 10 lignes, 8 importées (1 avec un FINESS invalide effacé), 2 rejetées,"
        " 1 marquées inactives (2.0 s)"
    )
    with translation.override("en"):
        assert summary.describe() == (
            "rpps: 10 lines, 8 imported (1 with an invalid FINESS blanked), 2 rejected,"
            " 1 marked inactive (2.0 s)"
        )
    assert summary.lines_per_second == 5.0


# --------------------------------------------------------------------------- sample data


def test_sample_addresses_are_on_reserved_test_domains(tmp_path: Path) -> None:
    # RFC 2606 / RFC 6761: invented people must not look like a real operator's users.
    rpps = write_rpps_extraction(tmp_path, persons=120, seed=41)
    addresses = [
        line.data.decode().split("|")[1] for line in mssante_sample_lines(rpps, seed=41, share=1.0)
    ]
    assert addresses
    assert all(address.rsplit("@", 1)[1].endswith(".test") for address in addresses)
    emails = {line.data.decode().split("|")[43] for line in rpps_sample_lines(persons=120, seed=41)}
    assert all(email.endswith(".test") for email in emails if email)


# --------------------------------------------------------------------------- order of extractions


def test_extraction_date_is_read_from_the_ans_file_name() -> None:
    assert importing.extraction_date("PS_LibreAcces_Personne_activite_202611220815.zip") == (
        dt.datetime(2026, 11, 22, 8, 15)  # noqa: DTZ001 - as the ANS names its files
    )
    assert importing.extraction_date(rpps_file_name("202601010000")) is not None
    for name in ("extraction.txt", "x_202613010000.txt", "x_2026112208.txt", "x_202611220815a.txt"):
        assert importing.extraction_date(name) is None, name


@pytest.mark.requirement("REQ-DIRECTORY")
def test_an_older_extraction_is_refused_unless_forced(tmp_path: Path) -> None:
    newer = write_rpps_extraction(tmp_path / rpps_file_name("202610010000"), persons=20, seed=42)
    import_extraction(newer)
    before, rows = counts(), snapshot()
    older = write_rpps_extraction(
        tmp_path / rpps_file_name("202609010000"), persons=25, seed=42, skip_persons=(1, 2)
    )

    with pytest.raises(ImportFailed) as refused:
        import_extraction(older)

    assert refused.value.code == "older_extraction"
    assert "2026-09-01 00:00" in refused.value.detail and "2026-10-01 00:00" in refused.value.detail
    assert (counts(), snapshot()) == (before, rows)
    assert not (tmp_path / f"{older.stem}.rejects.txt").exists()
    # The same extraction again is not older; another kind has its own order;
    # and an operator may force an older file in.
    assert import_extraction(newer).deactivated == 0
    mssante = write_mssante_extraction(
        tmp_path / "Extraction_Correspondance_MSSante_202601010000.txt", newer, seed=42
    )
    assert import_extraction(mssante).kind == "mssante"
    forced = import_extraction(older, force=True)
    assert forced.deactivated == 2


def test_a_failed_run_does_not_count_as_the_newest(tmp_path: Path) -> None:
    import_extraction(
        write_rpps_extraction(tmp_path / rpps_file_name("202609010000"), persons=10, seed=43)
    )
    ImportRun.objects.create(kind="rpps", file_name=rpps_file_name("202612010000"), status="failed")
    summary = import_extraction(
        write_rpps_extraction(tmp_path / rpps_file_name("202610010000"), persons=10, seed=43)
    )
    assert run_of(summary).status == "done"


# --------------------------------------------------------------------------- one import at a time


@contextmanager
def lock_held_elsewhere() -> Iterator[None]:
    """The import lock, taken as another process would: another connection, another file."""
    from django.db import connection

    if connection.vendor == "postgresql":
        import psycopg

        settings_dict = connection.settings_dict
        with psycopg.connect(
            dbname=settings_dict["NAME"],
            user=settings_dict["USER"] or None,
            host=settings_dict["HOST"] or None,
            port=settings_dict["PORT"] or None,
            autocommit=True,
        ) as other:
            assert other.execute(
                "SELECT pg_try_advisory_lock(%s)", [importing._ADVISORY_LOCK]
            ).fetchone() == (True,)
            try:
                yield
            finally:
                # Let go now: closing the connection lets go only once its server process
                # has ended, which the next import may not wait for (a CI run saw it).
                other.execute("SELECT pg_advisory_unlock(%s)", [importing._ADVISORY_LOCK])
        return
    with importing._sqlite_lock_path().open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@pytest.mark.requirement("REQ-DIRECTORY")
def test_a_second_import_while_one_runs_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    first = write_rpps_extraction(tmp_path / rpps_file_name("202609010000"), persons=20, seed=44)
    import_extraction(first)
    before, rows = counts(), snapshot()
    second = write_rpps_extraction(tmp_path / rpps_file_name("202610010000"), persons=10, seed=44)

    with lock_held_elsewhere(), pytest.raises(ImportFailed) as refused:
        import_extraction(second)

    assert refused.value.code == "import_running"
    assert (counts(), snapshot()) == (before, rows)
    assert import_extraction(second).deactivated == 10  # once the other one is over


def test_a_running_import_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's own write lock does not keep two imports apart (each commits every few
    # seconds): the import lock does, from its first check to its last write.
    seen: list[str] = []
    real_finish = importing._Job._finish

    def finish(job: importing._Job) -> int:
        try:
            with lock_held_elsewhere():
                seen.append("acquired")
        except (BlockingIOError, AssertionError):
            seen.append("refused")
        return real_finish(job)

    monkeypatch.setattr(importing._Job, "_finish", finish)
    import_extraction(write_rpps_extraction(tmp_path, persons=5, seed=45))
    assert seen == ["refused"]
    with lock_held_elsewhere():
        pass  # and released at the end


# --------------------------------------------------------------------------- mailboxes of who left


@pytest.mark.requirement("REQ-DIRECTORY")
def test_mailboxes_of_who_left_are_inactive_and_come_back_with_him(tmp_path: Path) -> None:
    from pli.server.directory.queries import resolve_address, search_directory

    def extraction(stamp: str, skip: tuple[int, ...] = ()) -> Path:
        return write_rpps_extraction(
            tmp_path / rpps_file_name(stamp), persons=30, seed=46, skip_persons=skip, structures=40
        )

    first = extraction("202609010000")
    import_extraction(first)
    everyone = list(
        dict.fromkeys(
            line.national_id for line in rpps_sample_lines(persons=30, seed=46, structures=40)
        )
    )
    leaving = Professional.objects.get(national_id=everyone[3])
    mssante = write_mssante_extraction(
        tmp_path / "Extraction_Correspondance_MSSante_202609010000.txt", first, seed=46, share=1.0
    )
    import_extraction(mssante)
    listed = Mailbox.objects.get(professional=leaving)
    local = Mailbox.objects.create(
        address="cabinet.local@pli.test", kind="PER", professional=leaving
    )
    other = Mailbox.objects.exclude(professional=leaving).filter(kind="PER").first()
    assert other is not None
    assert resolve_address(listed.address) is not None

    import_extraction(extraction("202610010000", skip=(3,)))

    listed.refresh_from_db()
    local.refresh_from_db()
    assert not listed.active and not local.active
    assert resolve_address(listed.address) is None and resolve_address(local.address) is None
    assert Mailbox.objects.get(pk=other.pk).active
    assert search_directory(identifier=leaving.identifier).results == ()
    # A correspondence extraction that still lists him does not bring his mailbox back.
    again = tmp_path / "Extraction_Correspondance_MSSante_202610020000.txt"
    again.write_bytes(mssante.read_bytes())
    import_extraction(again)
    assert not Mailbox.objects.get(pk=listed.pk).active

    import_extraction(extraction("202611010000"))

    assert Mailbox.objects.get(pk=listed.pk).active and Mailbox.objects.get(pk=local.pk).active
    assert resolve_address(listed.address) is not None


def test_a_mailbox_dropped_while_its_owner_was_away_stays_inactive(tmp_path: Path) -> None:
    def extraction(stamp: str, skip: tuple[int, ...] = ()) -> Path:
        return write_rpps_extraction(
            tmp_path / rpps_file_name(stamp), persons=10, seed=47, skip_persons=skip, structures=10
        )

    first = extraction("202609010000")
    import_extraction(first)
    leaving = Professional.objects.order_by("pk")[2]
    mssante = write_mssante_extraction(
        tmp_path / "Extraction_Correspondance_MSSante_202609010000.txt", first, seed=47, share=1.0
    )
    import_extraction(mssante)
    mailbox = Mailbox.objects.get(professional=leaving)
    import_extraction(extraction("202610010000", skip=(2,)))
    # The next correspondence extraction no longer lists his address.
    kept = [
        line
        for line in mssante.read_bytes().splitlines(keepends=True)
        if mailbox.address.encode() not in line
    ]
    newer = tmp_path / "Extraction_Correspondance_MSSante_202610020000.txt"
    newer.write_bytes(b"".join(kept))
    import_extraction(newer)

    import_extraction(extraction("202611010000"))

    mailbox.refresh_from_db()
    assert Professional.objects.get(pk=leaving.pk).active
    assert not mailbox.active


# --------------------------------------------------------------------------- first import


def index_names() -> set[str]:
    """The indexes and unique constraints of the directory tables."""
    from django.db import connection

    tables = [m._meta.db_table for m in (Professional, Organisation, Activity)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = ANY(%s)"
                " UNION SELECT conname FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s)",
                [tables, tables],
            )
        else:
            # Django's names: a unique key is the same constraint whether SQLite has it
            # inline in the table (as migrated) or as a unique index of that name (as a
            # first import leaves it: an inline one cannot be set aside, see _SetAside).
            return {
                name
                for table in tables
                for name in connection.introspection.get_constraints(cursor, table)
                if name != "__primary__"
            }
        return {row[0] for row in cursor.fetchall()}


def test_a_first_import_builds_the_indexes_after_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same activity twice, in two batches: the last line wins, as in an upsert,
    # also when PostgreSQL's unique key of activities was set aside for the load.
    monkeypatch.setattr(importing, "BATCH_LINES", 3)
    before = index_names()
    lines = [line.data for line in rpps_sample_lines(lines=8, seed=48)]
    again = lines[1].decode().split("|")
    again[47] = "AUTRE"  # the registration authority: not part of the activity's key
    path = write_lines(tmp_path / rpps_file_name(), RPPS_HEADER, *lines, "|".join(again).encode())

    summary = import_extraction(path)

    assert (summary.imported, Activity.objects.count()) == (9, 8)
    assert Activity.objects.filter(registration_authority="AUTRE").count() == 1
    assert index_names() == before
    assert not importing._SetAside.path().exists()
    # Not the next import: the directory is not empty any more.
    assert not importing._SetAside.applies("rpps")


def test_indexes_left_aside_by_an_interrupted_import_are_built_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = index_names()

    def crash(self: importing._SetAside) -> None:
        raise KeyboardInterrupt  # the process stops before building them again

    monkeypatch.setattr(importing._SetAside, "rebuild", crash)
    with pytest.raises(KeyboardInterrupt):
        import_extraction(write_rpps_extraction(tmp_path, persons=10, seed=49))
    assert importing._SetAside.path().exists()
    assert index_names() < before
    monkeypatch.undo()

    import_extraction(write_rpps_extraction(tmp_path, persons=10, seed=49))

    assert index_names() == before
    assert not importing._SetAside.path().exists()


@pytest.mark.django_db(transaction=True)
def test_an_import_outside_a_transaction_ends_with_a_vacuum(tmp_path: Path) -> None:
    # As the command runs it (autocommit): on PostgreSQL the import ends with
    # VACUUM (ANALYZE), which cannot run inside a transaction.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        summary = import_extraction(write_rpps_extraction(tmp_path, persons=10, seed=50))

    assert run_of(summary).status == "done"
    vacuumed = any(q["sql"].startswith("VACUUM (ANALYZE)") for q in captured.captured_queries)
    assert vacuumed == (connection.vendor == "postgresql")


@pytest.mark.requirement("REQ-TRACE")
def test_an_import_is_traced_with_its_counts_only(tmp_path: Path) -> None:
    from pli.server.audit.models import AuditEvent

    path = write_rpps_extraction(tmp_path, persons=10, seed=5, bad_every=4)
    summary = import_extraction(path)
    events = list(AuditEvent.objects.filter(action="directory.import"))
    assert len(events) == 1
    event = events[0]
    assert event.target == f"import:{summary.run_id}"
    assert str(summary.imported) in str(event.detail) and str(summary.rejected) in str(event.detail)
    # Counts and codes only: no file name, no person.
    assert "PS_LibreAcces" not in str(event.detail)
