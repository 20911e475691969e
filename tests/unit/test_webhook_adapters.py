"""Vendor payloads (shaped like their public docs) become canonical touchpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.webhooks import (
    IdentityMap,
    Pii,
    parse_ads,
    parse_mailgun,
    parse_native,
    parse_segment,
    parse_sendgrid,
    parse_twilio,
    parse_zendesk,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError
from schemas.journey import to_micros
from schemas.touchpoint import deterministic_event_id
from tests import vendor_payloads as vendor

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def test_sendgrid_events_map_to_email_touchpoints() -> None:
    parsed = parse_sendgrid(body(vendor.SENDGRID_EVENTS), NOW, Pii())
    assert parsed.rejected == []
    kinds = [tp.event_type for tp in parsed.touchpoints]
    assert kinds == [
        "email_sent",
        "email_delivered",
        "email_open",
        "email_click",
        "email_bounce",
        "email_dropped",
        "email_spam_report",
        "email_unsubscribe",
    ]
    first = parsed.touchpoints[0]
    assert first.buyer_id == "email:ana@example.com"
    assert first.event_id == deterministic_event_id("sendgrid", "sg-evt-1")
    assert first.campaign == "spring_newsletter"
    assert first.occurred_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert parsed.touchpoints[3].properties["url"] == "https://example.com/pricing"
    assert parsed.touchpoints[4].properties["bounce_type"] == "hard"
    assert parsed.touchpoints[-1].buyer_id == "crm-ana"  # the sender's custom argument wins


def test_pii_hashing_replaces_addresses_and_numbers() -> None:
    pii = Pii(enabled=True, salt="pepper")
    parsed = parse_sendgrid(body(vendor.SENDGRID_EVENTS[:1]), NOW, pii)
    buyer = parsed.touchpoints[0].buyer_id
    assert buyer.startswith("email:sha256:") and "example.com" not in buyer
    assert (
        buyer == parse_sendgrid(body(vendor.SENDGRID_EVENTS[1:2]), NOW, pii).touchpoints[0].buyer_id
    )
    sms = parse_twilio(vendor.TWILIO_STATUS, NOW, pii).touchpoints[0]
    assert sms.buyer_id.startswith("phone:sha256:") and "555" not in sms.buyer_id


def test_a_sendgrid_item_without_an_address_is_rejected_alone() -> None:
    items = [*vendor.SENDGRID_EVENTS[:2], {"event": "open", "timestamp": 1}, "junk"]
    parsed = parse_sendgrid(body(items), NOW, Pii())
    assert len(parsed.touchpoints) == 2
    assert [(r.index, r.reason) for r in parsed.rejected] == [
        (2, DeadLetterReason.MISSING_FIELD),
        (3, DeadLetterReason.NOT_AN_OBJECT),
    ]


def test_mailgun_clicked() -> None:
    [tp] = parse_mailgun(body(vendor.MAILGUN_EVENT), NOW, Pii()).touchpoints
    assert (tp.channel, tp.event_type, tp.buyer_id) == (
        "email",
        "email_click",
        "email:dee@example.com",
    )
    assert tp.event_id == deterministic_event_id("mailgun", "CPgfbmQMTCKtHW6uIWtuVe")
    assert tp.campaign == "winback"


def test_twilio_status_callback_and_stop_reply() -> None:
    [status] = parse_twilio(vendor.TWILIO_STATUS, NOW, Pii()).touchpoints
    assert (status.event_type, status.buyer_id) == ("sms_delivered", "phone:+15558675310")
    assert status.event_id == deterministic_event_id(
        "twilio", vendor.TWILIO_STATUS["MessageSid"], "delivered"
    )
    [stop] = parse_twilio(vendor.TWILIO_STOP, NOW, Pii()).touchpoints
    assert (stop.event_type, stop.buyer_id) == ("sms_opt_out", "phone:+15558675310")
    reply = parse_twilio({**vendor.TWILIO_STOP, "Body": "Yes please", "OptOutType": ""}, NOW, Pii())
    assert reply.touchpoints[0].event_type == "sms_reply"
    assert "Body" not in json.dumps(reply.touchpoints[0].properties)


def test_zendesk_ticket_events() -> None:
    [opened] = parse_zendesk(body(vendor.ZENDESK_CREATED), NOW, Pii()).touchpoints
    [solved] = parse_zendesk(body(vendor.ZENDESK_SOLVED), NOW, Pii()).touchpoints
    assert (opened.event_type, solved.event_type) == ("ticket_opened", "ticket_solved")
    assert opened.buyer_id == "zendesk:8193592318236"
    assert opened.properties["ticket_id"] == "5158"
    assert opened.event_id != solved.event_id


def test_segment_calls_and_identity_linking() -> None:
    identities = IdentityMap()
    [page] = parse_segment("page", body(vendor.SEGMENT_PAGE), NOW, identities).touchpoints
    assert (page.buyer_id, page.event_type) == ("anonymous:anon-9", "page_view")
    [identify] = parse_segment(
        "identify", body(vendor.SEGMENT_IDENTIFY), NOW, identities
    ).touchpoints
    assert identify.buyer_id == "crm-zoe"
    assert identify.persona == "ops_manager"
    assert "email" not in identify.properties
    later = {**vendor.SEGMENT_PAGE, "messageId": "ajs-page-2", "timestamp": "2026-03-02T09:30:00Z"}
    [linked] = parse_segment("page", body(later), NOW, identities).touchpoints
    assert (linked.buyer_id, linked.anonymous_id) == ("crm-zoe", "anon-9")
    [redelivered] = parse_segment("page", body(vendor.SEGMENT_PAGE), NOW, identities).touchpoints
    assert redelivered.buyer_id == "anonymous:anon-9"  # it happened before the identify
    [order] = parse_segment(
        "track", body(vendor.SEGMENT_TRACK), NOW, identities, trust_revenue=True
    ).touchpoints
    assert (order.event_type, str(order.revenue), order.currency) == ("purchase", "25.0", "USD")
    assert (order.campaign, order.promo) == ("spring_sale", "hasbros")
    assert order.event_id == deterministic_event_id("segment", "ajs-next-1772445600-0a1b")


def test_segment_batch_and_custom_events() -> None:
    batch = {
        "batch": [
            vendor.SEGMENT_TRACK,
            {**vendor.SEGMENT_TRACK, "event": "Video Played", "messageId": "m-2"},
            {"type": "track", "event": "x"},
        ]
    }
    parsed = parse_segment("batch", body(batch), NOW, IdentityMap())
    assert [tp.event_type for tp in parsed.touchpoints] == ["purchase", "video_played"]
    assert [(r.index, r.reason) for r in parsed.rejected] == [(2, DeadLetterReason.MISSING_FIELD)]


def test_ads_generic_shape() -> None:
    parsed = parse_ads(body(vendor.ADS_EVENTS), NOW)
    assert [tp.event_type for tp in parsed.touchpoints] == [
        "ad_impression",
        "ad_click",
        "ad_conversion",
    ]
    assert parsed.touchpoints[1].properties["cost"] == "0.42"


def test_native_api_accepts_an_object_an_array_and_ndjson() -> None:
    record = {
        "event_id": "e1",
        "buyer_id": "b1",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": "2026-03-02T10:00:00Z",
    }
    assert len(parse_native(body(record), "application/json", NOW).events) == 1
    assert len(parse_native(body([record, record]), "application/json", NOW).events) == 2
    ndjson = body(record) + b"\n{broken\n" + body({**record, "channel": "fax"}) + b"\n"
    parsed = parse_native(ndjson, "application/x-ndjson", NOW)
    assert len(parsed.events) == 1
    assert [(r.index, r.reason) for r in parsed.rejected] == [
        (1, DeadLetterReason.INVALID_JSON),
        (2, DeadLetterReason.UNKNOWN_CHANNEL),
    ]
    assert parsed.events[0].received_at == to_micros(NOW)


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (lambda b: parse_sendgrid(b, NOW, Pii()), b"{not json"),
        (lambda b: parse_sendgrid(b, NOW, Pii()), b'{"event": "open"}'),
        (lambda b: parse_mailgun(b, NOW, Pii()), b"[]"),
        (lambda b: parse_zendesk(b, NOW, Pii()), b"[1]"),
        (lambda b: parse_ads(b, NOW), b'{"events": 3}'),
        (lambda b: parse_segment("batch", b, NOW, IdentityMap()), b'{"batch": {}}'),
        (lambda b: parse_native(b, "application/json", NOW), b"\xff\xfe"),
    ],
)
def test_an_unusable_body_is_a_payload_error(parse: object, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        parse(payload)  # type: ignore[operator]


# -- issue 11: hostile and sloppy bodies -----------------------------------------------------

JSON_ADAPTERS: list[tuple[str, Callable[[bytes], object]]] = [
    ("native", lambda b: parse_native(b, "application/json", NOW)),
    ("ndjson", lambda b: parse_native(b, "application/x-ndjson", NOW)),
    ("segment", lambda b: parse_segment("track", b, NOW, IdentityMap())),
    ("segment batch", lambda b: parse_segment("batch", b, NOW, IdentityMap())),
    ("sendgrid", lambda b: parse_sendgrid(b, NOW, Pii())),
    ("mailgun", lambda b: parse_mailgun(b, NOW, Pii())),
    ("zendesk", lambda b: parse_zendesk(b, NOW, Pii())),
    ("ads", lambda b: parse_ads(b, NOW)),
]


WHOLE_BODY_ADAPTERS = [(name, parse) for name, parse in JSON_ADAPTERS if name != "ndjson"]


@pytest.mark.parametrize(
    ("name", "parse"), WHOLE_BODY_ADAPTERS, ids=[n for n, _ in WHOLE_BODY_ADAPTERS]
)
@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,
        b'{"batch": ' + b"[" * 5000,
        b'{"events": [' + b"{" * 3000,
        b"[" * 65 + b"]" * 65,
    ],
    ids=["deep-array", "deep-in-batch", "deep-objects", "just-too-deep"],
)
def test_nesting_deeper_than_the_limit_is_a_payload_error(
    name: str, parse: Callable[[bytes], object], payload: bytes
) -> None:
    with pytest.raises(PayloadError) as raised:
        parse(payload)
    assert raised.value.reason == DeadLetterReason.INVALID_JSON
    assert "deep" in raised.value.detail


def test_an_ndjson_line_nested_too_deep_is_that_lines_dead_letter() -> None:
    record = {
        "event_id": "e1",
        "buyer_id": "b1",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": "2026-03-02T10:00:00Z",
    }
    parsed = parse_native(b"[" * 100_000 + b"\n" + body(record), "application/x-ndjson", NOW)
    assert len(parsed.events) == 1
    assert [(r.index, r.reason) for r in parsed.rejected] == [(0, DeadLetterReason.INVALID_JSON)]


def test_nesting_within_the_limit_and_brackets_inside_strings_are_fine() -> None:
    record = {
        "event_id": "e1",
        "buyer_id": "b1",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": "2026-03-02T10:00:00Z",
        "properties": {"url": "[" * 10_000 + '\\"{' * 100},
    }
    assert len(parse_native(body(record), "application/json", NOW).events) == 1
    nested = body({"events": [{"id": "x", "deep": [[[[[[[[[[1]]]]]]]]]]}]})
    assert len(parse_ads(nested, NOW).rejected) == 1  # no type: a dead letter, not an error


@pytest.mark.parametrize("stamp", [1e20, 1e12, -1e12, 10**30, "Infinity", "NaN", "1e20"])
def test_a_sendgrid_time_out_of_range_is_a_dead_letter_and_the_rest_goes_through(
    stamp: object,
) -> None:
    items = [{**vendor.SENDGRID_EVENTS[0], "timestamp": stamp}, vendor.SENDGRID_EVENTS[1]]
    parsed = parse_sendgrid(body(items), NOW, Pii())
    assert len(parsed.touchpoints) == 1
    assert [(r.index, r.reason) for r in parsed.rejected] == [
        (0, DeadLetterReason.TIMESTAMP_OUT_OF_RANGE)
    ]


@pytest.mark.parametrize("token", [b"Infinity", b"-Infinity", b"NaN", b"1e999", b"9" * 5000])
def test_non_finite_and_huge_json_numbers_are_item_errors_not_body_errors(token: bytes) -> None:
    items = body([vendor.SENDGRID_EVENTS[0], vendor.SENDGRID_EVENTS[1]])
    items = items.replace(b"1772445600", token, 1)
    parsed = parse_sendgrid(items, NOW, Pii())
    assert len(parsed.touchpoints) == 1
    assert [r.index for r in parsed.rejected] == [0]
    native = body(
        {
            "event_id": "e",
            "buyer_id": "b",
            "channel": "web",
            "event_type": "purchase",
            "occurred_at": "2026-03-02T10:00:00Z",
            "revenue": 1,
            "currency": "USD",
        }
    )
    parsed = parse_native(native.replace(b'"revenue": 1', b'"revenue": ' + token), "", NOW)
    assert [r.reason for r in parsed.rejected] == [DeadLetterReason.INVALID_FIELD]


def test_a_mailgun_time_out_of_range_is_a_dead_letter() -> None:
    event = {
        **vendor.MAILGUN_EVENT,
        "event-data": {**vendor.MAILGUN_EVENT["event-data"], "timestamp": 1e20},
    }
    parsed = parse_mailgun(body(event), NOW, Pii())
    assert [r.reason for r in parsed.rejected] == [DeadLetterReason.TIMESTAMP_OUT_OF_RANGE]


@pytest.mark.parametrize(
    "when",
    [
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
        "2300-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
    ],
)
def test_a_native_time_the_pipeline_cannot_store_is_a_dead_letter(when: str) -> None:
    record = {
        "event_id": "e",
        "buyer_id": "b",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": when,
    }
    parsed = parse_native(body(record), "application/json", NOW)
    assert [r.reason for r in parsed.rejected] == [DeadLetterReason.TIMESTAMP_OUT_OF_RANGE]


def test_segment_calls_are_marked_as_from_the_browser_and_their_revenue_is_a_claim() -> None:
    [order] = parse_segment("track", body(vendor.SEGMENT_TRACK), NOW, IdentityMap()).touchpoints
    assert order.properties["origin"] == "browser"
    assert order.revenue is None and order.currency is None
    assert (order.properties["claimed_revenue"], order.properties["claimed_currency"]) == (
        "25.0",
        "USD",
    )
    spoofed = {
        **vendor.SEGMENT_TRACK,
        "properties": {**vendor.SEGMENT_TRACK["properties"], "origin": "server"},
    }
    [marked] = parse_segment("track", body(spoofed), NOW, IdentityMap()).touchpoints
    assert marked.properties["origin"] == "browser"
    [trusted] = parse_segment(
        "track", body(vendor.SEGMENT_TRACK), NOW, IdentityMap(), trust_revenue=True
    ).touchpoints
    assert (str(trusted.revenue), trusted.currency) == ("25.0", "USD")
    assert trusted.properties["origin"] == "browser"


def test_a_zendesk_trigger_body_becomes_a_touchpoint() -> None:
    [solved] = parse_zendesk(body(vendor.ZENDESK_TRIGGER), NOW, Pii()).touchpoints
    assert (solved.event_type, solved.buyer_id) == ("ticket_solved", "zendesk:8193592318236")
    assert solved.occurred_at == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert solved.properties == {"ticket_id": "5158", "vendor": "zendesk", "priority": "high"}
    again = parse_zendesk(body(vendor.ZENDESK_TRIGGER), NOW, Pii()).touchpoints[0]
    assert again.event_id == solved.event_id  # a retried delivery collapses
    ticket = vendor.ZENDESK_TRIGGER["ticket"]
    opened = {"ticket": {**ticket, "status": "New"}}
    assert parse_zendesk(body(opened), NOW, Pii()).touchpoints[0].event_type == "ticket_opened"
    named = {"ticket": ticket, "event": "ticket_escalated"}
    assert parse_zendesk(body(named), NOW, Pii()).touchpoints[0].event_type == "ticket_escalated"
    rated = {"ticket": {**ticket, "satisfaction": "Good, I'm satisfied"}}
    [csat] = parse_zendesk(body(rated), NOW, Pii()).touchpoints
    assert (csat.event_type, csat.properties["score"]) == ("csat", 5)
    by_email = {"ticket": {"id": "7", "status": "Open", "requester_email": "Ana@Example.com"}}
    assert parse_zendesk(body(by_email), NOW, Pii()).touchpoints[0].buyer_id == (
        "email:ana@example.com"
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"message": "hello"},
        {"ticket": {"id": "{{ticket.id}}", "requester_id": "1"}},
        {"ticket": {"id": "5158"}},
        {"ticket": {"id": "5158", "requester_id": "1", "updated_at": "yesterday"}},
        {"ticket": {"id": "5158", "requester_id": "1", "updated_at": "9999-12-31T23:59:59-01:00"}},
        {"type": "zen:event-type:ticket.created", "detail": {"id": "1"}},
        {"type": "zen:event-type:user.created", "detail": {"id": "1"}},
        {**vendor.ZENDESK_CREATED, "time": "2026-03-02T10:00:00"},
    ],
)
def test_a_zendesk_body_that_cannot_become_a_touchpoint_is_refused_not_dropped(
    payload: dict[str, object],
) -> None:
    with pytest.raises(PayloadError) as raised:
        parse_zendesk(body(payload), NOW, Pii())
    assert raised.value.detail


def test_twilio_form_fields_are_read_as_bytes_then_decoded() -> None:
    from ingest.webhooks.twilio import decode_form, form_fields

    pairs = form_fields(b"MessageSid=SM1&Body=caf%C3%A9+ok&Empty=&Flag&To=%2B1555")
    assert pairs == [
        (b"MessageSid", b"SM1"),
        (b"Body", "café ok".encode()),
        (b"Empty", b""),
        (b"Flag", b""),
        (b"To", b"+1555"),
    ]
    assert decode_form(pairs)["Body"] == "café ok"
    for bad in (b"Body=%FF", b"Body=\xff", b"\xff=1"):
        with pytest.raises(PayloadError) as raised:
            decode_form(form_fields(bad))
        assert raised.value.reason == DeadLetterReason.INVALID_ENCODING
    with pytest.raises(PayloadError):
        form_fields(b"&".join([b"a=1"] * 2000))


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6), children, max_size=4)
        ),
        max_leaves=15,
    ).map(lambda value: json.dumps(value).encode())
)
def test_any_body_gives_touchpoints_dead_letters_or_a_payload_error(payload: bytes) -> None:
    for _, parse in JSON_ADAPTERS:
        try:
            parse(payload)
        except PayloadError:
            pass


def test_an_unpaired_surrogate_escape_becomes_a_replacement_character() -> None:
    """A browser's JSON.stringify writes a truncated emoji as "\\ud83d": the item is kept,
    with U+FFFD there (as Go's encoding/json does), instead of crashing later encoders."""
    track = {**vendor.SEGMENT_TRACK, "messageId": "m-\ud83d", "event": "Video \udfff Played"}
    raw = json.dumps({"batch": [track, vendor.SEGMENT_TRACK]}).encode()
    assert b"\\ud83d" in raw
    parsed = parse_segment("batch", raw, NOW, IdentityMap())
    assert parsed.rejected == []
    assert parsed.touchpoints[0].event_type == "video_played"
    assert parsed.touchpoints[0].event_id == deterministic_event_id("segment", "m-\ufffd")
    with pytest.raises(PayloadError) as raised:
        parse_sendgrid(b'[{"email": "\xed\xa0\x80"}]', NOW, Pii())  # a surrogate as raw bytes
    assert raised.value.reason == DeadLetterReason.INVALID_ENCODING
