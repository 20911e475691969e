"""What does a new buyer cost? Ad spend, CPA and ROAS per campaign or channel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Final, Literal

from sinks.analysis._common import (
    Period,
    _rows,
    period_condition,
)
from sinks.analysis.attribution import AttributionModel, AttributionShare, attribution
from sinks.clickhouse import Client, identifier

__all__ = [
    "AD_SPEND_CHANNEL",
    "SpendReturn",
    "spend_returns",
    "spend_total",
]


AD_SPEND_CHANNEL: Final = "ads"
"""The channel of imported ad spend: every ``ad_spend`` row comes from an ad platform."""


@dataclass(frozen=True, slots=True)
class SpendReturn:
    key: str
    """The campaign or channel (``all (blended)`` for :func:`spend_total`)."""
    spend: Decimal | None
    """Ad spend in the period; None when ``ad_spend`` has no row for it (nothing imported)."""
    acquisitions: float
    """New buyers credited to it: the attribution credit of first purchases in the period."""
    revenue: Decimal
    """Revenue credited to it: the attribution credit of every purchase in the period."""

    @property
    def cpa(self) -> Decimal | None:
        """Cost per acquisition, spend / acquisitions. None (shown as a dash) without spend
        (no row, or 0) and without acquisitions — never 0 or infinity."""
        if not self.spend or self.acquisitions <= 0:
            return None
        return self.spend / Decimal(repr(self.acquisitions))

    @property
    def roas(self) -> float | None:
        """Return on ad spend, revenue / spend. None (a dash) without spend (no row, or 0);
        0.0 for spend that brought no revenue."""
        if not self.spend:
            return None
        return float(self.revenue) / float(self.spend)


def spend_returns(
    client: Client,
    database: str,
    *,
    by: Literal["campaign", "channel"] = "campaign",
    period: Period | None = None,
    model: AttributionModel = "linear",
    lookback: timedelta = timedelta(days=30),
    half_life: timedelta = timedelta(days=7),
    shares: Sequence[AttributionShare] | None = None,
) -> list[SpendReturn]:
    """Per campaign or channel: ad spend, new buyers (acquisitions) and revenue credited by
    ``model`` (:func:`attribution`: purchases in ``period``), CPA and ROAS.

    A day's spend counts when the day (00:00 UTC) is in ``period``. Every ``ad_spend`` row is
    the ``ads`` channel; by campaign, the export's campaign name meets the touchpoints'
    ``campaign`` (summed over platforms). Keys with spend or credit are listed, most spend
    first. ``shares``: that attribution (``model`` by ``by``, same period, ``lookback`` and
    ``half_life``) when the caller has it already; else it is queried.
    """
    db = identifier(database)
    key = "campaign" if by == "campaign" else "{channel:String}"
    sql = f"""
        SELECT {key} AS spend_key, sum(cost) AS spend
        FROM {db}.ad_spend FINAL
        WHERE {period_condition("toDateTime64(day, 3, 'UTC')")}
        GROUP BY spend_key
    """
    parameters = {**(period or Period()).parameters(), "channel": AD_SPEND_CHANNEL}
    spend = {
        str(name): Decimal(cost) for name, cost in _rows(client, sql, parameters, "ad spend query")
    }
    if shares is None:
        shares = attribution(
            client,
            database,
            model=model,
            by=by,
            period=period,
            lookback=lookback,
            half_life=half_life,
        )
    credited = {share.key: share for share in shares}
    rows = [
        SpendReturn(
            name,
            spend.get(name),
            credited[name].acquisitions if name in credited else 0.0,
            credited[name].revenue if name in credited else Decimal(0),
        )
        for name in spend.keys() | credited.keys()
    ]
    return sorted(rows, key=lambda r: (r.spend is None, -(r.spend or 0), -r.revenue, r.key))


def spend_total(rows: Sequence[SpendReturn]) -> SpendReturn:
    """All spend, all new buyers, all revenue: the blended CPA and ROAS."""
    spends = [row.spend for row in rows if row.spend is not None]
    return SpendReturn(
        "all (blended)",
        sum(spends, Decimal(0)) if spends else None,
        sum(row.acquisitions for row in rows),
        sum((row.revenue for row in rows), Decimal(0)),
    )
