"""Vendor payloads (shaped like their public docs) become canonical touchpoints."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ingest.webhooks import (
    IdentityMap,
    PayloadError,
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
    [opened] = parse_zendesk(body(vendor.ZENDESK_CREATED), NOW).touchpoints
    [solved] = parse_zendesk(body(vendor.ZENDESK_SOLVED), NOW).touchpoints
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
    [order] = parse_segment("track", body(vendor.SEGMENT_TRACK), NOW, identities).touchpoints
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
    assert len(parse_native(body(record), "application/json", NOW).touchpoints) == 1
    assert len(parse_native(body([record, record]), "application/json", NOW).touchpoints) == 2
    ndjson = body(record) + b"\n{broken\n" + body({**record, "channel": "fax"}) + b"\n"
    parsed = parse_native(ndjson, "application/x-ndjson", NOW)
    assert len(parsed.touchpoints) == 1
    assert [(r.index, r.reason) for r in parsed.rejected] == [
        (1, DeadLetterReason.INVALID_JSON),
        (2, DeadLetterReason.UNKNOWN_CHANNEL),
    ]
    assert parsed.touchpoints[0].received_at == NOW


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (lambda b: parse_sendgrid(b, NOW, Pii()), b"{not json"),
        (lambda b: parse_sendgrid(b, NOW, Pii()), b'{"event": "open"}'),
        (lambda b: parse_mailgun(b, NOW, Pii()), b"[]"),
        (lambda b: parse_zendesk(b, NOW), b"[1]"),
        (lambda b: parse_ads(b, NOW), b'{"events": 3}'),
        (lambda b: parse_segment("batch", b, NOW, IdentityMap()), b'{"batch": {}}'),
        (lambda b: parse_native(b, "application/json", NOW), b"\xff\xfe"),
    ],
)
def test_an_unusable_body_is_a_payload_error(parse: object, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        parse(payload)  # type: ignore[operator]
