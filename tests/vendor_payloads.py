"""Request bodies shaped like the vendors' public documentation, for collector tests."""

from __future__ import annotations

from typing import Any

SENDGRID_EVENTS: list[dict[str, Any]] = [
    {
        "email": "Ana@Example.com",
        "timestamp": 1772445600,
        "event": "processed",
        "sg_event_id": "sg-evt-1",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "category": ["spring_newsletter"],
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
    },
    {
        "email": "ana@example.com",
        "timestamp": 1772445660,
        "event": "delivered",
        "sg_event_id": "sg-evt-2",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001",
        "response": "250 OK",
    },
    {
        "email": "ana@example.com",
        "timestamp": 1772449200,
        "event": "open",
        "sg_event_id": "sg-evt-3",
        "sg_message_id": "14c5d75ce93",
        "useragent": "Mozilla/5.0",
        "ip": "255.255.255.255",
        "sg_machine_open": False,
    },
    {
        "email": "ana@example.com",
        "timestamp": 1772449300,
        "event": "click",
        "sg_event_id": "sg-evt-4",
        "sg_message_id": "14c5d75ce93",
        "url": "https://example.com/pricing",
        "url_offset": {"index": 0, "type": "html"},
    },
    {
        "email": "bo@example.com",
        "timestamp": 1772445700,
        "event": "bounce",
        "sg_event_id": "sg-evt-5",
        "sg_message_id": "14c5d75ce94",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
        "type": "bounce",
    },
    {
        "email": "cy@example.com",
        "timestamp": 1772445800,
        "event": "dropped",
        "sg_event_id": "sg-evt-6",
        "reason": "Bounced Address",
        "status": "5.0.0",
    },
    {
        "email": "ana@example.com",
        "timestamp": 1772450000,
        "event": "spamreport",
        "sg_event_id": "sg-evt-7",
    },
    {
        "email": "ana@example.com",
        "timestamp": 1772450100,
        "event": "unsubscribe",
        "sg_event_id": "sg-evt-8",
        "buyer_id": "crm-ana",
    },
]

MAILGUN_EVENT: dict[str, Any] = {
    "signature": {
        "timestamp": "1772445600",
        "token": "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
        "signature": "to-be-filled",
    },
    "event-data": {
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": 1772445600.123,
        "event": "clicked",
        "recipient": "dee@example.com",
        "url": "https://example.com/offer",
        "tags": ["winback"],
        "user-variables": {},
        "message": {"headers": {"message-id": "20130503182626.18666.16540@example.com"}},
    },
}

TWILIO_STATUS: dict[str, str] = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "MessageSid": "SM0123456789abcdef0123456789abcd",
    "MessageStatus": "delivered",
    "To": "+15558675310",
    "From": "+15017122661",
    "ApiVersion": "2010-04-01",
}
TWILIO_STOP: dict[str, str] = {
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "MessageSid": "SM99999999999999999999999999999999",
    "SmsStatus": "received",
    "Body": "STOP",
    "OptOutType": "STOP",
    "From": "+15558675310",
    "To": "+15017122661",
    "NumMedia": "0",
}

ZENDESK_CREATED: dict[str, Any] = {
    "type": "zen:event-type:ticket.created",
    "account_id": 12514403,
    "id": "cbe4028c-7239-495d-b020-f22348516046",
    "time": "2026-03-02T10:00:00Z",
    "zendesk_event_version": "2022-11-06",
    "subject": "zen:ticket:5158",
    "detail": {
        "id": "5158",
        "requester_id": "8193592318236",
        "status": "OPEN",
        "priority": "HIGH",
        "subject": "Help",
    },
    "event": {},
}
ZENDESK_SOLVED: dict[str, Any] = {
    **ZENDESK_CREATED,
    "type": "zen:event-type:ticket.status_changed",
    "id": "d1e0a5f2-0000-4000-8000-000000000001",
    "time": "2026-03-02T12:00:00Z",
    "event": {"current": "SOLVED", "previous": "OPEN"},
}
# A webhook connected to a Zendesk trigger posts the JSON body the admin wrote, with
# Zendesk's placeholders rendered. The body the collector documents (docs/collector.md):
#   {"ticket": {"id": "{{ticket.id}}", "status": "{{ticket.status}}",
#               "requester_id": "{{ticket.requester.id}}",
#               "updated_at": "{{ticket.updated_at_with_timestamp}}",
#               "priority": "{{ticket.priority}}"}}
# rendered for a ticket an agent just solved:
ZENDESK_TRIGGER: dict[str, Any] = {
    "ticket": {
        "id": "5158",
        "status": "Solved",
        "requester_id": "8193592318236",
        "updated_at": "2026-03-02T12:00:00Z",
        "priority": "High",
    }
}

SEGMENT_TRACK: dict[str, Any] = {
    "type": "track",
    "userId": "crm-ana",
    "anonymousId": "507f191e810c19729de860ea",
    "event": "Order Completed",
    "messageId": "ajs-next-1772445600-0a1b",
    "timestamp": "2026-03-02T10:05:00.000Z",
    "properties": {
        "order_id": "50314b8e9bcf000000000000",
        "total": 27.50,
        "revenue": 25.00,
        "currency": "usd",
        "coupon": "hasbros",
        "products": [{"product_id": "p1"}],
    },
    "context": {
        "campaign": {"name": "spring_sale", "source": "google", "medium": "cpc"},
        "ip": "8.8.8.8",
    },
}
SEGMENT_PAGE: dict[str, Any] = {
    "type": "page",
    "anonymousId": "anon-9",
    "name": "Pricing",
    "messageId": "ajs-page-1",
    "timestamp": "2026-03-02T09:00:00Z",
    "properties": {"url": "https://example.com/pricing"},
}
SEGMENT_IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "userId": "crm-zoe",
    "anonymousId": "anon-9",
    "messageId": "ajs-identify-1",
    "timestamp": "2026-03-02T09:01:00Z",
    "traits": {"email": "zoe@example.com", "persona": "ops_manager"},
}

ADS_EVENTS: dict[str, Any] = {
    "events": [
        {
            "id": "imp-1",
            "type": "impression",
            "occurred_at": "2026-03-02T08:00:00Z",
            "buyer_id": "crm-ana",
            "platform": "google_ads",
            "campaign": "spring_sale",
            "ad_id": "ad-7",
            "cost": "0.004",
        },
        {
            "id": "clk-1",
            "type": "click",
            "occurred_at": "2026-03-02T08:01:00Z",
            "buyer_id": "crm-ana",
            "platform": "google_ads",
            "campaign": "spring_sale",
            "ad_id": "ad-7",
            "cost": "0.42",
        },
        {
            "id": "cnv-1",
            "type": "conversion",
            "occurred_at": "2026-03-02T10:06:00Z",
            "buyer_id": "crm-ana",
            "platform": "google_ads",
            "campaign": "spring_sale",
            "revenue": "25.00",
            "currency": "USD",
        },
    ]
}
