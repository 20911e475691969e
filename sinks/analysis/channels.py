"""Which channels work? Touches, buyers, purchasers and revenue per channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from sinks.analysis._common import (
    Period,
    _rows,
    period_condition,
)
from sinks.analysis.attribution import AttributionShare, attribution
from sinks.clickhouse import Client, identifier

__all__ = [
    "ChannelEffect",
    "channel_effectiveness",
]


# -- channels and promos ------------------------------------------------------------------


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


def channel_effectiveness(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    lookback: timedelta,
    linear: Sequence[AttributionShare] | None = None,
) -> list[ChannelEffect]:
    """Per channel: touches, buyers touched, how many of them purchased, revenue credited.

    ``linear``: the linear attribution by channel for the same period and ``lookback``, when
    the caller has it already (the report computes every model once); else it is queried."""
    db = identifier(database)
    sql = f"""
        SELECT channel, count() AS touches, uniqExact(buyer_id) AS buyers,
               uniqExactIf(buyer_id, buyer_purchases > 0) AS purchasers
        FROM {db}.touchpoints AS t FINAL
        LEFT JOIN (
            SELECT buyer_id, purchases AS buyer_purchases FROM {db}.journey_state FINAL
        ) AS j USING (buyer_id)
        WHERE NOT t.is_purchase AND {period_condition("t.occurred_at")}
        GROUP BY channel
        ORDER BY channel
    """
    if linear is None:
        linear = attribution(
            client, database, model="linear", by="channel", period=period, lookback=lookback
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
            client, sql, (period or Period()).parameters(), "channel effectiveness query"
        )
    ]
