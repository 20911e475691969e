"""Reading JSONL and CSV files: one raw record per line, per-line errors, never a stopped read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ingest.reader import read_records
from schemas.enums import DeadLetterReason
from schemas.errors import InputError
from schemas.touchpoint import parse_touchpoint


def test_jsonl_lines_become_records_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{broken\r\n[1, 2]\n')
    records = list(read_records(path))
    assert [(r.position, r.data) for r in records] == [
        ("line 1", b'{"a": 1}'),
        ("line 3", b"{broken"),
        ("line 4", b"[1, 2]"),
    ]
    assert {r.source for r in records} == {str(path)}


def test_gzipped_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"a": 1}\n{"b": 2}\n')
    assert [r.data for r in read_records(path, source="backfill")] == [b'{"a": 1}', b'{"b": 2}']


def test_csv_rows_become_touchpoint_json(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "event_id,buyer_id,channel,event_type,occurred_at,revenue,currency,properties.order_number,"
        "properties.coupon,properties\n"
        'e1,b1,web,purchase,2026-03-01T10:00:00Z,49.90,EUR,2,SAVE5,"{""persona"": ""smb_owner""}"\n'
        "e2,b1,email,email_open,2026-03-01T09:00:00Z,,,,,\n"
    )
    first, second = (parse_touchpoint(r.data) for r in read_records(path))
    assert first.properties == {"persona": "smb_owner", "order_number": 2, "coupon": "SAVE5"}
    assert str(first.revenue) == "49.90"
    assert second.revenue is None
    assert second.properties == {}


def test_a_csv_row_with_the_wrong_number_of_fields_is_a_framing_error(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "event_id,buyer_id,channel,event_type,occurred_at\n"
        "e1,b1,web,page_view\n"
        "e2,b1,web,page_view,2026-03-01T10:00:00Z\n"
    )
    bad, good = read_records(path)
    assert bad.error is not None
    assert bad.error[0] is DeadLetterReason.MALFORMED_ROW
    assert bad.position == "line 2"
    assert bad.data == b"e1,b1,web,page_view"
    assert good.error is None
    assert json.loads(good.data)["event_id"] == "e2"


def test_unknown_csv_columns_are_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("event_id,buyer,channel\n")
    with pytest.raises(InputError, match="unknown CSV column"):
        list(read_records(path))


@pytest.mark.parametrize("name", ["missing.jsonl", "events.parquet"])
def test_unreadable_inputs_are_input_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".parquet"):
        path.write_bytes(b"PAR1")
    with pytest.raises(InputError):
        list(read_records(path))
