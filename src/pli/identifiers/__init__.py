"""National identifiers of professionals, organisations and patients.

Pure functions, no I/O. Every parser takes the text a person typed (spaces,
dots and dashes allowed between digits), checks length, characters,
structure and check digits, and returns a typed :class:`Identifier` holding
the normalised value, or raises :class:`IdentifierError` with a stable code.

Sources of the rules:

- RPPS (11 digits) and ADELI (9 digits): Luhn over all digits (ANS).
- FINESS (9 characters): Luhn, Corsica ``2A``/``2B`` read as ``21``/``22``.
- NIR / INS (13 characters + 2-digit key): key = 97 - (n mod 97), Corsica
  ``2A``/``2B`` read as ``19``/``18`` (INSEE).
- Belgian NISS / INSZ (11 digits): check = 97 - (first 9 mod 97), or the same
  on ``"2" + first 9`` for people born from 2000; BIS numbers carry month + 20
  or + 40.
- Belgian NIHII / INAMI (11 digits = 6-digit number, 2 check digits,
  3-digit qualification): 97 - (n mod 97) for older numbers, 89 - (n mod 89)
  for newer ones.
- ANS national identifiers: ``8`` + RPPS and ``0`` + ADELI (IDNPS, people),
  ``1`` + FINESS (IDNST, structures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "FoundIdentifier",
    "Identifier",
    "IdentifierError",
    "IdentifierKind",
    "find_identifiers",
    "format_identifier",
    "luhn_complete",
    "luhn_is_valid",
    "parse_adeli",
    "parse_any",
    "parse_finess",
    "parse_identifier",
    "parse_national_id",
    "parse_nihii",
    "parse_nir",
    "parse_niss",
    "parse_rpps",
]


class IdentifierKind(StrEnum):
    RPPS = "rpps"
    ADELI = "adeli"
    FINESS = "finess"
    NIR = "nir"
    NISS = "niss"
    NIHII = "nihii"


#: Kinds that identify a patient (REQ-DATA-PATIENT, REQ-SUBJECT).
PATIENT_KINDS = frozenset({IdentifierKind.NIR, IdentifierKind.NISS})

#: Prefix of the ANS national identifier (IDNPS / IDNST) for each kind that has one.
NATIONAL_PREFIX = {
    IdentifierKind.RPPS: "8",
    IdentifierKind.ADELI: "0",
    IdentifierKind.FINESS: "1",
}


class IdentifierError(ValueError):
    """A value is not a valid identifier. ``code`` is stable, ``detail`` is for people."""

    def __init__(self, code: str, kind: IdentifierKind | None, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        prefix = f"{self.kind.value}: " if self.kind else ""
        return f"{prefix}{self.code}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Identifier:
    """A valid identifier: ``value`` is normalised (no separators, upper case)."""

    kind: IdentifierKind
    value: str

    @property
    def national_id(self) -> str | None:
        """The ANS national form (IDNPS / IDNST) where one exists."""
        prefix = NATIONAL_PREFIX.get(self.kind)
        return None if prefix is None else prefix + self.value

    @property
    def is_patient_identifier(self) -> bool:
        return self.kind in PATIENT_KINDS

    def __str__(self) -> str:
        return self.value


_SEPARATORS = re.compile(r"[ .\-\u00a0\u202f]")


def _compact(text: str) -> str:
    compact = _SEPARATORS.sub("", text.strip())
    # upper() may change the length of non-ASCII text ("ß" -> "SS"): leave it to fail as is.
    return compact.upper() if compact.isascii() else compact


def luhn_is_valid(digits: str) -> bool:
    """Luhn (mod 10) over every digit, the last one being the check digit."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def luhn_complete(stem: str) -> str:
    """``stem`` followed by the digit that makes the Luhn check pass (to make valid numbers)."""
    return next(stem + digit for digit in "0123456789" if luhn_is_valid(stem + digit))


def _require(kind: IdentifierKind, compact: str, length: int) -> None:
    if not compact:
        raise IdentifierError("empty", kind, "no value given")
    if len(compact) != length:
        raise IdentifierError(
            "wrong_length", kind, f"expected {length} characters, got {len(compact)}"
        )


def _require_digits(kind: IdentifierKind, compact: str) -> None:
    if not compact.isascii() or not compact.isdigit():
        raise IdentifierError("bad_characters", kind, "only digits are allowed")


def _luhn_identifier(kind: IdentifierKind, text: str, length: int) -> Identifier:
    compact = _compact(text)
    _require(kind, compact, length)
    _require_digits(kind, compact)
    if not luhn_is_valid(compact):
        raise IdentifierError("bad_check_digit", kind, "the Luhn check digit does not match")
    return Identifier(kind, compact)


def parse_rpps(text: str) -> Identifier:
    """RPPS number: 11 digits, Luhn over all 11."""
    return _luhn_identifier(IdentifierKind.RPPS, text, 11)


def parse_adeli(text: str) -> Identifier:
    """ADELI number: 9 digits, Luhn."""
    return _luhn_identifier(IdentifierKind.ADELI, text, 9)


_CORSICA_FINESS = {"2A": "21", "2B": "22"}


def parse_finess(text: str) -> Identifier:
    """FINESS number: 9 characters, Luhn once Corsica 2A/2B is read as 21/22."""
    kind = IdentifierKind.FINESS
    compact = _compact(text)
    _require(kind, compact, 9)
    digits = _CORSICA_FINESS.get(compact[:2], compact[:2]) + compact[2:]
    _require_digits(kind, digits)
    if not luhn_is_valid(digits):
        raise IdentifierError("bad_check_digit", kind, "the Luhn check digit does not match")
    return Identifier(kind, compact)


_CORSICA_NIR = {"2A": "19", "2B": "18"}
_NIR_SEX_DIGITS = frozenset("123478")  # 3/4: foreign-born pending, 7/8: temporary (NIA)


def nir_key(first13: str) -> int:
    """Key of a NIR: 97 - (n mod 97), Corsica 2A/2B read as 19/18 (INSEE)."""
    department = first13[5:7]
    numeric = first13[:5] + _CORSICA_NIR.get(department, department) + first13[7:]
    return 97 - int(numeric) % 97


def parse_nir(text: str) -> Identifier:
    """French NIR / INS (NIR-based): 13 characters and a 2-digit key."""
    kind = IdentifierKind.NIR
    compact = _compact(text)
    _require(kind, compact, 15)
    department = compact[5:7]
    digits = compact[:5] + _CORSICA_NIR.get(department, department) + compact[7:]
    _require_digits(kind, digits)
    if compact[0] not in _NIR_SEX_DIGITS:
        raise IdentifierError("bad_structure", kind, "the first digit must be 1, 2, 3, 4, 7 or 8")
    if int(compact[13:]) != nir_key(compact[:13]):
        raise IdentifierError("bad_check_digit", kind, "the key does not match the number")
    return Identifier(kind, compact)


def _mod97_check(number: int) -> int:
    return 97 - number % 97


def _niss_month_ok(month: int) -> bool:
    # Regular numbers: 0 (unknown) to 12; BIS numbers add 20 or 40 to the month.
    return any(0 <= month - offset <= 12 for offset in (0, 20, 40))


def parse_niss(text: str) -> Identifier:
    """Belgian NISS / INSZ (national register or BIS number): 11 digits."""
    kind = IdentifierKind.NISS
    compact = _compact(text)
    _require(kind, compact, 11)
    _require_digits(kind, compact)
    if not _niss_month_ok(int(compact[2:4])) or int(compact[4:6]) > 31:
        raise IdentifierError("bad_structure", kind, "the birth date part is not a date")
    check = int(compact[9:])
    first9 = compact[:9]
    if check not in (_mod97_check(int(first9)), _mod97_check(int("2" + first9))):
        raise IdentifierError("bad_check_digit", kind, "the check number does not match")
    return Identifier(kind, compact)


def parse_nihii(text: str) -> Identifier:
    """Belgian NIHII / INAMI: 6-digit number, 2 check digits, 3-digit qualification."""
    kind = IdentifierKind.NIHII
    compact = _compact(text)
    _require(kind, compact, 11)
    _require_digits(kind, compact)
    number, check = int(compact[:6]), int(compact[6:8])
    if check not in (97 - number % 97, 89 - number % 89):
        raise IdentifierError("bad_check_digit", kind, "the check digits do not match")
    return Identifier(kind, compact)


#: How people write each kind's characters: group lengths and what goes before each
#: group but the first. NIR / INS as on the carte Vitale and INSEE's documents
#: ("1 85 05 78 006 084 91"); NISS as on the Belgian identity card
#: ("85.07.30-033.28"); NIHII / INAMI as the Belgian institute writes it
#: ("1-23456-25-004"). The other kinds are written in one block.
_GROUPS: dict[IdentifierKind, tuple[tuple[int, ...], tuple[str, ...]]] = {
    IdentifierKind.NIR: ((1, 2, 2, 2, 3, 3, 2), (" ",) * 6),
    IdentifierKind.NISS: ((2, 2, 2, 3, 2), (".", ".", "-", ".")),
    IdentifierKind.NIHII: ((1, 5, 2, 3), ("-",) * 3),
}
#: The name people read before the number; a NIR-based INS is the NIR itself.
_LABELS = {kind: kind.value.upper() for kind in IdentifierKind}


def format_identifier(identifier: Identifier) -> str:
    """The identifier as a person reads it: its kind, then its characters in their groups.

    ``NIR 1 85 05 78 006 084 91``, ``NISS 85.07.30-033.28``, ``RPPS 10003456786``.
    For display only: parse what a person types back with the parsers, which
    take these separators.
    """
    value = identifier.value
    groups = _GROUPS.get(identifier.kind)
    if groups is not None and len(value) == sum(groups[0]):
        lengths, separators = groups
        parts, start = [], 0
        for length in lengths:
            parts.append(value[start : start + length])
            start += length
        value = parts[0] + "".join(s + p for s, p in zip(separators, parts[1:], strict=True))
    return f"{_LABELS[identifier.kind]} {value}"


PARSERS = {
    IdentifierKind.RPPS: parse_rpps,
    IdentifierKind.ADELI: parse_adeli,
    IdentifierKind.FINESS: parse_finess,
    IdentifierKind.NIR: parse_nir,
    IdentifierKind.NISS: parse_niss,
    IdentifierKind.NIHII: parse_nihii,
}


def parse_identifier(text: str, kind: IdentifierKind | str) -> Identifier:
    """Parse ``text`` as the given kind."""
    try:
        chosen = IdentifierKind(kind)
    except ValueError:
        raise IdentifierError("unknown_kind", None, f"unknown identifier kind {kind!r}") from None
    return PARSERS[chosen](text)


def parse_national_id(text: str) -> Identifier:
    """ANS national identifier: ``8`` + RPPS, ``0`` + ADELI, ``1`` + FINESS."""
    compact = _compact(text)
    if not compact:
        raise IdentifierError("empty", None, "no value given")
    prefix, rest = compact[0], compact[1:]
    if not rest:
        raise IdentifierError(
            "wrong_length", None, "a national identifier has a prefix and a number"
        )
    for kind, kind_prefix in NATIONAL_PREFIX.items():
        if prefix == kind_prefix:
            return PARSERS[kind](rest)
    raise IdentifierError(
        "bad_structure", None, "a national identifier starts with 8 (RPPS), 0 (ADELI) or 1 (FINESS)"
    )


def parse_any(text: str) -> tuple[list[Identifier], list[IdentifierError]]:
    """Try every kind: the valid readings, and why each other kind failed."""
    valid: list[Identifier] = []
    errors: list[IdentifierError] = []
    for parser in PARSERS.values():
        try:
            valid.append(parser(text))
        except IdentifierError as error:
            errors.append(error)
    return valid, errors


@dataclass(frozen=True, slots=True)
class FoundIdentifier:
    """An identifier found in free text, with its span in that text."""

    identifier: Identifier
    start: int
    end: int


# Groups of digits (and the letters of Corsican department codes) separated
# as :data:`_JOINER` says: "1 85 05 78 006 084 36", "85.07.30-033.28",
# "1  85  05 …", "85 - 07 - 30" (a subject typed by hand: a miss costs more
# than a rare false positive).
# A group is digits, where a Corsican department may add an A or a B ("2A"),
# even when the 2 and the letter are written apart ("2 A").
_GROUP_PATTERN = (
    r"(?:[0-9]+(?:[AaBb][0-9]*)?"
    r"|(?<=2[ .\-\u00a0\u202f])[AaBb](?=[0-9]|[ .\-\u00a0\u202f][0-9])[0-9]*)"
)
#: Between two groups: a dot or a dash, with a space on either side or not (" - ",
#: ". "), or one or two spaces. Three spaces are not a separator: that is what the
#: subject check leaves of a one-letter word between two numbers ("10 h 30 A 12").
_JOINER = r"(?: ?[.\-\u00a0\u202f] ?| {1,2})"
_GROUP_RUN = re.compile(
    rf"(?<![0-9A-Za-z]){_GROUP_PATTERN}(?:{_JOINER}{_GROUP_PATTERN})*(?![0-9A-Za-z])"
)
_GROUP = re.compile(_GROUP_PATTERN)
_FIND_KINDS: dict[int, tuple[IdentifierKind, ...]] = {
    15: (IdentifierKind.NIR,),
    11: (IdentifierKind.NISS, IdentifierKind.RPPS),
}


def find_identifiers(text: str) -> list[FoundIdentifier]:
    """Find valid NIR/INS, NISS and RPPS numbers in free text (REQ-SUBJECT).

    Looks at every run of digit groups and every contiguous slice of groups
    in it, so that two numbers written next to each other are both found.
    For a subject-line check, a rare false positive is better than a miss.
    """
    found: list[FoundIdentifier] = []
    for run in _GROUP_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in _GROUP.finditer(run[0])]
        candidates: list[FoundIdentifier] = []
        for first in range(len(groups)):
            length = 0
            for last in range(first, len(groups)):
                length += groups[last][1] - groups[last][0]
                if length > 15:
                    break
                for kind in _FIND_KINDS.get(length, ()):
                    start, end = groups[first][0], groups[last][1]
                    try:
                        identifier = PARSERS[kind](text[start:end])
                    except IdentifierError:
                        continue
                    candidates.append(FoundIdentifier(identifier, start, end))
                    break
        # A reading inside a longer one that spans the whole run (an 11-digit
        # slice of a NIR written alone) is dropped. Every other reading is kept:
        # a 15-digit slice straddling two numbers may check by chance (1 in 97)
        # and must not hide them.
        whole = [c for c in candidates if (c.start, c.end) == (run.start(), run.end())]
        found.extend(
            c
            for c in candidates
            if not any(o is not c and o.start <= c.start and c.end <= o.end for o in whole)
        )
    return sorted(found, key=lambda f: f.start)
