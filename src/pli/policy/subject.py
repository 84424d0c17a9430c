"""REQ-SUBJECT: the subject line is pseudonymised (no patient name, first name, NIR/INS, NISS).

The subject travels inside the sealed part (header protection), yet it is what
a recipient's mail client lists, prints and forwards: it must not identify the
patient. The server cannot read it, so the client runs this check before
sealing (docs/api/messaging.md).

What is refused (``subject_contains_patient_id``, ``subject_contains_patient_name``):

- any *valid* NIR/INS or NISS (check digits verified, separators and the
  Corsican ``2A``/``2B`` accepted) found by :func:`pli.identifiers.find_identifiers`,
  also when glued to letters (``NIR185…``) or written with non-ASCII digits or
  spaces, since a subject check must rather over-refuse than miss;
- the declared patient's identifiers, even mistyped or without the NIR key
  (the 13-digit stem identifies the person just as well);
- the declared patient's last and first names, case- and accent-insensitive,
  as whole words (``Martin`` is found in ``Saint-Martin`` but not in
  ``Martinez``), whatever the separators (``N'Diaye``, ``NDiaye``,
  ``Jean Pierre``, ``JEAN-PIERRE``); each significant part of a compound name
  (three letters or more, particles such as *de*, *le*, *van* left out) is a
  name on its own: ``Dupont`` in a subject about *Dupont-Durand* identifies her.

What is only a warning (``subject_may_contain_patient_id``): a 13- or
15-digit number shaped like a NIR whose key does not check (a NIR without its
key, or mistyped) — the sender knows whether it identifies someone.

What passes on purpose: RPPS (and ADELI, FINESS, NIHII) numbers. They identify
*professionals*, who are not the subject of REQ-SUBJECT; a subject naming the
author's RPPS is not a breach of the patient's confidentiality. One caveat
follows from :func:`~pli.identifiers.find_identifiers`: an 11-digit number that
is both a valid RPPS and a valid NISS (about 1 in 200) is read as a NISS and
refused; the sender can drop it, it has no business in a subject anyway.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from pli.identifiers import PATIENT_KINDS, find_identifiers
from pli.policy.findings import Finding, FindingCode, Severity

__all__ = ["check_subject", "fold_name"]

#: Name particles: not a name on their own when part of a compound name.
_PARTICLES = frozenset(
    {
        "d",
        "l",
        "de",
        "du",
        "des",
        "la",
        "le",
        "les",
        "van",
        "von",
        "der",
        "den",
        "ter",
        "da",
        "di",
        "do",
        "dos",
        "das",
        "del",
        "della",
        "el",
        "al",
        "ben",
        "bin",
        "ibn",
        "y",
        "e",
        "st",
        "ste",
        "saint",
        "sainte",
        "mac",
        "mc",
        "o",
    }
)
#: A part of a compound name shorter than this is not checked on its own.
_MIN_PART = 3
#: Letters NFKD does not decompose.
_FOLD_TABLE = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "\u0131": "i"})
#: A word: letters and digits, with the combining marks of text typed decomposed (NFD).
_WORD = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\ufe20-\ufe2f])*")
_SEPARATOR_CHARS = " .-"
#: Characters typed between groups of digits besides spaces, dots and dashes: read as dots.
_OTHER_SEPARATORS = frozenset("/_,;:\u00b7")
#: A run of digits with at most one separator between two of them (after
#: canonicalisation), for the NIR-shaped warning: a heuristic, kept narrow (valid
#: numbers are found with up to three separators by pli.identifiers.find_identifiers).
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ .\-]?[0-9])*(?![0-9])")
#: First digits of a NIR: sex 1/2, 3/4 foreign-born pending, 7/8 temporary (NIA).
_NIR_FIRST_DIGITS = frozenset("123478")
#: Declared identifiers looked for, by length: NISS, NIR without its key, NIR.
_DECLARED_KINDS = {11: "niss", 13: "nir", 15: "nir"}


def fold_name(text: str) -> str:
    """Case- and accent-insensitive form: ``Hélène`` and ``HELENE`` fold alike."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_FOLD_TABLE))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _searchable(text: str) -> str:
    """``text`` with the same length, digits in ASCII, spaces, dashes and other separators
    (slashes, underscores, commas…) made plain.

    Same length, so that the spans found in it are spans of ``text``.
    """
    out: list[str] = []
    for char in text:
        digit = unicodedata.decimal(char, None)
        if digit is not None:
            out.append(str(digit))
        elif char.isspace():
            out.append(" ")
        elif not char.isascii() and unicodedata.category(char) == "Pd":
            out.append("-")
        elif char in _OTHER_SEPARATORS:
            out.append(".")
        else:
            out.append(char)
    return "".join(out)


def _corsican_letter(text: str, index: int) -> bool:
    """An A or B after a 2 (and at most one separator): a Corsican department, 2A or 2B."""
    if text[index] not in "AaBb":
        return False
    before = text[max(0, index - 2) : index]
    return before.endswith("2") or (len(before) == 2 and before[0] == "2" and before[1] in " .-")


def _blank_letters(text: str, *, keep_corsican: bool) -> str:
    """Letters made spaces (same length), so that a number glued to words stands alone."""
    return "".join(
        " " if c.isalpha() and not (keep_corsican and _corsican_letter(text, i)) else c
        for i, c in enumerate(text)
    )


def _identifier_findings(searchable: str) -> list[Finding]:
    """Valid NIR/INS and NISS, in the text as is and with the letters around digits blanked."""
    spans: dict[tuple[int, int], str] = {}
    # Pass 2 keeps the A/B of a Corsican department ("x2A…"); pass 3 blanks them too.
    passes = (
        searchable,
        _blank_letters(searchable, keep_corsican=True),
        _blank_letters(searchable, keep_corsican=False),
    )
    for text in passes:
        for found in find_identifiers(text):
            if found.identifier.kind in PATIENT_KINDS:
                spans.setdefault((found.start, found.end), found.identifier.kind.value)
    return [
        Finding(
            FindingCode.SUBJECT_CONTAINS_PATIENT_ID,
            Severity.REFUSE,
            {"kind": kind, "start": start, "end": end},
        )
        for (start, end), kind in spans.items()
    ]


def _compact_with_positions(searchable: str) -> tuple[str, list[int]]:
    """Letters and digits only, upper case, with the position in the text of each one."""
    chars: list[str] = []
    positions: list[int] = []
    for index, char in enumerate(searchable):
        if char.isascii() and char.isalnum():
            chars.append(char.upper())
            positions.append(index)
    return "".join(chars), positions


def _declared_id_findings(searchable: str, patient_ids: Iterable[str]) -> list[Finding]:
    compact, positions = _compact_with_positions(searchable)
    findings: list[Finding] = []
    for declared in patient_ids:
        value = "".join(c for c in _searchable(declared) if c.isascii() and c.isalnum()).upper()
        kind = _DECLARED_KINDS.get(len(value))
        if kind is None:  # not the length of a NISS, a NIR or its stem: not an identifier
            continue
        # The 13-digit stem of a NIR identifies the person as well as the whole number.
        forms = {value, value[:13]} if len(value) == 15 else {value}
        for form in forms:
            start = compact.find(form)
            while start != -1:
                end = start + len(form)
                findings.append(
                    Finding(
                        FindingCode.SUBJECT_CONTAINS_PATIENT_ID,
                        Severity.REFUSE,
                        {"kind": kind, "start": positions[start], "end": positions[end - 1] + 1},
                    )
                )
                start = compact.find(form, start + 1)
    return findings


def _nir_shaped_findings(searchable: str) -> list[Finding]:
    findings: list[Finding] = []
    for run in _DIGIT_RUN.finditer(_blank_letters(searchable, keep_corsican=False)):
        digits = [c for c in run[0] if c not in _SEPARATOR_CHARS]
        if len(digits) in (13, 15) and digits[0] in _NIR_FIRST_DIGITS:
            findings.append(
                Finding(
                    FindingCode.SUBJECT_MAY_CONTAIN_PATIENT_ID,
                    Severity.WARN,
                    {"kind": "nir", "start": run.start(), "end": run.end()},
                )
            )
    return findings


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(fold_name(m[0]), m.start(), m.end()) for m in _WORD.finditer(text)]


def _name_forms(names: Iterable[str]) -> set[str]:
    """What to look for: each whole name, and each significant part of a compound one."""
    forms: set[str] = set()
    for name in names:
        parts = [word for word, _, _ in _words(name)]
        whole = "".join(parts)
        if len(whole) >= 2:
            forms.add(whole)
        if len(parts) > 1:
            forms.update(p for p in parts if len(p) >= _MIN_PART and p not in _PARTICLES)
    return forms


def _matches(words: list[tuple[str, int, int]], form: str) -> Iterator[tuple[int, int]]:
    """Spans of consecutive whole words that spell ``form`` once their separators are dropped."""
    for first in range(len(words)):
        spelled = ""
        for last in range(first, len(words)):
            spelled += words[last][0]
            if len(spelled) >= len(form):
                if spelled == form:
                    yield words[first][1], words[last][2]
                break


def _name_findings(subject: str, patient_names: Iterable[str]) -> list[Finding]:
    words = _words(subject)
    spans = {span for form in _name_forms(patient_names) for span in _matches(words, form)}
    return [
        Finding(
            FindingCode.SUBJECT_CONTAINS_PATIENT_NAME,
            Severity.REFUSE,
            {"start": start, "end": end},
        )
        for start, end in spans
    ]


def _one_per_place(findings: Iterable[Finding]) -> list[Finding]:
    """The widest finding of each place: a part of a name inside the whole name counts once."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (_span(f)[0], -_span(f)[1])):
        if not any(_overlaps(finding, other) for other in kept):
            kept.append(finding)
    return kept


def _span(finding: Finding) -> tuple[int, int]:
    return int(finding.params["start"]), int(finding.params["end"])


def _overlaps(a: Finding, b: Finding) -> bool:
    (a_start, a_end), (b_start, b_end) = _span(a), _span(b)
    return a_start < b_end and b_start < a_end


def check_subject(
    subject: str, *, patient_names: Iterable[str] = (), patient_ids: Iterable[str] = ()
) -> list[Finding]:
    """Findings about ``subject`` (REQ-SUBJECT), in the order of the text; none if it is fine.

    ``patient_names``: the declared patient's last and first names (each a
    string, compound names allowed). ``patient_ids``: the identifiers declared
    for the message (NIR/INS, NISS), as typed. Each finding's params give the
    span (``start``, ``end``) of the offending text, never the text itself.
    """
    if isinstance(patient_names, str) or isinstance(patient_ids, str):
        raise TypeError("patient_names and patient_ids are collections of strings")
    searchable = _searchable(subject)
    # One finding per place: a declared identifier also found as a valid number counts once.
    identifiers = _one_per_place(
        _identifier_findings(searchable) + _declared_id_findings(searchable, patient_ids)
    )
    warnings = [
        w for w in _nir_shaped_findings(searchable) if not any(_overlaps(w, f) for f in identifiers)
    ]
    names = _one_per_place(_name_findings(subject, patient_names))
    findings = identifiers + warnings + names
    return sorted(findings, key=lambda f: (*_span(f), f.code))
