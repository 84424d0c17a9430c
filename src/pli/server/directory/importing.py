"""Import of the public RPPS and MSSanté extractions (being written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.lines} lines, {self.imported} imported, {self.rejected} rejected,"
            f" {self.deactivated} marked inactive"
        )


def import_extraction(
    path: Path, *, rejects_path: Path | None = None, progress: bool = False
) -> ImportSummary:
    raise ImportFailed("not_implemented", "the import is not written yet")
