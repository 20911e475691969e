"""Zendesk webhooks, JSON: event subscriptions and trigger (or automation) bodies.

A webhook *subscribed to Zendesk events* posts Zendesk's fixed envelope::

    {"type": "zen:event-type:ticket.created", "id": "<event id>", "time": "<ISO>",
     "account_id": 123, "detail": {"id": "<ticket id>", "requester_id": "<user id>",
     "status": "OPEN", ...}, "event": {...}}

``ticket.created`` → ``ticket_opened``; ``ticket.status_changed`` to solved or
closed → ``ticket_solved``; a ticket whose ``detail.satisfaction_rating.score`` is
``good``/``bad`` → ``csat`` 5/1; any other type → ``ticket_<name>`` (kept,
unclassified until a rule covers it). Event id = ticket id + Zendesk event id.

A webhook *connected to a trigger or automation* posts whatever JSON body the admin
wrote, with Zendesk's placeholders rendered. The collector maps this one::

    {"ticket": {"id": "{{ticket.id}}", "status": "{{ticket.status}}",
                "requester_id": "{{ticket.requester.id}}",
                "updated_at": "{{ticket.updated_at_with_timestamp}}",
                "priority": "{{ticket.priority}}",
                "satisfaction": "{{satisfaction.current_rating}}"},
     "event": "ticket_escalated"}

(``requester_email`` may stand in for ``requester_id``; ``event`` and the fields after
``requester_id`` are optional.) Without ``event``, a satisfaction rating of Good/Bad
→ ``csat`` 5/1, status New → ``ticket_opened``, Solved/Closed → ``ticket_solved``,
any other status → ``ticket_<status>``. Event id = ticket id + event type +
``updated_at`` (or the body's hash), so a redelivery collapses.

The buyer is ``zendesk:<requester id>`` unless ``buyer_id`` is set (or, in a trigger
body with only an address, ``email:<address>``).

A Zendesk body that cannot become a touchpoint is refused as a whole (PayloadError →
4xx), never accepted and dead-lettered: the sender is a trigger an admin configured,
and Zendesk shows a refused delivery in the webhook's activity log, where the admin
will look; a dead letter they would never see.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Final

from ingest.webhooks.base import (
    Parsed,
    Pii,
    as_object,
    decode_json,
    raw_item,
    snake_case,
    validate_all,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError
from schemas.touchpoint import deterministic_event_id

__all__ = ["parse_zendesk"]

_PREFIX: Final = "zen:event-type:"
_SHAPES: Final = (
    "neither a Zendesk event (type and detail) nor a trigger body (ticket.id); "
    "see docs/collector.md for the trigger body to use"
)


def _identifier(value: object) -> str | None:
    """A Zendesk id as text (Zendesk sends ids as strings or numbers), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


def _rendered(where: str, value: Any) -> Any:
    """``value``, unless it is a placeholder Zendesk did not replace (a typo in the body)."""
    if isinstance(value, str) and "{{" in value and "}}" in value:
        raise PayloadError(
            DeadLetterReason.INVALID_FIELD, f"{where}: placeholder {value[:80]!r} was not rendered"
        )
    return value


def _accepted(record: dict[str, Any], raw: bytes) -> Parsed:
    parsed = validate_all([(0, record, raw)])
    if parsed.rejected:
        rejection = parsed.rejected[0]
        raise PayloadError(rejection.reason, rejection.detail)
    return parsed


def _from_event(decoded: dict[str, Any], kind: str, received_at: datetime) -> Parsed:
    raw = raw_item(decoded)
    detail = as_object(decoded.get("detail"))
    change = as_object(decoded.get("event"))
    ticket = _identifier(detail.get("id"))
    if ticket is None:
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "detail.id: Field required")
    name = kind.removeprefix(_PREFIX).removeprefix("ticket.")
    properties: dict[str, object] = {"ticket_id": ticket, "vendor": "zendesk"}
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
    buyer = _identifier(detail.get("buyer_id"))
    requester = _identifier(detail.get("requester_id"))
    if buyer is None and requester is None:
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "detail.requester_id: Field required")
    source_event = decoded.get("id") or f"{kind}:{decoded.get('time')}"
    record: dict[str, object] = {
        "event_id": deterministic_event_id("zendesk", ticket, str(source_event)),
        "buyer_id": buyer or f"zendesk:{requester}",
        "channel": "support",
        "event_type": event_type,
        "occurred_at": decoded.get("time") or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "properties": properties,
    }
    account = _identifier(decoded.get("account_id"))
    if account is not None:
        record["account_id"] = f"zendesk-account:{account}"
    return _accepted(record, raw)


def _from_trigger(
    decoded: dict[str, Any], ticket: dict[str, Any], body: bytes, received_at: datetime, pii: Pii
) -> Parsed:
    raw = raw_item(decoded)
    ticket_id = _identifier(_rendered("ticket.id", ticket.get("id")))
    if ticket_id is None:
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "ticket.id: Field required")
    requester = as_object(ticket.get("requester"))
    buyer = _identifier(_rendered("ticket.buyer_id", ticket.get("buyer_id")))
    requester_id = _identifier(
        _rendered("ticket.requester_id", ticket.get("requester_id", requester.get("id")))
    )
    email = _rendered(
        "ticket.requester_email", ticket.get("requester_email", requester.get("email"))
    )
    if buyer is None and requester_id is not None:
        buyer = f"zendesk:{requester_id}"
    if buyer is None and isinstance(email, str) and email.strip():
        buyer = f"email:{pii.email(email)}"
    if buyer is None:
        raise PayloadError(
            DeadLetterReason.MISSING_FIELD,
            "ticket.requester_id (or requester_email): Field required",
        )
    status = str(_rendered("ticket.status", ticket.get("status")) or "").strip().lower()
    satisfaction = str(_rendered("ticket.satisfaction", ticket.get("satisfaction")) or "")
    rating = satisfaction.strip().lower().split(",")[0].split(" ")[0]
    properties: dict[str, object] = {"ticket_id": ticket_id, "vendor": "zendesk"}
    if rating in ("good", "bad"):
        properties["score"] = 5 if rating == "good" else 1
    event = _rendered("event", decoded.get("event"))
    if event is not None:
        event_type = event if isinstance(event, str) else repr(event)
    elif "score" in properties:
        event_type = "csat"
    elif status == "new":
        event_type = "ticket_opened"
    elif status in ("solved", "closed"):
        event_type = "ticket_solved"
    else:
        event_type = f"ticket_{snake_case(status)}"[:64] if status else "ticket_updated"
    priority = _rendered("ticket.priority", ticket.get("priority"))
    if isinstance(priority, str) and priority.strip():
        properties["priority"] = priority.strip().lower()
    updated_at = _rendered("ticket.updated_at", ticket.get("updated_at"))
    occurred_at = updated_at or _rendered("ticket.created_at", ticket.get("created_at"))
    delivery = str(updated_at) if updated_at else hashlib.sha256(body).hexdigest()
    record: dict[str, object] = {
        "event_id": deterministic_event_id("zendesk", ticket_id, "trigger", event_type, delivery),
        "buyer_id": buyer,
        "channel": "support",
        "event_type": event_type,
        "occurred_at": occurred_at or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "properties": properties,
    }
    return _accepted(record, raw)


def parse_zendesk(body: bytes, received_at: datetime, pii: Pii) -> Parsed:
    """One Zendesk delivery → one touchpoint; anything else raises PayloadError."""
    decoded = decode_json(body)
    if not isinstance(decoded, dict):
        raise PayloadError(DeadLetterReason.NOT_AN_OBJECT, "a Zendesk webhook is a JSON object")
    kind = decoded.get("type")
    if isinstance(kind, str) and "detail" in decoded:
        return _from_event(decoded, kind, received_at)
    ticket = decoded.get("ticket")
    if isinstance(ticket, dict):
        return _from_trigger(decoded, ticket, body, received_at, pii)
    raise PayloadError(DeadLetterReason.MISSING_FIELD, _SHAPES)
