"""Drop-off diagnosis: the last touch before a drop, and what came next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    Period,
    _rows,
    _top_keys,
    period_condition,
)
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "DropoffDiagnosis",
    "dropoff_diagnosis",
]


_TOP_NEXT_ACTIONS: Final = _top_keys(
    3, "sumMapIf([n.next_action], [toUInt64(1)], n.next_action != '')"
)


@dataclass(frozen=True, slots=True)
class DropoffDiagnosis:
    stage: str
    last_channel: str
    last_action: str
    buyers: int
    came_back: int
    next_actions: tuple[str, ...]
    """The most common first action after the drop (of those who came back)."""


def dropoff_diagnosis(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[DropoffDiagnosis]:
    """Per stage (in ``stages``' order): the last touch before the drop, and the next action
    after it (if any)."""
    db = identifier(database)
    sql = f"""
        WITH drops AS (
            SELECT buyer_id, stage, deadline,
                   ifNull(last_touch_channel, '(none)') AS last_channel,
                   ifNull(last_touch_event_type, '(none)') AS last_action
            FROM {db}.dropoffs FINAL
            WHERE {period_condition("deadline")}
        ),
        next_actions AS (
            -- only the touches after the deadline are grouped: a drop without one has no
            -- row here, and so no next action, as it had none among all its touches
            SELECT d.buyer_id AS buyer_id, d.stage AS stage,
                   argMin(t.event_type, t.occurred_at) AS next_action
            FROM drops AS d
            INNER JOIN {by_person(db, "touchpoints")} AS t ON t.buyer_id = d.buyer_id
            WHERE t.occurred_at > d.deadline
            GROUP BY buyer_id, stage
        )
        SELECT d.stage, d.last_channel, d.last_action, count() AS buyers,
               countIf(n.next_action != '') AS came_back,
               {_TOP_NEXT_ACTIONS} AS next_actions
        FROM drops AS d
        LEFT JOIN next_actions AS n ON n.buyer_id = d.buyer_id AND n.stage = d.stage
        GROUP BY d.stage, d.last_channel, d.last_action
        ORDER BY indexOf({stages.sql_array()}, d.stage), d.stage, buyers DESC, d.last_channel,
                 d.last_action
    """
    return [
        DropoffDiagnosis(
            str(stage),
            str(channel),
            str(action),
            int(buyers),
            int(back),
            tuple(str(item) for item in nexts),
        )
        for stage, channel, action, buyers, back, nexts in _rows(
            client, sql, (period or Period()).parameters(), "drop-off diagnosis query"
        )
    ]
