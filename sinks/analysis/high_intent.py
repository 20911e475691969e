"""High intent now: buyers one step from buying, ranked by recent engagement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    _FAR_PAST,
    DEFAULT_PURCHASE_STAGE,
    _rows,
)
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "HighIntentBuyer",
    "high_intent",
    "intent_stage",
]


_INTENT_WEIGHTS: Final[dict[str, float]] = {
    "checkout_started": 8.0,
    "add_to_cart": 6.0,
    "product_view": 3.0,
    "signup": 3.0,
    "sms_reply": 3.0,
    "ad_click": 2.0,
    "email_click": 2.0,
    "sms_click": 2.0,
    "page_view": 1.0,
    "email_open": 0.5,
    "ticket_opened": 1.0,
}


@dataclass(frozen=True, slots=True)
class HighIntentBuyer:
    buyer_id: str
    persona: str | None
    score: float
    last_touch_at: datetime
    last_channel: str | None
    preferred_channel: str | None


def intent_stage(stages: StageOrder, purchase_stage: str | None) -> str | None:
    """The stage just below the purchase stage (``consideration`` in the shipped rules):
    buyers whose furthest stage it is are one step from buying. None without a purchase
    stage among ``stages``, or when it is the first."""
    if purchase_stage is None or purchase_stage not in stages:
        return None
    rank = stages.rank[purchase_stage]
    return stages.names[rank - 1] if rank > 0 else None


def high_intent(
    client: Client,
    database: str,
    *,
    as_of: datetime | None = None,
    recent: timedelta = timedelta(days=14),
    limit: int = 50,
    stages: StageOrder = DEFAULT_ORDER,
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE,
) -> list[HighIntentBuyer]:
    """Buyers one step from buying (their furthest stage is :func:`intent_stage`), not
    dropped or unsubscribed, ranked by recent engagement; none without an intent stage.

    Score = Σ weight(action) × 2^(−age / 7 days) over touches in the last ``recent``
    before ``as_of`` (default: the newest event time in the data, so a replayed history
    reads as "now").
    """
    db = identifier(database)
    intent = intent_stage(stages, purchase_stage)
    if intent is None:
        return []
    weights = (
        "map(" + ", ".join(f"'{name}', {value}" for name, value in _INTENT_WEIGHTS.items()) + ")"
    )
    if as_of is None:
        newest = _rows(client, f"SELECT max(occurred_at) FROM {db}.touchpoints", {}, "newest time")
        as_of = newest[0][0] if newest and newest[0][0] is not None else _FAR_PAST
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
    sql = f"""
        WITH candidates AS (
            SELECT buyer_id, persona, last_touch_at, last_touch_channel, preferred_channel
            FROM {db}.journey_state FINAL
            WHERE furthest_stage = {{intent:String}} AND dropoff_stage IS NULL
              AND NOT arrayExists(e -> tupleElement(e, 'kind') IN
                                  ('unsubscribe', 'opt_out', 'spam_complaint'), exits)
        )
        SELECT c.buyer_id, c.persona,
               sum(({weights})[t.event_type] *
                   pow(2, -dateDiff('second', t.occurred_at, {{as_of:DateTime64(3, 'UTC')}})
                          / (7 * 86400.))) AS score,
               c.last_touch_at, c.last_touch_channel, c.preferred_channel
        FROM candidates AS c
        INNER JOIN {by_person(db, "touchpoints")} AS t ON t.buyer_id = c.buyer_id
        WHERE t.occurred_at <= {{as_of:DateTime64(3, 'UTC')}}
          AND t.occurred_at > {{as_of:DateTime64(3, 'UTC')}} - toIntervalSecond({{recent:UInt32}})
        GROUP BY c.buyer_id, c.persona, c.last_touch_at, c.last_touch_channel, c.preferred_channel
        HAVING score > 0
        ORDER BY score DESC, c.buyer_id
        LIMIT {{limit:UInt32}}
    """
    parameters = {
        "as_of": as_of,
        "recent": int(recent.total_seconds()),
        "limit": limit,
        "intent": intent,
    }
    return [
        HighIntentBuyer(
            str(buyer), persona, round(float(score), 3), last_at, last_channel, preferred
        )
        for buyer, persona, score, last_at, last_channel, preferred in _rows(
            client, sql, parameters, "high-intent query"
        )
    ]
