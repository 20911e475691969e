"""Ad platforms: impressions, clicks and conversions in one documented JSON shape.

``POST /v1/webhooks/ads`` with::

    {"events": [{"id": "evt-1", "type": "impression" | "click" | "conversion",
                 "occurred_at": "2026-03-02T09:00:00Z", "buyer_id": "b-1",
                 "platform": "google_ads", "campaign": "spring", "ad_id": "ad-7",
                 "cost": "0.42", "currency": "USD"}]}

Event id = platform + ``id``, so a re-sent export collapses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from ingest.webhooks.base import (
    Parsed,
    Rejection,
    decode_json,
    raw_item,
    validate_items,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError
from schemas.touchpoint import deterministic_event_id

__all__ = ["AD_EVENTS", "parse_ads"]

AD_EVENTS: Final[dict[str, str]] = {
    "impression": "ad_impression",
    "click": "ad_click",
    "conversion": "ad_conversion",
}


def _convert(item: dict[str, Any], received_at: datetime) -> dict[str, Any] | Rejection:
    raw = raw_item(item)
    kind = item.get("type")
    if kind not in AD_EVENTS:
        return Rejection(
            0, DeadLetterReason.INVALID_FIELD, f"type: must be one of {', '.join(AD_EVENTS)}", raw
        )
    source_id = item.get("id")
    platform = str(item.get("platform") or "ads")
    if not isinstance(source_id, str | int) or source_id == "":
        return Rejection(0, DeadLetterReason.MISSING_FIELD, "id: Field required", raw)
    properties = {
        key: item[key]
        for key in ("ad_id", "creative_id", "placement", "persona")
        if isinstance(item.get(key), str)
    }
    properties["platform"] = platform
    if item.get("cost") is not None:
        properties["cost"] = str(item["cost"])
    record: dict[str, object] = {
        "event_id": deterministic_event_id("ads", platform, str(source_id)),
        "buyer_id": item.get("buyer_id"),
        "channel": "ads",
        "event_type": AD_EVENTS[str(kind)],
        "occurred_at": item.get("occurred_at"),
        "received_at": received_at.isoformat(),
        "campaign": item.get("campaign"),
        "properties": properties,
    }
    if kind == "conversion" and item.get("revenue") is not None:
        record["revenue"] = str(item["revenue"])
        record["currency"] = str(item.get("currency") or "USD")
    return {key: value for key, value in record.items() if value is not None}


def parse_ads(body: bytes, received_at: datetime) -> Parsed:
    decoded = decode_json(body)
    events = decoded.get("events") if isinstance(decoded, dict) else None
    if not isinstance(events, list):
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "events: a JSON array is required")

    return validate_items(
        events, lambda item: _convert(item, received_at), "an event is a JSON object"
    )
