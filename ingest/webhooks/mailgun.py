"""Mailgun webhooks: one JSON object per event, ``{"signature": {...}, "event-data": {...}}``.

``event-data.id`` becomes the event id. The buyer is ``user-variables.buyer_id``
when the sender set it, else the recipient (``email:<address>``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from ingest.webhooks.base import (
    Parsed,
    Pii,
    Rejection,
    as_object,
    decode_json,
    from_unix,
    raw_item,
    snake_case,
    validate_all,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError, SchemaValidationError
from schemas.touchpoint import deterministic_event_id

__all__ = ["MAILGUN_EVENTS", "mailgun_signature_fields", "parse_mailgun", "parse_mailgun_event"]

MAILGUN_EVENTS: Final[dict[str, str]] = {
    "accepted": "email_sent",
    "delivered": "email_delivered",
    "opened": "email_open",
    "clicked": "email_click",
    "failed": "email_bounce",
    "unsubscribed": "email_unsubscribe",
    "complained": "email_spam_report",
}


def mailgun_signature_fields(decoded: object) -> tuple[str, str, str] | None:
    """(timestamp, token, signature) of a Mailgun webhook body, if present."""
    if not isinstance(decoded, dict) or not isinstance(decoded.get("signature"), dict):
        return None
    signature = decoded["signature"]
    fields = (signature.get("timestamp"), signature.get("token"), signature.get("signature"))
    if not all(isinstance(value, str | int) for value in fields):
        return None
    return str(fields[0]), str(fields[1]), str(fields[2])


def parse_mailgun(body: bytes, received_at: datetime, pii: Pii) -> Parsed:
    return parse_mailgun_event(decode_json(body), received_at, pii)


def parse_mailgun_event(decoded: object, received_at: datetime, pii: Pii) -> Parsed:
    """:func:`parse_mailgun` for a body already decoded (to check its signature first)."""
    if not isinstance(decoded, dict) or not isinstance(decoded.get("event-data"), dict):
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "event-data: an object is required")
    data: dict[str, Any] = decoded["event-data"]
    raw = raw_item(data)
    event = data.get("event")
    if not isinstance(event, str) or not event:
        return Parsed(
            rejected=[
                Rejection(
                    0, DeadLetterReason.MISSING_FIELD, "event-data.event: Field required", raw
                )
            ]
        )
    variables = as_object(data.get("user-variables"))
    buyer = variables.get("buyer_id")
    recipient = data.get("recipient")
    if not isinstance(buyer, str) or not buyer:
        if not isinstance(recipient, str) or not recipient:
            return Parsed(
                rejected=[
                    Rejection(
                        0,
                        DeadLetterReason.MISSING_FIELD,
                        "event-data.recipient: Field required",
                        raw,
                    )
                ]
            )
        buyer = f"email:{pii.email(recipient)}"
    source_id = data.get("id")
    event_id = deterministic_event_id(
        "mailgun",
        source_id
        if isinstance(source_id, str) and source_id
        else f"{data.get('timestamp')}:{event}:{recipient}",
    )
    message = as_object(data.get("message"))
    headers = as_object(message.get("headers"))
    properties: dict[str, object] = {"message_id": headers.get("message-id"), "vendor": "mailgun"}
    if event == "clicked" and isinstance(data.get("url"), str):
        properties["url"] = data["url"]
    if event == "failed":
        properties["bounce_type"] = "hard" if data.get("severity") == "permanent" else "soft"
    campaigns = data.get("campaigns")
    tags = data.get("tags")
    campaign = variables.get("campaign")
    if not isinstance(campaign, str):
        first = (campaigns or tags or [None])[0] if isinstance(campaigns or tags, list) else None
        campaign = first.get("name") if isinstance(first, dict) else first
    try:
        occurred_at = from_unix(data.get("timestamp"))
    except SchemaValidationError as exc:
        return Parsed(rejected=[Rejection(0, exc.reason, exc.detail, raw)])
    record = {
        "event_id": event_id,
        "buyer_id": buyer,
        "channel": "email",
        "event_type": MAILGUN_EVENTS.get(event, f"email_{snake_case(event)}"),
        "occurred_at": occurred_at or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "campaign": campaign if isinstance(campaign, str) and campaign else None,
        "properties": {key: value for key, value in properties.items() if value is not None},
    }
    return validate_all([(0, record, raw)])
