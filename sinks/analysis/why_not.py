"""Why do new customers not buy, or not stay?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    DEFAULT_PURCHASE_STAGE,
    Period,
    Source,
    _rows,
    _top_keys,
    period_condition,
)
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "WhyNot",
    "why_not_buy_or_stay",
]


_TOP_EXITS: Final = _top_keys(
    3,
    "sumMap(arrayMap(e -> tupleElement(e, 'kind'), j.exits), arrayMap(e -> toUInt64(1), j.exits))",
)


@dataclass(frozen=True, slots=True)
class WhyNot:
    segment: Literal["never_bought", "bought_once"]
    last_channel: str
    last_action: str
    buyers: int
    with_support_ticket: int
    exited: int
    top_exits: tuple[str, ...]


def why_not_buy_or_stay(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE,
    source: Source = "summary",
) -> list[WhyNot]:
    """Buyers who never purchased, and first-time buyers who never came back (one purchase,
    no stage past the purchase stage): by their last touch, how many had a support ticket,
    how many exited (and how)."""
    db = identifier(database)
    highest = (
        stages.rank[purchase_stage] + 1
        if purchase_stage is not None and purchase_stage in stages
        else len(stages)
    )
    # per buyer: the latest touch's event type and the support tickets opened
    if source == "raw":
        per_buyer = f"""
            SELECT buyer_id, argMax(event_type, occurred_at) AS last_action,
                   countIf(event_type = 'ticket_opened') AS tickets
            FROM {by_person(db, "touchpoints")}
            GROUP BY buyer_id"""
    else:
        per_buyer = f"""
            SELECT l.buyer_id AS buyer_id, l.last_action AS last_action, k.tickets AS tickets
            FROM (
                SELECT buyer_id, argMaxMerge(last_action) AS last_action
                FROM {by_person(db, "buyer_last_touch", final=False)} GROUP BY buyer_id
            ) AS l
            LEFT JOIN (
                SELECT buyer_id, count() AS tickets FROM {by_person(db, "support_touches")}
                WHERE event_type = 'ticket_opened' GROUP BY buyer_id
            ) AS k USING (buyer_id)"""
    sql = f"""
        SELECT
            if(purchases = 0, 'never_bought', 'bought_once') AS segment,
            ifNull(j.last_touch_channel, '(none)') AS last_channel,
            ifNull(t.last_action, '(none)') AS last_action,
            count() AS buyers,
            countIf(t.tickets > 0) AS with_ticket,
            countIf(length(j.exits) > 0) AS exited,
            {_TOP_EXITS} AS top_exits
        FROM {db}.journey_state AS j FINAL
        LEFT JOIN ({per_buyer}) AS t USING (buyer_id)
        WHERE (j.purchases = 0 OR (j.purchases = 1 AND
               indexOf({stages.sql_array()}, j.furthest_stage) BETWEEN 1 AND {{highest:UInt32}}))
          AND {period_condition("j.first_touch_at")}
        GROUP BY segment, last_channel, last_action
        ORDER BY segment DESC, buyers DESC, last_channel, last_action
    """
    parameters = {**(period or Period()).parameters(), "highest": highest}
    return [
        WhyNot(
            segment,
            str(channel),
            str(action),
            int(buyers),
            int(ticket),
            int(exited),
            tuple(str(kind) for kind in exits),
        )
        for segment, channel, action, buyers, ticket, exited, exits in _rows(
            client, sql, parameters, "why-not query"
        )
    ]
