"""Every form a raw record takes, decided once by the processor for both drivers.

The Faust worker hands :meth:`JourneyProcessor.process_record` each Kafka record with its
headers, the local runner each file record with its framing error: a pack, a watermark
control message, a framing error and a single touchpoint each become what they must.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor, header
from schemas.enums import DeadLetterReason
from schemas.topics import CONTROL_HEADER, CONTROL_WATERMARK, PACK_HEADER, PACK_NDJSON
from tests.factories import T0, event

HOUR = timedelta(hours=1)


def processor() -> JourneyProcessor:
    return JourneyProcessor(default_rules(), allowed_lateness=2 * HOUR, dedup_window=24 * HOUR)


def raw(event_type: str, at: timedelta, buyer: str = "b1") -> bytes:
    return json.dumps(event(event_type, at=at, buyer=buyer)).encode()


def test_a_pack_is_its_lines_each_at_its_own_position_and_a_bad_line_alone_is_dead() -> None:
    proc = processor()
    pack = b"\n".join([raw("page_view", HOUR), b"not json", b"", raw("email_open", 2 * HOUR)])
    proc.process_record(
        pack,
        source="touchpoints.raw",
        position="4:17",
        partition=4,
        headers=[(PACK_HEADER, PACK_NDJSON)],
    )
    output = proc.flush()
    assert [row.source_position for row in output.touchpoints] == ["4:17:0", "4:17:3"]
    [letter] = output.dead_letters
    assert (letter.reason, letter.position, letter.raw) == ("invalid_json", "4:17:1", "not json")
    assert set(output.rows) == {4}
    assert proc.watermark(4) == T0  # the newest line, 2 h, minus the lateness


def test_a_watermark_control_message_moves_its_partitions_event_time() -> None:
    proc = processor()
    proc.process_record(raw("page_view", HOUR), source="raw", position="2:0", partition=2)
    proc.process_record(
        (T0 + 30 * HOUR).isoformat().encode(),
        source="raw",
        position="2:1",
        partition=2,
        headers={CONTROL_HEADER: CONTROL_WATERMARK},  # headers as a mapping work too
    )
    assert proc.watermark(2) == T0 + 28 * HOUR
    assert proc.watermark(0) is None
    output = proc.flush()
    assert len(output.touchpoints) == 1 and output.dead_letters == []


@pytest.mark.parametrize(
    "time", [b"yesterday", b"2026-01-01T00:00:00", b"\xff", b"9999-12-31T23:59:59+00:00"]
)
def test_a_watermark_control_message_with_an_unreadable_time_is_a_dead_letter(
    time: bytes,
) -> None:
    """Never a crash: a worker that raised here would read the same record after every
    restart (a time without an offset used to raise TypeError)."""
    proc = processor()
    proc.process_record(
        time,
        source="raw",
        position="1:9",
        partition=1,
        headers=[(CONTROL_HEADER, CONTROL_WATERMARK)],
    )
    [letter] = proc.flush().dead_letters
    assert (letter.reason, letter.position) == ("invalid_field", "1:9")
    assert "watermark control message with an unreadable time" in letter.detail
    assert proc.watermark(1) is None


def test_a_framing_error_is_a_dead_letter_with_the_readers_reason() -> None:
    proc = processor()
    proc.process_record(
        b"a,b",
        source="f.csv",
        position="line 3",
        error=(DeadLetterReason.MALFORMED_ROW, "2 fields"),
    )
    output = proc.flush()
    [letter] = output.dead_letters
    assert (letter.reason, letter.detail, letter.source, letter.position) == (
        "malformed_row",
        "2 fields",
        "f.csv",
        "line 3",
    )
    assert output.touchpoints == [] and proc.counters.dead_letters == {"malformed_row": 1}


def test_a_record_without_a_form_header_is_one_touchpoint() -> None:
    proc = processor()
    proc.process_record(
        raw("page_view", HOUR), source="raw", position="0:5", headers=[("traceparent", b"00-ab")]
    )
    [row] = proc.flush().touchpoints
    assert (row.source, row.source_position) == ("raw", "0:5")


def test_header_reads_pairs_or_a_mapping_and_an_empty_value() -> None:
    assert header([("a", b"1"), (PACK_HEADER, PACK_NDJSON)], PACK_HEADER) == PACK_NDJSON
    assert header({PACK_HEADER: bytearray(b"ndjson")}, PACK_HEADER) == b"ndjson"
    assert header([(CONTROL_HEADER, None)], CONTROL_HEADER) == b""
    assert header([("a", b"1")], PACK_HEADER) is None
    assert header(None, PACK_HEADER) is None
