"""Per persona: KPIs, exits, tickets, advocates."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    Period,
    Source,
    _rows,
    _top_keys,
    period_condition,
)
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "PersonaStats",
    "persona_stats",
]


_PREFERRED: Final = _top_keys(
    1,
    "sumMapIf([assumeNotNull(j.preferred_channel)], [toUInt64(1)], "
    "j.preferred_channel IS NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class PersonaStats:
    persona: str
    buyers: int
    purchasers: int
    revenue: Decimal
    web_visits_per_week: float
    csat: float | None
    nps: float | None
    preferred_channel: str | None
    exits: dict[str, int]
    tickets: int
    advocates: int


def persona_stats(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
    source: Source = "summary",
) -> list[PersonaStats]:
    """Per persona: KPIs (revenue, visit frequency, CSAT, NPS), exits, tickets, advocates
    (buyers who reached the last of ``stages``)."""
    db = identifier(database)
    # the support channel's touches: support_touches holds them (and every ticket_opened)
    # with the score already extracted from the properties
    touches, score = (
        (by_person(db, "touchpoints"), "JSONExtractInt(properties, 'score')")
        if source == "raw"
        else (by_person(db, "support_touches"), "score")
    )
    sql = f"""
        WITH scores AS (
            SELECT buyer_id,
                   avgIf({score}, event_type = 'csat') AS csat,
                   countIf(event_type = 'nps') AS nps_answers,
                   countIf(event_type = 'nps' AND {score} >= 9) AS promoters,
                   countIf(event_type = 'nps' AND {score} <= 6) AS detractors,
                   countIf(event_type = 'ticket_opened') AS tickets
            FROM {touches}
            WHERE channel = 'support'
            GROUP BY buyer_id
        )
        SELECT ifNull(j.persona, '(unknown)') AS persona, count() AS buyers,
               countIf(j.purchases > 0) AS purchasers, sum(j.revenue) AS revenue,
               avg(j.touches_by_channel['web'] / greatest(1., dateDiff('second', j.first_touch_at,
                   j.last_touch_at) / (7 * 86400.))) AS visits,
               avgIf(s.csat, s.csat > 0) AS csat,
               sum(s.nps_answers) AS answers, sum(s.promoters) AS promoters,
               sum(s.detractors) AS detractors,
               {_PREFERRED} AS preferred,
               sumMap(arrayMap(e -> tupleElement(e, 'kind'), j.exits),
                      arrayMap(e -> toUInt64(1), j.exits)) AS exits,
               sum(ifNull(s.tickets, 0)) AS tickets,
               countIf(j.furthest_stage = {{advocacy:String}}) AS advocates
        FROM {db}.journey_state AS j FINAL
        LEFT JOIN scores AS s ON s.buyer_id = j.buyer_id
        WHERE {period_condition("j.first_touch_at")}
        GROUP BY persona
        ORDER BY persona
    """
    result = []
    for (
        persona,
        buyers,
        purchasers,
        revenue,
        visits,
        csat,
        answers,
        promoters,
        detractors,
        preferred,
        exits,
        tickets,
        advocates,
    ) in _rows(
        client, sql, {**(period or Period()).parameters(), "advocacy": stages.last}, "persona query"
    ):
        answered = int(answers)
        result.append(
            PersonaStats(
                str(persona),
                int(buyers),
                int(purchasers),
                Decimal(revenue),
                round(float(visits), 3),
                None if csat is None or csat != csat else round(float(csat), 2),
                None
                if answered == 0
                else round(100.0 * (int(promoters) - int(detractors)) / answered, 1),
                preferred[0] if preferred else None,
                {str(kind): int(count) for kind, count in zip(exits[0], exits[1], strict=True)},
                int(tickets),
                int(advocates),
            )
        )
    return result
