"""Attribution: each purchase credited to the touches before it, five models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Final, Literal

from sinks.analysis._common import (
    Period,
    Source,
    _rows,
    period_condition,
)
from sinks.clickhouse import Client, identifier
from sinks.identity import by_person

__all__ = [
    "ATTRIBUTION_MODELS",
    "AttributionKey",
    "AttributionModel",
    "AttributionShare",
    "attribution",
    "attribution_all",
]


AttributionModel = Literal["first_touch", "last_touch", "linear", "time_decay", "position_based"]
ATTRIBUTION_MODELS: Final[tuple[AttributionModel, ...]] = (
    "first_touch",
    "last_touch",
    "linear",
    "time_decay",
    "position_based",
)


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

_RAW_BUYERS: Final = """
buyers AS (
            -- one pass over the touchpoints: per buyer with a purchase in the period, the
            -- period's purchases, the other touches, and the first purchase of all time
            SELECT buyer_id,
                   groupArrayIf(
                       (event_id, occurred_at, toFloat64(ifNull(revenue, 0)), channel,
                        ifNull(campaign, '(none)')),
                       is_purchase AND {period}) AS orders,
                   groupArrayIf((occurred_at, channel, ifNull(campaign, '(none)')),
                                NOT is_purchase) AS touches,
                   argMinIf(event_id, (occurred_at, event_id), is_purchase) AS first_purchase
            FROM {touchpoints}
            GROUP BY buyer_id
            HAVING notEmpty(orders)
        ),
"""

_SUMMARY_BUYERS: Final = """
orders AS (
            -- the buyers with a purchase in the period: those purchases, and the first
            -- purchase of all time
            SELECT buyer_id,
                   groupArrayIf(
                       (event_id, occurred_at, toFloat64(ifNull(revenue, 0)), channel,
                        ifNull(campaign, '(none)')),
                       {period}) AS orders,
                   argMin(event_id, (occurred_at, event_id)) AS first_purchase
            FROM {purchases}
            GROUP BY buyer_id
            HAVING notEmpty(orders)
        ),
        buyers AS (
            SELECT o.buyer_id AS buyer_id, o.orders AS orders, t.touches AS touches,
                   o.first_purchase AS first_purchase
            FROM orders AS o
            LEFT JOIN (
                SELECT buyer_id,
                       groupArray((occurred_at, channel, ifNull(campaign, '(none)'))) AS touches
                FROM {touchpoints}
                WHERE NOT is_purchase AND buyer_id IN (SELECT buyer_id FROM orders)
                  AND occurred_at < {{end:DateTime64(3, 'UTC')}}
                  AND occurred_at >= {{start:DateTime64(3, 'UTC')}}
                                     - toIntervalSecond({{lookback:UInt32}})
                GROUP BY buyer_id
            ) AS t USING (buyer_id)
        ),
"""


def attribution(
    client: Client,
    database: str,
    *,
    model: AttributionModel,
    by: AttributionKey = "channel",
    period: Period | None = None,
    lookback: timedelta = timedelta(days=30),
    half_life: timedelta = timedelta(days=7),
    source: Source = "summary",
) -> list[AttributionShare]:
    """Credit each purchase (in ``period``) to the touches before it within ``lookback``.

    Models: first touch, last touch, linear (equal shares), time decay (a touch's weight
    halves every ``half_life`` before the purchase), position based (40 % first, 40 % last,
    20 % shared by the middle). Credits of one purchase sum to 1; a purchase with no touch
    in the look-back window is credited to its own channel and campaign. A buyer's first
    purchase (earliest ``(occurred_at, event_id)`` of all their purchases, in the period or
    not) is an acquisition, credited the same way.
    """
    every = attribution_all(
        client, database, period=period, lookback=lookback, half_life=half_life, source=source
    )
    return every[(model, by)]


def attribution_all(
    client: Client,
    database: str,
    *,
    period: Period | None = None,
    lookback: timedelta = timedelta(days=30),
    half_life: timedelta = timedelta(days=7),
    source: Source = "summary",
) -> dict[tuple[AttributionModel, AttributionKey], list[AttributionShare]]:
    """:func:`attribution` of every model, by channel and by campaign, from one query: the
    purchases, first purchases and paths are read once (the report needs all ten).

    A path is in time order, touches at the same time by channel and campaign. From the
    summaries, the buyers with a purchase in the period come from ``purchases``, and only
    their touches are gathered from ``touchpoints``, only those that can be on a path:
    before the period's end, at most ``lookback`` before its start. The raw twin gathers
    every buyer's purchases and touches in one pass."""
    db = identifier(database)
    weights = ",\n                ".join(
        f"{_WEIGHTS[model]} AS w_{model}" for model in ATTRIBUTION_MODELS
    )
    sums = ",\n               ".join(
        f"sum(w_{model}) AS purchases_{model}, sum(w_{model} * revenue) AS revenue_{model}, "
        f"sum(w_{model} * acquired) AS acquisitions_{model}"
        for model in ATTRIBUTION_MODELS
    )
    arrays = ", ".join(f"w_{model}" for model in ATTRIBUTION_MODELS)
    buyers = _RAW_BUYERS if source == "raw" else _SUMMARY_BUYERS
    with_buyers = buyers.format(
        db=db,
        period=period_condition("occurred_at"),
        touchpoints=by_person(db, "touchpoints"),
        purchases=by_person(db, "purchases"),
    )
    sql = f"""
        WITH {with_buyers}
        credited AS (
            SELECT p.3 AS revenue, p.1 = first_purchase AS acquired,
                arraySort(arrayFilter(
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
