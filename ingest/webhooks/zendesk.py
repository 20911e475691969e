"""Zendesk event-subscribed webhooks (ticket events), JSON.

Shape (Zendesk's documented envelope)::

    {"type": "zen:event-type:ticket.created", "id": "<event id>", "time": "<ISO>",
     "account_id": 123, "detail": {"id": "<ticket id>", "requester_id": "<user id>",
     "status": "OPEN", ...}, "event": {...}}

``ticket.created`` → ``ticket_opened``; ``ticket.status_changed`` to solved or
closed → ``ticket_solved``; a ticket whose ``detail.satisfaction_rating.score`` is
``good``/``bad`` → ``csat`` 5/1; any other type → ``ticket_<name>`` (kept,
unclassified until a rule covers it). Event id = ticket id + Zendesk event id.
The buyer is ``zendesk:<requester id>`` unless ``detail.buyer_id`` is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ingest.webhooks.base import (
    Parsed,
    PayloadError,
    Rejection,
    as_object,
    decode_json,
    raw_item,
    snake_case,
    validate_all,
)
from schemas.enums import DeadLetterReason
from schemas.touchpoint import deterministic_event_id

__all__ = ["parse_zendesk"]

_PREFIX = "zen:event-type:"


def parse_zendesk(body: bytes, received_at: datetime) -> Parsed:
    decoded = decode_json(body)
    if not isinstance(decoded, dict):
        raise PayloadError(DeadLetterReason.NOT_AN_OBJECT, "a Zendesk webhook is a JSON object")
    raw = raw_item(decoded)
    kind = decoded.get("type")
    detail = as_object(decoded.get("detail"))
    change = as_object(decoded.get("event"))
    ticket = detail.get("id")
    if not isinstance(kind, str) or ticket in (None, ""):
        return Parsed(
            rejected=[
                Rejection(0, DeadLetterReason.MISSING_FIELD, "type and detail.id are required", raw)
            ]
        )
    name = kind.removeprefix(_PREFIX).removeprefix("ticket.")
    properties: dict[str, Any] = {"ticket_id": str(ticket), "vendor": "zendesk"}
    rating = detail.get("satisfaction_rating")
    score = rating.get("score") if isinstance(rating, dict) else None
    if name == "created":
        event_type = "ticket_opened"
    elif name == "status_changed" and str(change.get("current", "")).lower() in (
        "solved",
        "closed",
    ):
        event_type = "ticket_solved"
    elif score in ("good", "bad"):
        event_type = "csat"
        properties["score"] = 5 if score == "good" else 1
    else:
        event_type = f"ticket_{snake_case(name)}"[:64]
    if isinstance(detail.get("priority"), str):
        properties["priority"] = detail["priority"].lower()
    buyer = detail.get("buyer_id") or detail.get("requester_id")
    if buyer in (None, ""):
        return Parsed(
            rejected=[
                Rejection(
                    0, DeadLetterReason.MISSING_FIELD, "detail.requester_id: Field required", raw
                )
            ]
        )
    buyer_id = str(buyer) if detail.get("buyer_id") else f"zendesk:{buyer}"
    source_event = decoded.get("id") or f"{kind}:{decoded.get('time')}"
    record = {
        "event_id": deterministic_event_id("zendesk", str(ticket), str(source_event)),
        "buyer_id": buyer_id,
        "channel": "support",
        "event_type": event_type,
        "occurred_at": decoded.get("time") or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "properties": properties,
    }
    account = decoded.get("account_id")
    if account not in (None, ""):
        record["account_id"] = f"zendesk-account:{account}"
    return validate_all([(0, record, raw)])
