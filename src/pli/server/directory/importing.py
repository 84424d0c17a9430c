"""Import of the public RPPS and MSSanté extractions (REQ-DIRECTORY, REQ-DIRECTORY-NATIONAL).

Only people with a valid national identifier enter the directory from these
files: every line is checked (field count, UTF-8, identifier type, Luhn check
digit, national form = type digit + identifier, lengths) and a bad line is
listed in the rejects file as ``line<TAB>reason<TAB>detail``, never copied.

How a run goes:

1. The whole file is checked before anything is written: it can be read, an
   archive is sound (its member read to the end, CRC checked) and holds one
   ``.txt``, the header says which extraction it is. Then, under the import
   lock (one import at a time on a database: :func:`import_lock`), an
   extraction older than the last one of its kind imported is refused
   (``older_extraction``, unless forced). A refusal raises
   :class:`ImportFailed` with a stable code and changes nothing, not even the
   import history.
2. An :class:`~pli.server.directory.models.ImportRun` row is created, then the
   file is read as a stream in batches of :data:`BATCH_LINES` lines: memory
   does not grow with the file. Rows are upserted (professionals by national
   identifier, structures by technical identifier, activities by a key over
   the line's identifying fields, mailboxes by address), each marked active
   and seen by this run (``last_import``), so that importing the same file
   again changes nothing but the run they point to. Batches are committed
   every :data:`TRANSACTION_SECONDS` seconds or so. On PostgreSQL a thread
   parses the RPPS file beside the writes; into an empty directory, the
   secondary indexes are built after the load (:class:`_SetAside`).
3. Only once the whole file has been read, in one transaction: what a newer
   full extraction no longer lists (rows whose ``last_import`` is an earlier
   run) is marked inactive, never deleted, with the mailboxes of the
   professionals who left; those of who is listed again are active again. A
   file where no line could be imported deactivates nothing.

A failure in step 2 (the disk, the database) marks the run ``failed``, keeps
the batches already committed (upserts: importing again completes them) and
deactivates nothing.

Invalid FINESS numbers: the line is kept, the invalid number blanked, and the
line listed in the rejects file with the code ``finess_blanked``. A
structure's FINESS does not make a professional a member of the directory,
and rejecting the line would drop (and, on the next full import, deactivate)
a professional whose RPPS number is valid.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import queue
import re
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from operator import gt
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Model, Q
from django.utils import timezone

from pli.identifiers import (
    IdentifierError,
    parse_adeli,
    parse_finess,
    parse_rpps,
)
from pli.server.directory.models import (
    Activity,
    IdentifierType,
    ImportKind,
    ImportRun,
    Mailbox,
    MailboxType,
    Organisation,
    Professional,
    search_key,
)
from pli.server.directory.sample import MSSANTE_COLUMNS, RPPS_COLUMNS

__all__ = [
    "BATCH_LINES",
    "TRANSACTION_LINES",
    "TRANSACTION_SECONDS",
    "ImportFailed",
    "ImportSummary",
    "extraction_date",
    "import_extraction",
    "import_lock",
]

#: Lines read, checked and written together: memory is bounded by this, not by the file.
BATCH_LINES = 5_000
#: A transaction ends after this many seconds (at the end of a batch), or
#: :data:`TRANSACTION_LINES` lines. Long transactions write each index page
#: fewer times (on SQLite, one commit per 20,000 lines cost 44 s of a
#: 1,000,000-line import here, one per 100,000 lines 11 s); short ones hold
#: SQLite's write lock for less time, and other writers wait for it 5 s at most.
TRANSACTION_SECONDS = 3.0
TRANSACTION_LINES = 100_000
_READ_CHUNK = 1 << 20
#: A "line" longer than this is refused without being held in memory: a file
#: without line breaks must not fill the memory.
_MAX_LINE_BYTES = 64 * 1024
#: Structures already written by a run, remembered to skip writing them again
#: when later lines repeat them unchanged (a hospital is on thousands of lines).
_WRITTEN_STRUCTURES = 50_000
#: SQLite page cache during an import (KiB): the random keys of the indexes
#: touch pages all over them (from 64 to 160 MiB: -15 % time on 1,000,000
#: lines, before a first import set its indexes aside). Counted in the
#: process's memory; the connection's own value is restored after.
_SQLITE_IMPORT_CACHE_KIB = 64 * 1024
#: SQLite page cache while a first import builds its indexes (KiB): SQLite's
#: sorter takes as much again.
_SQLITE_SORT_CACHE_KIB = 32 * 1024

_RPPS_FIELDS = len(RPPS_COLUMNS) + 1  # the trailing "|" adds an empty field
_MSSANTE_FIELDS = len(MSSANTE_COLUMNS)
_NATIONAL_TYPES = (IdentifierType.RPPS.value, IdentifierType.ADELI.value)
_RUNNING, _DONE, _FAILED = "running", "done", "failed"


class ImportFailed(Exception):
    """The whole file is refused (wrong kind, wrong header, truncated archive); nothing changed."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class ImportSummary:
    kind: str
    lines: int
    imported: int
    rejected: int
    deactivated: int
    rejects_file: Path | None
    #: Seconds, from the first check of the file to the end of the run.
    duration: float = 0.0
    #: Lines imported with an invalid FINESS number blanked (listed in the rejects file too).
    corrected: int = 0
    run_id: int | None = None

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.duration if self.duration > 0 else 0.0

    def describe(self) -> str:
        corrected = f" ({self.corrected} with an invalid FINESS blanked)" if self.corrected else ""
        return (
            f"{self.kind}: {self.lines} lines, {self.imported} imported{corrected},"
            f" {self.rejected} rejected, {self.deactivated} marked inactive"
            f" ({self.duration:.1f} s)"
        )


# --------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr, in bytes of the file, or nothing at all."""

    def __init__(self, enabled: bool, file_name: str) -> None:
        self._stack = ExitStack()
        self._bar: Any = None
        self._task: Any = None
        self._file_name = file_name
        if enabled:
            from rich.console import Console  # noqa: PLC0415 - only for an interactive run
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = self._stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                )
            )

    def start(self, description: str, total: int) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.update(self._task, completed=self._bar.tasks[self._task].total)
            self._task = self._bar.add_task(f"{description} {self._file_name}", total=total or None)

    def advance(self, amount: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def close(self) -> None:
        self._stack.close()


# --------------------------------------------------------------------------- reading


@dataclass
class _Source:
    """An extraction opened for reading, its header already checked."""

    kind: str
    stream: IO[bytes]
    #: Bytes of text in all (for the progress bar), header included.
    size: int
    #: What the first read brought past the header line: the start of the data.
    rest: bytes
    header_bytes: int
    crlf: bool


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    with path.open("rb") as handle:
        return handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _open_member(path: Path, stack: ExitStack, bar: _Progress) -> tuple[IO[bytes], int]:
    """The one ``.txt`` member of the archive, once read to its end (CRC checked)."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        texts = [
            i for i in archive.infolist() if not i.is_dir() and i.filename.lower().endswith(".txt")
        ]
        if len(texts) != 1:
            raise ImportFailed(
                "bad_archive", f"expected one .txt extraction in the archive, found {len(texts)}"
            )
        member = texts[0]
        # A corrupt or truncated member shows only as it is read (zlib, CRC at the
        # end): read it all before the first write, so that a bad archive changes nothing.
        bar.start("vérification de l'archive", member.file_size)
        with archive.open(member) as probe:
            while chunk := probe.read(_READ_CHUNK):
                bar.advance(len(chunk))
        return stack.enter_context(archive.open(member)), member.file_size
    except ImportFailed:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise ImportFailed("bad_archive", f"the archive cannot be read: {error}") from None


def _header_fields(header: str) -> list[str]:
    fields = header.split("|")
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()  # the trailing separator
    return fields


def _header_difference(fields: Sequence[str], expected: Sequence[str]) -> str:
    for position, (got, want) in enumerate(zip(fields, expected, strict=False), start=1):
        if got != want:
            return f"column {position} should be {want!r}, found {got[:80]!r}"
    return f"expected {len(expected)} columns, found {len(fields)}"


def _detect_kind(header_line: bytes, file_name: str) -> str:
    """``rpps`` or ``mssante`` from the header line, else :class:`ImportFailed`."""
    try:
        header = header_line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ImportFailed(
            "unknown_file_kind", "the first line is not UTF-8 text: not an extraction"
        ) from None
    fields = _header_fields(header)
    name = file_name.lower()
    if (
        fields[0] == RPPS_COLUMNS[0]
        or len(fields) == len(RPPS_COLUMNS)
        or "personne_activite" in name
    ):
        # The RPPS header is fixed by the ANS: any difference means another format.
        if tuple(fields) != RPPS_COLUMNS:
            raise ImportFailed("wrong_header", _header_difference(fields, RPPS_COLUMNS))
        return ImportKind.RPPS.value
    comparable = [search_key(f) for f in fields[:5]]
    if (
        comparable[0] == search_key(MSSANTE_COLUMNS[0])
        or len(fields) == _MSSANTE_FIELDS
        or "correspondance_mssante" in name
    ):
        # The names of the last columns vary between releases: the count and the
        # first columns, which say what the file is, are checked; lines are read by position.
        if len(fields) != _MSSANTE_FIELDS or comparable != [
            search_key(c) for c in MSSANTE_COLUMNS[:5]
        ]:
            raise ImportFailed(
                "wrong_header",
                f"a MSSanté correspondence header has {_MSSANTE_FIELDS} columns starting with"
                f" {', '.join(MSSANTE_COLUMNS[:5])}; this one has {len(fields)}",
            )
        return ImportKind.MSSANTE.value
    raise ImportFailed(
        "unknown_file_kind",
        "the header is neither that of the RPPS personne-activité extraction"
        " nor that of the MSSanté correspondence extraction",
    )


@contextmanager
def _open_extraction(path: Path, bar: _Progress) -> Iterator[_Source]:
    with ExitStack() as stack:
        try:
            if _is_zip(path):
                stream, size = _open_member(path, stack, bar)
            else:
                stream = stack.enter_context(path.open("rb"))
                size = path.stat().st_size
            first = stream.read(_READ_CHUNK)
        except OSError as error:
            raise ImportFailed(
                "unreadable_file", f"{path.name}: {error.strerror or error}"
            ) from None
        end = first.find(b"\n")
        if end < 0 and len(first) >= _READ_CHUNK:
            raise ImportFailed("unknown_file_kind", "no line break in the first MiB: not text")
        header_line = first if end < 0 else first[:end]
        crlf = header_line.endswith(b"\r")
        kind = _detect_kind(header_line.removesuffix(b"\r"), path.name)
        rest = b"" if end < 0 else first[end + 1 :]
        yield _Source(kind, stream, size, rest, len(first) - len(rest), crlf)


def _line_batches(source: _Source, batch_lines: int) -> Iterator[tuple[list[bytes | None], int]]:
    """Batches of raw lines, without their line ending, and the bytes they came from.

    An overlong line is given as ``None`` (reported as ``line_too_long``) and
    skipped without being held in memory.
    """
    pending = b""
    batch: list[bytes | None] = []
    consumed = 0
    skipping = False  # inside an overlong line, until its end
    chunk = source.rest
    while True:
        consumed += len(chunk)
        parts: list[bytes | None] = []
        pieces = (pending + chunk).split(b"\n")
        pending = pieces.pop()
        if skipping and pieces:
            pieces.pop(0)  # the end of the overlong line
            skipping = False
        if source.crlf:
            pieces = [p[:-1] if p.endswith(b"\r") else p for p in pieces]
        parts.extend(pieces)
        if len(pending) > _MAX_LINE_BYTES:
            if not skipping:
                parts.append(None)
            skipping = True
            pending = b""
        batch.extend(parts)
        while len(batch) >= batch_lines:
            yield batch[:batch_lines], consumed
            consumed = 0
            del batch[:batch_lines]
        chunk = source.stream.read(_READ_CHUNK)
        if not chunk:
            break
    if pending and not skipping:
        batch.append(pending.removesuffix(b"\r") if source.crlf else pending)
    if batch or consumed:
        yield batch, consumed


# --------------------------------------------------------------------------- checking lines


@dataclass
class _Rejects:
    """The rejects file: ``line<TAB>reason<TAB>detail``; nothing from the line (it is data)."""

    path: Path
    handle: IO[str]
    rejected: int = 0
    corrected: int = 0

    def reject(self, line: int, reason: str, detail: str) -> None:
        self.rejected += 1
        self.handle.write(f"{line}\t{reason}\t{detail}\n")

    def note(self, line: int, reason: str, detail: str) -> None:
        """A line imported with a correction."""
        self.corrected += 1
        self.handle.write(f"{line}\t{reason}\t{detail}\n")


class _BadLine(Exception):
    """Why a line is rejected: a reason code of the rejects file and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


_NATIONAL_PARSERS = {
    IdentifierType.RPPS.value: (parse_rpps, 11, "RPPS"),
    IdentifierType.ADELI.value: (parse_adeli, 9, "ADELI"),
}


#: A digit's doubled Luhn value: 2d, or 2d - 9 past 9.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")


def _luhn_digits_valid(digits: str) -> bool:
    """Luhn over ASCII digits, as ``pli.identifiers.luhn_is_valid``, in C-level loops.

    The import checks one number per person (1,300,000 in the national
    file): summing the bytes rather than looping in Python costs a fifth.
    A number it does not accept goes to ``pli.identifiers``, which says why.
    """
    kept = digits[-1::-2].encode()
    doubled = digits[-2::-2].translate(_LUHN_DOUBLED).encode()
    return (sum(kept) + sum(doubled) - 48 * len(digits)) % 10 == 0


def _check_person(id_type: str, identifier: str, national_id: str) -> None:
    """Raise :class:`_BadLine` unless the three identifier columns agree and are valid.

    REQ-DIRECTORY-NATIONAL: only valid RPPS / ADELI numbers (pli.identifiers:
    length, digits, Luhn), in their exact national form, enter the directory.
    """
    parser = _NATIONAL_PARSERS.get(id_type)
    if parser is None:
        raise _BadLine(
            "unknown_identifier_type", "the identifier type is neither 8 (RPPS) nor 0 (ADELI)"
        )
    parse, length, label = parser
    # The common case without pli.identifiers' normalisation of typed input;
    # any doubt goes to the parser, which says precisely what is wrong.
    if not (
        len(identifier) == length
        and identifier.isascii()
        and identifier.isdigit()
        and _luhn_digits_valid(identifier)
    ):
        try:
            parsed = parse(identifier)
        except IdentifierError as error:
            if error.code == "bad_check_digit":
                raise _BadLine(
                    "bad_check_digit", f"the {label} number's check digit does not match"
                ) from None
            raise _BadLine("bad_identifier", f"{label} number: {error.detail}") from None
        if parsed.value != identifier:
            raise _BadLine("bad_identifier", f"{label} number not written as plain digits")
    if national_id != id_type + identifier:
        raise _BadLine(
            "national_id_mismatch",
            "the national identification is not the type digit followed by the identifier",
        )


def _split(raw: bytes | None, expected_fields: int, *, trailing: bool) -> list[str]:
    """The fields of a line, or :class:`_BadLine` (encoding, field count, NUL)."""
    if raw is None:
        raise _BadLine("line_too_long", f"the line is longer than {_MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _BadLine("bad_encoding", f"not UTF-8 (byte {error.start + 1} of the line)") from None
    fields = text.split("|")
    if trailing:
        if len(fields) != expected_fields or fields[-1]:
            raise _BadLine(
                "wrong_field_count",
                f"expected {expected_fields - 1} fields and a trailing separator,"
                f" found {len(fields)} fields",
            )
    elif len(fields) == expected_fields + 1 and not fields[-1]:
        fields.pop()  # a trailing separator
    elif len(fields) != expected_fields:
        raise _BadLine(
            "wrong_field_count", f"expected {expected_fields} fields, found {len(fields)}"
        )
    if "\x00" in text:
        # PostgreSQL cannot store NUL in text; no extraction contains it.
        raise _BadLine("bad_characters", "the line contains a NUL character")
    return fields


def _field_limits(
    stored: dict[int, tuple[type[Model], str]], count: int, extra: dict[int, int] | None = None
) -> tuple[int, ...]:
    """Per column, the longest value the directory keeps (its model field's max_length)."""
    limits = dict.fromkeys(range(count), 1 << 30)
    for position, (model, name) in stored.items():
        max_length = model._meta.get_field(name).max_length  # type: ignore[union-attr]
        limits[position] = int(max_length or 1 << 30)
    limits.update(extra or {})
    return tuple(limits[i] for i in range(count))


def _raise_too_long(fields: Sequence[str], limits: Sequence[int], names: Sequence[str]) -> None:
    position = next(i for i, (f, m) in enumerate(zip(fields, limits, strict=False)) if len(f) > m)
    raise _BadLine(
        "field_too_long",
        f"column {position + 1} ({names[position]}) is longer than {limits[position]} characters",
    )


@lru_cache(maxsize=1 << 16)
def _cached_search_key(*parts: str) -> str:
    # Names and cities repeat: search_key (NFKD, casefold) once per distinct value.
    return search_key(*parts)


@lru_cache(maxsize=1 << 14)
def _valid_finess(value: str) -> bool:
    if len(value) == 9 and value.isascii() and value.isdigit() and _luhn_digits_valid(value):
        return True  # what parse_finess accepts, without its normalisation of typed input
    try:
        parse_finess(value)
    except IdentifierError:
        return False
    return True


# --------------------------------------------------------------------------- RPPS lines

_P, _O, _A = Professional, Organisation, Activity
#: Which model field keeps each column of the RPPS extraction (0-based) that is kept.
_RPPS_STORED: dict[int, tuple[type[Model], str]] = {
    2: (_P, "national_id"), 3: (_P, "civil_title_code"), 4: (_P, "civil_title"),
    5: (_P, "civility_code"), 6: (_P, "civility"), 7: (_P, "last_name"), 8: (_P, "first_name"),
    9: (_P, "profession_code"), 10: (_P, "profession"), 11: (_P, "category_code"),
    12: (_P, "category"), 13: (_A, "skill_type_code"), 14: (_A, "skill_type"),
    15: (_A, "skill_code"), 16: (_A, "skill"), 17: (_A, "practice_mode_code"),
    18: (_A, "practice_mode"), 19: (_O, "siret"), 20: (_O, "siren"), 21: (_O, "finess_site"),
    22: (_O, "finess_legal"), 23: (_O, "technical_id"), 24: (_O, "name"),
    25: (_O, "trade_name"), 28: (_O, "street_number"), 29: (_O, "street_repetition"),
    30: (_O, "street_type"), 31: (_O, "street_type"), 32: (_O, "street_name"),
    33: (_O, "distribution"), 34: (_O, "cedex"), 35: (_O, "postcode"), 36: (_O, "city_code"),
    37: (_O, "city"), 38: (_O, "country_code"), 39: (_O, "country"), 40: (_O, "phone"),
    43: (_O, "email"), 44: (_O, "department_code"), 47: (_A, "registration_authority"),
    48: (_A, "sector_code"), 49: (_A, "sector"), 50: (_A, "pharmacist_section_code"),
    51: (_A, "pharmacist_section"),
}  # fmt: skip
# The two address complements share one field, joined by ", ".
_COMPLEMENT = (_O._meta.get_field("address_complement").max_length or 255) // 2 - 1
_RPPS_LIMITS = _field_limits(_RPPS_STORED, _RPPS_FIELDS, {26: _COMPLEMENT, 27: _COMPLEMENT})
_RPPS_NAMES = (*RPPS_COLUMNS, "")

# Staging rows, in the column order of the statements of _RppsWriter.
_PROFESSIONAL_COLUMNS = (
    "national_id", "identifier_type", "identifier", "civil_title_code", "civil_title",
    "civility_code", "civility", "last_name", "first_name", "name_key", "profession_code",
    "profession", "category_code", "category",
)  # fmt: skip
_ORGANISATION_COLUMNS = (
    "technical_id", "siret", "siren", "finess_site", "finess_legal", "name", "trade_name",
    "address_complement", "street_number", "street_repetition", "street_type", "street_name",
    "distribution", "cedex", "postcode", "city_code", "city", "city_key", "country_code",
    "country", "phone", "email", "department_code",
)  # fmt: skip
#: Activity columns other than the key and the two foreign keys.
_ACTIVITY_COLUMNS = (
    "skill_type_code", "skill_type", "skill_code", "skill", "practice_mode_code",
    "practice_mode", "registration_authority", "sector_code", "sector",
    "pharmacist_section_code", "pharmacist_section",
)  # fmt: skip


@dataclass
class _RppsBatch:
    """The good lines of a batch as staging rows, one per key (the first line of a key wins)."""

    professionals: dict[str, tuple[str, ...]] = field(default_factory=dict)
    organisations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: activity key -> (key, national id, technical id or "", *_ACTIVITY_COLUMNS)
    activities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    good: int = 0


def _parse_rpps_batch(
    lines: Sequence[bytes | None], first_number: int, rejects: _Rejects
) -> _RppsBatch:
    """Check the lines of a batch (REQ-DIRECTORY-NATIONAL) and turn the good ones into rows.

    The hot loop of the import: plain tuples, a person's identifier checked
    once for the consecutive lines of that person, cached search keys.
    """
    batch = _RppsBatch()
    professionals, organisations, activities = (
        batch.professionals,
        batch.organisations,
        batch.activities,
    )
    checked_id = checked_type = ""  # the identifier of the previous good line
    sha256, limits = hashlib.sha256, _RPPS_LIMITS
    for number, raw in enumerate(lines, start=first_number):
        try:
            f = _split(raw, _RPPS_FIELDS, trailing=True)
            if f[1] != checked_id or f[0] != checked_type or f[2] != f[0] + f[1]:
                _check_person(f[0], f[1], f[2])
            if any(map(gt, map(len, f), limits)):
                _raise_too_long(f, limits, _RPPS_NAMES)
            if not f[7]:
                raise _BadLine("missing_name", "the exercise name (Nom d'exercice) is empty")
        except _BadLine as bad:
            rejects.reject(number, bad.reason, bad.detail)
            continue
        checked_type, checked_id, national_id = f[0], f[1], f[2]
        if national_id not in professionals:
            professionals[national_id] = (
                national_id, f[0], f[1], *f[3:9], _cached_search_key(f[7], f[8])[:260], *f[9:13]
            )  # fmt: skip
        technical_id = f[23]
        if technical_id:
            if (f[21] and not _valid_finess(f[21])) or (f[22] and not _valid_finess(f[22])):
                blanked = [RPPS_COLUMNS[i] for i in (21, 22) if f[i] and not _valid_finess(f[i])]
                for i in (21, 22):
                    f[i] = f[i] if _valid_finess(f[i]) else ""
                rejects.note(
                    number,
                    "finess_blanked",
                    f"imported without {' and '.join(blanked)}: not a valid FINESS number",
                )
                organisations.pop(technical_id, None)  # the corrected values win
            if technical_id not in organisations:
                complement = f"{f[26]}, {f[27]}" if f[26] and f[27] else f[26] or f[27]
                organisations[technical_id] = (
                    technical_id, *f[19:23], f[24], f[25], complement, f[28], f[29],
                    f[31] or f[30], *f[32:38], _cached_search_key(f[37])[:128], f[38], f[39],
                    f[40], f[43], f[44],
                )  # fmt: skip
        # What identifies an activity from one extraction to the next: who, where,
        # as what, how. "|" cannot occur inside a field: the joined text is unambiguous.
        identifying = "|".join((national_id, technical_id, f[9], f[13], f[15], f[17], f[48], f[50]))
        key = sha256(identifying.encode()).hexdigest()
        activities[key] = (key, national_id, technical_id, *f[13:19], *f[47:52])
        batch.good += 1
    return batch


# --------------------------------------------------------------------------- RPPS writes

#: Batches parsed ahead of the database: memory stays bounded.
_QUEUE_BATCHES = 2
#: How long (s) a thread may hold the GIL while the other waits for it: the
#: database thread gets it back soon after each statement (Python's default, 5
#: ms, cost a few µs per line), while the reading thread parses (see _Reader).
_SWITCH_INTERVAL = 0.0005

#: Columns of each table's rows, in the order the parser builds them.
_STAGED: dict[str, tuple[str, ...]] = {
    "professional": _PROFESSIONAL_COLUMNS,
    "organisation": _ORGANISATION_COLUMNS,
    "activity": ("activity_key", "national_id", "technical_id", *_ACTIVITY_COLUMNS),
}
#: The order batches are written in: an activity joins its professional and structure.
_TABLES = ("professional", "organisation", "activity")


@dataclass(frozen=True)
class _Chunk:
    """A batch as the database thread writes it, prepared by the reading thread."""

    lines: int
    good: int
    #: Bytes of the file the batch came from (the progress bar).
    consumed: int
    #: Per table: the text of a ``COPY`` (PostgreSQL), or the rows (SQLite).
    loads: list[tuple[str, Any]]


def _copy_text(rows: Sequence[tuple[str, ...]]) -> bytes:
    """Rows in ``COPY ... (DELIMITER '|')`` text form.

    No field holds "|" (the extraction's separator) nor a line break (the
    line's end), so only a backslash and a carriage return need escaping, and
    they can be escaped in the joined text.
    """
    text = "\n".join(map("|".join, rows)) + "\n"
    if "\\" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\r", "\\r")
    return text.encode()


class _Reader(threading.Thread):
    """Reads, checks and prepares the batches of an RPPS extraction, beside the writes.

    The database works while this thread parses the next batches (pure
    Python: it holds the GIL, which Django's database calls release while the
    database works), so that the two cores of a small server both work. It
    writes the rejects file; it never touches the database. Batches wait in a
    bounded queue: memory does not grow with the file. An error, a read error
    included, is handed to the database thread, which raises it. On SQLite,
    :meth:`prepared` runs in the importing thread instead.
    """

    def __init__(self, source: _Source, rejects: _Rejects, postgresql: bool) -> None:
        super().__init__(name="pli-directory-import-reader", daemon=True)
        self.source, self.rejects, self.postgresql = source, rejects, postgresql
        self.queue: queue.Queue[_Chunk | BaseException | None] = queue.Queue(_QUEUE_BATCHES)
        self.stopping = threading.Event()
        #: technical id -> hash of the row last written (a row itself holds 23 strings).
        self.written: OrderedDict[str, int] = OrderedDict()

    def run(self) -> None:
        try:
            for chunk in self.prepared():
                if not self._put(chunk):
                    return
            self.rejects.handle.flush()
            self._put(None)
        except BaseException as error:  # noqa: BLE001 - handed to the database thread
            self._put(error)

    def prepared(self) -> Iterator[_Chunk]:
        """The batches, checked and ready to load (in this thread, or the caller's)."""
        number = 2  # line 1 is the header
        for lines, consumed in _line_batches(self.source, BATCH_LINES):
            parsed = _parse_rpps_batch(lines, number, self.rejects)
            number += len(lines)
            rows = {
                "professional": list(parsed.professionals.values()),
                "organisation": self._unwritten(parsed.organisations),
                "activity": list(parsed.activities.values()),
            }
            loads: list[tuple[str, Any]] = [
                (name, _copy_text(rows[name]) if self.postgresql else rows[name])
                for name in _TABLES
                if rows[name]
            ]
            yield _Chunk(len(lines), parsed.good, consumed, loads)

    def _put(self, item: _Chunk | BaseException | None) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def _unwritten(self, organisations: dict[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Structures this run has not written yet as they are now (bounded memory)."""
        rows = []
        written = self.written
        for technical_id, row in organisations.items():
            digest = hash(row)
            if written.get(technical_id) != digest:
                rows.append(row)
            written[technical_id] = digest
            written.move_to_end(technical_id)
        while len(written) > _WRITTEN_STRUCTURES:
            written.popitem(last=False)
        return rows

    def chunks(self) -> Iterator[_Chunk]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class _Statements:
    """The SQL of the writes, written once from the models' metadata.

    Identifiers come from the models and are quoted by the backend; values are
    always bound parameters (or ``COPY`` data), never part of the text.

    PostgreSQL: each batch is copied into temporary tables (``COPY``, text
    prepared by the reading thread), then one set-based ``INSERT ... SELECT
    ... ON CONFLICT DO UPDATE`` per table; activities find their professional
    and structure by a join, so no id goes back to Python. SQLite, which runs
    in this process: one prepared upsert per row in ``executemany``, the ids
    of an activity found by subqueries; measured here, faster than filling a
    staging table and reading it again, and than multi-row ``VALUES``.
    """

    def __init__(self, postgresql: bool) -> None:
        self.postgresql = postgresql
        quote = connection.ops.quote_name
        self.quote = quote
        self.stage = {name: quote(f"pli_import_{name}") for name in _STAGED}
        self.create = {
            name: f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.stage[name]}"
            f" ({', '.join(f'{quote(c)} text' for c in columns)})"
            for name, columns in _STAGED.items()
        }
        # "|" is the extraction's separator: no field holds it (see _copy_text).
        self.copy = {
            name: f"COPY {stage} FROM STDIN (DELIMITER '|')" for name, stage in self.stage.items()
        }
        # TRUNCATE: deleted rows of a temporary table are never vacuumed, and
        # every later batch would read them again.
        self.clear = {name: f"TRUNCATE {stage}" for name, stage in self.stage.items()}

    def _upsert(self, name: str, rows: str, *, conflict: bool = True) -> str:
        """Insert ``rows`` (a ``SELECT`` or ``VALUES``), updating those already there."""
        quote = self.quote
        seen = ["active", "last_import_id"]
        target: type[Model]
        if name == "activity":
            target, key = Activity, "activity_key"
            columns = ["activity_key", "professional_id", "organisation_id", *_ACTIVITY_COLUMNS]
            columns += seen
        else:
            target = Professional if name == "professional" else Organisation
            key = "national_id" if name == "professional" else "technical_id"
            columns = [*_STAGED[name], *seen, "updated_at"]
        updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c != key)
        insert = f"INSERT INTO {quote(target._meta.db_table)} ({', '.join(map(quote, columns))})"
        if not conflict:
            return f"{insert} {rows}"
        return f"{insert} {rows} ON CONFLICT ({quote(key)}) DO UPDATE SET {updates}"

    def _postgresql_select(self, name: str) -> str:
        """The staging table's rows; an activity's ids found by a join."""
        quote = self.quote
        stage = self.stage[name]
        if name != "activity":
            columns = ", ".join(f"s.{quote(c)}" for c in _STAGED[name])
            return f"SELECT {columns}, %s, %s, %s FROM {stage} s"  # noqa: S608 - see the docstring
        own = ", ".join(f"s.{quote(c)}" for c in _ACTIVITY_COLUMNS)
        return (
            f"SELECT s.activity_key, p.id, o.id, {own}, %s, %s FROM {stage} s"  # noqa: S608 - see the docstring
            f" JOIN {quote(Professional._meta.db_table)} p ON p.national_id = s.national_id"
            f" LEFT JOIN {quote(Organisation._meta.db_table)} o"
            " ON o.technical_id = s.technical_id AND s.technical_id <> ''"
        )

    def postgresql_upsert(self, name: str) -> str:
        return self._upsert(name, self._postgresql_select(name))

    def postgresql_people_and_activities(self, *, plain: bool = False) -> str:
        """The professionals' upsert, then their activities, in one statement.

        The activities take their professional's id from the rows the first
        upsert returns (every professional of the batch's activities is in the
        batch): a hash join of the batch, where looking each one up in the
        national table cost a random read (30 µs here at 2,000,000 lines).
        """
        quote = self.quote
        stage = self.stage["activity"]
        own = ", ".join(f"s.{quote(c)}" for c in _ACTIVITY_COLUMNS)
        people = self.postgresql_upsert("professional") + " RETURNING id, national_id"
        select = (
            f"SELECT s.activity_key, p.id, o.id, {own}, %s, %s FROM {stage} s"  # noqa: S608 - see the docstring
            " JOIN written p ON p.national_id = s.national_id"
            f" LEFT JOIN {quote(Organisation._meta.db_table)} o"
            " ON o.technical_id = s.technical_id AND s.technical_id <> ''"
        )
        activities = self._upsert("activity", select, conflict=not plain)
        return f"WITH written AS ({people}) {activities}"

    def sqlite_upsert(self, name: str) -> str:
        """One row's upsert, for ``executemany``; an activity's ids found by subqueries."""
        quote = self.quote
        values = ["%s"] * (len(_STAGED[name]) + 3)
        if name == "activity":
            professional = quote(Professional._meta.db_table)
            organisation = quote(Organisation._meta.db_table)
            values = [
                "%s",
                f"(SELECT id FROM {professional} WHERE national_id = %s)",  # noqa: S608 - see the docstring
                f"(SELECT id FROM {organisation} WHERE technical_id = %s)",  # noqa: S608
                *["%s"] * (len(_ACTIVITY_COLUMNS) + 2),
            ]
        return self._upsert(name, f"VALUES ({', '.join(values)})")


class _RppsWriter:
    """Writes the batches of an RPPS extraction with set-based upserts (REQ-DIRECTORY).

    Why not ``bulk_create(update_conflicts=True)``: measured on this project's
    machines, building model instances and letting the SQL compiler prepare
    each field costs about 0.5 ms per line, against a budget of 0.033 ms for
    the 30,000 lines/s target. These statements run on PostgreSQL and SQLite
    (>= 3.24, for ``ON CONFLICT``), through Django's connection and inside its
    transactions.
    """

    def __init__(self, run: ImportRun) -> None:
        self.run = run
        self.postgresql = connection.vendor == "postgresql"
        self.sql = _Statements(self.postgresql)
        self.upserts = {
            name: self.sql.postgresql_upsert(name)
            if self.postgresql
            else self.sql.sqlite_upsert(name)
            for name in _STAGED
        }
        self.people_and_activities = self.sql.postgresql_people_and_activities()
        self.saved_cache_size: int | None = None
        self.now = connection.ops.adapt_datetimefield_value(timezone.now())

    def open(self) -> None:
        """PostgreSQL's staging tables: temporary, so of this connection only, and gone with it."""
        with connection.cursor() as cursor:
            if self.postgresql:
                for name in _STAGED:
                    cursor.execute(self.sql.create[name])
                    cursor.execute(self.sql.clear[name])
            else:
                cursor.execute("PRAGMA cache_size")
                self.saved_cache_size = int(cursor.fetchone()[0])
                cursor.execute(f"PRAGMA cache_size = -{_SQLITE_IMPORT_CACHE_KIB}")

    def close(self) -> None:
        with connection.cursor() as cursor:
            if self.postgresql:
                for stage in self.sql.stage.values():
                    cursor.execute(f"DROP TABLE IF EXISTS {stage}")
            if self.saved_cache_size is not None:
                cursor.execute(f"PRAGMA cache_size = {self.saved_cache_size:d}")

    def write(self, chunk: _Chunk) -> None:
        """Upsert one batch: professionals, structures, then their activities."""
        seen: list[Any] = [True, self.run.pk]
        constants = {"professional": [*seen, self.now], "organisation": [*seen, self.now]}
        constants["activity"] = seen
        with connection.cursor() as cursor:
            if self.postgresql:
                loaded = dict(chunk.loads)
                for name, load in chunk.loads:
                    with cursor.cursor.copy(self.sql.copy[name]) as copy:
                        copy.write(load)
                if "organisation" in loaded:
                    cursor.execute(self.upserts["organisation"], constants["organisation"])
                if "professional" in loaded and "activity" in loaded:
                    cursor.execute(
                        self.people_and_activities,
                        [*constants["professional"], *constants["activity"]],
                    )
                else:  # never in practice: every good line has both
                    for name in ("professional", "activity"):
                        if name in loaded:
                            cursor.execute(self.upserts[name], constants[name])
                for name in loaded:
                    cursor.execute(self.sql.clear[name])
                return
            for name, load in chunk.loads:
                # One statement per row, in SQLite's own loop: about 5 µs a row
                # here, less than filling a staging table and reading it again.
                tail = tuple(constants[name])
                cursor.executemany(self.upserts[name], [row + tail for row in load])


def _dormant_mailboxes() -> list[int]:
    """Inactive mailboxes of inactive national professionals, before an RPPS run writes.

    Those of the people the run lists again are active again at its end (see
    :func:`_deactivate_rpps`); few, even after years of imports.
    """
    return list(
        Mailbox.objects.filter(
            active=False,
            professional__active=False,
            professional__identifier_type__in=_NATIONAL_TYPES,
        ).values_list("pk", flat=True)
    )


class _SetAside:
    """The secondary indexes of the directory tables, set aside while a first import loads.

    Into an empty directory, the national extraction is loaded without them,
    then they are built once, from sorted data: an index kept up to date row
    by row, with keys in random order, writes a page per row once it outgrows
    the cache (measured at 2,000,000 lines: most of the import's time).
    Only the first import does it, when there is nothing to search yet; the
    unique indexes stay (the upserts need them), but on PostgreSQL the
    activities' (2,000,000 random keys: the largest index), whose rows are
    then inserted without ``ON CONFLICT``: a key repeated in the file is left
    to the rebuild, which keeps its last line, as the upsert would. Their
    definitions are read from the database and kept in a file of the data
    directory until they are built again, so that the next import rebuilds
    them after a crash.
    """

    TABLES = (Professional, Organisation, Activity)

    #: PostgreSQL: the activities' unique constraint, set aside too.
    KEY_CONSTRAINT = "directory_act_key_uniq"

    def __init__(self) -> None:
        self.definitions: list[str] = []

    @property
    def plain_activities(self) -> bool:
        """Activities are inserted without ``ON CONFLICT`` (their unique key is set aside)."""
        return any(sql.startswith("ALTER TABLE") for sql in self.definitions)

    @staticmethod
    def path() -> Path:
        return Path(settings.DATA_DIR) / "directory-import-indexes.json"

    @classmethod
    def applies(cls, kind: str) -> bool:
        return kind == ImportKind.RPPS and not any(m.objects.exists() for m in cls.TABLES)

    @classmethod
    def _read_definitions(cls) -> list[str]:
        """``CREATE INDEX`` statements of the non-unique indexes of the directory tables."""
        found = []
        with connection.cursor() as cursor:
            for model in cls.TABLES:
                table = model._meta.db_table
                if connection.vendor == "postgresql":
                    cursor.execute(
                        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
                        " WHERE i.indrelid = %s::regclass AND NOT i.indisunique",
                        [table],
                    )
                    found += [row[0] for row in cursor.fetchall()]
                    if model is Activity:
                        cursor.execute(
                            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                            " WHERE conrelid = %s::regclass AND conname = %s",
                            [table, cls.KEY_CONSTRAINT],
                        )
                        row = cursor.fetchone()
                        if row is not None:
                            found.append(
                                f"ALTER TABLE {table} ADD CONSTRAINT {cls.KEY_CONSTRAINT} {row[0]}"
                            )
                    continue
                cursor.execute(f"PRAGMA index_list({connection.ops.quote_name(table)})")
                names = [row[1] for row in cursor.fetchall() if not row[2]]
                for name in names:
                    cursor.execute(
                        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = %s", [name]
                    )
                    row = cursor.fetchone()
                    if row is not None and row[0]:
                        found.append(row[0])
        # Rebuilding is idempotent: what an interrupted rebuild made is kept.
        return [re.sub(r"^CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", sql) for sql in found]

    @staticmethod
    def _name(sql: str) -> str:
        if sql.startswith("ALTER TABLE"):
            return sql.split(" ADD CONSTRAINT ", 1)[1].split(" ", 1)[0]
        return sql.removeprefix("CREATE INDEX IF NOT EXISTS ").split(" ", 1)[0]

    def drop(self) -> None:
        self.definitions = self._read_definitions()
        path = self.path()
        path.write_text(json.dumps(self.definitions), encoding="utf-8")
        with transaction.atomic(), connection.cursor() as cursor:
            for sql in self.definitions:
                if sql.startswith("ALTER TABLE"):
                    table = sql.split(" ", 3)[2]
                    cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {self._name(sql)}")
                else:
                    cursor.execute(f"DROP INDEX IF EXISTS {self._name(sql)}")

    def rebuild(self) -> None:
        postgresql = connection.vendor == "postgresql"
        with connection.cursor() as cursor:
            if postgresql:
                # Sorting in memory (the server's, not this process's) rather than on disk.
                cursor.execute("SET maintenance_work_mem TO '256MB'")
            else:
                # SQLite sorts in this process with as much memory as its page cache
                # (on top of it): a smaller cache here keeps the peak memory down.
                cursor.execute("PRAGMA cache_size")
                cache_size = int(cursor.fetchone()[0])
                cursor.execute(f"PRAGMA cache_size = -{_SQLITE_SORT_CACHE_KIB}")
            for sql in self.definitions:
                if sql.startswith("ALTER TABLE"):
                    self._restore_constraint(sql)
                else:
                    cursor.execute(sql)
            if postgresql:
                cursor.execute("RESET maintenance_work_mem")
            else:
                cursor.execute(f"PRAGMA cache_size = {cache_size:d}")
        self.path().unlink(missing_ok=True)

    def _restore_constraint(self, sql: str) -> None:
        """The activities' unique key again, once their repeated keys keep only the last line."""
        name = self._name(sql)
        table = connection.ops.quote_name(Activity._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", [name])
            if cursor.fetchone() is not None:
                return  # an interrupted rebuild got this far
            try:
                with transaction.atomic():  # a savepoint: the usual case, no key repeated
                    cursor.execute(sql)
                    return
            except IntegrityError:
                pass
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER"  # noqa: S608 - the model's table
                " (PARTITION BY activity_key ORDER BY id DESC) AS n FROM"
                f" {table}) AS numbered WHERE n > 1)"
            )
            cursor.execute(sql)

    @classmethod
    def recover(cls) -> None:
        """Build what an interrupted first import left set aside."""
        path = cls.path()
        if path.exists():
            aside = cls()
            aside.definitions = json.loads(path.read_text(encoding="utf-8"))
            aside.rebuild()


def _deactivate_rpps(run: ImportRun, dormant: Sequence[int] = ()) -> int:
    """Mark inactive what this full extraction no longer lists; returns the professionals.

    Only national professionals (RPPS / ADELI), their activities, and
    structures that came from an RPPS import: local and Belgian entries are
    not in the file. Nothing is deleted: messages and audit records keep
    pointing at these rows, and a professional listed again is active again.

    REQ-DIRECTORY: only members send and receive, so the mailboxes of a
    professional who left are inactive too (neither listed, nor resolved, nor
    published in FHIR). When he is listed again, his ``dormant`` mailboxes
    (see :func:`_dormant_mailboxes`) are active again if they are local or
    still listed by the latest correspondence extraction: not one that this
    extraction dropped meanwhile.
    """
    now = timezone.now()
    deactivated = (
        Professional.objects.filter(identifier_type__in=_NATIONAL_TYPES, active=True)
        .exclude(last_import=run)
        .update(active=False, updated_at=now)
    )
    Mailbox.objects.filter(
        active=True,
        professional__active=False,
        professional__identifier_type__in=_NATIONAL_TYPES,
    ).update(active=False)
    latest = ImportRun.objects.filter(kind=ImportKind.MSSANTE, status=_DONE).order_by("-pk").first()
    listed = Q(last_import__isnull=True) | Q(last_import=latest)
    for start in range(0, len(dormant), 500):
        Mailbox.objects.filter(listed, pk__in=dormant[start : start + 500]).filter(
            professional__active=True
        ).update(active=True)
    Activity.objects.filter(active=True, professional__identifier_type__in=_NATIONAL_TYPES).exclude(
        last_import=run
    ).update(active=False)
    Organisation.objects.filter(active=True, last_import__kind=ImportKind.RPPS).exclude(
        last_import=run
    ).update(active=False, updated_at=now)
    return deactivated


# --------------------------------------------------------------------------- MSSanté

_MAILBOX_KINDS = frozenset(MailboxType.values)
# The shape of an address; the operators have checked the rest.
_ADDRESS = re.compile(r"[^@\s|]+@[^@\s|]+\.[^@\s|]+")
_MSSANTE_LIMITS = _field_limits(
    {1: (Mailbox, "address"), 7: (Mailbox, "service")}, _MSSANTE_FIELDS, {6: 64}
)
_MAILBOX_UPDATE = ["kind", "professional", "organisation", "service", "active", "last_import"]


@dataclass(frozen=True, slots=True)
class _MailboxLine:
    number: int
    kind: str
    address: str
    national_id: str
    structure: str
    service: str


def _parse_mssante_line(raw: bytes | None, number: int) -> _MailboxLine:
    f = _split(raw, _MSSANTE_FIELDS, trailing=False)
    if any(map(gt, map(len, f), _MSSANTE_LIMITS)):
        _raise_too_long(f, _MSSANTE_LIMITS, MSSANTE_COLUMNS)
    kind = f[0].strip()
    if kind not in _MAILBOX_KINDS:
        raise _BadLine("unknown_mailbox_type", "the mailbox type is not PER, ORG, APP or CAB")
    # Compared without case, as the mail systems of these domains do.
    address = f[1].strip().lower()
    if not _ADDRESS.fullmatch(address):
        raise _BadLine("bad_address", "the mailbox address is not an e-mail address")
    national_id = ""
    if f[2] or f[3] or f[4]:
        _check_person(f[2], f[3], f[4])
        national_id = f[4]
    return _MailboxLine(number, kind, address, national_id, f[6].strip(), f[7])


def _resolve_structures(lines: Sequence[_MailboxLine]) -> dict[str, int]:
    """Organisation ids by the structure identification of the lines.

    The extraction names a structure by its national identifier (IDNST,
    ``1`` + FINESS or ``3`` + SIRET) or by the technical identifier of the
    RPPS extraction; an active structure is preferred, then the oldest.
    """
    wanted = {line.structure for line in lines if line.structure}
    if not wanted:
        return {}
    found: dict[str, int] = {}
    finess = {s[1:]: s for s in wanted if s.startswith("1") and len(s) == 10}
    siret = {s[1:]: s for s in wanted if s.startswith("3") and len(s) == 15}
    structures = Organisation.objects.order_by("-active", "pk")
    for technical_id, pk in structures.filter(technical_id__in=wanted).values_list(
        "technical_id", "pk"
    ):
        found.setdefault(technical_id, pk)
    for number, pk in structures.filter(finess_site__in=list(finess)).values_list(
        "finess_site", "pk"
    ):
        found.setdefault(finess[number], pk)
    for number, pk in structures.filter(siret__in=list(siret)).values_list("siret", "pk"):
        found.setdefault(siret[number], pk)
    return found


def _import_mssante_batch(
    lines: Sequence[bytes | None], first_number: int, rejects: _Rejects, run: ImportRun
) -> int:
    """Check and upsert a batch of mailboxes; returns the lines imported.

    The ORM is fast enough here: the national correspondence extraction has a
    few hundred thousand lines, a tenth of the RPPS one, one row each.
    """
    parsed: list[_MailboxLine] = []
    for number, raw in enumerate(lines, start=first_number):
        try:
            parsed.append(_parse_mssante_line(raw, number))
        except _BadLine as bad:
            rejects.reject(number, bad.reason, bad.detail)
    people = {
        national_id: (pk, active)
        for national_id, pk, active in Professional.objects.filter(
            national_id__in={line.national_id for line in parsed if line.national_id}
        ).values_list("national_id", "pk", "active")
    }
    structures = _resolve_structures(parsed)
    mailboxes: dict[str, Mailbox] = {}
    imported = 0
    for line in parsed:
        professional_id, member = people.get(line.national_id, (None, True))
        organisation_id = structures.get(line.structure) if line.structure else None
        if line.national_id and professional_id is None:
            # REQ-DIRECTORY-NATIONAL: a mailbox is attached to a member of the directory.
            rejects.reject(
                line.number,
                "unknown_professional",
                "no professional of the directory has this national identifier",
            )
            continue
        if line.structure and organisation_id is None and professional_id is None:
            rejects.reject(
                line.number,
                "unknown_structure",
                "no structure of the directory has this identifier",
            )
            continue
        if professional_id is None and organisation_id is None:
            rejects.reject(
                line.number,
                "missing_owner",
                "the mailbox names neither a professional nor a structure",
            )
            continue
        # One statement cannot update a row twice: the last line of an address wins.
        mailboxes[line.address] = Mailbox(
            address=line.address,
            kind=line.kind,
            professional_id=professional_id,
            organisation_id=organisation_id,
            service=line.service,
            # The correspondence extraction may still list someone whom a newer
            # RPPS extraction no longer does: listed, but inactive with him.
            active=member,
            last_import=run,
        )
        imported += 1
    Mailbox.objects.bulk_create(
        list(mailboxes.values()),
        update_conflicts=True,
        unique_fields=["address"],
        update_fields=_MAILBOX_UPDATE,
    )
    return imported


def _deactivate_mssante(run: ImportRun) -> int:
    """Mailboxes a newer correspondence extraction no longer lists; never local ones."""
    return (
        Mailbox.objects.filter(active=True, last_import__kind=ImportKind.MSSANTE)
        .exclude(last_import=run)
        .update(active=False)
    )


# --------------------------------------------------------------------------- a run


def _default_rejects_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejects.txt")


#: The extraction's date and time at the end of an ANS file name: ``..._YYYYMMDDhhmm.txt``.
_STAMP = re.compile(r"_(\d{12})$")
#: PostgreSQL advisory lock of the directory import ("pli dir" in ASCII).
_ADVISORY_LOCK = 0x706C6920646972


def extraction_date(file_name: str) -> dt.datetime | None:
    """When the ANS made an extraction, from its file name (``..._YYYYMMDDhhmm.txt``/``.zip``)."""
    match = _STAMP.search(Path(file_name).stem)
    if match is None:
        return None
    try:
        return dt.datetime.strptime(match.group(1), "%Y%m%d%H%M")  # noqa: DTZ007 - as the ANS names it
    except ValueError:
        return None


def _check_not_older(kind: str, path: Path) -> None:
    """Refuse an extraction older than one of the same kind already imported.

    A full extraction replaces the directory: importing last month's file
    after this month's would bring back who has left since, and mark
    inactive who has arrived (REQ-DIRECTORY). Files without a date in their
    name are not compared.
    """
    date = extraction_date(path.name)
    if date is None:
        return
    imported = ImportRun.objects.filter(kind=kind, status=_DONE).values_list("file_name", flat=True)
    newest = max(filter(None, map(extraction_date, imported)), default=None)
    if newest is not None and date < newest:
        raise ImportFailed(
            "older_extraction",
            f"{path.name} was extracted on {date:%Y-%m-%d %H:%M}, before the {kind} extraction"
            f" already imported ({newest:%Y-%m-%d %H:%M}): importing it would undo what changed"
            " since; import it with force to do it all the same",
        )


def _sqlite_lock_path() -> Path:
    # Beside the database file; an in-memory database lives in this process only.
    if connection.is_in_memory_db():  # type: ignore[attr-defined]
        return Path(tempfile.gettempdir()) / f"pli-directory-import-{os.getpid()}.lock"
    return Path(f"{connection.settings_dict['NAME']}.directory-import.lock")


@contextmanager
def import_lock() -> Iterator[None]:
    """One directory import at a time on a database, else ``ImportFailed(import_running)``.

    Two imports running together would each mark inactive what the other
    wrote (REQ-DIRECTORY). PostgreSQL: a session advisory lock. SQLite: its
    write lock does not do it, as an import commits every few seconds and
    the other's transactions go in between: an exclusive ``flock`` on a file
    beside the database. Both go away with the process that holds them.
    """
    refused = ImportFailed(
        "import_running", "another directory import is running on this database; try again later"
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_ADVISORY_LOCK])
            if not cursor.fetchone()[0]:
                raise refused
        try:
            yield
        finally:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [_ADVISORY_LOCK])
            except DatabaseError:
                pass  # the connection is lost, and its lock with it
        return
    with _sqlite_lock_path().open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refused from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def import_extraction(
    path: Path, *, rejects_path: Path | None = None, progress: bool = False, force: bool = False
) -> ImportSummary:
    """Import an RPPS personne-activité or MSSanté correspondence extraction, or its zip.

    Raises :class:`ImportFailed` when the file as a whole is refused (and then
    nothing changed); otherwise returns what the run did, bad lines included.
    Refused too: an extraction older than the last one of its kind imported
    (``older_extraction``, unless ``force``), and an import while another runs
    (``import_running``).
    """
    started = time.perf_counter()
    path = Path(path)
    bar = _Progress(progress, path.name)
    try:
        with _open_extraction(path, bar) as source, import_lock():
            _SetAside.recover()
            if not force:
                _check_not_older(source.kind, path)
            rejects_file = Path(rejects_path) if rejects_path else _default_rejects_path(path)
            try:
                handle = rejects_file.open("w", encoding="utf-8")
            except OSError as error:
                raise ImportFailed(
                    "rejects_unwritable",
                    f"cannot write the rejects file {rejects_file}: {error.strerror or error}",
                ) from None
            bar.start("import", source.size)
            bar.advance(source.header_bytes)
            with handle:
                summary = _Job(path, source, _Rejects(rejects_file, handle), bar).execute()
    finally:
        bar.close()
    if not summary.rejected and not summary.corrected:
        rejects_file.unlink(missing_ok=True)  # no stale list from an earlier run
        summary.rejects_file = None
        ImportRun.objects.filter(pk=summary.run_id or 0).update(rejects_file="")
    summary.duration = time.perf_counter() - started
    return summary


class _Job:
    """One run of the import over an opened, checked extraction."""

    def __init__(self, path: Path, source: _Source, rejects: _Rejects, bar: _Progress) -> None:
        self.path, self.source, self.rejects, self.bar = path, source, rejects, bar
        self.lines = self.imported = 0
        self.run = ImportRun.objects.create(
            kind=source.kind,
            status=_RUNNING,
            file_name=path.name[:255],
            rejects_file=str(rejects.path)[:500],
        )
        self.writer = _RppsWriter(self.run) if source.kind == ImportKind.RPPS else None
        self.dormant = _dormant_mailboxes() if self.writer is not None else []
        self.aside = _SetAside() if _SetAside.applies(source.kind) else None

    def execute(self) -> ImportSummary:
        writer, aside = self.writer, self.aside
        try:
            if aside is not None:
                aside.drop()
                if writer is not None and aside.plain_activities:
                    writer.people_and_activities = writer.sql.postgresql_people_and_activities(
                        plain=True
                    )
            if writer is not None:
                writer.open()
            self._read_all()
            self.rejects.handle.flush()
            if aside is not None:
                self.aside = None
                aside.rebuild()
            deactivated = self._finish()
            if writer is not None:
                writer.close()
            self._analyze()
        except BaseException as error:
            code = "read_error" if isinstance(error, OSError) else "import_error"
            try:
                if writer is not None:
                    writer.close()
                ImportRun.objects.filter(pk=self.run.pk).update(
                    status=_FAILED, finished_at=timezone.now(), error_code=code
                )
                if self.aside is not None:
                    self.aside.rebuild()  # else the next import does
            except DatabaseError:
                pass  # the connection is lost: the original error says more
            if isinstance(error, OSError):
                raise ImportFailed(
                    code, f"{self.path.name}: reading stopped near line {self.lines + 2}: {error}"
                ) from error
            raise
        return ImportSummary(
            kind=self.source.kind,
            lines=self.lines,
            imported=self.imported,
            rejected=self.rejects.rejected,
            deactivated=deactivated,
            rejects_file=self.rejects.path,
            corrected=self.rejects.corrected,
            run_id=self.run.pk,
        )

    def _read_all(self) -> None:
        """Read, check and write every line, a few seconds' worth per transaction."""
        if self.writer is None:
            self._in_transactions(self._mssante_batches())
            return
        reader = _Reader(self.source, self.rejects, self.writer.postgresql)
        if not self.writer.postgresql:
            # SQLite works inside this process and gives the GIL back around every
            # row of an executemany: a parsing thread beside it makes both wait
            # (a forked parsing process: see the benchmark's README).
            self._in_transactions(self._rpps_batches(reader.prepared(), self.writer))
            return
        switch = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_INTERVAL)
        reader.start()
        try:
            self._in_transactions(self._rpps_batches(reader.chunks(), self.writer))
        finally:
            reader.stop()
            sys.setswitchinterval(switch)

    def _rpps_batches(
        self, chunks: Iterator[_Chunk], writer: _RppsWriter
    ) -> Iterator[tuple[int, int]]:
        for chunk in chunks:
            writer.write(chunk)
            self.imported += chunk.good
            yield chunk.lines, chunk.consumed

    def _mssante_batches(self) -> Iterator[tuple[int, int]]:
        for batch, consumed in _line_batches(self.source, BATCH_LINES):
            first_number = self.lines + 2  # line 1 is the header
            self.imported += _import_mssante_batch(batch, first_number, self.rejects, self.run)
            yield len(batch), consumed

    def _in_transactions(self, batches: Iterator[tuple[int, int]]) -> None:
        """Run the writes of ``batches`` (lines, bytes), a few seconds' worth per transaction."""
        rejects, run = self.rejects, self.run
        done = False
        while not done:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    # A crash may lose the last batches, which the next import writes
                    # again; the final transaction, marking the run done, stays synchronous.
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL synchronous_commit TO OFF")
                in_transaction, began = 0, time.monotonic()
                # At least one batch per transaction, then until the time or the lines run out.
                while not done:
                    item = next(batches, None)
                    if item is None:
                        done = True
                        break
                    lines, consumed = item
                    self.lines += lines
                    in_transaction += lines
                    self.bar.advance(consumed)
                    if (
                        in_transaction >= TRANSACTION_LINES
                        or time.monotonic() - began >= TRANSACTION_SECONDS
                    ):
                        break
                # The reading thread may be ahead: these counts can include lines
                # of batches not yet written; the final ones are exact.
                ImportRun.objects.filter(pk=run.pk).update(
                    lines=self.lines, imported=self.imported, rejected=rejects.rejected
                )

    def _analyze(self) -> None:
        """PostgreSQL: fresh statistics and visibility map, for the searches right after.

        Statistics, so that searches are planned on the new rows; a vacuum, so
        that their index-only scans read no table page (without it, the first
        searches after a 2,000,000-line import had a p95 of 320 ms here,
        against 85 ms after). Not in a transaction, where VACUUM cannot run:
        there only the statistics, autovacuum does the rest.
        """
        if connection.vendor != "postgresql":
            return
        models = (Professional, Organisation, Activity, Mailbox)
        tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
        with connection.cursor() as cursor:
            if connection.in_atomic_block:
                cursor.execute(f"ANALYZE {tables}")
            else:
                cursor.execute(f"VACUUM (ANALYZE) {tables}")

    def _finish(self) -> int:
        """Deactivate what the file no longer lists, and close the run; returns how many.

        Only once the whole file was read; and not when no line was good: a
        file of bad lines must not empty the directory.
        """
        with transaction.atomic():
            deactivated = 0
            if self.imported:
                if self.source.kind == ImportKind.RPPS:
                    deactivated = _deactivate_rpps(self.run, self.dormant)
                else:
                    deactivated = _deactivate_mssante(self.run)
            ImportRun.objects.filter(pk=self.run.pk).update(
                status=_DONE,
                finished_at=timezone.now(),
                lines=self.lines,
                imported=self.imported,
                rejected=self.rejects.rejected,
                deactivated=deactivated,
            )
            # REQ-TRACE: the import is traced with the run and its counts, in the same
            # transaction as its closing (the .update() above sends no model signal).
            from pli.server.audit.actions import do_record_event  # noqa: PLC0415

            do_record_event(
                "directory.import",
                target=f"import:{self.run.pk}",
                detail={
                    "kind": str(self.source.kind),
                    "lines": self.lines,
                    "imported": self.imported,
                    "rejected": self.rejects.rejected,
                    "deactivated": deactivated,
                },
            )
        return deactivated
