"""When do buyers interact, click and book? Touches per hour of the week."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sinks.analysis._common import (
    Period,
    _rows,
    period_condition,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "ACTION_KINDS",
    "HeatCell",
    "hour_of_week",
]


ACTION_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "click": ("ad_click", "email_click", "sms_click"),
    "book": ("purchase", "booking"),
}
"""Kinds of action for the hour-of-week question; every other event is ``interact``."""


@dataclass(frozen=True, slots=True)
class HeatCell:
    channel: str
    kind: str
    day_of_week: int
    """1 = Monday … 7 = Sunday (UTC)."""
    hour: int
    touches: int


def _kind_expression(column: str) -> str:
    clauses = ", ".join(
        f"{column} IN ({', '.join(repr(event) for event in events)}), '{kind}'"
        for kind, events in ACTION_KINDS.items()
    )
    return f"multiIf({clauses}, 'interact')"


def hour_of_week(client: Client, database: str, *, period: Period | None = None) -> list[HeatCell]:
    """Touches per channel × kind of action (interact, click, book) × weekday × hour (UTC).

    Without a period this reads the ``interactions_hour_of_week`` aggregate; with one, the
    raw touchpoints in it.
    """
    db = identifier(database)
    kind = _kind_expression("event_type")
    if period is None:
        sql = f"""
            SELECT channel, {kind} AS kind, day_of_week, hour, sum(touches) AS touches
            FROM {db}.interactions_hour_of_week
            GROUP BY channel, kind, day_of_week, hour
            ORDER BY channel, kind, day_of_week, hour
        """
        parameters: dict[str, Any] = {}
    else:
        sql = f"""
            SELECT channel, {kind} AS kind, toDayOfWeek(occurred_at) AS day_of_week,
                   toHour(occurred_at) AS hour, count() AS touches
            FROM {db}.touchpoints FINAL
            WHERE {period_condition("occurred_at")}
            GROUP BY channel, kind, day_of_week, hour
            ORDER BY channel, kind, day_of_week, hour
        """
        parameters = period.parameters()
    return [
        HeatCell(str(channel), str(kind_), int(day), int(hour), int(touches))
        for channel, kind_, day, hour, touches in _rows(
            client, sql, parameters, "hour-of-week query"
        )
    ]
