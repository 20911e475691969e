"""Which channels work? Touches, buyers, purchasers and revenue per channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Final

from sinks.analysis._common import (
    Period,
    Source,
    _rows,
    period_condition,
)
from sinks.analysis.attribution import AttributionShare, attribution
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "ChannelEffect",
    "channel_effectiveness",
]


@dataclass(frozen=True, slots=True)
class ChannelEffect:
    channel: str
    touches: int
    buyers: int
    purchasers: int
    revenue: Decimal
    """Revenue credited to the channel (linear attribution)."""

    @property
    def conversion_pct(self) -> float | None:
        return None if self.buyers == 0 else 100.0 * self.purchasers / self.buyers

    @property
    def revenue_per_touch(self) -> Decimal | None:
        return None if self.touches == 0 else self.revenue / self.touches


_RAW: Final = """
    SELECT channel, count() AS touches, uniqExact(buyer_id) AS buyers,
           uniqExactIf(buyer_id, buyer_purchases > 0) AS purchasers
    FROM {touchpoints} AS t
    LEFT JOIN (
        SELECT buyer_id, purchases AS buyer_purchases FROM {db}.journey_state FINAL
    ) AS j USING (buyer_id)
    WHERE NOT t.is_purchase AND {period}
    GROUP BY channel
    ORDER BY channel
"""


def channel_effectiveness(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    lookback: timedelta,
    linear: Sequence[AttributionShare] | None = None,
    source: Source = "summary",
) -> list[ChannelEffect]:
    """Per channel: touches, buyers touched, how many of them purchased, revenue credited.

    ``linear``: the linear attribution by channel for the same period and ``lookback``, when
    the caller has it already (the report computes every model once); else it is queried.

    From the summaries, over all time: buyers and purchasers are counted in
    ``buyer_channels`` (one row per buyer and channel) and the touches in ``touchpoints``
    without a join; for a period, the touches in it, purchasers matched against the set of
    buyers with a purchase instead of joined to every journey."""
    db = identifier(database)
    period = period or Period()
    purchasers = f"(SELECT buyer_id FROM {db}.journey_state FINAL WHERE purchases > 0)"
    if source == "summary" and period == Period():
        sql = f"""
            SELECT b.channel, t.touches, b.buyers, b.purchasers
            FROM (
                SELECT channel, uniqExact(buyer_id) AS buyers,
                       uniqExactIf(buyer_id, buyer_id IN {purchasers}) AS purchasers
                FROM {by_person(db, "buyer_channels")}
                GROUP BY channel
            ) AS b
            INNER JOIN (
                SELECT channel, count() AS touches
                FROM {db}.touchpoints FINAL
                WHERE NOT is_purchase
                GROUP BY channel
            ) AS t USING (channel)
            ORDER BY b.channel
        """
    elif source == "summary":
        sql = f"""
            SELECT channel, count() AS touches, uniqExact(buyer_id) AS buyers,
                   uniqExactIf(buyer_id, buyer_id IN {purchasers}) AS purchasers
            FROM {by_person(db, "touchpoints")}
            WHERE NOT is_purchase AND {period_condition("occurred_at")}
            GROUP BY channel
            ORDER BY channel
        """
    else:
        sql = _RAW.format(
            db=db,
            touchpoints=by_person(db, "touchpoints"),
            period=period_condition("t.occurred_at"),
        )
    if linear is None:
        linear = attribution(
            client,
            database,
            model="linear",
            by="channel",
            period=period,
            lookback=lookback,
            source=source,
        )
    credited = {share.key: share.revenue for share in linear}
    return [
        ChannelEffect(
            str(channel),
            int(touches),
            int(buyers),
            int(purchasers),
            credited.get(str(channel), Decimal(0)),
        )
        for channel, touches, buyers, purchasers in _rows(
            client, sql, period.parameters(), "channel effectiveness query"
        )
    ]
