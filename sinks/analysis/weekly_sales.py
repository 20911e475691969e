"""Sales volume and revenue per week."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sinks.analysis._common import (
    _FAR_PAST,
    Period,
    Source,
    _date_time,
    _rows,
    period_condition,
    purchases_from,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "WeekSales",
    "weekly_sales",
]


@dataclass(frozen=True, slots=True)
class WeekSales:
    week: datetime
    purchases: int
    revenue: Decimal


def weekly_sales(
    client: Client, database: str, *, period: Period | None = None, source: Source = "summary"
) -> list[WeekSales]:
    """Sales volume and revenue per week (Monday), for peaks and dips."""
    db = identifier(database)
    sql = f"""
        SELECT toMonday(occurred_at) AS week, count(), sum(toDecimal128(ifNull(revenue, 0), 4))
        FROM {purchases_from(db, source)} AND {period_condition("occurred_at")}
        GROUP BY week ORDER BY week
    """
    return [
        WeekSales(_date_time(week) or _FAR_PAST, int(count), Decimal(revenue))
        for week, count, revenue in _rows(
            client, sql, (period or Period()).parameters(), "weekly sales query"
        )
    ]
