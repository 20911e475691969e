"""The buyer tracker: every buyer ranked by reward over effort, CRM joined."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sinks.analysis._common import (
    _FAR_FUTURE,
    Source,
    _date_time,
    _rows,
    purchases_from,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "TrackedBuyer",
    "buyer_tracker",
]


@dataclass(frozen=True, slots=True)
class TrackedBuyer:
    buyer_id: str
    client_type: str
    frequency_class: str
    """prospect (no purchase), new (one), existing (several), lapsed (none for a while)."""
    buyer_type: str
    """promo-only, mature, seasonal, repeat, one-time or prospect (see docs/analysis.md)."""
    revenue: Decimal
    potential_revenue: Decimal
    """The 75th percentile revenue of repeat buyers of the same persona (at least ``revenue``)."""
    preferred_channel: str | None
    touches_per_week: float
    purchases: int
    discounted_purchases: int
    peak_week: datetime | None
    dip_week: datetime | None
    revenue_per_touch: Decimal
    """Reward over effort: revenue per touch spent on the buyer (the tracker's ranking)."""
    client_name: str
    region: str
    key_decision_maker: str
    payment_terms: str
    contract_on_file: bool | None
    sla: str


def buyer_tracker(
    client: Client,
    database: str,
    *,
    as_of: datetime | None = None,
    lapsed_after: timedelta = timedelta(days=90),
    limit: int = 100,
    source: Source = "summary",
) -> list[TrackedBuyer]:
    """The buyer tracker, ranked by reward over effort (revenue per touch), CRM joined."""
    db = identifier(database)
    if as_of is None:
        newest = _rows(client, f"SELECT max(occurred_at) FROM {db}.touchpoints", {}, "newest time")
        as_of = newest[0][0] if newest and newest[0][0] is not None else _FAR_FUTURE
    # The ranking reads journey_state alone, and every join below adds at most one row per
    # journey (each is keyed by buyer, persona or CRM key), so the tracked buyers are chosen
    # first (the order ends on buyer_id: one answer) and only their purchases are read.
    sql = f"""
        WITH tracked AS (
            SELECT buyer_id, persona, tier, account_id, purchases, revenue, last_purchase_at,
                   preferred_channel, events, first_touch_at, last_touch_at
            FROM {db}.journey_state FINAL
            ORDER BY revenue / greatest(1, events) DESC, revenue DESC, buyer_id
            LIMIT {{limit:UInt32}}
        ),
        orders AS (
            SELECT buyer_id, occurred_at, toFloat64(ifNull(revenue, 0)) AS revenue,
                   promo IS NOT NULL AS discounted
            FROM {purchases_from(db, source)} AND buyer_id IN (SELECT buyer_id FROM tracked)
        ),
        per_buyer AS (
            SELECT buyer_id, count() AS orders, countIf(discounted) AS discounted,
                   min(occurred_at) AS first_order, max(occurred_at) AS last_order,
                   uniqExact(toStartOfQuarter(occurred_at)) AS quarters
            FROM orders GROUP BY buyer_id
        ),
        weekly AS (
            SELECT buyer_id, toMonday(occurred_at) AS week, sum(revenue) AS revenue
            FROM orders GROUP BY buyer_id, week
        ),
        peaks AS (
            SELECT buyer_id, argMax(week, revenue) AS peak_week, argMin(week, revenue) AS dip_week
            FROM weekly GROUP BY buyer_id
        ),
        benchmark AS (
            SELECT ifNull(persona, '') AS persona_key, quantileExact(0.75)(revenue) AS potential
            FROM {db}.journey_state FINAL WHERE purchases >= 2 GROUP BY persona_key
        ),
        crm AS (SELECT * FROM {db}.crm_clients FINAL)
        SELECT
            j.buyer_id,
            multiIf(ifNull(c1.client_type, '') != '', c1.client_type,
                    ifNull(c2.client_type, '') != '', c2.client_type,
                    ifNull(j.tier, ifNull(j.persona, '(unknown)'))) AS client_type,
            multiIf(j.purchases = 0, 'prospect',
                    dateDiff('second', j.last_purchase_at, {{as_of:DateTime64(3, 'UTC')}})
                        > {{lapsed:UInt32}}, 'lapsed',
                    j.purchases = 1, 'new', 'existing') AS frequency_class,
            multiIf(ifNull(o.orders, 0) = 0, 'prospect',
                    o.discounted = o.orders, 'promo-only',
                    o.orders >= 3 AND dateDiff('day', o.first_order, o.last_order) >= 60, 'mature',
                    o.orders >= 2 AND o.quarters = 1, 'seasonal',
                    o.orders >= 2, 'repeat', 'one-time') AS buyer_type,
            j.revenue,
            greatest(toDecimal64(ifNull(b.potential, 0), 4), toDecimal64(j.revenue, 4))
                AS potential,
            j.preferred_channel,
            j.events / greatest(1., dateDiff('second', j.first_touch_at, j.last_touch_at)
                                    / (7 * 86400.)) AS per_week,
            j.purchases,
            ifNull(o.discounted, 0) AS discounted,
            p.peak_week, p.dip_week,
            j.revenue / greatest(1, j.events) AS per_touch,
            coalesce(c1.client_name, c2.client_name, '') AS client_name,
            coalesce(c1.region, c2.region, '') AS region,
            coalesce(c1.key_decision_maker, c2.key_decision_maker, '') AS decision_maker,
            coalesce(c1.payment_terms, c2.payment_terms, '') AS payment_terms,
            coalesce(c1.contract_on_file, c2.contract_on_file) AS contract,
            coalesce(c1.sla, c2.sla, '') AS sla
        FROM tracked AS j
        LEFT JOIN per_buyer AS o ON o.buyer_id = j.buyer_id
        LEFT JOIN peaks AS p ON p.buyer_id = j.buyer_id
        LEFT JOIN benchmark AS b ON b.persona_key = ifNull(j.persona, '')
        LEFT JOIN crm AS c1 ON c1.client_key = j.buyer_id
        LEFT JOIN crm AS c2 ON c2.client_key = ifNull(j.account_id, '')
        ORDER BY per_touch DESC, j.revenue DESC, j.buyer_id
        LIMIT {{limit:UInt32}}
    """
    parameters = {"as_of": as_of, "lapsed": int(lapsed_after.total_seconds()), "limit": limit}
    result = []
    for row in _rows(client, sql, parameters, "buyer tracker query"):
        (
            buyer,
            client_type,
            frequency,
            kind,
            revenue,
            potential,
            preferred,
            per_week,
            purchases,
            discounted,
            peak,
            dip,
            per_touch,
            name,
            region,
            maker,
            terms,
            contract,
            sla,
        ) = row
        has_orders = int(purchases) > 0
        result.append(
            TrackedBuyer(
                str(buyer),
                str(client_type),
                str(frequency),
                str(kind),
                Decimal(revenue),
                Decimal(potential),
                preferred,
                round(float(per_week), 3),
                int(purchases),
                int(discounted),
                _date_time(peak) if has_orders else None,
                _date_time(dip) if has_orders else None,
                Decimal(per_touch).quantize(Decimal("0.01")),
                str(name),
                str(region),
                str(maker),
                str(terms),
                None if contract is None else bool(contract),
                str(sla),
            )
        )
    return result
