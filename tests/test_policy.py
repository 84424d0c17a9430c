"""Tests of :mod:`pli.policy`: the pre-send checks of the workstation client and the server.

Valid NIR and NISS numbers are built here from the INSEE and Belgian rules
written out again (never from pli.identifiers), so that a mistake in the
parsers would have to be made twice to go unnoticed.
"""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pli.policy import (
    Finding,
    FindingCode,
    Severity,
    check_recipients,
    check_subject,
    fold_name,
    fold_recipients,
    refuses,
)

subject_requirement = pytest.mark.requirement("REQ-SUBJECT")
recipients_requirement = pytest.mark.requirement("REQ-FEW-RECIPIENTS")

NIR = "185057800608491"
NIR_CORSICAN = "255082A01234592"
NISS = "85073003328"
RPPS = "10001234565"
#: The NIR above in fullwidth digits (U+FF10…), as some East Asian keyboards type them.
FULLWIDTH_NIR = "".join(chr(0xFF10 + int(d)) for d in NIR)


# --- references and strategies --------------------------------------------------------------------


def nir_with_key(first13: str) -> str:
    """INSEE: key = 97 - (n mod 97), a Corsican 2A/2B read as 20 less 1 000 000 / 2 000 000."""
    offset = {"2A": 1_000_000, "2B": 2_000_000}.get(first13[5:7].upper(), 0)
    number = int(first13[:5] + ("20" if offset else first13[5:7]) + first13[7:]) - offset
    return f"{first13}{97 - number % 97:02d}"


def digits(count: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.digits, min_size=count, max_size=count)


@st.composite
def nir_numbers(draw: st.DrawFn) -> str:
    sex = draw(st.sampled_from("123478"))
    month = draw(st.integers(1, 12) | st.integers(20, 42) | st.integers(50, 99))
    department = draw(st.sampled_from(["2A", "2B"]) | digits(2))
    return nir_with_key(sex + draw(digits(2)) + f"{month:02d}" + department + draw(digits(6)))


@st.composite
def niss_numbers(draw: st.DrawFn) -> str:
    """Belgian NISS: check = 97 - (first 9 mod 97), on "2" + first 9 for births from 2000."""
    month = draw(st.integers(0, 12)) + draw(st.sampled_from([0, 20, 40]))
    first9 = draw(digits(2)) + f"{month:02d}" + f"{draw(st.integers(0, 31)):02d}" + draw(digits(3))
    prefix = draw(st.sampled_from(["", "2"]))
    return f"{first9}{97 - int(prefix + first9) % 97:02d}"


@st.composite
def written_in_groups(draw: st.DrawFn, value: str) -> str:
    """As people write it: at most one separator between two characters, any case."""
    gaps = draw(
        st.lists(
            st.sampled_from(["", "", " ", ".", "-", "\u00a0", "\u202f"]),
            min_size=len(value) - 1,
            max_size=len(value) - 1,
        )
    )
    written = value[0] + "".join(gap + char for gap, char in zip(gaps, value[1:], strict=True))
    return written.lower() if draw(st.booleans()) else written


#: What may stand between the number and any text around it.
boundaries = st.sampled_from([" ", ", ", " (", ") ", ": ", "\n", " — ", " / ", "\t"])


def id_findings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.code is FindingCode.SUBJECT_CONTAINS_PATIENT_ID]


def spans(subject: str, findings: list[Finding]) -> list[tuple[str, str]]:
    return [
        (f.code.value, subject[int(f.params["start"]) : int(f.params["end"])]) for f in findings
    ]


# --- identifiers in the subject -------------------------------------------------------------------


@subject_requirement
@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    value=nir_numbers() | niss_numbers(),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_any_valid_nir_or_niss_in_any_text_is_refused(
    data: st.DataObject, value: str, before: str, after: str
) -> None:
    written = data.draw(written_in_groups(value), label="written")
    prefix = before + data.draw(boundaries, label="left")
    subject = prefix + written + data.draw(boundaries, label="right") + after
    start, end = len(prefix), len(prefix) + len(written)
    findings = check_subject(subject)
    assert refuses(findings)
    # A finding covers the number (a longer reading around it may be the one reported).
    assert any(
        int(f.params["start"]) < end and start < int(f.params["end"]) for f in id_findings(findings)
    ), (subject, findings)
    for finding in findings:
        # Findings never repeat the identifier they found.
        assert value not in str(finding.params)
        assert value.lower() not in finding.message_fr.lower()


@subject_requirement
@settings(max_examples=60, deadline=None)
@given(value=nir_numbers() | niss_numbers(), glue=st.sampled_from(["NIR", "x", "n°", "b", "ins:"]))
def test_a_number_glued_to_letters_is_refused_too(value: str, glue: str) -> None:
    subject = f"Bilan {glue}{value}suite"
    assert [f.params["kind"] for f in id_findings(check_subject(subject))] == [
        "nir" if len(value) == 15 else "niss"
    ]


@subject_requirement
@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Résultats 1 85 05 78 006 084 91", "1 85 05 78 006 084 91"),
        ("Corse 2 55 08 2a 012 345 92 suivi", "2 55 08 2a 012 345 92"),
        ("NISS 85.07.30-033.28", "85.07.30-033.28"),
        ("NIR:185057800608491", "185057800608491"),
        ("Suivi b255082a01234592-suite", "255082a01234592"),
        # Fullwidth digits and a thin space are still a NIR.
        ("Suivi " + FULLWIDTH_NIR, FULLWIDTH_NIR),
        (
            "Suivi 185\u2009057\u2009800\u2009608\u2009491",
            "185\u2009057\u2009800\u2009608\u2009491",
        ),
        # Typed by hand: several separators, or slashes, underscores, commas.
        ("Suivi 1  85  05  78  006  084  91", "1  85  05  78  006  084  91"),
        ("Suivi 1 - 85 - 05 - 78 - 006 - 084 - 91", "1 - 85 - 05 - 78 - 006 - 084 - 91"),
        ("Suivi 1/85/05/78/006/084/91", "1/85/05/78/006/084/91"),
        ("Suivi 1_85_05_78_006_084_91", "1_85_05_78_006_084_91"),
        ("Suivi 1, 85, 05, 78, 006, 084, 91", "1, 85, 05, 78, 006, 084, 91"),
        ("NISS 85/07/30-033-28", "85/07/30-033-28"),
        ("NISS 85 07 30  033 28", "85 07 30  033 28"),
    ],
)
def test_identifiers_are_found_with_their_span(subject: str, expected: str) -> None:
    findings = check_subject(subject)
    assert spans(subject, findings) == [("subject_contains_patient_id", expected)]
    assert findings[0].severity is Severity.REFUSE


@subject_requirement
def test_the_finding_says_which_kind_of_number_in_french_and_english() -> None:
    (finding,) = check_subject(f"Suivi {NISS}")
    assert finding.params["kind"] == "niss"
    assert "NISS" in finding.message_fr and "pseudonymisé" in finding.message_fr
    assert "NISS" in finding.message_en and finding.message("en-GB") == finding.message_en
    assert finding.message() == finding.message_fr
    (nir,) = check_subject(f"Suivi {NIR}")
    assert "NIR/INS" in nir.message_fr


@subject_requirement
def test_professional_identifiers_pass_on_purpose() -> None:
    """RPPS numbers identify professionals, not patients: not a REQ-SUBJECT matter."""
    assert check_subject(f"Avis du Dr Martin (RPPS {RPPS})") == []
    assert check_subject("Avis du Dr Martin (RPPS 8 10001234565)") == []


@subject_requirement
@pytest.mark.parametrize(
    "subject",
    [
        "Compte rendu de consultation du 30/07/2024",
        "RDV 14h30 le 30.07.2024, tél. 01 23 45 67 89",
        "Dossier 12345, lit 4, chambre 210",
        "Résultats biologiques — suivi diabète type 2",
        # Dates next to each other, or with a one-letter word between them, are no number
        # (found by hypothesis when separators were widened: three blanks never join).
        "A 11/05/154 A 26/01/2000 A",
        "Séjour du 11/05/2026 - 26/01/2027",
        "",
    ],
)
def test_ordinary_subjects_pass(subject: str) -> None:
    assert check_subject(subject, patient_names=["Dupont", "Marie"]) == []


words = st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=12)
small_numbers = st.one_of(
    st.integers(0, 9999).map(str),
    st.dates().map(lambda d: d.strftime("%d/%m/%Y")),
    st.times().map(lambda t: t.strftime("%Hh%M")),
    st.just("01 23 45 67 89"),
)


@subject_requirement
@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.tuples(words, small_numbers), max_size=8), last=words)
def test_subjects_without_identifiers_pass(parts: list[tuple[str, str]], last: str) -> None:
    """Words, dates, times, room and phone numbers: nothing to say."""
    subject = " ".join(f"{word} {number}" for word, number in parts) + " " + last
    assert check_subject(subject) == []


@subject_requirement
def test_a_nir_without_its_key_or_with_a_wrong_one_is_a_warning() -> None:
    for subject, written in [
        ("Suivi 1 85 05 78 006 084", "1 85 05 78 006 084"),
        ("Suivi 1 85 05 78 006 084 92", "1 85 05 78 006 084 92"),
    ]:
        findings = check_subject(subject)
        assert spans(subject, findings) == [("subject_may_contain_patient_id", written)]
        assert findings[0].severity is Severity.WARN
        assert not refuses(findings)


@subject_requirement
def test_the_declared_identifier_is_refused_even_mistyped_or_without_its_key() -> None:
    declared = ["1 85 05 78 006 084 91"]
    subject = "Suivi 1850578006084 et 18505 78006 08491"
    assert spans(subject, check_subject(subject, patient_ids=declared)) == [
        ("subject_contains_patient_id", "1850578006084"),
        ("subject_contains_patient_id", "18505 78006 08491"),
    ]
    # A declared identifier that is no identifier at all is not looked for.
    assert check_subject("Dossier 1234", patient_ids=["1234"]) == []


# --- names in the subject -------------------------------------------------------------------------


@subject_requirement
@pytest.mark.parametrize(
    ("subject", "names", "expected"),
    [
        ("Résultats Mme DUPONT", ["Dupont", "Marie"], ["DUPONT"]),
        ("résultats de marie", ["Dupont", "Marie"], ["marie"]),
        ("Bilan Hélène", ["Helene"], ["Hélène"]),
        ("Bilan HELENE", ["Hélène"], ["HELENE"]),
        # Decomposed accents (as typed on some systems) fold alike.
        ("Bilan He\u0301le\u0300ne", ["Hélène"], ["He\u0301le\u0300ne"]),
        ("Suivi Mme N'Diaye", ["N'Diaye"], ["N'Diaye"]),
        ("Suivi Mme NDiaye", ["N'Diaye"], ["NDiaye"]),
        ("Suivi jean pierre", ["Jean-Pierre"], ["jean pierre"]),
        ("Suivi Mme Dupont (service B)", ["Dupont-Durand"], ["Dupont"]),
        ("Suivi Mme Cœur", ["Coeur"], ["Cœur"]),
        ("Avis Saint-Martin", ["Martin"], ["Martin"]),
        ("Avis Martinez", ["Martin"], []),
        # Particles of a compound name are not names on their own.
        ("Examen de la hanche", ["de La Fontaine"], []),
        ("Fontaine: bilan", ["de La Fontaine"], ["Fontaine"]),
    ],
)
def test_patient_names_are_found_as_whole_words_whatever_case_and_accents(
    subject: str, names: list[str], expected: list[str]
) -> None:
    findings = check_subject(subject, patient_names=names)
    assert spans(subject, findings) == [("subject_contains_patient_name", e) for e in expected]
    assert all(f.severity is Severity.REFUSE for f in findings)
    for finding in findings:
        assert set(finding.params) == {"start", "end"}  # never the name itself


name_letters = "abcdefghijklmnopqrstuvwxyzéèêëàâäîïôöùûüçñ"
names = st.text(alphabet=name_letters, min_size=2, max_size=12)


@subject_requirement
@settings(max_examples=100, deadline=None)
@given(
    name=names,
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    left=boundaries,
    right=boundaries,
    style=st.sampled_from(["upper", "title", "plain", "ascii"]),
)
def test_a_declared_name_anywhere_in_any_text_is_refused(
    name: str, before: str, after: str, left: str, right: str, style: str
) -> None:
    written = {
        "upper": name.upper(),
        "title": name.title(),
        "plain": name,
        "ascii": unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode(),
    }[style]
    subject = before + left + written + right + after
    findings = check_subject(subject, patient_names=[name])
    start = len(before + left)
    assert any(
        f.code is FindingCode.SUBJECT_CONTAINS_PATIENT_NAME
        and int(f.params["start"]) <= start
        and start + len(written) <= int(f.params["end"])
        for f in findings
    ), (subject, findings)


def test_fold_name_ignores_case_accents_and_ligatures() -> None:
    assert fold_name("Hélène") == fold_name("HELENE") == "helene"
    assert fold_name("Œuvre") == "oeuvre"
    assert fold_name("Straße") == "strasse"


def test_collections_are_not_strings() -> None:
    with pytest.raises(TypeError):
        check_subject("x", patient_names="Dupont")
    with pytest.raises(TypeError):
        check_recipients("a@x", 5)


# --- recipients -----------------------------------------------------------------------------------


@recipients_requirement
def test_recipients_within_the_limit_pass() -> None:
    assert check_recipients(["a@pli.test", "b@pli.test"], 2) == []


@recipients_requirement
def test_no_recipient_is_refused() -> None:
    for given_ in ([], ["", "  "]):
        (finding,) = check_recipients(given_, 20)
        assert finding.code is FindingCode.NO_RECIPIENT
        assert finding.severity is Severity.REFUSE
        assert finding.message_fr == "Indiquez au moins un destinataire."


@recipients_requirement
def test_too_many_recipients_is_refused_with_count_and_limit() -> None:
    (finding,) = check_recipients([f"dr{i}@pli.test" for i in range(21)], 20)
    assert finding.code is FindingCode.TOO_MANY_RECIPIENTS
    assert dict(finding.params) == {"count": 21, "limit": 20}
    assert "21" in finding.message_fr and "20" in finding.message_fr


@recipients_requirement
def test_duplicates_are_folded_before_counting_and_reported() -> None:
    recipients = ["Dr.A@Pli.test", " dr.a@pli.test ", "dr.b@pli.test", "DR.B@PLI.TEST"]
    assert fold_recipients(recipients) == ["dr.a@pli.test", "dr.b@pli.test"]
    (finding,) = check_recipients(recipients, 2)
    assert finding.code is FindingCode.DUPLICATE_RECIPIENTS
    assert finding.severity is Severity.WARN
    assert finding.params["count"] == 2


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        check_recipients(["a@pli.test"], 0)


addresses = st.builds(
    lambda local, domain: f"{local}@{domain}.pli.test",
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=3),
    st.sampled_from(["a", "b"]),
)


@recipients_requirement
@settings(max_examples=100, deadline=None)
@given(
    recipients=st.lists(
        st.tuples(addresses, st.booleans(), st.sampled_from(["", " "])).map(
            lambda t: (t[0].upper() if t[1] else t[0]) + t[2]
        ),
        max_size=12,
    ),
    limit=st.integers(1, 6),
)
def test_recipient_findings_follow_the_distinct_count(recipients: list[str], limit: int) -> None:
    distinct = {r.strip().lower() for r in recipients}
    codes = {f.code for f in check_recipients(recipients, limit)}
    assert (FindingCode.NO_RECIPIENT in codes) == (not distinct)
    assert (FindingCode.TOO_MANY_RECIPIENTS in codes) == (len(distinct) > limit)
    assert (FindingCode.DUPLICATE_RECIPIENTS in codes) == (len(recipients) > len(distinct))
    assert refuses(check_recipients(recipients, limit)) == (not distinct or len(distinct) > limit)
