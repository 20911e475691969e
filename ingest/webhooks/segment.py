"""Segment HTTP Tracking API: ``track``, ``page``, ``identify`` and ``batch`` calls.

Existing Segment SDKs can point at the collector unchanged. ``messageId`` becomes
the event id (so an SDK retry collapses), ``userId`` the buyer, ``anonymousId``
the anonymous id; after an ``identify`` the collector remembers which user an
anonymous id belongs to and files that visitor's later anonymous calls under the user.
Segment's e-commerce spec events map to our event types; other event names are
kept in snake case (``"Video Played"`` → ``video_played``) and count as
unclassified until a rule covers them.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any, Final, Literal

from ingest.webhooks.base import (
    Parsed,
    Rejection,
    as_object,
    decode_json,
    raw_item,
    scalar_properties,
    snake_case,
    validate_items,
)
from schemas.enums import DeadLetterReason
from schemas.errors import PayloadError
from schemas.touchpoint import deterministic_event_id

__all__ = ["ORIGIN", "SEGMENT_EVENTS", "IdentityMap", "SegmentCall", "parse_segment"]

ORIGIN: Final = "browser"
"""``properties.origin`` of every touchpoint a Segment write key sent."""

SegmentCall = Literal["track", "page", "identify", "batch"]

SEGMENT_EVENTS: Final[dict[str, str]] = {
    "Order Completed": "purchase",
    "Order Refunded": "refund",
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Checkout Started": "checkout_started",
    "Signed Up": "signup",
    "Product Reviewed": "review",
    "Subscription Cancelled": "subscription_cancelled",
    "Referral Sent": "referral",
    "Booking Completed": "booking",
}
"""Segment e-commerce / B2B SaaS spec event names → our web event types."""


class IdentityMap:
    """anonymousId → (userId, from when), learned from ``identify`` calls.

    A link applies to anonymous calls that happened at or after the identify, so
    a visitor's earlier anonymous history (and any redelivery of it) stays filed
    under the anonymous buyer: the same call always maps to the same buyer.
    Bounded: the least recently linked ids are forgotten first.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._users: OrderedDict[str, tuple[str, datetime]] = OrderedDict()

    def link(self, anonymous_id: str, user_id: str, since: datetime) -> None:
        known = self._users.get(anonymous_id)
        if known is not None and known[0] == user_id:
            since = min(since, known[1])
        self._users[anonymous_id] = (user_id, since)
        self._users.move_to_end(anonymous_id)
        while len(self._users) > self.capacity:
            self._users.popitem(last=False)

    def user_for(self, anonymous_id: str, at: datetime) -> str | None:
        known = self._users.get(anonymous_id)
        return known[0] if known is not None and at >= known[1] else None


def _when(item: dict[str, Any], received_at: datetime) -> datetime:
    for key in ("timestamp", "originalTimestamp"):
        value = item.get(key)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            if parsed.tzinfo is not None:
                return parsed
    return received_at


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _convert(
    kind: str,
    item: dict[str, Any],
    received_at: datetime,
    identities: IdentityMap,
    trust_revenue: bool,
) -> dict[str, Any] | Rejection:
    raw = raw_item(item)
    user_id = _text(item.get("userId"))
    anonymous_id = _text(item.get("anonymousId"))
    when = _when(item, received_at)
    if kind == "identify" and user_id and anonymous_id:
        identities.link(anonymous_id, user_id, when)
    if user_id is None and anonymous_id is not None:
        user_id = identities.user_for(anonymous_id, when)
    buyer_id = user_id or (f"anonymous:{anonymous_id}" if anonymous_id else None)
    if buyer_id is None:
        return Rejection(
            0, DeadLetterReason.MISSING_FIELD, "a userId or anonymousId is required", raw
        )
    properties_in = as_object(item.get("properties"))
    context = as_object(item.get("context"))
    if kind == "track":
        name = _text(item.get("event"))
        if name is None:
            return Rejection(0, DeadLetterReason.MISSING_FIELD, "track needs an event name", raw)
        event_type = SEGMENT_EVENTS.get(name, snake_case(name))
    elif kind == "page":
        event_type = "page_view"
    elif kind == "identify":
        event_type = "identify"
    else:
        return Rejection(0, DeadLetterReason.INVALID_FIELD, f"unsupported call type {kind!r}", raw)

    properties = scalar_properties(properties_in)
    page = as_object(context.get("page"))
    if kind == "page":
        properties.setdefault("url", page.get("url"))
        if _text(item.get("name")):
            properties.setdefault("page_name", item["name"])
    traits = as_object(item.get("traits"))
    if isinstance(traits.get("persona"), str):
        properties["persona"] = traits["persona"]
    if event_type == "purchase":
        properties.setdefault("order_id", properties_in.get("order_id"))
    for key in ("revenue", "total", "value", "coupon", "currency", "email", "phone"):
        properties.pop(key, None)  # carried as envelope fields, or personal data
    for key in ("origin", "claimed_revenue", "claimed_currency"):
        properties.pop(key, None)  # set by the collector, never by the sender

    message_id = _text(item.get("messageId")) or deterministic_event_id(
        "segment-body", raw.decode()
    )
    campaign = as_object(context.get("campaign"))
    record: dict[str, object] = {
        "event_id": deterministic_event_id("segment", message_id),
        "buyer_id": buyer_id,
        "anonymous_id": anonymous_id,
        "channel": "web",
        "event_type": event_type,
        "occurred_at": item.get("timestamp")
        or item.get("originalTimestamp")
        or received_at.isoformat(),
        "received_at": received_at.isoformat(),
        "campaign": _text(campaign.get("name")),
        "promo": _text(properties_in.get("coupon")),
    }
    kept: dict[str, object] = {key: value for key, value in properties.items() if value is not None}
    kept["origin"] = ORIGIN
    record["properties"] = kept
    amount = properties_in.get("revenue", properties_in.get("total"))
    if event_type in ("purchase", "booking", "refund") and amount is not None:
        currency = str(properties_in.get("currency") or "USD").upper()
        if trust_revenue:
            record["revenue"] = str(amount)
            record["currency"] = currency
        else:  # anyone can send this with the public write key: kept as a claim only
            kept["claimed_revenue"] = str(amount)
            kept["claimed_currency"] = currency
    account = context.get("groupId") or item.get("groupId")
    if isinstance(account, str) and account:
        record["account_id"] = account
    return record


def parse_segment(
    kind: SegmentCall,
    body: bytes,
    received_at: datetime,
    identities: IdentityMap,
    *,
    trust_revenue: bool = False,
) -> Parsed:
    """Convert one Segment API call (``batch`` carries many) into touchpoints.

    The write key is public (it ships in web pages), so every call is marked
    ``properties.origin = "browser"``, and a purchase's revenue only becomes the
    touchpoint's ``revenue`` with ``trust_revenue``; otherwise it is kept as
    ``properties.claimed_revenue`` / ``claimed_currency``.
    """
    decoded = decode_json(body)
    if not isinstance(decoded, dict):
        raise PayloadError(DeadLetterReason.NOT_AN_OBJECT, "a Segment call body is a JSON object")
    if kind != "batch":
        return validate_items(
            [decoded],
            lambda item: _convert(kind, item, received_at, identities, trust_revenue),
            "a batch item is a JSON object",
        )
    items = decoded.get("batch")
    if not isinstance(items, list):
        raise PayloadError(DeadLetterReason.MISSING_FIELD, "batch needs a 'batch' array")
    return validate_items(
        items,
        lambda item: _convert(str(item.get("type")), item, received_at, identities, trust_revenue),
        "a batch item is a JSON object",
    )
