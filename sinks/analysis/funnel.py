"""Where do customers drop off? The stage funnel, from ``journey_state``."""

from __future__ import annotations

from collections.abc import Sequence
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
    "funnels",
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
    return funnels(client, database, (by,), period=period, window=window, stages=stages)[by]


def funnels(
    client: Client,
    database: str,
    groups: Sequence[FunnelGroup | None],
    *,
    period: Period | None = None,
    window: timedelta | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> dict[FunnelGroup | None, list[FunnelRow]]:
    """:func:`funnel` split by each of ``groups`` (``None``: not split), from one read of
    ``journey_state FINAL`` (a grouping set each): the same rows as one query per split."""
    db = identifier(database)
    names = stages.names
    last = len(names)
    wanted = list(dict.fromkeys(groups))
    # One row per group, every rank's figures in columns of their own: each stage's entry
    # time is found once per buyer, by a constant key (an ARRAY JOIN over the ranks read the
    # map by a key computed per row, six times per buyer), and both quantiles come from one
    # state. values[indexOf(keys, name)] is stage_entered_at[name] (the first entry of that
    # key, the type's default if none) found ~2x faster than the map subscript.
    entered = [f"entered_values[indexOf(entered_keys, '{name}')]" for name in names]
    columns = []
    for rank in range(1, last + 1):
        if rank < last:
            gap = f"dateDiff('second', {entered[rank - 1]}, {entered[rank]})"
            moved = f"""countIf(furthest > {rank}),
            countIf(furthest > {rank} AND ({{window:UInt64}} = 0 OR {gap} <= {{window:UInt64}})),
            quantilesExactIf(0.5, 0.9)({gap}, furthest > {rank})"""
        else:  # nobody moves on from the last stage
            moved = "0, 0, [0, 0]"
        columns.append(
            f"""countIf(furthest >= {rank}), {moved},
            countIf(furthest = {rank} AND dropped_at = {rank})"""
        )
    # Each split's key is (its number, the group): in a row of another split's grouping set
    # it holds the default (0, ''), so the split of a row is its one key with a number.
    keys = ", ".join(
        f"({index + 1}, {_GROUPS[group]}) AS grp_{index}" for index, group in enumerate(wanted)
    )
    grouping = (
        "grp_0"
        if len(wanted) == 1
        else "GROUPING SETS (" + ", ".join(f"(grp_{i})" for i in range(len(wanted))) + ")"
    )
    select = ",\n            ".join(columns)
    sql = f"""
        WITH indexOf({stages.sql_array()}, furthest_stage) AS furthest,
             indexOf({stages.sql_array()}, dropoff_stage) AS dropped_at,
             mapKeys(stage_entered_at) AS entered_keys,
             mapValues(stage_entered_at) AS entered_values
        SELECT
            arrayFirst(key -> key.1 > 0,
                       [{", ".join(f"grp_{i}" for i in range(len(wanted)))}]) AS split,
            {select}
        FROM (SELECT *, {keys} FROM {db}.journey_state FINAL
              WHERE furthest_stage IS NOT NULL AND {period_condition("first_touch_at")})
        GROUP BY {grouping}
        ORDER BY split
    """
    parameters = {
        **(period or Period()).parameters(),
        "window": int(window.total_seconds()) if window else 0,
    }
    result: dict[FunnelGroup | None, list[FunnelRow]] = {group: [] for group in wanted}
    for (number, grp), *values in _rows(client, sql, parameters, "funnel query"):
        rows = result[wanted[int(number) - 1]]
        for rank in range(1, last + 1):
            reached, moved, in_window, quantiles, dropped = values[5 * (rank - 1) : 5 * rank]
            moved_any = int(moved) > 0
            rows.append(
                FunnelRow(
                    str(grp),
                    names[rank - 1],
                    int(reached),
                    int(moved),
                    int(in_window),
                    int(dropped),
                    float(quantiles[0]) / _DAY if moved_any else None,
                    float(quantiles[1]) / _DAY if moved_any else None,
                    rank == last,
                )
            )
    return result
