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
   parses the RPPS file beside the writes. Into an empty directory (the first
   import) it is a bulk load instead (:class:`_SetAside`, :class:`_BulkRows`,
   decision 0009): ids given here, rows appended without any index, the
   indexes and unique keys built once at the end (a key the file repeats
   kept as the upserts would keep it), and a large text file read by two
   processes, a half each (:class:`_SecondHalf`).
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
import sqlite3
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
from typing import IO, Any, Protocol

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Model, Q, UniqueConstraint
from django.utils import timezone
from django.utils.translation import gettext as _

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
#: SQLite page cache while a first import appends rows to tables without indexes (KiB).
_SQLITE_BULK_CACHE_KIB = 8 * 1024
#: SQLite helper threads of the sorter while a first import builds its indexes: the
#: import's other work is done by then. Each costs memory (2,000,000 lines: 0 threads,
#: index builds 20.8 s and a peak of 230 MB; 1: 16.6 s, 263 MB; 2: 14.3 s, 285-292 MB).
_SQLITE_SORT_THREADS = 1

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
        corrected = (
            " " + _("(%(count)s avec un FINESS invalide effacé)") % {"count": self.corrected}
            if self.corrected
            else ""
        )
        return _(
            "%(kind)s : %(lines)s lignes, %(imported)s importées%(corrected)s, %(rejected)s"
            " rejetées, %(deactivated)s marquées inactives (%(seconds)s s)"
        ) % {
            "kind": self.kind,
            "lines": self.lines,
            "imported": self.imported,
            "corrected": corrected,
            "rejected": self.rejected,
            "deactivated": self.deactivated,
            "seconds": f"{self.duration:.1f}",
        }


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
    stream: _Readable
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
    #: The national identification of the batch's last good line (see _BulkRows).
    last_person: str = ""


def _blank_finess(f: list[str], number: int, rejects: _Rejects) -> None:
    """Blank a line's invalid FINESS numbers, and say so in the rejects file."""
    blanked = [RPPS_COLUMNS[i] for i in (21, 22) if f[i] and not _valid_finess(f[i])]
    for i in (21, 22):
        f[i] = f[i] if _valid_finess(f[i]) else ""
    rejects.note(
        number,
        "finess_blanked",
        f"imported without {' and '.join(blanked)}: not a valid FINESS number",
    )


def _parse_rpps_batch(
    lines: Sequence[bytes | None], first_number: int, rejects: _Rejects
) -> _RppsBatch:
    """Check the lines of a batch (REQ-DIRECTORY-NATIONAL) and turn the good ones into rows.

    The hot loop of the import: plain tuples, a person's identifier checked
    once for the consecutive lines of that person, cached search keys, and
    the checks of :func:`_split` written inline (a call per line cost about
    a microsecond of the 33 a line may take), in the same order, with the
    same reasons.
    """
    batch = _RppsBatch()
    professionals, organisations, activities = (
        batch.professionals,
        batch.organisations,
        batch.activities,
    )
    checked_id = checked_type = national_id = ""  # the identifier of the previous good line
    sha256, limits, count = hashlib.sha256, _RPPS_LIMITS, _RPPS_FIELDS
    reject = rejects.reject
    good = 0
    for number, raw in enumerate(lines, start=first_number):
        if raw is None:
            reject(number, "line_too_long", f"the line is longer than {_MAX_LINE_BYTES} bytes")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reject(number, "bad_encoding", f"not UTF-8 (byte {error.start + 1} of the line)")
            continue
        f = text.split("|")
        if len(f) != count or f[-1]:
            reject(
                number,
                "wrong_field_count",
                f"expected {count - 1} fields and a trailing separator, found {len(f)} fields",
            )
            continue
        if "\x00" in text:
            # PostgreSQL cannot store NUL in text; no extraction contains it.
            reject(number, "bad_characters", "the line contains a NUL character")
            continue
        try:
            if f[1] != checked_id or f[0] != checked_type or f[2] != f[0] + f[1]:
                _check_person(f[0], f[1], f[2])
            if any(map(gt, map(len, f), limits)):
                _raise_too_long(f, limits, _RPPS_NAMES)
        except _BadLine as bad:
            reject(number, bad.reason, bad.detail)
            continue
        if not f[7]:
            reject(number, "missing_name", "the exercise name (Nom d'exercice) is empty")
            continue
        checked_type, checked_id, national_id = f[0], f[1], f[2]
        if national_id not in professionals:
            professionals[national_id] = (
                national_id, f[0], f[1], *f[3:9], _cached_search_key(f[7], f[8])[:260], *f[9:13]
            )  # fmt: skip
        technical_id = f[23]
        if technical_id:
            if (f[21] and not _valid_finess(f[21])) or (f[22] and not _valid_finess(f[22])):
                _blank_finess(f, number, rejects)
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
        good += 1
    batch.good, batch.last_person = good, national_id
    return batch


# ----------------------------------------------------------------------- first import: two readers

#: A first import of a text file at least this large is read by two processes, a
#: half each (see _Split): the machines this runs on have two cores or more, and
#: reading and checking the lines is most of what this process does.
_PARALLEL_MIN_BYTES = 16 << 20
#: Batch boundaries tried past the middle of the file for one between two people.
_SPLIT_TRIES = 50


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Bounded:
    """A stream that ends after ``limit`` more bytes: the first half of a split file."""

    def __init__(self, stream: _Readable, limit: int) -> None:
        self.stream, self.left = stream, max(0, limit)

    def read(self, size: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        data = self.stream.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data


@dataclass(frozen=True)
class _Split:
    """Where the second half of a text extraction starts, and its line number.

    On a batch boundary of the whole file (line ``2 + k * BATCH_LINES``), so
    that each half's batches are the whole file's, and between two people, so
    that nobody's lines are in both halves (the halves give ids apart).
    """

    offset: int
    number: int


def _person_of(line: bytes) -> bytes:
    return line.split(b"|", 3)[2] if line.count(b"|", 0, 64) >= 3 else line


def _find_split(path: Path, source: _Source) -> _Split | None:
    """The middle of a plain text extraction, or None (small, zipped, one core, odd lines)."""
    if source.size < _PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2 or _is_zip(path):
        return None
    with path.open("rb") as handle:
        handle.seek(max(source.size // 2, source.header_bytes))
        handle.readline(_MAX_LINE_BYTES)
        middle = handle.tell()
        # The line number there: the line breaks before it, read in C-speed chunks.
        handle.seek(source.header_bytes)
        left, breaks = middle - source.header_bytes, 0
        while left > 0 and (chunk := handle.read(min(_READ_CHUNK, left))):
            breaks += chunk.count(b"\n")
            left -= len(chunk)
        number, previous = 2 + breaks, b""
        handle.seek(middle)
        boundaries = 0
        while boundaries <= _SPLIT_TRIES:
            offset = handle.tell()
            line = handle.readline(_MAX_LINE_BYTES)
            if not line.endswith(b"\n"):
                return None  # the end of the file, or a line too long to reason about
            if (number - 2) % BATCH_LINES == 0 and previous:
                if _person_of(previous) != _person_of(line):
                    return _Split(offset, number)
                boundaries += 1
            previous, number = line, number + 1
    return None


def _quoted(name: str) -> str:
    """An identifier as SQLite quotes it (the forked reader has no Django connection to ask)."""
    return '"' + name.replace('"', '""') + '"'


def _half_error(message: tuple[Any, ...]) -> BaseException:
    """What the second reader's failure message stands for (an OSError is a read error)."""
    if message[0] == "os_error":
        return OSError(message[1], message[2])
    if message[0] == "error":
        return RuntimeError(f"the second reader of the file failed ({message[1]})")
    return RuntimeError("the second reader of the file stopped")


def _scratch_path() -> Path:
    """SQLite: the second reader's scratch database, beside the database (as large as its half)."""
    if connection.is_in_memory_db():  # type: ignore[attr-defined]
        folder = Path(tempfile.gettempdir())
    else:
        folder = Path(str(connection.settings_dict["NAME"])).parent
    return folder / f"pli-directory-import-{os.getpid()}.half.sqlite3"


def _vm_kib(field: str) -> int:
    """A ``/proc/self/status`` value (KiB): what the second reader reports of its memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class _SecondHalf:
    """The second half of a split first import, read by a forked process (:func:`_read_half`).

    PostgreSQL: it sends each batch's ``COPY`` text to this process, which
    writes it in its own transactions, beside the first half's. SQLite, which
    has one writer at a time: it appends its rows to tables of the same
    shape in a scratch database of its own, which this process copies in at
    the end (``INSERT ... SELECT``, in SQLite's C loop). Its rejects go to a
    file of their own, appended to the rejects file after the first half's.
    """

    split: _Split
    rejects_path: Path
    scratch: Path | None
    process: Any = None
    receiver: Any = None
    stats: dict[str, int] = field(default_factory=dict)


def _read_half(  # noqa: PLR0917 - the one function a forked process runs
    half: _SecondHalf,
    source: _Source,
    path: Path,
    bulk: _BulkRows,
    tables: dict[str, tuple[str, str]],
    sender: Any,
) -> None:
    """The forked process: read, check and prepare the second half.

    It never uses the database connection it inherited (the importing
    process's), and ends with ``os._exit`` (multiprocessing's), closing nothing.
    """
    try:
        with (
            path.open("rb") as stream,
            half.rejects_path.open("w", encoding="utf-8") as handle,
        ):
            stream.seek(half.split.offset)
            part = _Source(source.kind, stream, source.size, b"", 0, source.crlf)
            rejects = _Rejects(half.rejects_path, handle)
            scratch = None
            if half.scratch is not None:
                scratch = sqlite3.connect(half.scratch, isolation_level=None)
                # A scratch file: nothing to keep after a crash.
                scratch.execute("PRAGMA journal_mode = OFF")
                scratch.execute("PRAGMA synchronous = OFF")
                for _table, create in tables.values():
                    scratch.execute(create)
                scratch.execute("BEGIN")
            # The names come from the models (see _Statements), the values are bound.
            inserts = {
                name: f"INSERT INTO {table} ({', '.join(map(_quoted, _BULK_COLUMNS[name]))})"  # noqa: S608
                f" VALUES ({', '.join(['?'] * len(_BULK_COLUMNS[name]))})"
                for name, (table, _create) in tables.items()
            }
            number, lines, good = half.split.number, 0, 0
            for batch, consumed in _line_batches(part, BATCH_LINES):
                parsed = _parse_rpps_batch(batch, number, rejects)
                number += len(batch)
                lines, good = lines + len(batch), good + parsed.good
                loads = bulk.loads(parsed)
                if scratch is None:
                    sender.send(("chunk", len(batch), parsed.good, consumed, loads))
                    continue
                for name, rows in loads:
                    scratch.executemany(inserts[name], rows)
            if scratch is not None:
                scratch.execute("COMMIT")
                scratch.close()
        stats = {
            "lines": lines,
            "good": good,
            "rejected": rejects.rejected,
            "corrected": rejects.corrected,
            "peak_rss_kib": _vm_kib("VmHWM"),
        }
        sender.send(("done", stats))
    except OSError as error:
        sender.send(("os_error", error.errno or 0, str(error.strerror or error)))
    except BaseException as error:  # noqa: BLE001 - reported to the importing process
        sender.send(("error", type(error).__name__, ""))


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
    #: Rows of a first import's bulk load, with their ids (see :class:`_BulkRows`).
    bulk: bool = False


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


#: Columns of the rows of a first import's bulk load, in the order _BulkRows builds them.
_BULK_COLUMNS: dict[str, tuple[str, ...]] = {
    "professional": ("id", *_PROFESSIONAL_COLUMNS, "active", "last_import_id", "updated_at"),
    "organisation": ("id", *_ORGANISATION_COLUMNS, "active", "last_import_id", "updated_at"),
    "activity": (
        "id", "activity_key", *_ACTIVITY_COLUMNS, "active", "last_import_id",
        "professional_id", "organisation_id",
    ),
}  # fmt: skip
#: Low 64 bits of a structure's entry in _BulkRows.structures: the hash of its row.
_ROW_HASH = (1 << 64) - 1
#: Stands for NULL in a bulk load's COPY text until the text is escaped (a line holding
#: NUL is rejected: it cannot come from the file).
_NULL_MARK = "\x00"


class _BulkRows:
    """A first import's rows with their ids, given here rather than by the database.

    Into an empty directory the rows are appended with plain ``COPY`` or
    ``INSERT`` (no upsert, no join, no unique index kept up to date: see
    :class:`_SetAside`), so this process must know each row's id: the ids of
    a range reserved in the tables' sequences. What a key-by-key upsert of
    the same file would keep is kept:

    * a professional: the first line of the last batch that lists him. The
      file lists a person's lines together: only the person of the previous
      batch's last line is remembered (his id is reused when the row is the
      same). Anyone else listed again later, or a row that changed, gets a
      new id: the key is then repeated in the table, and
      :meth:`_SetAside.rebuild` keeps one row per key (the first id, the
      last values, references moved to it), as the upsert would have;
    * a structure: the row of the last batch that lists it. Structures
      recur all over the file (a hospital on thousands of lines): each is
      remembered, by its technical id, with its id and the hash of its row
      (the same hash as the incremental path's, see ``_Reader._unwritten``);
      a changed row is written again under a new id, and kept as above;
    * an activity: its last line, each batch's activities under new ids,
      a repeated key kept as above.
    """

    def __init__(self, starts: dict[str, int], run: int, now: Any, postgresql: bool) -> None:
        # starts: the first reserved id of each table, by table name (see _SetAside).
        self.next_person = starts[Professional._meta.db_table]
        self.next_structure = starts[Organisation._meta.db_table]
        self.next_activity = starts[Activity._meta.db_table]
        self.postgresql = postgresql
        #: National id, row and id of the person of the last good line so far.
        self.person: tuple[str, tuple[str, ...], int] = ("", (), 0)
        #: technical id -> id << 64 | hash of the row written (one int: memory, 560,000 of them).
        self.structures: dict[str, int] = {}
        self.run, self.now = run, now
        # COPY text of "active", "last_import_id" (and "updated_at"), after a row's own columns.
        self.tail = f"|t|{run}|{now}"
        self.activity_tail = f"|t|{run}|"

    def loads(self, batch: _RppsBatch) -> list[tuple[str, Any]]:
        """The batch's rows to append, per table: ``COPY`` text or ``executemany`` rows."""
        people: dict[str, int] = {}
        new_people: list[tuple[int, tuple[str, ...]]] = []
        last_id, last_row, last_pid = self.person
        number = self.next_person
        for national_id, row in batch.professionals.items():
            if national_id == last_id and row == last_row and not new_people and not people:
                people[national_id] = last_pid  # his lines go on from the previous batch
                continue
            people[national_id] = number
            new_people.append((number, row))
            number += 1
        self.next_person = number
        if batch.last_person:
            self.person = (
                batch.last_person,
                batch.professionals[batch.last_person],
                people[batch.last_person],
            )
        places: dict[str, int] = {}
        new_places: list[tuple[int, tuple[str, ...]]] = []
        structures = self.structures
        number = self.next_structure
        for technical_id, row in batch.organisations.items():
            digest = hash(row) & _ROW_HASH
            known = structures.get(technical_id)
            if known is not None and known & _ROW_HASH == digest:
                places[technical_id] = known >> 64
                continue
            places[technical_id] = number
            new_places.append((number, row))
            structures[technical_id] = number << 64 | digest
            number += 1
        self.next_structure = number
        number = self.next_activity
        self.next_activity += len(batch.activities)
        if self.postgresql:
            return self._copy_texts(
                new_people=new_people,
                new_places=new_places,
                batch=batch,
                people=people,
                places=places,
                first=number,
            )
        tail, activity_tail = (True, self.run, self.now), (True, self.run)
        activities = [
            (number + i, row[0], *row[3:], *activity_tail, people[row[1]], places.get(row[2]))
            for i, row in enumerate(batch.activities.values())
        ]
        loads: list[tuple[str, Any]] = [
            ("professional", [(pk, *row, *tail) for pk, row in new_people]),
            ("organisation", [(pk, *row, *tail) for pk, row in new_places]),
            ("activity", activities),
        ]
        return [(name, rows) for name, rows in loads if rows]

    def _copy_texts(
        self,
        *,
        new_people: list[tuple[int, tuple[str, ...]]],
        new_places: list[tuple[int, tuple[str, ...]]],
        batch: _RppsBatch,
        people: dict[str, int],
        places: dict[str, int],
        first: int,
    ) -> list[tuple[str, Any]]:
        join, tail, activity_tail = "|".join, self.tail, self.activity_tail
        texts = [
            ("professional", [f"{pk}|{join(row)}{tail}" for pk, row in new_people]),
            ("organisation", [f"{pk}|{join(row)}{tail}" for pk, row in new_places]),
            (
                "activity",
                [
                    f"{first + i}|{row[0]}|{join(row[3:])}{activity_tail}{people[row[1]]}"
                    f"|{places.get(row[2], _NULL_MARK)}"
                    for i, row in enumerate(batch.activities.values())
                ],
            ),
        ]
        return [(name, _escaped_copy_text(lines)) for name, lines in texts if lines]


def _escaped_copy_text(lines: list[str]) -> bytes:
    """Lines of ``COPY ... (DELIMITER '|')`` text, escaped as _copy_text does, NULLs marked."""
    text = "\n".join(lines) + "\n"
    if "\\" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\r", "\\r")
    if _NULL_MARK in text:
        text = text.replace(_NULL_MARK, "\\N")
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

    def __init__(
        self, source: _Source, rejects: _Rejects, postgresql: bool, bulk: _BulkRows | None = None
    ) -> None:
        super().__init__(name="pli-directory-import-reader", daemon=True)
        self.source, self.rejects, self.postgresql = source, rejects, postgresql
        self.bulk = bulk
        self.queue: queue.Queue[_Chunk | BaseException | None] = queue.Queue(_QUEUE_BATCHES)
        self.stopping = threading.Event()
        #: Threads putting batches in the queue, each ending with None (see _relay).
        self.producers = 1
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
            if self.bulk is not None:
                yield _Chunk(len(lines), parsed.good, consumed, self.bulk.loads(parsed), bulk=True)
                continue
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
        ended = 0
        while True:
            item = self.queue.get()
            if item is None:
                ended += 1
                if ended == self.producers:
                    return
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    def relay(self, half: _SecondHalf) -> threading.Thread:
        """A thread putting the second reader's batches in the queue (PostgreSQL)."""
        self.producers += 1

        def run() -> None:
            try:
                while True:
                    message = half.receiver.recv()
                    if message[0] == "chunk":
                        _kind, lines, good, consumed, loads = message
                        if not self._put(_Chunk(lines, good, consumed, loads, bulk=True)):
                            return
                        continue
                    half.stats = message[1] if message[0] == "done" else {}
                    self._put(None if message[0] == "done" else _half_error(message))
                    return
            except BaseException as error:  # noqa: BLE001 - handed to the database thread
                self._put(error)

        thread = threading.Thread(target=run, name="pli-directory-import-relay", daemon=True)
        thread.start()
        return thread

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
        # A first import's bulk load: rows appended with their ids (see _BulkRows).
        tables = {
            name: quote(m._meta.db_table) for name, m in zip(_TABLES, _SetAside.TABLES, strict=True)
        }
        self.bulk_copy = {
            name: f"COPY {tables[name]} ({', '.join(map(quote, columns))}) FROM STDIN"
            " (DELIMITER '|')"
            for name, columns in _BULK_COLUMNS.items()
        }
        self.bulk_insert = {
            name: f"INSERT INTO {tables[name]}"  # noqa: S608 - see the docstring
            f" ({', '.join(map(quote, columns))})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
            for name, columns in _BULK_COLUMNS.items()
        }

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

    def postgresql_people_and_activities(self) -> str:
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
        activities = self._upsert("activity", select)
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
        #: A first import into an empty directory: rows appended with their ids.
        self.bulk: _BulkRows | None = None

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
                # Appending to tables without indexes needs no large cache.
                cache = _SQLITE_BULK_CACHE_KIB if self.bulk else _SQLITE_IMPORT_CACHE_KIB
                cursor.execute(f"PRAGMA cache_size = -{cache}")

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
            if chunk.bulk:
                for name, load in chunk.loads:
                    if self.postgresql:
                        with cursor.cursor.copy(self.sql.bulk_copy[name]) as copy:
                            copy.write(load)
                    else:
                        cursor.executemany(self.sql.bulk_insert[name], load)
                return
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


def _check_deferred(cursor: Any) -> None:
    """PostgreSQL: the deferred foreign-key checks pending in this transaction, now.

    PostgreSQL alters no table with checks pending (rows deleted or merged
    earlier in the same transaction). Django's foreign keys are all deferred
    at first, as they are again after.
    """
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    cursor.execute("SET CONSTRAINTS ALL DEFERRED")


class _SetAside:
    """A first import into an empty directory: a bulk load, the indexes built once after it.

    Into an empty directory, the national extraction is appended to the tables
    without their indexes, then each index is built once, from sorted data: an
    index kept up to date row by row, with keys in random order, writes a page
    per row once it outgrows the cache (measured at 2,000,000 lines: most of
    the import's time). The unique keys are set aside too (PostgreSQL: the
    constraints; SQLite, where an inline constraint cannot be dropped: the
    empty tables are made again without it, and the key comes back as a unique
    index of the constraint's name). So the import gives the ids itself
    (:class:`_BulkRows`), from a range reserved in each table's sequence so
    that nobody else takes them meanwhile, and appends the rows with plain
    ``COPY`` (PostgreSQL) or ``INSERT`` (SQLite).

    A key the file repeats in a way the import did not follow (a person
    listed again far from his other lines, a structure whose row changed) is
    in the table twice: before its unique key comes back, each key keeps one
    row, the first id with the values of the last (what a key-by-key upsert
    would have left), and references to the others are moved to it.

    Only the first import does it, when there is nothing to search yet. What
    is set aside is kept in a file of the data directory until it is built
    again, so that the next import builds it after a crash (with the rows the
    crashed run had committed, as the incremental path keeps its batches).
    """

    TABLES = (Professional, Organisation, Activity)

    def __init__(self) -> None:
        #: ``CREATE INDEX`` statements of the secondary indexes.
        self.definitions: list[str] = []
        #: (table, constraint, column) of each unique key.
        self.uniques: list[tuple[str, str, str]] = []
        #: table -> the first id of the reserved range.
        self.starts: dict[str, int] = {}
        #: Rows the file can give at most, per table: the size of the reserved range.
        self.bound = 0

    #: The file of an earlier version, for one database per data directory.
    LEGACY_FILE = "directory-import-indexes.json"

    @staticmethod
    def path() -> Path:
        """Where what is set aside is kept: per database, as a data directory may serve
        several (the test suite's workers do), whose imports must not rebuild each other's."""
        name = f"{connection.vendor}:{connection.settings_dict['NAME']}"
        if connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
            name += f":{os.getpid()}"  # an in-memory database lives in this process only
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return Path(settings.DATA_DIR) / f"directory-import-indexes-{digest}.json"

    @classmethod
    def _unique_keys(cls) -> list[tuple[type[Model], str, str]]:
        """(model, constraint name, column) of the single-column unique key of each table."""
        found: list[tuple[type[Model], str, str]] = []
        for model in cls.TABLES:
            for constraint in model._meta.constraints:
                if isinstance(constraint, UniqueConstraint) and len(constraint.fields) == 1:
                    column = model._meta.get_field(constraint.fields[0]).column  # type: ignore[union-attr]
                    found.append((model, constraint.name, str(column)))
        return found

    @classmethod
    def _table_sql(cls, table: str) -> str:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = %s", [table]
            )
            row = cursor.fetchone()
        return str(row[0]) if row is not None and row[0] else ""

    @staticmethod
    def _inline_unique(name: str, column: str) -> str:
        """The clause Django writes for a unique constraint in SQLite's CREATE TABLE."""
        return f', CONSTRAINT "{name}" UNIQUE ("{column}")'

    @classmethod
    def _keys_in_place(cls) -> bool:
        """Every unique key is there, in the form this class knows how to set aside."""
        keys = cls._unique_keys()
        if len(keys) != len(cls.TABLES):
            return False
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_constraint WHERE contype = 'u' AND conname = ANY(%s)",
                    [[name for _model, name, _column in keys]],
                )
                return int(cursor.fetchone()[0]) == len(keys)
        with connection.cursor() as cursor:
            # Inline, as migrated, or a unique index of that name, as a first import leaves it.
            return all(
                cls._inline_unique(name, column) in cls._table_sql(model._meta.db_table)
                or cls._sqlite_index(cursor, model._meta.db_table, name)
                for model, name, column in keys
            )

    @classmethod
    def applies(cls, kind: str) -> bool:
        return (
            kind == ImportKind.RPPS
            and connection.vendor in ("postgresql", "sqlite")
            and not any(m.objects.exists() for m in cls.TABLES)
            and cls._keys_in_place()
        )

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
        return sql.removeprefix("CREATE INDEX IF NOT EXISTS ").split(" ", 1)[0]

    def _reserve(self, cursor: Any, table: str) -> int:
        """The first id of a range of :attr:`bound` ids nobody else will be given."""
        if connection.vendor == "postgresql":
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table])
            start = int(cursor.fetchone()[0])
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, start + self.bound]
            )
            return start
        # AUTOINCREMENT: SQLite gives ids past the highest in sqlite_sequence.
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
        start = (int(row[0]) if row is not None else 0) + 1
        cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
        cursor.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, start + self.bound]
        )
        return start

    def _save(self) -> None:
        state = {"indexes": self.definitions, "uniques": self.uniques, "starts": self.starts}
        self.path().write_text(json.dumps(state), encoding="utf-8")

    def drop(self) -> None:
        self.definitions = self._read_definitions()
        keys = self._unique_keys()
        self.uniques = [(model._meta.db_table, name, column) for model, name, column in keys]
        quote = connection.ops.quote_name
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                _check_deferred(cursor)
            for sql in self.definitions:
                cursor.execute(f"DROP INDEX IF EXISTS {self._name(sql)}")
            for model, name, column in keys:
                table = model._meta.db_table
                if connection.vendor == "postgresql":
                    cursor.execute(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")
                elif self._inline_unique(name, column) in (sql := self._table_sql(table)):
                    # The table is empty: made again, the same but for the unique key.
                    cursor.execute(f"DROP TABLE {quote(table)}")
                    cursor.execute(sql.replace(self._inline_unique(name, column), ""))
                else:  # the unique index an earlier first import left
                    cursor.execute(f"DROP INDEX {quote(name)}")
            # After the tables are made again: dropping one forgets its sqlite_sequence row.
            self.starts = {table: self._reserve(cursor, table) for table, _n, _c in self.uniques}
            self._save()

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
                cursor.execute("PRAGMA threads")
                threads = int(cursor.fetchone()[0])
                cursor.execute(f"PRAGMA cache_size = -{_SQLITE_SORT_CACHE_KIB}")
                cursor.execute(f"PRAGMA threads = {_SQLITE_SORT_THREADS:d}")
            for table, name, column in self.uniques:
                self._restore_unique(table, name, column)
            for sql in self.definitions:
                cursor.execute(sql)
            for table, start in self.starts.items():
                self._restore_sequence(cursor, table, start)
            if postgresql:
                cursor.execute("RESET maintenance_work_mem")
            else:
                cursor.execute(f"PRAGMA cache_size = {cache_size:d}")
                cursor.execute(f"PRAGMA threads = {threads:d}")
        self.path().unlink(missing_ok=True)

    @staticmethod
    def _sqlite_index(cursor: Any, table: str, name: str) -> bool:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = %s AND name = %s",
            [table, name],
        )
        return cursor.fetchone() is not None

    @staticmethod
    def _unique_in_place(cursor: Any, table: str, name: str) -> bool:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", [name])
            return cursor.fetchone() is not None
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = %s"
            " AND (name = %s OR sql IS NULL)",
            [table, name],
        )
        return cursor.fetchone() is not None

    def _restore_unique(self, table: str, name: str, column: str) -> None:
        """A unique key again, once each of its repeated values keeps one row."""
        quote = connection.ops.quote_name
        if connection.vendor == "postgresql":
            sql = (
                f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} UNIQUE ({quote(column)})"
            )
        else:
            sql = f"CREATE UNIQUE INDEX {quote(name)} ON {quote(table)} ({quote(column)})"
        with connection.cursor() as cursor:
            if self._unique_in_place(cursor, table, name):
                return  # an interrupted rebuild got this far, or nothing was set aside
            try:
                with transaction.atomic():  # a savepoint: the usual case, no key repeated
                    cursor.execute(sql)
                    return
            except IntegrityError:
                pass
            with transaction.atomic():
                self._keep_one_row_per_key(cursor, table, column)
                cursor.execute(sql)

    @classmethod
    def _keep_one_row_per_key(cls, cursor: Any, table: str, column: str) -> None:
        """The first id of each repeated key, with the values of its last row; the others go.

        What an upsert per key would have left (its first row, updated by the
        later lines). Rows that point to the rows going (activities,
        mailboxes) are moved to the one kept first.
        """
        quote = connection.ops.quote_name
        model = next(m for m in cls.TABLES if m._meta.db_table == table)
        t, k = quote(table), quote(column)
        repeated = quote("pli_import_repeated")
        # Every name below comes from the models (see _Statements); no value is in the text.
        cursor.execute(
            f"CREATE TEMPORARY TABLE {repeated} AS SELECT id,"  # noqa: S608
            f" MIN(id) OVER (PARTITION BY {k}) AS keep, MAX(id) OVER (PARTITION BY {k}) AS last"
            f" FROM {t} WHERE {k} IN (SELECT {k} FROM {t} GROUP BY {k} HAVING COUNT(*) > 1)"
        )
        columns = [
            quote(f.column) for f in model._meta.concrete_fields if f.column not in ("id", column)
        ]
        cursor.execute(
            f"UPDATE {t} SET ({', '.join(columns)}) = (SELECT"  # noqa: S608
            f" {', '.join(f'last_row.{c}' for c in columns)} FROM {t} AS last_row"
            f" WHERE last_row.id = (SELECT r.last FROM {repeated} r WHERE r.id = {t}.id))"
            f" WHERE id IN (SELECT id FROM {repeated} WHERE id = keep AND keep <> last)"
        )
        # Only the rows going are looked up (an index, or a hash join on PostgreSQL): the
        # second reader of a split file repeats every structure the first half had.
        cursor.execute(f"DELETE FROM {repeated} WHERE id = keep AND keep = last")  # noqa: S608
        cursor.execute(f"CREATE INDEX pli_import_repeated_id ON {repeated} (id)")
        for relation in model._meta.related_objects:
            if not relation.one_to_many:
                continue
            related = quote(relation.related_model._meta.db_table)  # type: ignore[union-attr]
            fk = quote(relation.field.column)
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {repeated}")
                cursor.execute(
                    f"UPDATE {related} SET {fk} = r.keep FROM {repeated} r"  # noqa: S608
                    f" WHERE {related}.{fk} = r.id AND r.id <> r.keep"
                )
                continue
            cursor.execute(
                f"UPDATE {related} SET {fk} = (SELECT r.keep FROM {repeated} r"  # noqa: S608
                f" WHERE r.id = {related}.{fk})"
                f" WHERE {fk} IN (SELECT id FROM {repeated} WHERE id <> keep)"
            )
        cursor.execute(
            f"DELETE FROM {t} WHERE id IN (SELECT id FROM {repeated} WHERE id <> keep)"  # noqa: S608
        )
        cursor.execute(f"DROP TABLE {repeated}")
        if connection.vendor == "postgresql":
            _check_deferred(cursor)  # the unique key comes back right after

    def _restore_sequence(self, cursor: Any, table: str, start: int) -> None:
        """The sequence back to the highest id given, from the end of the reserved range."""
        quote = connection.ops.quote_name
        cursor.execute(f"SELECT MAX(id) FROM {quote(table)}")  # noqa: S608 - the model's table
        highest = max(int(cursor.fetchone()[0] or 0), start - 1)
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, %s)",
                [table, max(highest, 1), highest > 0],
            )
            return
        cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
        cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, highest])

    @classmethod
    def recover(cls) -> None:
        """Build what an interrupted first import left set aside.

        Its file says what; without it (lost, or of another version), the
        unique keys the upserts need are checked all the same, and built
        again from the models when missing.
        """
        legacy = Path(settings.DATA_DIR) / cls.LEGACY_FILE
        for path in (cls.path(), legacy):
            if not path.exists():
                continue
            aside = cls()
            state = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(state, list):  # written by an earlier version: indexes only
                state = {"indexes": [s for s in state if not s.startswith("ALTER TABLE")]}
            aside.definitions = list(state.get("indexes", []))
            aside.uniques = [(str(t), str(n), str(c)) for t, n, c in state.get("uniques", [])]
            aside.starts = {str(t): int(v) for t, v in state.get("starts", {}).items()}
            aside.rebuild()
            path.unlink(missing_ok=True)
        aside = cls()
        aside.uniques = [(m._meta.db_table, name, column) for m, name, column in cls._unique_keys()]
        with connection.cursor() as cursor:
            if all(cls._unique_in_place(cursor, t, name) for t, name, _c in aside.uniques):
                return
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
    # Compared without case, as the mail systems of these domains do. ASCII only, as
    # messaging's own check (actions.normalise_address): lower-casing other scripts can
    # also lengthen the text ("İ" gives two characters) past the column's limit.
    address = f[1].strip().lower()
    if not address.isascii() or not _ADDRESS.fullmatch(address):
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


#: The largest share of the active directory one import may deactivate unless forced,
#: and the size under which it is not checked (a first, small or test directory).
MAX_DEACTIVATED_SHARE = 0.10
MIN_CHECKED_DIRECTORY = 100


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
                job = _Job(path, source, _Rejects(rejects_file, handle), bar, force=force)
                summary = job.execute()
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

    def __init__(
        self, path: Path, source: _Source, rejects: _Rejects, bar: _Progress, *, force: bool
    ) -> None:
        self.path, self.source, self.rejects, self.bar = path, source, rejects, bar
        self.force = force
        self.lines = self.imported = 0
        #: Peak memory of the second reader of a split first import (KiB), if any.
        self.helper_peak_rss_kib = 0
        self.run = ImportRun.objects.create(
            kind=source.kind,
            status=_RUNNING,
            file_name=path.name[:255],
            rejects_file=str(rejects.path)[:500],
        )
        self.writer = _RppsWriter(self.run) if source.kind == ImportKind.RPPS else None
        self.dormant = _dormant_mailboxes() if self.writer is not None else []
        self.aside = _SetAside() if _SetAside.applies(source.kind) else None
        if self.aside is not None and self.writer is not None:
            # Each of the two halves of a split file may end with a partial line.
            self.aside.bound = source.size // _RPPS_FIELDS + 2

    def execute(self) -> ImportSummary:
        writer, aside = self.writer, self.aside
        try:
            if aside is not None:
                aside.drop()
                if writer is not None:
                    writer.bulk = _BulkRows(
                        aside.starts, self.run.pk, writer.now, writer.postgresql
                    )
            if writer is not None:
                writer.open()
            self._read_all()
            if writer is not None:
                writer.bulk = None  # its structures' ids: memory the index builds can use
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
            if isinstance(error, ImportFailed):
                code = error.code
            try:
                if writer is not None:
                    writer.close()
                ImportRun.objects.filter(pk=self.run.pk).update(
                    status=_FAILED, finished_at=timezone.now(), error_code=code
                )
                self._record_failure(code)
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
        half = self._start_second_half()
        source = self.source
        if half is not None:
            # This process reads the first half only.
            data = half.split.offset - source.header_bytes
            read = len(source.rest)
            source = _Source(
                source.kind,
                _Bounded(source.stream, data - read),
                source.size,
                source.rest[:data],
                source.header_bytes,
                source.crlf,
            )
        try:
            reader = _Reader(source, self.rejects, self.writer.postgresql, self.writer.bulk)
            if not self.writer.postgresql:
                # SQLite works inside this process and gives the GIL back around every
                # row of an executemany: a parsing thread beside it makes both wait.
                self._in_transactions(self._rpps_batches(reader.prepared(), self.writer))
                if half is not None:
                    self._merge_second_half(half)
                return
            switch = sys.getswitchinterval()
            sys.setswitchinterval(_SWITCH_INTERVAL)
            if half is not None:
                reader.relay(half)
            reader.start()
            try:
                self._in_transactions(self._rpps_batches(reader.chunks(), self.writer))
            finally:
                reader.stop()
                sys.setswitchinterval(switch)
            if half is not None:
                self._merge_second_half(half)
        finally:
            if half is not None:
                self._stop_second_half(half)

    def _start_second_half(self) -> _SecondHalf | None:
        """Fork the second reader of a first import's large text file, if there is one."""
        writer = self.writer
        if writer is None or writer.bulk is None or self.aside is None:
            return None
        if not writer.postgresql and connection.in_atomic_block:
            return None  # SQLite attaches the scratch database, which a transaction forbids
        split = _find_split(self.path, self.source)
        if split is None:
            return None
        import multiprocessing  # noqa: PLC0415 - only for a first import's large file

        scratch = None
        tables: dict[str, tuple[str, str]] = {}
        if not writer.postgresql:
            scratch = _scratch_path()
            for name, model in zip(_TABLES, _SetAside.TABLES, strict=True):
                table = model._meta.db_table
                tables[name] = (connection.ops.quote_name(table), _SetAside._table_sql(table))
        rejects = self.rejects.path.with_name(f"{self.rejects.path.name}.{os.getpid()}.part")
        half = _SecondHalf(split, rejects, scratch)
        starts = {
            table: start + split.offset // _RPPS_FIELDS + 1
            for table, start in self.aside.starts.items()
        }
        bulk = _BulkRows(starts, self.run.pk, writer.now, writer.postgresql)
        context = multiprocessing.get_context("fork")
        half.receiver, sender = context.Pipe(duplex=False)
        self.rejects.handle.flush()  # not written twice by the child's copy of the buffer
        half.process = context.Process(
            target=_read_half,
            args=(half, self.source, self.path, bulk, tables, sender),
            name="pli-directory-import-half",
            daemon=True,
        )
        half.process.start()
        sender.close()
        return half

    def _merge_second_half(self, half: _SecondHalf) -> None:
        """Its rows (SQLite), its counts and its rejects, once it is done."""
        if not half.stats:
            message: tuple[Any, ...]
            try:
                message = half.receiver.recv()  # waits for the second reader to end
            except EOFError:
                message = ("stopped",)  # it died without a word
            if message[0] != "done":
                raise _half_error(message)
            half.stats = message[1]
        half.process.join()
        stats = half.stats
        if half.scratch is not None:
            self._copy_scratch(half.scratch)
            self.lines += stats["lines"]
            self.imported += stats["good"]
            self.bar.advance(self.source.size - half.split.offset)
        self.rejects.rejected += stats["rejected"]
        self.rejects.corrected += stats["corrected"]
        with half.rejects_path.open("r", encoding="utf-8") as part:
            while text := part.read(_READ_CHUNK):
                self.rejects.handle.write(text)
        self.helper_peak_rss_kib = stats["peak_rss_kib"]

    def _copy_scratch(self, scratch: Path) -> None:
        """SQLite: the second half's rows, from its scratch database, in one transaction."""
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute("ATTACH DATABASE %s AS pli_import_half", [str(scratch)])
            try:
                with transaction.atomic():
                    for model in _SetAside.TABLES:
                        table = quote(model._meta.db_table)
                        cursor.execute(
                            f"INSERT INTO main.{table} SELECT * FROM pli_import_half.{table}"  # noqa: S608 - the model's table
                        )
            finally:
                cursor.execute("DETACH DATABASE pli_import_half")

    @staticmethod
    def _stop_second_half(half: _SecondHalf) -> None:
        if half.process.is_alive():
            half.process.terminate()
        half.process.join()
        half.receiver.close()
        half.rejects_path.unlink(missing_ok=True)
        if half.scratch is not None:
            half.scratch.unlink(missing_ok=True)

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

    def _record_failure(self, code: str) -> None:
        """REQ-TRACE: a failed import is traced too (decision 0005), with its code."""
        from pli.server.audit.actions import do_record_event  # noqa: PLC0415

        with transaction.atomic():
            do_record_event(
                "directory.import",
                target=f"import:{self.run.pk}",
                outcome="failure",
                detail={"kind": str(self.source.kind), "code": code, "lines": self.lines},
            )

    def _check_share_deactivated(self) -> None:
        """Refuse to deactivate more than :data:`MAX_DEACTIVATED_SHARE` of the directory.

        A plain-text extraction has no checksum: one cut short (a download that
        stopped) reads as a directory where most professionals left. The lines
        read stay imported; nothing is deactivated, and the run fails with
        ``too_many_deactivations`` unless forced (``pli directory import --force``).
        """
        if self.source.kind == ImportKind.RPPS:
            people = Professional.objects.filter(identifier_type__in=_NATIONAL_TYPES, active=True)
            total, gone = people.count(), people.exclude(last_import=self.run).count()
        else:
            boxes = Mailbox.objects.filter(active=True, last_import__kind=ImportKind.MSSANTE)
            total, gone = boxes.count(), boxes.exclude(last_import=self.run).count()
        if total >= MIN_CHECKED_DIRECTORY and gone > total * MAX_DEACTIVATED_SHARE:
            raise ImportFailed(
                "too_many_deactivations",
                f"{self.path.name}: {gone} of {total} entries are no longer listed"
                f" (more than {MAX_DEACTIVATED_SHARE:.0%}): a file cut short? Nothing was"
                " deactivated; import it with --force if the directory really shrank",
            )

    def _finish(self) -> int:
        """Deactivate what the file no longer lists, and close the run; returns how many.

        Only once the whole file was read; and not when no line was good: a
        file of bad lines must not empty the directory.
        """
        with transaction.atomic():
            deactivated = 0
            if self.imported and not self.force:
                self._check_share_deactivated()
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
