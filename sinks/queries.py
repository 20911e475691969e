"""Analysis queries: the stage funnel, drop-off by stage × channel, exits by stage × channel.

Every query reads the deduplicated view of a table (``FINAL``) so a replayed
batch never shows up twice. Grouping dimensions come from a fixed map, never
from user text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.enums import STAGES, Stage
from sinks.clickhouse import Client, identifier, translate_error

__all__ = [
    "GROUPINGS",
    "DropoffCount",
    "ExitCount",
    "FunnelStep",
    "Grouping",
    "dead_letter_counts",
    "dropoffs_by_stage_channel",
    "exits_by_stage_channel",
    "stage_funnel",
    "table_counts",
]

Grouping = Literal["channel", "campaign", "persona"]

GROUPINGS: Final[dict[Grouping | None, str]] = {
    None: "'all'",
    "channel": "ifNull(first_touch_channel, '(none)')",
    "campaign": "ifNull(first_touch_campaign, '(none)')",
    "persona": "ifNull(persona, '(unknown)')",
}
"""Funnel splits: by the channel or campaign of the buyer's first touch, or by persona."""

_STAGE_NAMES: Final = "[" + ", ".join(f"'{stage.value}'" for stage in STAGES) + "]"


@dataclass(frozen=True, slots=True)
class FunnelStep:
    group: str
    stage: Stage
    reached: int
    moved_on: int
    dropped: int

    @property
    def in_progress(self) -> int:
        return self.reached - self.moved_on - self.dropped

    @property
    def conversion_pct(self) -> float | None:
        """Share of buyers who reached this stage and moved past it (None for the last stage)."""
        if self.reached == 0 or self.stage is STAGES[-1]:
            return None
        return 100.0 * self.moved_on / self.reached


@dataclass(frozen=True, slots=True)
class DropoffCount:
    stage: Stage
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


def stage_funnel(client: Client, database: str, by: Grouping | None = None) -> list[FunnelStep]:
    """Per stage: buyers who reached it, moved on past it, and dropped off there."""
    group = GROUPINGS[by]
    sql = f"""
        SELECT
            {group} AS grp,
            rank,
            countIf(toInt8(furthest_stage) >= rank) AS reached,
            countIf(toInt8(furthest_stage) > rank) AS moved_on,
            countIf(toInt8(furthest_stage) = rank AND toInt8(dropoff_stage) = rank) AS dropped
        FROM {identifier(database)}.journey_state FINAL
        ARRAY JOIN range(1, 7) AS rank
        WHERE furthest_stage IS NOT NULL
        GROUP BY grp, rank
        ORDER BY grp, rank
    """
    return [
        FunnelStep(str(grp), STAGES[int(rank) - 1], int(reached), int(moved), int(dropped))
        for grp, rank, reached, moved, dropped in _rows(client, sql, {}, "stage funnel query")
    ]


def dropoffs_by_stage_channel(client: Client, database: str) -> list[DropoffCount]:
    """Buyers who stalled and never recovered, by stage and the channel of their last touch."""
    sql = f"""
        SELECT stage, ifNull(last_touch_channel, '(none)') AS channel, count() AS buyers
        FROM {identifier(database)}.dropoffs FINAL
        WHERE recovered_at IS NULL
        GROUP BY stage, channel
        ORDER BY stage, buyers DESC, channel
    """
    return [
        DropoffCount(Stage(str(stage)), str(channel), int(buyers))
        for stage, channel, buyers in _rows(client, sql, {}, "drop-off query")
    ]


def exits_by_stage_channel(client: Client, database: str) -> list[ExitCount]:
    """Exits (unsubscribe, opt-out, cancellation, refund…) by the stage the buyer had reached."""
    sql = f"""
        SELECT
            if(tupleElement(e, 'stage') = '', '(none)', tupleElement(e, 'stage')) AS stage,
            tupleElement(e, 'kind') AS kind,
            tupleElement(e, 'channel') AS channel,
            count() AS exit_count
        FROM {identifier(database)}.journey_state FINAL
        ARRAY JOIN exits AS e
        GROUP BY stage, kind, channel
        ORDER BY indexOf({_STAGE_NAMES}, stage), kind, channel
    """
    return [
        ExitCount(str(stage), str(kind), str(channel), int(count))
        for stage, kind, channel, count in _rows(client, sql, {}, "exits query")
    ]


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
