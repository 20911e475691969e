"""Which promos work? Purchases, buyers and revenue per promo code."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sinks.analysis._common import (
    Period,
    Source,
    _rows,
    period_condition,
    purchases_from,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "PromoEffect",
    "promo_effectiveness",
]


@dataclass(frozen=True, slots=True)
class PromoEffect:
    promo: str
    purchases: int
    buyers: int
    revenue: Decimal
    promo_only_buyers: int
    """Buyers every one of whose purchases used a promo."""

    @property
    def average_order(self) -> Decimal | None:
        return None if self.purchases == 0 else self.revenue / self.purchases


def promo_effectiveness(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    source: Source = "summary",
) -> list[PromoEffect]:
    """Per promo code (``(none)`` = full price): purchases, buyers, revenue, promo-only buyers."""
    db = identifier(database)
    sql = f"""
        WITH orders AS (
            SELECT buyer_id, ifNull(promo, '(none)') AS promo,
                   toDecimal128(ifNull(revenue, 0), 4) AS revenue
            FROM {purchases_from(db, source)} AND {period_condition("occurred_at")}
        ),
        promo_only AS (
            SELECT buyer_id FROM orders GROUP BY buyer_id HAVING countIf(promo = '(none)') = 0
        )
        SELECT promo, count() AS purchases, uniqExact(buyer_id) AS buyers, sum(revenue) AS revenue,
               uniqExactIf(buyer_id, buyer_id IN (SELECT buyer_id FROM promo_only)) AS promo_only
        FROM orders
        GROUP BY promo
        ORDER BY revenue DESC, promo
    """
    return [
        PromoEffect(str(promo), int(purchases), int(buyers), Decimal(revenue), int(only))
        for promo, purchases, buyers, revenue, only in _rows(
            client, sql, (period or Period()).parameters(), "promo effectiveness query"
        )
    ]
