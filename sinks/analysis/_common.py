"""What every question shares: the event-time :class:`Period`, bound-parameter helpers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.clickhouse import Client, translate_error
from sinks.identity import by_person

__all__ = ["DEFAULT_PURCHASE_STAGE", "Period", "Source", "period_condition", "purchases_from"]

Source = Literal["summary", "raw"]
"""Where a question reads its touches: ``summary``, the tables the sink keeps beside
``touchpoints`` (migration 0011: ``purchases``, ``support_touches``, ``buyer_last_touch``),
what the report uses; ``raw``, ``touchpoints`` itself — the twin every summary-served answer
keeps, which must give the same rows (the tests compare them, the bench times both)."""

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


def _rows(client: Client, sql: str, parameters: dict[str, Any], action: str) -> list[Any]:
    try:
        return list(client.query(sql, parameters=parameters).result_rows)
    except ClickHouseError as exc:
        raise translate_error(exc, action) from exc


def _date_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def purchases_from(db: str, source: Source) -> str:
    """SQL: the deduplicated purchase touches (``buyer_id``, ``event_id``, ``occurred_at``,
    ``channel``, ``campaign``, ``promo``, ``revenue``, ``persona``) of ``source``, to which a
    condition may be added with ``AND``."""
    if source == "raw":
        return f"{by_person(db, 'touchpoints')} AS p WHERE is_purchase"
    return f"{by_person(db, 'purchases')} AS p WHERE 1"
