"""One column spec per answer, shared by the terminal (:mod:`sinks.report`) and the HTML
(:mod:`sinks.html_report`) renderers: the header, how a row gives the cell's value, and
what kind of value it is. Each renderer formats a kind its own way (the terminal prints
``1,234.56`` and ``-``; the HTML right-aligns numbers and prints ``–``), so a column is
added, renamed or dropped here once for both.

A ``wide`` column is shown where there is room: in the HTML report, not in the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Generic, Literal, TypeVar

from sinks.analysis import (
    ChannelEffect,
    DropoffDiagnosis,
    FunnelRow,
    HighIntentBuyer,
    PromoEffect,
    SpendReturn,
    TrackedBuyer,
    WhyNot,
)
from sinks.queries import ExitCount

__all__ = [
    "CHANNELS",
    "DIAGNOSIS",
    "EXITS",
    "FUNNEL",
    "FUNNEL_BY",
    "HIGH_INTENT",
    "PROMOS",
    "TRACKER",
    "WHY_NOT",
    "Column",
    "Kind",
    "Row",
    "Value",
    "spend_columns",
]

Row = TypeVar("Row")
Kind = Literal["text", "count", "number", "money", "pct", "days", "amount"]
"""text: a string (empty or None shown as a dash); count: an int; number: a float as it
is; money: currency; pct: a percentage; days: a duration in days; amount: a float shown
with two decimals and thousands separators (credits, ratios, scores)."""
Value = str | int | float | Decimal | None


@dataclass(frozen=True, slots=True)
class Column(Generic[Row]):
    header: str
    value: Callable[[Row], Value]
    kind: Kind = "text"
    wide: bool = False
    """Shown in the HTML report only (the terminal has no room for it)."""


def _joined(items: Sequence[str]) -> str:
    return ", ".join(items)


FUNNEL: Final[tuple[Column[FunnelRow], ...]] = (
    Column("stage", lambda r: r.stage),
    Column("reached", lambda r: r.reached, "count"),
    Column("moved on", lambda r: r.moved_on, "count"),
    Column("in window", lambda r: r.moved_on_in_window, "count"),
    Column("dropped", lambda r: r.dropped, "count"),
    Column("in progress", lambda r: r.in_progress, "count"),
    Column("conversion %", lambda r: r.conversion_pct, "pct"),
    Column("drop-off %", lambda r: r.dropoff_pct, "pct"),
    Column("median days", lambda r: r.median_days_to_next, "days"),
    Column("p90 days", lambda r: r.p90_days_to_next, "days"),
)
FUNNEL_BY: Final[tuple[Column[FunnelRow], ...]] = (
    Column("group", lambda r: r.group),
    Column("stage", lambda r: r.stage),
    Column("reached", lambda r: r.reached, "count"),
    Column("moved on in window", lambda r: r.moved_on_in_window, "count"),
    Column("dropped", lambda r: r.dropped, "count"),
    Column("conversion %", lambda r: r.conversion_pct, "pct"),
)
DIAGNOSIS: Final[tuple[Column[DropoffDiagnosis], ...]] = (
    Column("stage", lambda d: d.stage),
    Column("last channel", lambda d: d.last_channel),
    Column("last action", lambda d: d.last_action),
    Column("buyers", lambda d: d.buyers, "count"),
    Column("came back", lambda d: d.came_back, "count"),
    Column("next actions", lambda d: _joined(d.next_actions)),
)
EXITS: Final[tuple[Column[ExitCount], ...]] = (
    Column("stage", lambda e: e.stage),
    Column("exit", lambda e: e.kind),
    Column("channel", lambda e: e.channel),
    Column("exits", lambda e: e.exits, "count"),
)
CHANNELS: Final[tuple[Column[ChannelEffect], ...]] = (
    Column("channel", lambda c: c.channel),
    Column("touches", lambda c: c.touches, "count"),
    Column("buyers", lambda c: c.buyers, "count"),
    Column("purchasers", lambda c: c.purchasers, "count"),
    Column("conversion %", lambda c: c.conversion_pct, "pct"),
    Column("revenue (linear)", lambda c: c.revenue, "money"),
    Column("revenue / touch", lambda c: c.revenue_per_touch, "money"),
)
PROMOS: Final[tuple[Column[PromoEffect], ...]] = (
    Column("promo", lambda p: p.promo),
    Column("purchases", lambda p: p.purchases, "count"),
    Column("buyers", lambda p: p.buyers, "count"),
    Column("revenue", lambda p: p.revenue, "money"),
    Column("avg order", lambda p: p.average_order, "money"),
    Column("promo-only buyers", lambda p: p.promo_only_buyers, "count"),
)
HIGH_INTENT: Final[tuple[Column[HighIntentBuyer], ...]] = (
    Column("buyer", lambda b: b.buyer_id),
    Column("persona", lambda b: b.persona),
    Column("score", lambda b: b.score, "amount"),
    Column("last touch", lambda b: b.last_touch_at.isoformat()[:16]),
    Column("last channel", lambda b: b.last_channel),
    Column("preferred channel", lambda b: b.preferred_channel),
)
WHY_NOT: Final[tuple[Column[WhyNot], ...]] = (
    Column("segment", lambda w: w.segment),
    Column("last channel", lambda w: w.last_channel),
    Column("last action", lambda w: w.last_action),
    Column("buyers", lambda w: w.buyers, "count"),
    Column("with ticket", lambda w: w.with_support_ticket, "count"),
    Column("exited", lambda w: w.exited, "count"),
    Column("top exits", lambda w: _joined(w.top_exits)),
)


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


TRACKER: Final[tuple[Column[TrackedBuyer], ...]] = (
    Column("buyer", lambda t: t.buyer_id),
    Column("client type", lambda t: t.client_type),
    Column("frequency", lambda t: t.frequency_class),
    Column("type", lambda t: t.buyer_type),
    Column("revenue", lambda t: t.revenue, "money"),
    Column("potential", lambda t: t.potential_revenue, "money"),
    Column("prefers", lambda t: t.preferred_channel),
    Column("touches/week", lambda t: t.touches_per_week, "number"),
    Column("discounts", lambda t: t.discounted_purchases, "count"),
    Column("peak week", lambda t: t.peak_week.date().isoformat() if t.peak_week else None),
    Column("revenue/touch", lambda t: t.revenue_per_touch, "money"),
    Column("client", lambda t: t.client_name),
    Column("region", lambda t: t.region),
    Column("decision maker", lambda t: t.key_decision_maker, wide=True),
    Column("terms", lambda t: t.payment_terms, wide=True),
    Column("contract", lambda t: _yes_no(t.contract_on_file), wide=True),
    Column("SLA", lambda t: t.sla, wide=True),
)


def spend_columns(by: str) -> tuple[Column[SpendReturn], ...]:
    """Spend, new buyers, revenue, CPA and ROAS per ``by`` (campaign or channel)."""
    return (
        Column(by, lambda r: r.key),
        Column("spend", lambda r: r.spend, "money"),
        Column("acquisitions", lambda r: r.acquisitions, "amount"),
        Column("revenue", lambda r: r.revenue, "money"),
        Column("CPA", lambda r: r.cpa, "money"),
        Column("ROAS", lambda r: r.roas, "amount"),
    )
