"""SendGrid Event Webhook: a JSON array of email events.

``sg_event_id`` becomes the event id, so SendGrid's retries collapse. The buyer
is the ``buyer_id`` custom argument when the sender set one, else the recipient
(``email:<address>``, hashed if the collector hashes PII).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from ingest.webhooks.base import (
    Parsed,
    Pii,
    Rejection,
    decode_json,
    from_unix,
    raw_item,
    snake_case,
    validate_items,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError, SchemaValidationError
from schemas.touchpoint import deterministic_event_id

__all__ = ["SENDGRID_EVENTS", "parse_sendgrid"]

SENDGRID_EVENTS: Final[dict[str, str]] = {
    "processed": "email_sent",
    "delivered": "email_delivered",
    "open": "email_open",
    "click": "email_click",
    "bounce": "email_bounce",
    "dropped": "email_dropped",
    "deferred": "email_deferred",
    "spamreport": "email_spam_report",
    "unsubscribe": "email_unsubscribe",
    "group_unsubscribe": "email_unsubscribe",
    "group_resubscribe": "email_resubscribe",
}


def _convert(item: dict[str, Any], received_at: datetime, pii: Pii) -> dict[str, Any] | Rejection:
    raw = raw_item(item)
    event = item.get("event")
    email = item.get("email")
    if not isinstance(event, str) or not event:
        return Rejection(0, DeadLetterReason.MISSING_FIELD, "event: Field required", raw)
    buyer = item.get("buyer_id")
    if not isinstance(buyer, str) or not buyer:
        if not isinstance(email, str) or not email:
            return Rejection(0, DeadLetterReason.MISSING_FIELD, "email: Field required", raw)
        buyer = f"email:{pii.email(email)}"
    source_id = item.get("sg_event_id")
    if isinstance(source_id, str) and source_id:
        event_id = deterministic_event_id("sendgrid", source_id)
    else:
        event_id = deterministic_event_id(
            "sendgrid", str(item.get("sg_message_id")), event, str(item.get("timestamp"))
        )
    properties: dict[str, object] = {"message_id": item.get("sg_message_id"), "vendor": "sendgrid"}
    if event == "click" and isinstance(item.get("url"), str):
        properties["url"] = item["url"]
    if event == "bounce":
        properties["bounce_type"] = "soft" if item.get("type") == "blocked" else "hard"
        if isinstance(item.get("reason"), str):
            properties["bounce_reason"] = item["reason"][:500]
    category = item.get("category")
    if isinstance(category, list):
        category = category[0] if category else None
    campaign = item.get("campaign") if isinstance(item.get("campaign"), str) else category
    persona = item.get("persona")
    if isinstance(persona, str):
        properties["persona"] = persona
    try:
        occurred_at = from_unix(item.get("timestamp"))
    except SchemaValidationError as exc:
        return Rejection(0, exc.reason, exc.detail, raw)
    return {
        "event_id": event_id,
        "buyer_id": buyer,
        "channel": "email",
        "event_type": SENDGRID_EVENTS.get(event, f"email_{snake_case(event)}"),
        "occurred_at": occurred_at or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "campaign": campaign if isinstance(campaign, str) and campaign else None,
        "properties": {key: value for key, value in properties.items() if value is not None},
    }


def parse_sendgrid(body: bytes, received_at: datetime, pii: Pii) -> Parsed:
    decoded = decode_json(body)
    if not isinstance(decoded, list):
        raise PayloadError(DeadLetterReason.NOT_AN_OBJECT, "the Event Webhook posts a JSON array")

    return validate_items(
        decoded, lambda item: _convert(item, received_at, pii), "an event is a JSON object"
    )
