"""What the collector puts on Kafka: canonical touchpoint JSON (the workers must decode the
same touchpoint the collector validated) and packs per partition."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.collector.records import (
    PACK_HEADERS,
    PartitionCache,
    encode_event,
    join_rows,
    pack_touchpoints,
)
from ingest.kafka import PACK_BYTES, PACK_EVENTS, partition_for
from ingest.webhooks import parse_native
from schemas.enums import DeadLetterReason
from schemas.errors import SchemaValidationError
from schemas.events import decode_event, event_from_touchpoint
from schemas.journey import to_micros
from schemas.touchpoint import parse_touchpoint
from tests.unit.test_event_decoding import records

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

VALID = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=20),
        "buyer_id": st.text(min_size=1, max_size=20),
        "channel": st.sampled_from(["ads", "email", "sms", "web", "support"]),
        "event_type": st.sampled_from(["page_view", "purchase", "ad_click", "webinar_joined"]),
        "occurred_at": st.datetimes(
            min_value=datetime(1970, 1, 2),  # made aware by timezones=
            max_value=datetime(2299, 12, 30),
            timezones=st.sampled_from([UTC]),
        ).map(lambda when: when.isoformat()),
    },
    optional={
        "anonymous_id": st.none() | st.text(min_size=1, max_size=10),
        "account_id": st.none() | st.text(min_size=1, max_size=10),
        "received_at": st.sampled_from(["2026-03-02T10:00:00.5+01:00", "2026-03-02T09:00:00Z"]),
        "campaign": st.none() | st.text(min_size=1, max_size=10),
        "promo": st.none() | st.text(min_size=1, max_size=10),
        "revenue": st.sampled_from(["120.50", "0", "7", 3, 2.5]),
        "currency": st.sampled_from(["USD", "EUR"]),
        "properties": st.dictionaries(
            st.text(max_size=8),
            st.none()
            | st.booleans()
            | st.integers(min_value=-(10**30), max_value=10**30)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=12),
            max_size=4,
        ),
    },
)


def assert_same_touchpoint(data: bytes) -> None:
    """If the contract accepts ``data``, its canonical encoding decodes to the same
    touchpoint, by both decoders, with the same JSON values as pydantic's own."""
    try:
        touchpoint = parse_touchpoint(data)
    except SchemaValidationError:
        return
    event = decode_event(data)
    encoded = encode_event(event)
    assert decode_event(encoded) == event
    assert parse_touchpoint(encoded) == touchpoint
    assert json.loads(encoded) == json.loads(touchpoint.model_dump_json())
    assert encode_event(event_from_touchpoint(touchpoint)) == encoded


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALID)
def test_the_canonical_encoding_of_a_valid_touchpoint_is_the_same_touchpoint(
    record: dict[str, Any],
) -> None:
    assert_same_touchpoint(json.dumps(record).encode())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_canonical_encoding_of_any_accepted_record_is_the_same_touchpoint(
    record: dict[str, Any],
) -> None:
    assert_same_touchpoint(json.dumps(record).encode())


def test_a_plain_touchpoint_encodes_byte_for_byte_as_pydantic_does() -> None:
    data = (
        b'{"event_id":"e1","buyer_id":"b1","channel":"web","event_type":"purchase",'
        b'"occurred_at":"2026-03-02T10:14:07.5+01:00","revenue":"120.50","currency":"USD",'
        b'"received_at":"2026-03-02T09:00:00Z","properties":{"persona":"smb","n":2,"x":1.5}}'
    )
    assert encode_event(decode_event(data)) == parse_touchpoint(data).model_dump_json().encode()


def touchpoint(number: int, buyer: str, size: int = 0) -> tuple[bytes, bytes]:
    value = json.dumps({"event_id": f"e{number}", "buyer_id": buyer, "pad": "x" * size})
    return buyer.encode(), value.encode()


def test_a_requests_touchpoints_are_one_record_per_partition_in_order() -> None:
    pairs = [touchpoint(number, f"b-{number % 37}") for number in range(300)]
    records = pack_touchpoints(pairs, 6, PartitionCache())
    assert sum(record.count for record in records) == 300
    per_partition = Counter(partition_for(key, 6) for key, _ in pairs)
    records_per_partition = Counter(record.partition for record in records)
    assert records_per_partition == {
        partition: -(-count // PACK_EVENTS) for partition, count in per_partition.items()
    }
    seen: list[bytes] = []
    for record in records:
        assert record.partition is not None
        values = record.value.split(b"\n") if record.headers else [record.value]
        assert len(values) == record.count <= PACK_EVENTS
        for value in values:
            buyer = json.loads(value)["buyer_id"].encode()
            assert partition_for(buyer, 6) == record.partition
        seen.extend(values)
    by_partition = {p: [v for k, v in pairs if partition_for(k, 6) == p] for p in range(6)}
    for partition, values in by_partition.items():
        assert [
            v for v in seen if partition_for(json.loads(v)["buyer_id"].encode(), 6) == partition
        ] == values


def test_packs_respect_the_event_and_byte_bounds_and_a_lone_touchpoint_is_keyed() -> None:
    many = [touchpoint(number, "same-buyer") for number in range(PACK_EVENTS * 2 + 1)]
    packs = pack_touchpoints(many, 6, PartitionCache())
    assert [record.count for record in packs] == [PACK_EVENTS, PACK_EVENTS, 1]
    assert packs[0].headers == PACK_HEADERS and packs[0].key is None
    assert packs[2].headers is None and packs[2].key == b"same-buyer"  # a plain keyed record
    big = [touchpoint(number, "same-buyer", PACK_BYTES // 3) for number in range(5)]
    packs = pack_touchpoints(big, 6, PartitionCache())
    assert all(len(record.value) <= PACK_BYTES for record in packs)
    assert sum(record.count for record in packs) == 5


def test_the_partition_cache_follows_the_partition_count_and_stays_bounded() -> None:
    cache = PartitionCache(size=10)
    for number in range(100):
        key = f"b-{number}".encode()
        assert cache.of(key, 6) == partition_for(key, 6)
        assert cache.of(key, 12) == partition_for(key, 12)
    assert len(cache._known) <= 10


def test_dead_letter_rows_share_records_within_the_byte_bound() -> None:
    rows = [b'{"row": %d, "pad": "%s"}' % (n, b"x" * 1000) for n in range(600)]
    records = join_rows(rows)
    assert sum(record.count for record in records) == 600
    assert all(len(record.value) <= PACK_BYTES for record in records)
    assert b"\n".join(record.value for record in records) == b"\n".join(rows)
    assert [record.count for record in join_rows([b"x" * (PACK_BYTES + 1), b"y"])] == [1, 1]


# -- the native API's fast path -------------------------------------------------------------


def native(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": "e1",
        "buyer_id": "b1",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": "2026-03-02T10:00:00Z",
        **fields,
    }


def test_the_receive_time_is_set_unless_the_sender_gave_one() -> None:
    given_time = "2026-03-02T11:00:00+01:00"
    body = json.dumps([native(), native(received_at=given_time), native(received_at=None)])
    events = parse_native(body.encode(), "application/json", NOW).events
    assert [event.received_at for event in events] == [
        to_micros(NOW),
        to_micros(datetime.fromisoformat(given_time)),
        to_micros(NOW),  # an explicit null counts as missing
    ]


def test_a_rejected_item_keeps_its_bytes_as_sent_and_the_rest_goes_through() -> None:
    body = b'[{"event_id": "x"}, 7, ' + json.dumps(native()).encode() + b"]"
    parsed = parse_native(body, "application/json", NOW)
    assert len(parsed.events) == 1
    assert [(r.index, r.reason, r.raw) for r in parsed.rejected] == [
        (0, DeadLetterReason.MISSING_FIELD, b'{"event_id": "x"}'),
        (1, DeadLetterReason.NOT_AN_OBJECT, b"7"),
    ]


def test_numbers_canonical_json_cannot_carry_stay_text_as_before() -> None:
    """1e999 is strict JSON but no float: the item takes the careful path, which keeps the
    number as the text it was sent as (so the workers see what the collector accepted)."""
    body = json.dumps([native(properties={"ratio": 1})]).encode().replace(b"1}", b"1e999}")
    [event] = parse_native(body, "application/json", NOW).events
    assert event.properties == {"ratio": "1e999"}
    assert decode_event(encode_event(event)) == event


def test_an_ndjson_body_mixes_fast_and_careful_lines() -> None:
    lines = [
        json.dumps(native(event_id="fast")).encode(),
        json.dumps(native(event_id="m-\ud83d")).encode(),  # an escaped lone surrogate
        b"{broken",
        b"",
        json.dumps(native(event_id="again", properties={"n": 1}))
        .encode()
        .replace(b'"n": 1', b'"n": NaN'),
    ]
    parsed = parse_native(b"\n".join(lines), "application/x-ndjson", NOW)
    assert [event.event_id for event in parsed.events] == ["fast", "m-\ufffd", "again"]
    assert parsed.events[2].properties == {"n": "NaN"}
    assert [(r.index, r.reason) for r in parsed.rejected] == [(2, DeadLetterReason.INVALID_JSON)]
    for event in parsed.events:
        assert decode_event(encode_event(event)) == event
