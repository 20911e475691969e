"""Where do customers drop off? The stage funnel, from ``journey_state``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.analysis._common import (
    _DAY,
    Period,
    _rows,
    period_condition,
)
from sinks.clickhouse import Client, identifier

__all__ = [
    "FunnelGroup",
    "FunnelRow",
    "funnel",
]


FunnelGroup = Literal["channel", "campaign", "persona", "tier"]


_GROUPS: Final[dict[FunnelGroup | None, str]] = {
    None: "'all'",
    "channel": "ifNull(first_touch_channel, '(none)')",
    "campaign": "ifNull(first_touch_campaign, '(none)')",
    "persona": "ifNull(persona, '(unknown)')",
    "tier": "ifNull(tier, '(unknown)')",
}


@dataclass(frozen=True, slots=True)
class FunnelRow:
    group: str
    stage: str
    reached: int
    moved_on: int
    moved_on_in_window: int
    dropped: int
    median_days_to_next: float | None
    p90_days_to_next: float | None
    is_last: bool
    """The last of the stages: nobody moves on from it (no conversion)."""

    @property
    def in_progress(self) -> int:
        return self.reached - self.moved_on - self.dropped

    @property
    def conversion_pct(self) -> float | None:
        """Moved on within the conversion window, as a share of those who reached the stage."""
        if self.reached == 0 or self.is_last:
            return None
        return 100.0 * self.moved_on_in_window / self.reached

    @property
    def dropoff_pct(self) -> float | None:
        return None if self.reached == 0 else 100.0 * self.dropped / self.reached


def funnel(
    client: Client,
    database: str,
    *,
    by: FunnelGroup | None = None,
    period: Period | None = None,
    window: timedelta | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[FunnelRow]:
    """Per stage (in ``stages``' order): reached, moved on (within ``window`` of reaching
    it), dropped, and the median / p90 time to the next stage; buyers whose first touch is
    in ``period``. A buyer whose furthest stage is not one of ``stages`` reached none."""
    db = identifier(database)
    names = stages.sql_array()
    sql = f"""
        WITH indexOf({names}, furthest_stage) AS furthest
        SELECT
            {_GROUPS[by]} AS grp,
            rank,
            countIf(furthest >= rank) AS reached,
            countIf(furthest > rank) AS moved_on,
            countIf(furthest > rank AND ({{window:UInt64}} = 0 OR
                dateDiff('second', stage_entered_at[{names}[rank]],
                         stage_entered_at[{names}[rank + 1]]) <= {{window:UInt64}}))
                AS moved_on_in_window,
            countIf(furthest = rank AND indexOf({names}, dropoff_stage) = rank) AS dropped,
            quantileExactIf(0.5)(
                dateDiff('second', stage_entered_at[{names}[rank]],
                         stage_entered_at[{names}[rank + 1]]),
                furthest > rank) AS median_seconds,
            quantileExactIf(0.9)(
                dateDiff('second', stage_entered_at[{names}[rank]],
                         stage_entered_at[{names}[rank + 1]]),
                furthest > rank) AS p90_seconds
        FROM {db}.journey_state FINAL
        ARRAY JOIN range(1, {len(stages) + 1}) AS rank
        WHERE furthest_stage IS NOT NULL AND {period_condition("first_touch_at")}
        GROUP BY grp, rank
        ORDER BY grp, rank
    """
    parameters = {
        **(period or Period()).parameters(),
        "window": int(window.total_seconds()) if window else 0,
    }
    result = []
    for grp, rank, reached, moved, in_window, dropped, median, p90 in _rows(
        client, sql, parameters, "funnel query"
    ):
        moved_any = int(moved) > 0
        result.append(
            FunnelRow(
                str(grp),
                stages.names[int(rank) - 1],
                int(reached),
                int(moved),
                int(in_window),
                int(dropped),
                float(median) / _DAY if moved_any else None,
                float(p90) / _DAY if moved_any else None,
                int(rank) == len(stages),
            )
        )
    return result
