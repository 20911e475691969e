"""Analysis queries: drop-off by stage × channel, exits by stage × channel, table counts.

Every query reads the deduplicated view of a table (``FINAL``) so a replayed
batch never shows up twice. The stage funnel is :func:`sinks.analysis.funnel` (one
definition for the report, ``--brief`` and the KPI targets). A :class:`Period`
restricts both questions here to the funnel's buyers: those whose first touch falls
in it, so the drop-offs per stage add up to the funnel's *dropped*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis import Period, period_condition
from sinks.clickhouse import Client, identifier, translate_error

__all__ = [
    "DropoffCount",
    "ExitCount",
    "dead_letter_counts",
    "dropoffs_by_stage_channel",
    "exits_by_stage_channel",
    "stage_names",
    "table_counts",
]


@dataclass(frozen=True, slots=True)
class DropoffCount:
    stage: str
    channel: str
    buyers: int


@dataclass(frozen=True, slots=True)
class ExitCount:
    stage: str
    kind: str
    channel: str
    exits: int


def _rows(
    client: Client, sql: str, parameters: dict[str, object], action: str
) -> list[tuple[Any, ...]]:
    try:
        return [tuple(row) for row in client.query(sql, parameters=parameters).result_rows]
    except ClickHouseError as exc:
        raise translate_error(exc, action) from exc


def dropoffs_by_stage_channel(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[DropoffCount]:
    """Buyers who stalled and never recovered, by stage (in ``stages``' order) and the
    channel of their last touch; buyers whose first touch is in ``period`` (the funnel's
    buyers)."""
    db = identifier(database)
    sql = f"""
        SELECT stage, ifNull(last_touch_channel, '(none)') AS channel, count() AS buyers
        FROM {db}.dropoffs FINAL
        WHERE recovered_at IS NULL AND buyer_id IN (
            SELECT buyer_id FROM {db}.journey_state FINAL
            WHERE furthest_stage IS NOT NULL AND {period_condition("first_touch_at")}
        )
        GROUP BY stage, channel
        ORDER BY indexOf({stages.sql_array()}, stage), stage, buyers DESC, channel
    """
    return [
        DropoffCount(str(stage), str(channel), int(buyers))
        for stage, channel, buyers in _rows(
            client, sql, (period or Period()).parameters(), "drop-off query"
        )
    ]


def exits_by_stage_channel(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[ExitCount]:
    """Exits (unsubscribe, opt-out, cancellation, refund…) by the stage the buyer had reached
    (``(none)`` first, then in ``stages``' order); of buyers whose first touch is in
    ``period`` (the funnel's buyers)."""
    sql = f"""
        SELECT
            if(tupleElement(e, 'stage') = '', '(none)', tupleElement(e, 'stage')) AS stage,
            tupleElement(e, 'kind') AS kind,
            tupleElement(e, 'channel') AS channel,
            count() AS exit_count
        FROM {identifier(database)}.journey_state FINAL
        ARRAY JOIN exits AS e
        WHERE {period_condition("first_touch_at")}
        GROUP BY stage, kind, channel
        ORDER BY indexOf({stages.sql_array()}, stage), stage, kind, channel
    """
    return [
        ExitCount(str(stage), str(kind), str(channel), int(count))
        for stage, kind, channel, count in _rows(
            client, sql, (period or Period()).parameters(), "exits query"
        )
    ]


def stage_names(client: Client, database: str) -> list[str]:
    """Every stage name the touchpoints were classified into (from the daily funnel)."""
    sql = f"SELECT DISTINCT stage FROM {identifier(database)}.funnel_daily ORDER BY stage"
    return [str(stage) for (stage,) in _rows(client, sql, {}, "stage names query")]


def dead_letter_counts(client: Client, database: str) -> dict[str, int]:
    sql = f"SELECT reason, count() FROM {identifier(database)}.dead_letters FINAL GROUP BY reason"
    return {
        str(reason): int(count) for reason, count in _rows(client, sql, {}, "dead-letter query")
    }


def table_counts(client: Client, database: str) -> dict[str, int]:
    """Row counts (deduplicated) of the core tables."""
    counts: dict[str, int] = {}
    for table in ("touchpoints", "stage_transitions", "journey_state", "dropoffs", "dead_letters"):
        rows = _rows(
            client,
            f"SELECT count() FROM {identifier(database)}.{table} FINAL",
            {},
            f"count {table}",
        )
        counts[table] = int(rows[0][0])
    return counts
