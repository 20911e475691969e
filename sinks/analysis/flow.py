"""How buyers move between stages: counts of (from, to) moves."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    Period,
    _rows,
    period_condition,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "Flow",
    "transition_flow",
]


@dataclass(frozen=True, slots=True)
class Flow:
    from_stage: str
    """``(entry)`` for a buyer's first stage."""
    to_stage: str
    buyers: int


def transition_flow(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[Flow]:
    """How buyers moved between stages: counts of (from, to) moves, by ``stages``' order of
    the stage moved to."""
    db = identifier(database)
    sql = f"""
        SELECT ifNull(toString(from_stage), '(entry)') AS source, to_stage, count()
        FROM {db}.stage_transitions FINAL
        WHERE {period_condition("transitioned_at")}
        GROUP BY source, to_stage
        ORDER BY indexOf({stages.sql_array()}, to_stage), to_stage, source
    """
    return [
        Flow(str(source), str(target), int(count))
        for source, target, count in _rows(
            client, sql, (period or Period()).parameters(), "transition flow query"
        )
    ]
