"""The analyst's questions of the journey map, as parameterized SQL over ClickHouse.

Every function takes the client, the database and typed parameters; values travel
as bound query parameters, never spliced into SQL text. Each query reads the
deduplicated tables (``FINAL``). ``docs/analysis.md`` shows each question's SQL
with an example. A :class:`Period` restricts a question to event time
``[start, end)``: the funnel and cohort questions to buyers whose first touch (or
first purchase) falls in it, the others to the touchpoints in it.

Stages are the rules' own (:class:`schemas.rules.StageOrder`, default the shipped six):
the stage columns hold names, which sort alphabetically, so every query that ranks or
orders stages does it by ``indexOf(<the stages in order>, stage)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.rules import DEFAULT_ORDER, StageOrder
from sinks.clickhouse import Client, identifier, translate_error
from sinks.identity import person_touchpoints

__all__ = [
    "ACTION_KINDS",
    "AD_SPEND_CHANNEL",
    "ATTRIBUTION_MODELS",
    "DEFAULT_PURCHASE_STAGE",
    "AttributionKey",
    "AttributionModel",
    "AttributionShare",
    "ChannelEffect",
    "CohortCell",
    "DropoffDiagnosis",
    "Flow",
    "FunnelGroup",
    "FunnelRow",
    "HeatCell",
    "HighIntentBuyer",
    "Period",
    "PersonaStats",
    "PromoEffect",
    "SpendReturn",
    "TrackedBuyer",
    "WeekSales",
    "WhyNot",
    "attribution",
    "attribution_all",
    "buyer_tracker",
    "channel_effectiveness",
    "dropoff_diagnosis",
    "funnel",
    "high_intent",
    "hour_of_week",
    "intent_stage",
    "period_condition",
    "persona_stats",
    "promo_effectiveness",
    "retention_cohorts",
    "spend_returns",
    "spend_total",
    "transition_flow",
    "weekly_sales",
    "why_not_buy_or_stay",
]

FunnelGroup = Literal["channel", "campaign", "persona", "tier"]
AttributionModel = Literal["first_touch", "last_touch", "linear", "time_decay", "position_based"]
ATTRIBUTION_MODELS: Final[tuple[AttributionModel, ...]] = (
    "first_touch",
    "last_touch",
    "linear",
    "time_decay",
    "position_based",
)
ACTION_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "click": ("ad_click", "email_click", "sms_click"),
    "book": ("purchase", "booking"),
}
"""Kinds of action for the hour-of-week question; every other event is ``interact``."""

_GROUPS: Final[dict[FunnelGroup | None, str]] = {
    None: "'all'",
    "channel": "ifNull(first_touch_channel, '(none)')",
    "campaign": "ifNull(first_touch_campaign, '(none)')",
    "persona": "ifNull(persona, '(unknown)')",
    "tier": "ifNull(tier, '(unknown)')",
}
DEFAULT_PURCHASE_STAGE: Final = "purchase"
"""The shipped rules' purchase stage (:attr:`schemas.rules.JourneyRules.purchase_stage`)."""
_FAR_PAST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE: Final = datetime(2300, 1, 1, tzinfo=UTC)
_DAY: Final = 86400.0


@dataclass(frozen=True, slots=True)
class Period:
    """Event time ``[start, end)``; either end open."""

    start: datetime | None = None
    end: datetime | None = None

    def parameters(self) -> dict[str, Any]:
        return {"start": self.start or _FAR_PAST, "end": self.end or _FAR_FUTURE}


_IN_PERIOD: Final = (
    "{column} >= {{start:DateTime64(3, 'UTC')}} AND {column} < {{end:DateTime64(3, 'UTC')}}"
)


def period_condition(column: str) -> str:
    """SQL: ``column`` in ``[{start}, {end})``, the parameters of :meth:`Period.parameters`."""
    return _IN_PERIOD.format(column=column)


def _top_keys(limit: int, sum_map: str) -> str:
    """The ``limit`` most frequent keys of a ``sumMap`` result, the most frequent first and
    ties by key. Not ``topK``: it is approximate and breaks ties in arrival order, so the
    same rows stored in other parts (another load, another server) could rank otherwise."""
    return (
        f"arraySlice(arrayMap(p -> p.1, arraySort(p -> (-toInt64(p.2), p.1), "
        f"arrayZip(({sum_map}).1, ({sum_map}).2))), 1, {limit})"
    )


_TOP_NEXT_ACTIONS: Final = _top_keys(
    3, "sumMapIf([n.next_action], [toUInt64(1)], n.next_action != '')"
)
_TOP_EXITS: Final = _top_keys(
    3,
    "sumMap(arrayMap(e -> tupleElement(e, 'kind'), j.exits), arrayMap(e -> toUInt64(1), j.exits))",
)
_PREFERRED: Final = _top_keys(
    1,
    "sumMapIf([assumeNotNull(j.preferred_channel)], [toUInt64(1)], "
    "j.preferred_channel IS NOT NULL)",
)


def _rows(client: Client, sql: str, parameters: dict[str, Any], action: str) -> list[Any]:
    try:
        return list(client.query(sql, parameters=parameters).result_rows)
    except ClickHouseError as exc:
        raise translate_error(exc, action) from exc


# -- stage funnel -----------------------------------------------------------------------


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


# -- drop-off diagnosis -------------------------------------------------------------------


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
            SELECT d.buyer_id AS buyer_id, d.stage AS stage,
                   argMinIf(t.event_type, t.occurred_at, t.occurred_at > d.deadline) AS next_action
            FROM drops AS d
            INNER JOIN {person_touchpoints(database)} AS t ON t.buyer_id = d.buyer_id
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


# -- hour of week -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeatCell:
    channel: str
    kind: str
    day_of_week: int
    """1 = Monday … 7 = Sunday (UTC)."""
    hour: int
    touches: int


def _kind_expression(column: str) -> str:
    clauses = ", ".join(
        f"{column} IN ({', '.join(repr(event) for event in events)}), '{kind}'"
        for kind, events in ACTION_KINDS.items()
    )
    return f"multiIf({clauses}, 'interact')"


def hour_of_week(client: Client, database: str, *, period: Period | None = None) -> list[HeatCell]:
    """Touches per channel × kind of action (interact, click, book) × weekday × hour (UTC).

    Without a period this reads the ``interactions_hour_of_week`` aggregate; with one, the
    raw touchpoints in it.
    """
    db = identifier(database)
    kind = _kind_expression("event_type")
    if period is None:
        sql = f"""
            SELECT channel, {kind} AS kind, day_of_week, hour, sum(touches) AS touches
            FROM {db}.interactions_hour_of_week
            GROUP BY channel, kind, day_of_week, hour
            ORDER BY channel, kind, day_of_week, hour
        """
        parameters: dict[str, Any] = {}
    else:
        sql = f"""
            SELECT channel, {kind} AS kind, toDayOfWeek(occurred_at) AS day_of_week,
                   toHour(occurred_at) AS hour, count() AS touches
            FROM {db}.touchpoints FINAL
            WHERE {period_condition("occurred_at")}
            GROUP BY channel, kind, day_of_week, hour
            ORDER BY channel, kind, day_of_week, hour
        """
        parameters = period.parameters()
    return [
        HeatCell(str(channel), str(kind_), int(day), int(hour), int(touches))
        for channel, kind_, day, hour, touches in _rows(
            client, sql, parameters, "hour-of-week query"
        )
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
        FROM {person_touchpoints(database)} AS t
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


@dataclass(frozen=True, slots=True)
class PromoEffect:
    promo: str
    purchases: int
    buyers: int
    revenue: Decimal
    promo_only_buyers: int
    """Buyers every one of whose purchases used a promo."""

    @property
    def average_order(self) -> Decimal | None:
        return None if self.purchases == 0 else self.revenue / self.purchases


def promo_effectiveness(
    client: Client, database: str, *, period: Period | None = None
) -> list[PromoEffect]:
    """Per promo code (``(none)`` = full price): purchases, buyers, revenue, promo-only buyers."""
    sql = f"""
        WITH orders AS (
            SELECT buyer_id, ifNull(promo, '(none)') AS promo,
                   toDecimal128(ifNull(revenue, 0), 4) AS revenue
            FROM {person_touchpoints(database)}
            WHERE is_purchase AND {period_condition("occurred_at")}
        ),
        promo_only AS (
            SELECT buyer_id FROM orders GROUP BY buyer_id HAVING countIf(promo = '(none)') = 0
        )
        SELECT promo, count() AS purchases, uniqExact(buyer_id) AS buyers, sum(revenue) AS revenue,
               uniqExactIf(buyer_id, buyer_id IN (SELECT buyer_id FROM promo_only)) AS promo_only
        FROM orders
        GROUP BY promo
        ORDER BY revenue DESC, promo
    """
    return [
        PromoEffect(str(promo), int(purchases), int(buyers), Decimal(revenue), int(only))
        for promo, purchases, buyers, revenue, only in _rows(
            client, sql, (period or Period()).parameters(), "promo effectiveness query"
        )
    ]


# -- attribution --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttributionShare:
    model: AttributionModel
    key: str
    """The channel or campaign credited."""
    purchases: float
    """Purchases credited (fractions; all keys of one model sum to the purchase count)."""
    revenue: Decimal
    acquisitions: float
    """The credit of buyers' *first* purchases: new buyers acquired (fractions; all keys of
    one model sum to the number of buyers whose first purchase falls in the period)."""


_WEIGHTS: Final[dict[AttributionModel, str]] = {
    "first_touch": "arrayMap(i -> if(i = 1, 1., 0.), arrayEnumerate(path))",
    "last_touch": "arrayMap(i -> if(i = n, 1., 0.), arrayEnumerate(path))",
    "linear": "arrayMap(i -> 1. / n, arrayEnumerate(path))",
    "time_decay": ("arrayMap(x -> x / arraySum(decay), decay)"),
    "position_based": (
        "arrayMap(i -> multiIf(n = 1, 1., n = 2, 0.5, i = 1 OR i = n, 0.4, 0.2 / (n - 2)),"
        " arrayEnumerate(path))"
    ),
}


AttributionKey = Literal["channel", "campaign"]


def attribution(
    client: Client,
    database: str,
    *,
    model: AttributionModel,
    by: AttributionKey = "channel",
    period: Period | None = None,
    lookback: timedelta = timedelta(days=30),
    half_life: timedelta = timedelta(days=7),
) -> list[AttributionShare]:
    """Credit each purchase (in ``period``) to the touches before it within ``lookback``.

    Models: first touch, last touch, linear (equal shares), time decay (a touch's weight
    halves every ``half_life`` before the purchase), position based (40 % first, 40 % last,
    20 % shared by the middle). Credits of one purchase sum to 1; a purchase with no touch
    in the look-back window is credited to its own channel and campaign. A buyer's first
    purchase (earliest ``(occurred_at, event_id)`` of all their purchases, in the period or
    not) is an acquisition, credited the same way.
    """
    return attribution_all(client, database, period=period, lookback=lookback, half_life=half_life)[
        (model, by)
    ]


def attribution_all(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    lookback: timedelta = timedelta(days=30),
    half_life: timedelta = timedelta(days=7),
) -> dict[tuple[AttributionModel, AttributionKey], list[AttributionShare]]:
    """:func:`attribution` of every model, by channel and by campaign, from one query: the
    purchases, first purchases and paths are read once (the report needs all ten)."""
    weights = ",\n                ".join(
        f"{_WEIGHTS[model]} AS w_{model}" for model in ATTRIBUTION_MODELS
    )
    sums = ",\n               ".join(
        f"sum(w_{model}) AS purchases_{model}, sum(w_{model} * revenue) AS revenue_{model}, "
        f"sum(w_{model} * acquired) AS acquisitions_{model}"
        for model in ATTRIBUTION_MODELS
    )
    arrays = ", ".join(f"w_{model}" for model in ATTRIBUTION_MODELS)
    sql = f"""
        WITH buyers AS (
            -- one pass over the touchpoints: per buyer with a purchase in the period, the
            -- period's purchases, the other touches, and the first purchase of all time
            SELECT buyer_id,
                   groupArrayIf(
                       (event_id, occurred_at, toFloat64(ifNull(revenue, 0)), channel,
                        ifNull(campaign, '(none)')),
                       is_purchase AND {period_condition("occurred_at")}) AS orders,
                   groupArrayIf((occurred_at, channel, ifNull(campaign, '(none)')),
                                NOT is_purchase) AS touches,
                   argMinIf(event_id, (occurred_at, event_id), is_purchase) AS first_purchase
            FROM {person_touchpoints(database)}
            GROUP BY buyer_id
            HAVING notEmpty(orders)
        ),
        credited AS (
            SELECT p.3 AS revenue, p.1 = first_purchase AS acquired,
                arraySort(x -> x.1, arrayFilter(
                    x -> x.1 < p.2 AND x.1 >= p.2 - toIntervalSecond({{lookback:UInt32}}),
                    touches)) AS found,
                if(empty(found), [(p.2, p.4, p.5)], found) AS path,
                length(path) AS n,
                arrayMap(x -> pow(2, -dateDiff('millisecond', x.1, p.2)
                                  / (1000. * {{half_life:UInt32}})), path) AS decay,
                {weights}
            FROM buyers
            ARRAY JOIN orders AS p
        )
        SELECT keyed.1 AS dimension, keyed.2 AS credited_key,
               {sums}
        FROM credited
        ARRAY JOIN path AS touch, {arrays}
        ARRAY JOIN [('channel', touch.2), ('campaign', touch.3)] AS keyed
        GROUP BY dimension, credited_key
    """
    parameters = {
        **(period or Period()).parameters(),
        "lookback": int(lookback.total_seconds()),
        "half_life": max(1, int(half_life.total_seconds())),
    }
    keys: tuple[AttributionKey, ...] = ("channel", "campaign")
    found: dict[tuple[AttributionModel, AttributionKey], list[tuple[float, str, float, float]]] = {
        (model, key): [] for model in ATTRIBUTION_MODELS for key in keys
    }
    for dimension, name, *values in _rows(client, sql, parameters, "attribution query"):
        by = keys[keys.index(dimension)]
        for index, model in enumerate(ATTRIBUTION_MODELS):
            purchases, revenue, acquisitions = values[3 * index : 3 * index + 3]
            if purchases > 0:  # as HAVING purchases > 0 did
                found[(model, by)].append(
                    (float(revenue), str(name), float(purchases), float(acquisitions))
                )
    return {
        (model, by): [
            AttributionShare(model, name, purchases, Decimal(str(round(revenue, 4))), acquisitions)
            # ORDER BY revenue DESC, key: ClickHouse compares strings bytewise, as Python
            # compares UTF-8 text code point by code point
            for revenue, name, purchases, acquisitions in sorted(
                shares, key=lambda share: (-share[0], share[1].encode())
            )
        ]
        for (model, by), shares in found.items()
    }


# -- ad spend: cost per acquisition, return on ad spend ----------------------------------------

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


# -- high intent now ----------------------------------------------------------------------

_INTENT_WEIGHTS: Final[dict[str, float]] = {
    "checkout_started": 8.0,
    "add_to_cart": 6.0,
    "product_view": 3.0,
    "signup": 3.0,
    "sms_reply": 3.0,
    "ad_click": 2.0,
    "email_click": 2.0,
    "sms_click": 2.0,
    "page_view": 1.0,
    "email_open": 0.5,
    "ticket_opened": 1.0,
}


@dataclass(frozen=True, slots=True)
class HighIntentBuyer:
    buyer_id: str
    persona: str | None
    score: float
    last_touch_at: datetime
    last_channel: str | None
    preferred_channel: str | None


def intent_stage(stages: StageOrder, purchase_stage: str | None) -> str | None:
    """The stage just below the purchase stage (``consideration`` in the shipped rules):
    buyers whose furthest stage it is are one step from buying. None without a purchase
    stage among ``stages``, or when it is the first."""
    if purchase_stage is None or purchase_stage not in stages:
        return None
    rank = stages.rank[purchase_stage]
    return stages.names[rank - 1] if rank > 0 else None


def high_intent(
    client: Client,
    database: str,
    *,
    as_of: datetime | None = None,
    recent: timedelta = timedelta(days=14),
    limit: int = 50,
    stages: StageOrder = DEFAULT_ORDER,
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE,
) -> list[HighIntentBuyer]:
    """Buyers one step from buying (their furthest stage is :func:`intent_stage`), not
    dropped or unsubscribed, ranked by recent engagement; none without an intent stage.

    Score = Σ weight(action) × 2^(−age / 7 days) over touches in the last ``recent``
    before ``as_of`` (default: the newest event time in the data, so a replayed history
    reads as "now").
    """
    db = identifier(database)
    intent = intent_stage(stages, purchase_stage)
    if intent is None:
        return []
    weights = (
        "map(" + ", ".join(f"'{name}', {value}" for name, value in _INTENT_WEIGHTS.items()) + ")"
    )
    if as_of is None:
        newest = _rows(client, f"SELECT max(occurred_at) FROM {db}.touchpoints", {}, "newest time")
        as_of = newest[0][0] if newest and newest[0][0] is not None else _FAR_PAST
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
    sql = f"""
        WITH candidates AS (
            SELECT buyer_id, persona, last_touch_at, last_touch_channel, preferred_channel
            FROM {db}.journey_state FINAL
            WHERE furthest_stage = {{intent:String}} AND dropoff_stage IS NULL
              AND NOT arrayExists(e -> tupleElement(e, 'kind') IN
                                  ('unsubscribe', 'opt_out', 'spam_complaint'), exits)
        )
        SELECT c.buyer_id, c.persona,
               sum(({weights})[t.event_type] *
                   pow(2, -dateDiff('second', t.occurred_at, {{as_of:DateTime64(3, 'UTC')}})
                          / (7 * 86400.))) AS score,
               c.last_touch_at, c.last_touch_channel, c.preferred_channel
        FROM candidates AS c
        INNER JOIN {person_touchpoints(database)} AS t ON t.buyer_id = c.buyer_id
        WHERE t.occurred_at <= {{as_of:DateTime64(3, 'UTC')}}
          AND t.occurred_at > {{as_of:DateTime64(3, 'UTC')}} - toIntervalSecond({{recent:UInt32}})
        GROUP BY c.buyer_id, c.persona, c.last_touch_at, c.last_touch_channel, c.preferred_channel
        HAVING score > 0
        ORDER BY score DESC, c.buyer_id
        LIMIT {{limit:UInt32}}
    """
    parameters = {
        "as_of": as_of,
        "recent": int(recent.total_seconds()),
        "limit": limit,
        "intent": intent,
    }
    return [
        HighIntentBuyer(
            str(buyer), persona, round(float(score), 3), last_at, last_channel, preferred
        )
        for buyer, persona, score, last_at, last_channel, preferred in _rows(
            client, sql, parameters, "high-intent query"
        )
    ]


# -- why buyers do not buy or stay ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhyNot:
    segment: Literal["never_bought", "bought_once"]
    last_channel: str
    last_action: str
    buyers: int
    with_support_ticket: int
    exited: int
    top_exits: tuple[str, ...]


def why_not_buy_or_stay(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
    purchase_stage: str | None = DEFAULT_PURCHASE_STAGE,
) -> list[WhyNot]:
    """Buyers who never purchased, and first-time buyers who never came back (one purchase,
    no stage past the purchase stage): by their last touch, how many had a support ticket,
    how many exited (and how)."""
    db = identifier(database)
    highest = (
        stages.rank[purchase_stage] + 1
        if purchase_stage is not None and purchase_stage in stages
        else len(stages)
    )
    sql = f"""
        SELECT
            if(purchases = 0, 'never_bought', 'bought_once') AS segment,
            ifNull(j.last_touch_channel, '(none)') AS last_channel,
            ifNull(t.last_action, '(none)') AS last_action,
            count() AS buyers,
            countIf(t.tickets > 0) AS with_ticket,
            countIf(length(j.exits) > 0) AS exited,
            {_TOP_EXITS} AS top_exits
        FROM {db}.journey_state AS j FINAL
        LEFT JOIN (
            SELECT buyer_id, argMax(event_type, occurred_at) AS last_action,
                   countIf(event_type = 'ticket_opened') AS tickets
            FROM {person_touchpoints(database)}
            GROUP BY buyer_id
        ) AS t USING (buyer_id)
        WHERE (j.purchases = 0 OR (j.purchases = 1 AND
               indexOf({stages.sql_array()}, j.furthest_stage) BETWEEN 1 AND {{highest:UInt32}}))
          AND {period_condition("j.first_touch_at")}
        GROUP BY segment, last_channel, last_action
        ORDER BY segment DESC, buyers DESC, last_channel, last_action
    """
    parameters = {**(period or Period()).parameters(), "highest": highest}
    return [
        WhyNot(
            segment,
            str(channel),
            str(action),
            int(buyers),
            int(ticket),
            int(exited),
            tuple(str(kind) for kind in exits),
        )
        for segment, channel, action, buyers, ticket, exited, exits in _rows(
            client, sql, parameters, "why-not query"
        )
    ]


# -- retention cohorts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CohortCell:
    cohort_week: datetime
    """Monday of the week of the buyers' first purchase."""
    week: int
    """Weeks after the first purchase (0 = the first week)."""
    cohort_size: int
    active: int
    """Buyers of the cohort who purchased in that week."""

    @property
    def retention_pct(self) -> float:
        return 100.0 * self.active / self.cohort_size if self.cohort_size else 0.0


def retention_cohorts(
    client: Client, database: str, *, period: Period | None = None, weeks: int = 12
) -> Sequence[CohortCell]:
    """Retention by first-purchase week: the share of each cohort purchasing k weeks later."""
    # One pass over the purchases: per buyer, the cohort (Monday of the first purchase) and
    # the distinct weeks after it with a purchase. Week 0 holds every buyer of the cohort,
    # so its count is the cohort's size.
    sql = f"""
        WITH buyers AS (
            SELECT toMonday(min(occurred_at)) AS cohort,
                   arrayDistinct(arrayMap(at -> intDiv(dateDiff('day', cohort, toMonday(at)), 7),
                                          groupArray(occurred_at))) AS weeks
            FROM {person_touchpoints(database)}
            WHERE is_purchase
            GROUP BY buyer_id
            HAVING {period_condition("min(occurred_at)")}
        )
        SELECT cohort, week, count() AS active
        FROM buyers
        ARRAY JOIN weeks AS week
        WHERE week < {{weeks:UInt32}}
        GROUP BY cohort, week
        ORDER BY cohort, week
    """
    parameters = {**(period or Period()).parameters(), "weeks": weeks}
    rows = _rows(client, sql, parameters, "retention cohort query")
    sizes = {cohort: int(active) for cohort, week, active in rows if int(week) == 0}
    return [
        CohortCell(
            datetime(cohort.year, cohort.month, cohort.day, tzinfo=UTC),
            int(week),
            sizes[cohort],
            int(active),
        )
        for cohort, week, active in rows
    ]


# -- buyer tracker --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrackedBuyer:
    buyer_id: str
    client_type: str
    frequency_class: str
    """prospect (no purchase), new (one), existing (several), lapsed (none for a while)."""
    buyer_type: str
    """promo-only, mature, seasonal, repeat, one-time or prospect (see docs/analysis.md)."""
    revenue: Decimal
    potential_revenue: Decimal
    """The 75th percentile revenue of repeat buyers of the same persona (at least ``revenue``)."""
    preferred_channel: str | None
    touches_per_week: float
    purchases: int
    discounted_purchases: int
    peak_week: datetime | None
    dip_week: datetime | None
    revenue_per_touch: Decimal
    """Reward over effort: revenue per touch spent on the buyer (the tracker's ranking)."""
    client_name: str
    region: str
    key_decision_maker: str
    payment_terms: str
    contract_on_file: bool | None
    sla: str


def buyer_tracker(
    client: Client,
    database: str,
    *,
    as_of: datetime | None = None,
    lapsed_after: timedelta = timedelta(days=90),
    limit: int = 100,
) -> list[TrackedBuyer]:
    """The buyer tracker, ranked by reward over effort (revenue per touch), CRM joined."""
    db = identifier(database)
    if as_of is None:
        newest = _rows(client, f"SELECT max(occurred_at) FROM {db}.touchpoints", {}, "newest time")
        as_of = newest[0][0] if newest and newest[0][0] is not None else _FAR_FUTURE
    sql = f"""
        WITH orders AS (
            SELECT buyer_id, occurred_at, toFloat64(ifNull(revenue, 0)) AS revenue,
                   promo IS NOT NULL AS discounted
            FROM {person_touchpoints(database)} WHERE is_purchase
        ),
        per_buyer AS (
            SELECT buyer_id, count() AS orders, countIf(discounted) AS discounted,
                   min(occurred_at) AS first_order, max(occurred_at) AS last_order,
                   uniqExact(toStartOfQuarter(occurred_at)) AS quarters
            FROM orders GROUP BY buyer_id
        ),
        weekly AS (
            SELECT buyer_id, toMonday(occurred_at) AS week, sum(revenue) AS revenue
            FROM orders GROUP BY buyer_id, week
        ),
        peaks AS (
            SELECT buyer_id, argMax(week, revenue) AS peak_week, argMin(week, revenue) AS dip_week
            FROM weekly GROUP BY buyer_id
        ),
        benchmark AS (
            SELECT ifNull(persona, '') AS persona_key, quantileExact(0.75)(revenue) AS potential
            FROM {db}.journey_state FINAL WHERE purchases >= 2 GROUP BY persona_key
        ),
        crm AS (SELECT * FROM {db}.crm_clients FINAL)
        SELECT
            j.buyer_id,
            multiIf(ifNull(c1.client_type, '') != '', c1.client_type,
                    ifNull(c2.client_type, '') != '', c2.client_type,
                    ifNull(j.tier, ifNull(j.persona, '(unknown)'))) AS client_type,
            multiIf(j.purchases = 0, 'prospect',
                    dateDiff('second', j.last_purchase_at, {{as_of:DateTime64(3, 'UTC')}})
                        > {{lapsed:UInt32}}, 'lapsed',
                    j.purchases = 1, 'new', 'existing') AS frequency_class,
            multiIf(ifNull(o.orders, 0) = 0, 'prospect',
                    o.discounted = o.orders, 'promo-only',
                    o.orders >= 3 AND dateDiff('day', o.first_order, o.last_order) >= 60, 'mature',
                    o.orders >= 2 AND o.quarters = 1, 'seasonal',
                    o.orders >= 2, 'repeat', 'one-time') AS buyer_type,
            j.revenue,
            greatest(toDecimal64(ifNull(b.potential, 0), 4), toDecimal64(j.revenue, 4))
                AS potential,
            j.preferred_channel,
            j.events / greatest(1., dateDiff('second', j.first_touch_at, j.last_touch_at)
                                    / (7 * 86400.)) AS per_week,
            j.purchases,
            ifNull(o.discounted, 0) AS discounted,
            p.peak_week, p.dip_week,
            j.revenue / greatest(1, j.events) AS per_touch,
            coalesce(c1.client_name, c2.client_name, '') AS client_name,
            coalesce(c1.region, c2.region, '') AS region,
            coalesce(c1.key_decision_maker, c2.key_decision_maker, '') AS decision_maker,
            coalesce(c1.payment_terms, c2.payment_terms, '') AS payment_terms,
            coalesce(c1.contract_on_file, c2.contract_on_file) AS contract,
            coalesce(c1.sla, c2.sla, '') AS sla
        FROM {db}.journey_state AS j FINAL
        LEFT JOIN per_buyer AS o ON o.buyer_id = j.buyer_id
        LEFT JOIN peaks AS p ON p.buyer_id = j.buyer_id
        LEFT JOIN benchmark AS b ON b.persona_key = ifNull(j.persona, '')
        LEFT JOIN crm AS c1 ON c1.client_key = j.buyer_id
        LEFT JOIN crm AS c2 ON c2.client_key = ifNull(j.account_id, '')
        ORDER BY per_touch DESC, j.revenue DESC, j.buyer_id
        LIMIT {{limit:UInt32}}
    """
    parameters = {"as_of": as_of, "lapsed": int(lapsed_after.total_seconds()), "limit": limit}
    result = []
    for row in _rows(client, sql, parameters, "buyer tracker query"):
        (
            buyer,
            client_type,
            frequency,
            kind,
            revenue,
            potential,
            preferred,
            per_week,
            purchases,
            discounted,
            peak,
            dip,
            per_touch,
            name,
            region,
            maker,
            terms,
            contract,
            sla,
        ) = row
        has_orders = int(purchases) > 0
        result.append(
            TrackedBuyer(
                str(buyer),
                str(client_type),
                str(frequency),
                str(kind),
                Decimal(revenue),
                Decimal(potential),
                preferred,
                round(float(per_week), 3),
                int(purchases),
                int(discounted),
                _date_time(peak) if has_orders else None,
                _date_time(dip) if has_orders else None,
                Decimal(per_touch).quantize(Decimal("0.01")),
                str(name),
                str(region),
                str(maker),
                str(terms),
                None if contract is None else bool(contract),
                str(sla),
            )
        )
    return result


def _date_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WeekSales:
    week: datetime
    purchases: int
    revenue: Decimal


def weekly_sales(client: Client, database: str, *, period: Period | None = None) -> list[WeekSales]:
    """Sales volume and revenue per week (Monday), for peaks and dips."""
    db = identifier(database)
    sql = f"""
        SELECT toMonday(occurred_at) AS week, count(), sum(toDecimal128(ifNull(revenue, 0), 4))
        FROM {db}.touchpoints FINAL
        WHERE is_purchase AND {period_condition("occurred_at")}
        GROUP BY week ORDER BY week
    """
    return [
        WeekSales(_date_time(week) or _FAR_PAST, int(count), Decimal(revenue))
        for week, count, revenue in _rows(
            client, sql, (period or Period()).parameters(), "weekly sales query"
        )
    ]


# -- personas ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersonaStats:
    persona: str
    buyers: int
    purchasers: int
    revenue: Decimal
    web_visits_per_week: float
    csat: float | None
    nps: float | None
    preferred_channel: str | None
    exits: dict[str, int]
    tickets: int
    advocates: int


def persona_stats(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    stages: StageOrder = DEFAULT_ORDER,
) -> list[PersonaStats]:
    """Per persona: KPIs (revenue, visit frequency, CSAT, NPS), exits, tickets, advocates
    (buyers who reached the last of ``stages``)."""
    db = identifier(database)
    sql = f"""
        WITH scores AS (
            SELECT buyer_id,
                   avgIf(JSONExtractInt(properties, 'score'), event_type = 'csat') AS csat,
                   countIf(event_type = 'nps') AS nps_answers,
                   countIf(event_type = 'nps' AND JSONExtractInt(properties, 'score') >= 9)
                       AS promoters,
                   countIf(event_type = 'nps' AND JSONExtractInt(properties, 'score') <= 6)
                       AS detractors,
                   countIf(event_type = 'ticket_opened') AS tickets
            FROM {person_touchpoints(database)}
            WHERE channel = 'support'
            GROUP BY buyer_id
        )
        SELECT ifNull(j.persona, '(unknown)') AS persona, count() AS buyers,
               countIf(j.purchases > 0) AS purchasers, sum(j.revenue) AS revenue,
               avg(j.touches_by_channel['web'] / greatest(1., dateDiff('second', j.first_touch_at,
                   j.last_touch_at) / (7 * 86400.))) AS visits,
               avgIf(s.csat, s.csat > 0) AS csat,
               sum(s.nps_answers) AS answers, sum(s.promoters) AS promoters,
               sum(s.detractors) AS detractors,
               {_PREFERRED} AS preferred,
               sumMap(arrayMap(e -> tupleElement(e, 'kind'), j.exits),
                      arrayMap(e -> toUInt64(1), j.exits)) AS exits,
               sum(ifNull(s.tickets, 0)) AS tickets,
               countIf(j.furthest_stage = {{advocacy:String}}) AS advocates
        FROM {db}.journey_state AS j FINAL
        LEFT JOIN scores AS s ON s.buyer_id = j.buyer_id
        WHERE {period_condition("j.first_touch_at")}
        GROUP BY persona
        ORDER BY persona
    """
    result = []
    for (
        persona,
        buyers,
        purchasers,
        revenue,
        visits,
        csat,
        answers,
        promoters,
        detractors,
        preferred,
        exits,
        tickets,
        advocates,
    ) in _rows(
        client, sql, {**(period or Period()).parameters(), "advocacy": stages.last}, "persona query"
    ):
        answered = int(answers)
        result.append(
            PersonaStats(
                str(persona),
                int(buyers),
                int(purchasers),
                Decimal(revenue),
                round(float(visits), 3),
                None if csat is None or csat != csat else round(float(csat), 2),
                None
                if answered == 0
                else round(100.0 * (int(promoters) - int(detractors)) / answered, 1),
                preferred[0] if preferred else None,
                {str(kind): int(count) for kind, count in zip(exits[0], exits[1], strict=True)},
                int(tickets),
                int(advocates),
            )
        )
    return result


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
