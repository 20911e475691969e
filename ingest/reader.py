"""Read touchpoint files — JSON Lines or CSV, optionally gzipped — one raw record per line.

The reader only frames records; validation happens in the processor, so a bad
line becomes a dead letter there instead of stopping the read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from schemas.enums import DeadLetterReason
from schemas.errors import InputError
from schemas.raw import RawRecord

__all__ = ["FORMATS", "detect_format", "read_records"]

FORMATS: Final = ("jsonl", "csv")
_TOP_LEVEL: Final = frozenset(
    {
        "schema_version",
        "event_id",
        "buyer_id",
        "anonymous_id",
        "account_id",
        "channel",
        "event_type",
        "occurred_at",
        "received_at",
        "campaign",
        "promo",
        "revenue",
        "currency",
    }
)


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise InputError(f"cannot tell the format of {path}: name it .jsonl, .ndjson or .csv (.gz ok)")


def _open(path: Path) -> IO[bytes]:
    try:
        if path.name.lower().endswith(".gz"):
            return io.BufferedReader(gzip.GzipFile(path, "rb"))
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_records(path: Path, source: str | None = None) -> Iterator[RawRecord]:
    """Yield one :class:`RawRecord` per non-blank line (CSV: per data row)."""
    if not path.is_file():
        raise InputError(f"no such input file: {path}")
    fmt = detect_format(path)
    name = source or str(path)
    if fmt == "csv":
        yield from _read_csv(path, name)
    else:
        yield from _read_jsonl(path, name)


def _read_jsonl(path: Path, source: str) -> Iterator[RawRecord]:
    with _open(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                data = line.rstrip(b"\r\n")
                if data.strip():
                    yield RawRecord(source, f"line {number}", data)
        except (OSError, EOFError) as exc:
            raise InputError(f"reading {path} failed: {exc}") from exc


def _cell(value: str) -> object:
    """A CSV property cell: JSON scalars (numbers, true/false) become typed, the rest stay text."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, int | float | bool) else value


def _read_csv(path: Path, source: str) -> Iterator[RawRecord]:
    with _open(path) as binary, io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: unreadable CSV header: {exc}") from exc
        unknown = [
            column
            for column in header
            if column not in _TOP_LEVEL
            and column != "properties"
            and not column.startswith("properties.")
        ]
        if unknown:
            raise InputError(
                f"{path}: unknown CSV column(s) {', '.join(unknown)}; use Touchpoint field names, "
                "'properties' (a JSON object) or 'properties.<name>'"
            )
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield RawRecord(
                    source,
                    f"line {reader.line_num}",
                    b"",
                    (DeadLetterReason.MALFORMED_ROW, f"unreadable CSV row: {exc}"),
                )
                continue
            position = f"line {reader.line_num}"
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raw = io.StringIO()
                csv.writer(raw).writerow(cells)
                yield RawRecord(
                    source,
                    position,
                    raw.getvalue().rstrip("\r\n").encode(),
                    (
                        DeadLetterReason.MALFORMED_ROW,
                        f"expected {len(header)} fields, got {len(cells)}",
                    ),
                )
                continue
            yield RawRecord(source, position, _csv_to_json(header, cells))


def _csv_to_json(header: list[str], cells: list[str]) -> bytes:
    record: dict[str, object] = {}
    properties: dict[str, object] = {}
    for column, value in zip(header, cells, strict=True):
        if value == "":
            continue
        if column == "properties":
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value  # left for the validator to reject with its reason
            record["properties"] = decoded
        elif column.startswith("properties."):
            properties[column.removeprefix("properties.")] = _cell(value)
        elif column == "schema_version":
            record[column] = _cell(value)
        else:
            record[column] = value
    if properties:
        existing = record.get("properties")
        record["properties"] = (
            {**existing, **properties} if isinstance(existing, dict) else properties
        )
    return json.dumps(record, separators=(",", ":")).encode()
