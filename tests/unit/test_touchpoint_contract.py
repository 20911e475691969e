"""The Touchpoint v1 contract: what is accepted, and the reason each kind of bad record gets."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.enums import DeadLetterReason
from schemas.errors import SchemaValidationError
from schemas.touchpoint import MAX_RECORD_BYTES, deterministic_event_id, parse_touchpoint
from tests.factories import event


def raw(record: object) -> bytes:
    return json.dumps(record).encode()


def reason_for(data: bytes | str) -> DeadLetterReason:
    with pytest.raises(SchemaValidationError) as caught:
        parse_touchpoint(data)
    return caught.value.reason


def test_a_valid_record_parses_and_times_are_normalized_to_utc() -> None:
    record = event("email_open", at=datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    record["occurred_at"] = "2026-03-02T11:00:00+01:00"
    touchpoint = parse_touchpoint(raw(record))
    assert touchpoint.occurred_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert touchpoint.occurred_at.tzinfo is UTC
    assert touchpoint.schema_version == 1


def test_an_event_type_no_one_has_heard_of_is_still_a_touchpoint() -> None:
    touchpoint = parse_touchpoint(raw(event("wishlist_add", at=datetime(2026, 1, 1, tzinfo=UTC))))
    assert touchpoint.event_type == "wishlist_add"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"event_id": "e1", "buyer_id": ', DeadLetterReason.INVALID_JSON),
        (b'{"buyer_id": "\xff"}', DeadLetterReason.INVALID_ENCODING),
        (b'[{"event_id": "e1"}]', DeadLetterReason.NOT_AN_OBJECT),
        (b'"just a string"', DeadLetterReason.NOT_AN_OBJECT),
        (b"42", DeadLetterReason.NOT_AN_OBJECT),
    ],
)
def test_records_that_are_not_json_objects(data: bytes, reason: DeadLetterReason) -> None:
    assert reason_for(data) is reason


def test_missing_buyer_id() -> None:
    record = event("page_view", at=datetime(2026, 1, 1, tzinfo=UTC))
    del record["buyer_id"]
    assert reason_for(raw(record)) is DeadLetterReason.MISSING_FIELD


def test_unknown_channel() -> None:
    record = event("page_view", at=datetime(2026, 1, 1, tzinfo=UTC), channel="fax")
    assert reason_for(raw(record)) is DeadLetterReason.UNKNOWN_CHANNEL


def test_naive_timestamp() -> None:
    record = event("page_view", at=datetime(2026, 1, 1, tzinfo=UTC))
    record["occurred_at"] = "2026-01-01T10:00:00"
    assert reason_for(raw(record)) is DeadLetterReason.NAIVE_TIMESTAMP


def test_a_record_over_one_megabyte_is_rejected_unread() -> None:
    record = event("page_view", at=datetime(2026, 1, 1, tzinfo=UTC))
    record["properties"] = {"blob": "x" * MAX_RECORD_BYTES}
    data = raw(record)
    assert len(data) > MAX_RECORD_BYTES
    with pytest.raises(SchemaValidationError) as caught:
        parse_touchpoint(data)
    assert caught.value.reason is DeadLetterReason.RECORD_TOO_LARGE
    assert str(len(data)) in caught.value.detail


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"schema_version": 2}, DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION),
        ({"revenue": "-5.00", "currency": "USD"}, DeadLetterReason.INVALID_FIELD),
        ({"revenue": "19.99"}, DeadLetterReason.INVALID_PAYLOAD),
        ({"currency": "dollars"}, DeadLetterReason.INVALID_FIELD),
        ({"event_type": "Page View"}, DeadLetterReason.INVALID_FIELD),
        ({"unexpected": 1}, DeadLetterReason.INVALID_FIELD),
    ],
)
def test_field_level_problems(changes: dict[str, object], reason: DeadLetterReason) -> None:
    record = event("purchase", at=datetime(2026, 1, 1, tzinfo=UTC))
    record.update(changes)
    assert reason_for(raw(record)) is reason


@pytest.mark.parametrize(
    ("event_type", "properties"),
    [
        ("csat", {"score": 9}),
        ("csat", {}),
        ("nps", {"score": 11}),
        ("review", {"rating": 7}),
        ("purchase", {"order_number": 0}),
        ("email_bounce", {"bounce_type": "maybe"}),
    ],
)
def test_known_event_types_check_their_payload(
    event_type: str, properties: dict[str, object]
) -> None:
    record = event(event_type, at=datetime(2026, 1, 1, tzinfo=UTC), properties=properties)
    assert reason_for(raw(record)) is DeadLetterReason.INVALID_PAYLOAD


def test_vendor_payloads_may_carry_fields_we_do_not_know() -> None:
    record = event(
        "email_click",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        properties={"url": "https://example.com", "sg_machine_open": False},
    )
    assert parse_touchpoint(raw(record)).properties["sg_machine_open"] is False


def test_event_ids_from_source_ids_are_stable_and_distinct() -> None:
    first = deterministic_event_id("sendgrid", "sg-123")
    assert first == deterministic_event_id("sendgrid", "sg-123")
    assert first != deterministic_event_id("sendgrid", "sg-124")
    assert first != deterministic_event_id("mailgun", "sg-123")


def test_the_models_own_checks_give_their_reason_and_a_plain_detail() -> None:
    """The validators raise SchemaValidationError; the detail a dead letter stores is the
    message alone (the reason is its own column), as pydantic words it for a field."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(SchemaValidationError) as caught:
        parse_touchpoint(raw({**event("purchase", at=at), "revenue": "19.99"}))
    assert caught.value.reason is DeadLetterReason.INVALID_PAYLOAD
    assert caught.value.detail == "revenue needs a currency"

    record = event("page_view", at=at)
    record["occurred_at"] = "1900-01-01T00:00:00Z"
    with pytest.raises(SchemaValidationError) as caught:
        parse_touchpoint(raw(record))
    assert caught.value.reason is DeadLetterReason.TIMESTAMP_OUT_OF_RANGE
    assert caught.value.detail.startswith("occurred_at: Value error, must lie within 1970-01-01")
