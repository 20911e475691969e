"""Retention cohorts by first-purchase week."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sinks.analysis._common import (
    Period,
    Source,
    _rows,
    period_condition,
    purchases_from,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "CohortCell",
    "retention_cohorts",
]


@dataclass(frozen=True, slots=True)
class CohortCell:
    cohort_week: datetime
    """Monday of the week of the buyers' first purchase."""
    week: int
    """Weeks after the first purchase (0 = the first week)."""
    cohort_size: int
    active: int
    """Buyers of the cohort who purchased in that week."""

    @property
    def retention_pct(self) -> float:
        return 100.0 * self.active / self.cohort_size if self.cohort_size else 0.0


def retention_cohorts(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    weeks: int = 12,
    source: Source = "summary",
) -> Sequence[CohortCell]:
    """Retention by first-purchase week: the share of each cohort purchasing k weeks later."""
    db = identifier(database)
    # One pass over the purchases: per buyer, the cohort (Monday of the first purchase) and
    # the distinct weeks after it with a purchase. Week 0 holds every buyer of the cohort,
    # so its count is the cohort's size.
    sql = f"""
        WITH buyers AS (
            SELECT toMonday(min(occurred_at)) AS cohort,
                   arrayDistinct(arrayMap(at -> intDiv(dateDiff('day', cohort, toMonday(at)), 7),
                                          groupArray(occurred_at))) AS weeks
            FROM {purchases_from(db, source)}
            GROUP BY buyer_id
            HAVING {period_condition("min(occurred_at)")}
        )
        SELECT cohort, week, count() AS active
        FROM buyers
        ARRAY JOIN weeks AS week
        WHERE week < {{weeks:UInt32}}
        GROUP BY cohort, week
        ORDER BY cohort, week
    """
    parameters = {**(period or Period()).parameters(), "weeks": weeks}
    rows = _rows(client, sql, parameters, "retention cohort query")
    sizes = {cohort: int(active) for cohort, week, active in rows if int(week) == 0}
    return [
        CohortCell(
            datetime(cohort.year, cohort.month, cohort.day, tzinfo=UTC),
            int(week),
            sizes[cohort],
            int(active),
        )
        for cohort, week, active in rows
    ]
