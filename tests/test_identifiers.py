"""Tests of :mod:`pli.identifiers` and of ``pli id check``.

Valid numbers are built by hypothesis strategies whose check digits come from
reference implementations written in this file, never from pli's own code: a
mistake would have to be made twice, in two different ways, to go unnoticed.
Those references also serve as the oracle that says how the parsers must
judge a mistyped number (one digit changed, two neighbours swapped).
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pli.client.cli import main
from pli.identifiers import (
    FoundIdentifier,
    Identifier,
    IdentifierError,
    IdentifierKind,
    find_identifiers,
    format_identifier,
    parse_adeli,
    parse_any,
    parse_finess,
    parse_identifier,
    parse_national_id,
    parse_nihii,
    parse_nir,
    parse_niss,
    parse_rpps,
)

ERROR_CODES = frozenset(
    {"empty", "wrong_length", "bad_characters", "bad_check_digit", "bad_structure", "unknown_kind"}
)

subject = pytest.mark.requirement("REQ-SUBJECT")
directory = pytest.mark.requirement("REQ-DIRECTORY")


# --- reference implementations (the oracle) ---------------------------------------------------

#: Luhn: every second digit from the right is doubled, and 9 taken off when above 9.
LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)

#: FINESS reads the Corsican departments as numbers for the Luhn check.
FINESS_CORSICA = {"2A": "21", "2B": "22"}

#: INSEE: a Corsican NIR is read with 20 as department, minus 1 000 000 (2A) or 2 000 000 (2B).
NIR_CORSICA_OFFSET = {"2A": 1_000_000, "2B": 2_000_000}


def is_ascii_digits(text: str) -> bool:
    return all(char in string.digits for char in text)


def luhn_remainder(digits: str) -> int:
    """Luhn sum mod 10 of ``digits``, the rightmost one not doubled; 0 means valid."""
    total = 0
    for offset, char in enumerate(reversed(digits)):
        digit = string.digits.index(char)
        total += LUHN_DOUBLED[digit] if offset % 2 else digit
    return total % 10


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass Luhn."""
    return str((10 - luhn_remainder(payload + "0")) % 10)


def nir_number(first13: str) -> int:
    department = first13[5:7]
    if department in NIR_CORSICA_OFFSET:
        return int(first13[:5] + "20" + first13[7:]) - NIR_CORSICA_OFFSET[department]
    return int(first13)


def nir_key(first13: str) -> str:
    return f"{97 - nir_number(first13) % 97:02d}"


def niss_checks(first9: str) -> tuple[int, int]:
    """The check of someone born before 2000, and of someone born from 2000."""
    number = int(first9)
    return 97 - number % 97, 97 - (2_000_000_000 + number) % 97


def niss_month_is_valid(month: int) -> bool:
    # 0 to 12, or BIS numbers: month + 20 (sex unknown) or month + 40 (sex known).
    return month <= 52 and month % 20 <= 12


def nihii_checks(number6: str) -> tuple[int, int]:
    """The older (mod 97) and the newer (mod 89) check of a NIHII number."""
    number = int(number6)
    return 97 - number % 97, 89 - number % 89


def luhn_error(value: str, length: int) -> str | None:
    if not value:
        return "empty"
    if len(value) != length:
        return "wrong_length"
    if not is_ascii_digits(value):
        return "bad_characters"
    return None if luhn_remainder(value) == 0 else "bad_check_digit"


def rpps_error(value: str) -> str | None:
    return luhn_error(value, 11)


def adeli_error(value: str) -> str | None:
    return luhn_error(value, 9)


def finess_error(value: str) -> str | None:
    if len(value) != 9:
        return luhn_error(value, 9)
    return luhn_error(FINESS_CORSICA.get(value[:2], value[:2]) + value[2:], 9)


def nir_error(value: str) -> str | None:
    if not value:
        return "empty"
    if len(value) != 15:
        return "wrong_length"
    department = value[5:7]
    if not is_ascii_digits(value[:5] + value[7:]) or not (
        department in NIR_CORSICA_OFFSET or is_ascii_digits(department)
    ):
        return "bad_characters"
    if value[0] not in "123478":
        return "bad_structure"
    return None if value[13:] == nir_key(value[:13]) else "bad_check_digit"


def niss_error(value: str) -> str | None:
    if not value:
        return "empty"
    if len(value) != 11:
        return "wrong_length"
    if not is_ascii_digits(value):
        return "bad_characters"
    if not niss_month_is_valid(int(value[2:4])) or int(value[4:6]) > 31:
        return "bad_structure"
    return None if int(value[9:]) in niss_checks(value[:9]) else "bad_check_digit"


def nihii_error(value: str) -> str | None:
    if not value:
        return "empty"
    if len(value) != 11:
        return "wrong_length"
    if not is_ascii_digits(value):
        return "bad_characters"
    return None if int(value[6:8]) in nihii_checks(value[:6]) else "bad_check_digit"


# --- strategies of valid numbers ---------------------------------------------------------------


def digits(count: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=string.digits, min_size=count, max_size=count)


def two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda number: f"{number:02d}")


@st.composite
def rpps_numbers(draw: st.DrawFn) -> str:
    payload = draw(st.just("10") | digits(2)) + draw(digits(8))
    return payload + luhn_check_digit(payload)


@st.composite
def adeli_numbers(draw: st.DrawFn) -> str:
    payload = draw(digits(8))
    return payload + luhn_check_digit(payload)


@st.composite
def finess_numbers(draw: st.DrawFn, corsican: bool | None = None) -> str:
    if corsican is None:
        corsican = draw(st.booleans())
    department = draw(st.sampled_from(["2A", "2B"]) if corsican else digits(2))
    rest = draw(digits(6))
    return department + rest + luhn_check_digit(FINESS_CORSICA.get(department, department) + rest)


@st.composite
def nir_numbers(draw: st.DrawFn, corsican: bool | None = None) -> str:
    if corsican is None:
        corsican = draw(st.booleans())
    sex = draw(st.sampled_from("123478"))
    year = draw(digits(2))
    month = draw(two_digits(1, 12) | two_digits(20, 42) | two_digits(50, 99))
    department = draw(st.sampled_from(["2A", "2B"]) if corsican else digits(2))
    first13 = sex + year + month + department + draw(digits(6))
    return first13 + nir_key(first13)


@st.composite
def niss_numbers(
    draw: st.DrawFn, born_from_2000: bool | None = None, bis: bool | None = None
) -> str:
    if born_from_2000 is None:
        born_from_2000 = draw(st.booleans())
    if bis is None:
        bis = draw(st.booleans())
    month_offset = draw(st.sampled_from([20, 40])) if bis else 0
    month = draw(st.integers(0, 12)) + month_offset
    first9 = draw(digits(2)) + f"{month:02d}" + draw(two_digits(0, 31)) + draw(digits(3))
    before_2000, from_2000 = niss_checks(first9)
    return first9 + f"{from_2000 if born_from_2000 else before_2000:02d}"


@st.composite
def nihii_numbers(draw: st.DrawFn, modulus: int | None = None) -> str:
    if modulus is None:
        modulus = draw(st.sampled_from([97, 89]))
    number = draw(digits(6))
    old_check, new_check = nihii_checks(number)
    check = old_check if modulus == 97 else new_check
    return number + f"{check:02d}" + draw(digits(3))


@st.composite
def spelled_with_separators(draw: st.DrawFn, value: str) -> str:
    """``value`` as a person may type it: any separators anywhere, spaces around."""
    separators = st.text(alphabet=" .-\u00a0\u202f", max_size=2)
    pieces = [draw(separators) + char for char in value]
    return draw(st.sampled_from(["", " ", "  "])) + "".join(pieces) + draw(separators)


@st.composite
def written_in_groups(draw: st.DrawFn, value: str) -> str:
    """``value`` as found in a text: at most one separator between two characters."""
    gaps = draw(
        st.lists(
            st.sampled_from(["", "", " ", ".", "-", "\u00a0"]),
            min_size=len(value) - 1,
            max_size=len(value) - 1,
        )
    )
    return value[0] + "".join(gap + char for gap, char in zip(gaps, value[1:], strict=True))


words = st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), max_size=6)


# --- the kinds, with their parser, generator and oracle ------------------------------------------


@dataclass(frozen=True)
class KindSpec:
    kind: IdentifierKind
    parse: Callable[[str], Identifier]
    valid: st.SearchStrategy[str]
    error: Callable[[str], str | None]
    luhn: bool


RPPS = KindSpec(IdentifierKind.RPPS, parse_rpps, rpps_numbers(), rpps_error, luhn=True)
ADELI = KindSpec(IdentifierKind.ADELI, parse_adeli, adeli_numbers(), adeli_error, luhn=True)
FINESS = KindSpec(IdentifierKind.FINESS, parse_finess, finess_numbers(), finess_error, luhn=True)
NIR = KindSpec(IdentifierKind.NIR, parse_nir, nir_numbers(), nir_error, luhn=False)
NISS = KindSpec(IdentifierKind.NISS, parse_niss, niss_numbers(), niss_error, luhn=False)
NIHII = KindSpec(IdentifierKind.NIHII, parse_nihii, nihii_numbers(), nihii_error, luhn=False)

ALL_KINDS = [
    pytest.param(RPPS, id="rpps", marks=directory),
    pytest.param(ADELI, id="adeli", marks=directory),
    pytest.param(FINESS, id="finess", marks=directory),
    pytest.param(NIR, id="nir", marks=subject),
    pytest.param(NISS, id="niss", marks=subject),
    pytest.param(NIHII, id="nihii", marks=directory),
]
LUHN_KINDS = [
    pytest.param(RPPS, id="rpps"),
    pytest.param(ADELI, id="adeli"),
    pytest.param(FINESS, id="finess"),
]


def outcome(parse: Callable[[str], Identifier], text: str) -> str | None:
    """None when ``parse`` accepts ``text``, else the error code."""
    try:
        parse(text)
    except IdentifierError as error:
        return error.code
    return None


def substitutions(value: str) -> Iterator[str]:
    """``value`` with one digit replaced by another digit, in every possible way."""
    for position, char in enumerate(value):
        if char in string.digits:
            for digit in string.digits.replace(char, ""):
                yield value[:position] + digit + value[position + 1 :]


def transpositions(value: str) -> Iterator[tuple[str, str]]:
    """``value`` with two different neighbours swapped, and the pair that was swapped."""
    for position in range(len(value) - 1):
        pair = value[position : position + 2]
        if pair[0] != pair[1]:
            yield value[:position] + pair[::-1] + value[position + 2 :], pair


# --- the reference implementations themselves -----------------------------------------------------


def test_reference_implementations_match_published_examples() -> None:
    assert luhn_remainder("79927398713") == 0  # the textbook Luhn example
    assert luhn_check_digit("7992739871") == "3"
    assert niss_checks("850730033")[0] == 28  # the usual Belgian example 85.07.30-033.28
    assert nir_key("1850578006084") == "91"
    # Corsica by the INSEE rule (2A as 19, 2B as 18) and by the subtraction rule agree.
    assert nir_number("255082A012345") == int("2550819012345")
    assert nir_number("155082B123456") == int("1550818123456")
    assert niss_month_is_valid(0)
    assert niss_month_is_valid(32)
    assert niss_month_is_valid(52)
    assert not niss_month_is_valid(13)
    assert not niss_month_is_valid(33)
    assert not niss_month_is_valid(60)


# --- valid numbers are accepted and normalised --------------------------------------------------


@pytest.mark.parametrize("spec", ALL_KINDS)
@settings(max_examples=60)
@given(data=st.data())
def test_generated_valid_number_is_accepted_and_round_trips(
    spec: KindSpec, data: st.DataObject
) -> None:
    value = data.draw(spec.valid, label="value")
    assert spec.error(value) is None
    assert spec.parse(value) == Identifier(spec.kind, value)
    assert parse_identifier(value, spec.kind) == Identifier(spec.kind, value)
    assert parse_identifier(value, spec.kind.value).value == value
    assert Identifier(spec.kind, value) in parse_any(value)[0]

    typed = data.draw(spelled_with_separators(value), label="typed")
    assert spec.parse(typed).value == value
    # Lower case only changes the Corsican 2A / 2B, which must come back in upper case.
    assert spec.parse(typed.lower()).value == value


@subject
@settings(max_examples=40)
@given(value=nir_numbers(corsican=True), data=st.data())
def test_corsican_nir_is_accepted_in_lower_case_and_normalised(
    value: str, data: st.DataObject
) -> None:
    assert value[5:7] in ("2A", "2B")
    lower = data.draw(spelled_with_separators(value.lower()), label="typed")
    assert parse_nir(lower) == Identifier(IdentifierKind.NIR, value)
    # INSEE: the key is that of the same number with 19 for 2A and 18 for 2B.
    numeric = value[:5] + ("19" if value[5:7] == "2A" else "18") + value[7:]
    assert outcome(parse_nir, numeric) is None


@directory
@settings(max_examples=40)
@given(value=finess_numbers(corsican=True))
def test_corsican_finess_is_accepted_in_lower_case_and_normalised(value: str) -> None:
    assert parse_finess(value.lower()) == Identifier(IdentifierKind.FINESS, value)
    assert parse_finess(f"{value[:2].lower()} {value[2:5]} {value[5:]}").value == value


@subject
@settings(max_examples=60)
@given(value=niss_numbers(born_from_2000=True))
def test_niss_of_someone_born_from_2000_is_accepted(value: str) -> None:
    assert parse_niss(value) == Identifier(IdentifierKind.NISS, value)


@subject
@settings(max_examples=60)
@given(value=niss_numbers(bis=True))
def test_niss_bis_number_is_accepted(value: str) -> None:
    assert int(value[2:4]) >= 20
    assert parse_niss(value) == Identifier(IdentifierKind.NISS, value)


@directory
@pytest.mark.parametrize("modulus", [97, 89])
@settings(max_examples=60)
@given(data=st.data())
def test_nihii_is_accepted_with_either_check(modulus: int, data: st.DataObject) -> None:
    value = data.draw(nihii_numbers(modulus=modulus), label="value")
    assert parse_nihii(value) == Identifier(IdentifierKind.NIHII, value)


# --- mistyped numbers are judged like the oracle judges them ------------------------------------


@pytest.mark.parametrize("spec", ALL_KINDS)
@settings(max_examples=50)
@given(data=st.data())
def test_single_digit_substitution_is_judged_like_the_reference(
    spec: KindSpec, data: st.DataObject
) -> None:
    value = data.draw(spec.valid, label="value")
    judged = [(typo, outcome(spec.parse, typo), spec.error(typo)) for typo in substitutions(value)]
    assert [(typo, got, want) for typo, got, want in judged if got != want] == []
    assert {got for _, got, _ in judged} <= ERROR_CODES | {None}


@pytest.mark.parametrize("spec", ALL_KINDS)
@settings(max_examples=50)
@given(data=st.data())
def test_adjacent_transposition_is_judged_like_the_reference(
    spec: KindSpec, data: st.DataObject
) -> None:
    value = data.draw(spec.valid, label="value")
    judged = [
        (typo, outcome(spec.parse, typo), spec.error(typo)) for typo, _ in transpositions(value)
    ]
    assert [(typo, got, want) for typo, got, want in judged if got != want] == []


@directory
@pytest.mark.parametrize("spec", LUHN_KINDS)
@settings(max_examples=50)
@given(data=st.data())
def test_luhn_catches_every_substitution_and_every_transposition_but_09(
    spec: KindSpec, data: st.DataObject
) -> None:
    value = data.draw(spec.valid, label="value")
    assert {outcome(spec.parse, typo) for typo in substitutions(value)} <= {
        "bad_check_digit",
        "bad_characters",  # a Corsican 2A / 2B whose 2 was changed
    }
    for typo, pair in transpositions(value):
        accepted = outcome(spec.parse, typo) is None
        assert accepted == (pair in ("09", "90")), (typo, pair)


@subject
@settings(max_examples=60)
@given(value=nir_numbers())
def test_nir_key_catches_every_substitution_and_every_transposition(value: str) -> None:
    for typo in substitutions(value):
        expected = "bad_structure" if typo[0] not in "123478" else "bad_check_digit"
        if typo[5:7] not in ("2A", "2B") and not is_ascii_digits(typo[5:7]):
            expected = "bad_characters"
        assert outcome(parse_nir, typo) == expected, typo
    for typo, _ in transpositions(value):
        assert outcome(parse_nir, typo) is not None, typo


@directory
def test_luhn_misses_the_09_transposition() -> None:
    value = "1009000000" + luhn_check_digit("1009000000")
    assert value == "10090000000"
    assert parse_rpps(value).value == value
    assert parse_rpps("10900000000").value == "10900000000"
    assert outcome(parse_rpps, "10010000000") == "bad_check_digit"


@subject
def test_niss_two_checks_let_some_single_typos_through() -> None:
    # 78.05.12-123.26 has the pre-2000 check; changing one digit can give a number
    # whose check is the from-2000 one, which the rule has to accept.
    value = "78051212326"
    assert int(value[9:]) == niss_checks(value[:9])[0]
    accepted = [typo for typo in substitutions(value) if outcome(parse_niss, typo) is None]
    assert accepted == [typo for typo in substitutions(value) if niss_error(typo) is None]
    assert accepted == ["72051212326"]
    assert int("72051212326"[9:]) == niss_checks("720512123")[1]


# --- example values and every error code ----------------------------------------------------------


@directory
@pytest.mark.parametrize(
    ("kind", "text", "normalised"),
    [
        ("rpps", "10001234565", "10001234565"),
        ("rpps", " 100 012 345 65 ", "10001234565"),
        ("rpps", "79927398713", "79927398713"),
        ("adeli", "751001231", "751001231"),
        ("adeli", "75 1 00123 1", "751001231"),
        ("finess", "690000880", "690000880"),
        ("finess", "130780984", "130780984"),
        ("finess", "2a0001236", "2A0001236"),
        ("finess", "2B 000 012 9", "2B0000129"),
        ("nihii", "1-23456-25-004", "12345625004"),
        ("nihii", "12345676004", "12345676004"),
    ],
)
def test_directory_identifier_examples_are_accepted(kind: str, text: str, normalised: str) -> None:
    identifier = parse_identifier(text, kind)
    assert identifier == Identifier(IdentifierKind(kind), normalised)
    assert str(identifier) == normalised
    assert not identifier.is_patient_identifier


@subject
@pytest.mark.parametrize(
    ("kind", "text", "normalised"),
    [
        ("nir", "1 85 05 78 006 084 91", "185057800608491"),
        ("nir", "2.55.08.20.012.345.65", "255082001234565"),
        ("nir", "2 55 08 2A 012 345 92", "255082A01234592"),
        ("nir", "1-55-08-2b-123-456-26", "155082B12345626"),
        ("niss", "85.07.30-033.28", "85073003328"),
        ("niss", "05.01.01-123.85", "05010112385"),
        ("niss", "12400123474", "12400123474"),
    ],
)
def test_patient_identifier_examples_are_accepted(kind: str, text: str, normalised: str) -> None:
    identifier = parse_identifier(text, kind)
    assert identifier == Identifier(IdentifierKind(kind), normalised)
    assert identifier.is_patient_identifier
    assert identifier.national_id is None


@pytest.mark.parametrize(
    ("kind", "text", "code"),
    [
        pytest.param("rpps", "", "empty", marks=directory),
        pytest.param("rpps", "  ", "empty", marks=directory),
        pytest.param("rpps", " .-. ", "empty", marks=directory),
        pytest.param("rpps", "1000123456", "wrong_length", marks=directory),
        pytest.param("rpps", "100012345650", "wrong_length", marks=directory),
        pytest.param("rpps", "1000123456X", "bad_characters", marks=directory),
        pytest.param("rpps", "1000123456_5", "wrong_length", marks=directory),
        pytest.param("rpps", "10001234\t565", "wrong_length", marks=directory),
        pytest.param("rpps", "1000123456\u0665", "bad_characters", marks=directory),
        pytest.param(
            "rpps",
            "\uff11\uff10\uff10\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff15",
            "bad_characters",
            marks=directory,
        ),
        pytest.param("rpps", "10001234566", "bad_check_digit", marks=directory),
        pytest.param("adeli", "", "empty", marks=directory),
        pytest.param("adeli", "75100123", "wrong_length", marks=directory),
        pytest.param("adeli", "7510012A1", "bad_characters", marks=directory),
        pytest.param("adeli", "751001232", "bad_check_digit", marks=directory),
        pytest.param("finess", "69000088", "wrong_length", marks=directory),
        pytest.param("finess", "2C0001236", "bad_characters", marks=directory),
        pytest.param("finess", "A20001236", "bad_characters", marks=directory),
        pytest.param("finess", "2A000123B", "bad_characters", marks=directory),
        pytest.param("finess", "690000881", "bad_check_digit", marks=directory),
        pytest.param("finess", "2A0001237", "bad_check_digit", marks=directory),
        pytest.param("nihii", "1234562500", "wrong_length", marks=directory),
        pytest.param("nihii", "123456250O4", "bad_characters", marks=directory),
        pytest.param("nihii", "12345626004", "bad_check_digit", marks=directory),
        pytest.param("nihii", "12345600004", "bad_check_digit", marks=directory),
        pytest.param("nir", "", "empty", marks=subject),
        pytest.param("nir", "18505780060849", "wrong_length", marks=subject),
        pytest.param("nir", "1 85 05 78 006 084 91 0", "wrong_length", marks=subject),
        pytest.param("nir", "1850578X0608491", "bad_characters", marks=subject),
        pytest.param("nir", "255082C01234592", "bad_characters", marks=subject),
        pytest.param("nir", "25508A201234592", "bad_characters", marks=subject),
        pytest.param("nir", "585057800608491", "bad_structure", marks=subject),
        pytest.param("nir", "085057800608491", "bad_structure", marks=subject),
        pytest.param("nir", "185057800608492", "bad_check_digit", marks=subject),
        pytest.param("nir", "255082B01234592", "bad_check_digit", marks=subject),
        pytest.param("niss", "", "empty", marks=subject),
        pytest.param("niss", "8507300332", "wrong_length", marks=subject),
        pytest.param("niss", "85.07.30-033.2B", "bad_characters", marks=subject),
        pytest.param("niss", "85.13.30-033.28", "bad_structure", marks=subject),
        pytest.param("niss", "85.33.30-033.28", "bad_structure", marks=subject),
        pytest.param("niss", "85.53.30-033.28", "bad_structure", marks=subject),
        pytest.param("niss", "85.07.32-033.28", "bad_structure", marks=subject),
        pytest.param("niss", "85.07.30-033.29", "bad_check_digit", marks=subject),
    ],
)
def test_invalid_value_is_rejected_with_a_stable_code(kind: str, text: str, code: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_identifier(text, kind)
    assert caught.value.code == code
    assert caught.value.kind == IdentifierKind(kind)
    assert str(caught.value).startswith(f"{kind}: {code}: ")


@directory
@pytest.mark.parametrize("kind", ["siret", "RPPS", "", "nss"])
def test_unknown_kind_is_rejected(kind: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_identifier("10001234565", kind)
    assert caught.value.code == "unknown_kind"
    assert caught.value.kind is None
    assert str(caught.value).startswith("unknown_kind: ")


@directory
@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("810001234565", IdentifierKind.RPPS, "10001234565"),
        ("8 100 012 345 65", IdentifierKind.RPPS, "10001234565"),
        ("0751001231", IdentifierKind.ADELI, "751001231"),
        ("1690000880", IdentifierKind.FINESS, "690000880"),
        ("12a0001236", IdentifierKind.FINESS, "2A0001236"),
    ],
)
def test_national_id_is_parsed_and_given_back(text: str, kind: IdentifierKind, value: str) -> None:
    identifier = parse_national_id(text)
    assert identifier == Identifier(kind, value)
    assert identifier.national_id == text.replace(" ", "").upper()


@directory
@pytest.mark.parametrize(
    ("text", "code", "kind"),
    [
        ("", "empty", None),
        ("  ", "empty", None),
        ("910001234565", "bad_structure", None),
        ("210001234565", "bad_structure", None),
        ("810001234566", "bad_check_digit", IdentifierKind.RPPS),
        ("81000123456", "wrong_length", IdentifierKind.RPPS),
        ("0751001232", "bad_check_digit", IdentifierKind.ADELI),
        ("110001234565", "wrong_length", IdentifierKind.FINESS),
    ],
)
def test_bad_national_id_is_rejected(text: str, code: str, kind: IdentifierKind | None) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_national_id(text)
    assert (caught.value.code, caught.value.kind) == (code, kind)


@directory
@settings(max_examples=40)
@given(
    rpps=rpps_numbers(),
    adeli=adeli_numbers(),
    finess=finess_numbers(),
)
def test_national_id_round_trips(rpps: str, adeli: str, finess: str) -> None:
    for kind, value in [
        (IdentifierKind.RPPS, rpps),
        (IdentifierKind.ADELI, adeli),
        (IdentifierKind.FINESS, finess),
    ]:
        national = Identifier(kind, value).national_id
        assert national is not None
        assert parse_national_id(national) == Identifier(kind, value)


@directory
def test_only_ans_kinds_have_a_national_id() -> None:
    assert Identifier(IdentifierKind.RPPS, "10001234565").national_id == "810001234565"
    assert Identifier(IdentifierKind.ADELI, "751001231").national_id == "0751001231"
    assert Identifier(IdentifierKind.FINESS, "2A0001236").national_id == "12A0001236"
    assert Identifier(IdentifierKind.NIR, "185057800608491").national_id is None
    assert Identifier(IdentifierKind.NISS, "85073003328").national_id is None
    assert Identifier(IdentifierKind.NIHII, "12345625004").national_id is None


@directory
def test_parse_any_lists_the_valid_readings_and_why_the_others_failed() -> None:
    valid, errors = parse_any("10001234565")
    assert valid == [Identifier(IdentifierKind.RPPS, "10001234565")]
    assert {error.kind for error in errors} == set(IdentifierKind) - {IdentifierKind.RPPS}
    assert {error.kind: error.code for error in errors}[IdentifierKind.NIR] == "wrong_length"


@subject
@directory
@settings(max_examples=300)
@given(
    text=st.text(max_size=20)
    | st.text(alphabet=string.digits + "aAbBxX .-\u00a0\u0665\t", max_size=20)
    | st.text(alphabet=string.digits + "2aAbB .-", min_size=9, max_size=18)
)
def test_hostile_input_is_judged_like_the_reference(text: str) -> None:
    # Any other exception than IdentifierError escapes outcome() and fails the test.
    typed = "".join(char for char in text.strip() if char not in " .-\u00a0\u202f")
    typed = typed.upper() if typed.isascii() else typed
    for spec in (RPPS, ADELI, FINESS, NIR, NISS, NIHII):
        assert outcome(spec.parse, text) == spec.error(typed)
    assert outcome(parse_national_id, text) in ERROR_CODES | {None}
    valid, errors = parse_any(text)
    assert len(valid) + len(errors) == len(IdentifierKind)
    assert all(error.code in ERROR_CODES for error in errors)


# --- finding patient identifiers in free text (REQ-SUBJECT) ------------------------------------


def found(text: str) -> list[tuple[IdentifierKind, str, str]]:
    """What find_identifiers reports: kind, normalised value, and the text its span covers."""
    return [
        (f.identifier.kind, f.identifier.value, text[f.start : f.end])
        for f in find_identifiers(text)
    ]


@subject
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Patient NIR 1 85 05 78 006 084 91, vu ce jour.",
            [(IdentifierKind.NIR, "185057800608491", "1 85 05 78 006 084 91")],
        ),
        (
            "Corse 255082a01234592.",
            [(IdentifierKind.NIR, "255082A01234592", "255082a01234592")],
        ),
        (
            "Patient 185057800608491 vu ce jour",
            [(IdentifierKind.NIR, "185057800608491", "185057800608491")],
        ),
        (
            "NISS 85.07.30-033.28 suivi",
            [(IdentifierKind.NISS, "85073003328", "85.07.30-033.28")],
        ),
        (
            "Avis du Dr Martin (RPPS 10001234565) pour ce patient.",
            [(IdentifierKind.RPPS, "10001234565", "10001234565")],
        ),
        (
            "Corse: 2 55 08 2A 012 345 92 et 1 55 08 2b 123 456 26.",
            [
                (IdentifierKind.NIR, "255082A01234592", "2 55 08 2A 012 345 92"),
                (IdentifierKind.NIR, "155082B12345626", "1 55 08 2b 123 456 26"),
            ],
        ),
        (
            "1 85 05 78 006 084 91 85.07.30-033.28",
            [
                (IdentifierKind.NIR, "185057800608491", "1 85 05 78 006 084 91"),
                (IdentifierKind.NISS, "85073003328", "85.07.30-033.28"),
            ],
        ),
        (
            "10001234565 85073003328",
            [
                (IdentifierKind.RPPS, "10001234565", "10001234565"),
                (IdentifierKind.NISS, "85073003328", "85073003328"),
            ],
        ),
        (
            "NIR:185057800608491/NISS:85073003328",
            [
                (IdentifierKind.NIR, "185057800608491", "185057800608491"),
                (IdentifierKind.NISS, "85073003328", "85073003328"),
            ],
        ),
        (
            "a 1 85 05 78 006 084 91 a b",
            [(IdentifierKind.NIR, "185057800608491", "1 85 05 78 006 084 91")],
        ),
    ],
)
def test_find_identifiers_reports_valid_numbers_with_their_span(
    text: str, expected: list[tuple[IdentifierKind, str, str]]
) -> None:
    assert found(text) == expected


@subject
@pytest.mark.parametrize(
    "text",
    [
        "NIR 1 85 05 78 006 084 92 (mauvaise clef)",
        "NISS 85.07.30-033.29",
        "RPPS 10001234566",
        "ne le 30/07/1985, vu le 30.07.2024 et le 2024-07-30",
        "rendez-vous le 30 07 2024 a 14 30",
        "tel 01 23 45 67 89 ou 01.23.45.67.89 ou 0123456789",
        "tel +33 1 23 45 67 89",
        "dossier 12345 lit 4",
        "NIR1850578006084910",
        "x185057800608491",
        "185057800608491y",
        "",
    ],
)
def test_find_identifiers_ignores_invalid_numbers_dates_and_phones(text: str) -> None:
    assert find_identifiers(text) == []


@subject
@settings(max_examples=100)
@given(data=st.data(), value=nir_numbers(), before=words, after=words)
def test_nir_hidden_in_text_is_found_with_its_span(
    data: st.DataObject, value: str, before: list[str], after: list[str]
) -> None:
    written = data.draw(written_in_groups(value), label="written")
    if data.draw(st.booleans(), label="lower"):
        written = written.lower()
    prefix = "".join(word + " " for word in before)
    text = prefix + written + "".join(" " + word for word in after)
    start = len(prefix)
    assert find_identifiers(text) == [
        FoundIdentifier(Identifier(IdentifierKind.NIR, value), start, start + len(written))
    ]


@subject
@settings(max_examples=60)
@given(data=st.data(), value=niss_numbers() | rpps_numbers(), before=words, after=words)
def test_eleven_digit_number_hidden_in_text_is_found_with_its_span(
    data: st.DataObject, value: str, before: list[str], after: list[str]
) -> None:
    written = data.draw(written_in_groups(value), label="written")
    prefix = "".join(word + " " for word in before) + "("
    text = prefix + written + ")" + "".join(" " + word for word in after)
    # Read as NISS first: an 11-digit number valid as both is reported once, as a NISS.
    kind = IdentifierKind.NISS if niss_error(value) is None else IdentifierKind.RPPS
    start = len(prefix)
    assert find_identifiers(text) == [
        FoundIdentifier(Identifier(kind, value), start, start + len(written))
    ]


@subject
@settings(max_examples=200)
@given(text=st.text(alphabet=string.digits + "aAbBx .-,\u00a0", max_size=60))
def test_every_reported_span_holds_a_valid_number(text: str) -> None:
    results = find_identifiers(text)
    for result in results:
        assert result.identifier.kind in (
            IdentifierKind.NIR,
            IdentifierKind.NISS,
            IdentifierKind.RPPS,
        )
        assert parse_identifier(text[result.start : result.end], result.identifier.kind) == (
            result.identifier
        )
    assert [result.start for result in results] == sorted(result.start for result in results)
    # A reading strictly inside a longer reported one is dropped when the longer one is a
    # whole run of digit groups (an 11-digit slice of a NIR written alone).
    for inner, outer in itertools.permutations(results, 2):
        if outer.start <= inner.start and inner.end <= outer.end:
            before, after = text[: outer.start], text[outer.end :]
            assert re.search(r"[0-9AaBb][ .\-\u00a0\u202f]$", before) or re.match(
                r"[ .\-\u00a0\u202f][0-9AaBb]", after
            ), (inner, outer)


def covers(result: FoundIdentifier, start: int, end: int) -> bool:
    return result.start <= start and end <= result.end


@subject
@settings(max_examples=100)
@given(
    data=st.data(),
    values=st.lists(nir_numbers() | niss_numbers() | rpps_numbers(), min_size=2, max_size=3),
    joint=st.sampled_from([" ", " ", "-", ".", ", ", " et "]),
)
def test_numbers_written_next_to_each_other_are_all_caught(
    data: st.DataObject, values: list[str], joint: str
) -> None:
    written = [data.draw(written_in_groups(value), label="written") for value in values]
    text = "Patients " + joint.join(written) + " vus"
    results = find_identifiers(text)
    position = len("Patients ")
    for value, form in zip(values, written, strict=True):
        start, end = position, position + len(form)
        position = end + len(joint)
        exact = [r for r in results if (r.start, r.end, r.identifier.value) == (start, end, value)]
        # Either reported itself, or inside a longer reading that checks by chance (a
        # reading straddling two numbers): its characters are flagged all the same.
        assert exact or any(covers(r, start, end) for r in results), (value, form, results)


@subject
def test_straddling_reading_is_kept_beside_the_numbers_it_overlaps() -> None:
    # "458.22 2 87 09 64 949" straddles the NISS and the NIR and checks as a NIR by chance.
    text = "49.02.22-458.22 2 87 09 64 949 043 72"
    assert found(text) == [
        (IdentifierKind.NISS, "49022245822", "49.02.22-458.22"),
        (IdentifierKind.NIR, "458222870964949", "458.22 2 87 09 64 949"),
        (IdentifierKind.NIR, "287096494904372", "2 87 09 64 949 043 72"),
    ]


@subject
def test_eleven_digit_slice_of_a_nir_is_not_reported() -> None:
    assert parse_rpps("17707948398").value == "17707948398"
    assert found("NIR 17707948398 1369.") == [
        (IdentifierKind.NIR, "177079483981369", "17707948398 1369")
    ]


STRADDLED = [
    pytest.param(
        "71.01.15-771.83 05.08.07-403.33",
        [
            (IdentifierKind.NISS, "71011577183", "71.01.15-771.83"),
            (IdentifierKind.NISS, "05080740333", "05.08.07-403.33"),
        ],
        id="niss-niss",
    ),
    pytest.param(
        "10198042318 30.03.03-265.05",
        [
            (IdentifierKind.RPPS, "10198042318", "10198042318"),
            (IdentifierKind.NISS, "30030326505", "30.03.03-265.05"),
        ],
        id="rpps-niss",
    ),
]


@subject
@pytest.mark.parametrize(("text", "numbers"), STRADDLED)
def test_number_swallowed_by_a_straddling_reading_is_still_covered(
    text: str, numbers: list[tuple[IdentifierKind, str, str]]
) -> None:
    for kind, value, form in numbers:
        assert parse_identifier(form, kind).value == value
    results = find_identifiers(text)
    for _, _, form in numbers:
        start = text.index(form)
        assert any(covers(result, start, start + len(form)) for result in results)


@subject
@pytest.mark.parametrize(("text", "numbers"), STRADDLED)
def test_number_swallowed_by_a_straddling_reading_is_reported_itself(
    text: str, numbers: list[tuple[IdentifierKind, str, str]]
) -> None:
    reported = found(text)
    for number in numbers:
        assert number in reported


# --- pli id check -----------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@directory
def test_cli_accepts_a_valid_rpps_with_kind(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "100 012 345 65", "--kind", "rpps"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "rpps 10001234565 (identifiant national 810001234565)\n"


@subject
def test_cli_accepts_a_valid_corsican_nir_with_kind(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "2 55 08 2a 012 345 92", "--kind", "nir"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "nir 255082A01234592\n"


@directory
def test_cli_rejects_an_invalid_value_with_the_reason(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "10001234566", "--kind", "rpps"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        "rpps invalide : bad_check_digit : la clé de contrôle de l'identifiant ne correspond pas"
        in result.stderr
    )
    english = runner.invoke(
        main, ["id", "check", "10001234566", "--kind", "rpps"], env={"PLI_LANGUAGE": "en"}
    )
    assert "invalid rpps: bad_check_digit: the identifier's check digits do not match" in (
        english.stderr
    )


@directory
def test_cli_without_kind_finds_an_rpps(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "10001234565"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["rpps 10001234565 (identifiant national 810001234565)"]


@directory
def test_cli_without_kind_explains_every_failure(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "12345"])
    assert result.exit_code == 1
    assert result.stdout == ""
    for kind in IdentifierKind:
        assert f"{kind.value} invalide : wrong_length : " in result.stderr


def test_cli_refuses_an_unknown_kind(runner: CliRunner) -> None:
    result = runner.invoke(main, ["id", "check", "10001234565", "--kind", "siret"])
    assert result.exit_code == 2
    assert "siret" in result.stderr


# --- display -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "shown"),
    [
        ("nir", "185057800608491", "NIR 1 85 05 78 006 084 91"),
        ("nir", "255082A01234592", "NIR 2 55 08 2A 012 345 92"),
        ("niss", "85073003328", "NISS 85.07.30-033.28"),
        ("nihii", "12345625004", "NIHII 1-23456-25-004"),
        ("rpps", "10003456786", "RPPS 10003456786"),
        ("finess", "2A0001236", "FINESS 2A0001236"),
    ],
)
def test_identifiers_are_shown_in_the_groups_people_read(kind: str, value: str, shown: str) -> None:
    identifier = parse_identifier(value, kind)
    assert format_identifier(identifier) == shown
    # What is shown reads back as the same identifier.
    assert parse_identifier(shown.partition(" ")[2], kind) == identifier


@pytest.mark.parametrize("spec", ALL_KINDS)
@given(data=st.data())
def test_every_shown_identifier_reads_back(spec: KindSpec, data: st.DataObject) -> None:
    identifier = spec.parse(data.draw(spec.valid))
    label, _, grouped = format_identifier(identifier).partition(" ")
    assert label == identifier.kind.value.upper()
    assert parse_identifier(grouped, identifier.kind) == identifier
