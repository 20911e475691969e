"""Small CSV exports (ad spend, CRM) read whole: the header and the non-blank rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from schemas.errors import InputError

__all__ = ["read_csv_export"]


def read_csv_export(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header of ``path`` (a UTF-8 CSV, byte-order mark allowed) and its rows that are
    not blank, each with its line number; an unreadable or empty file is an InputError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path} is empty") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells

    return header, rows()
