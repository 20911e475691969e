"""What the real-time triggers fired: the ``journey_triggers`` table, for `touchpoint triggers`.

Read under ``FINAL``: each firing (one ``trigger_event_id``) shows its latest word, so a
drop-off that a late event disproved shows as a retraction, not as a firing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.clickhouse import Client, identifier, translate_error

__all__ = ["StoredTrigger", "TriggerCount", "TriggerFilter", "counts", "latest"]


@dataclass(frozen=True, slots=True)
class TriggerFilter:
    """Which firings: by trigger id and by ``fired_at`` (event time)."""

    triggers: tuple[str, ...] = ()
    fired_from: datetime | None = None
    fired_to: datetime | None = None
    retractions: bool | None = None
    """True: only retractions; False: only firings that stand; None: both."""

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["1"]
        parameters: dict[str, Any] = {}
        if self.triggers:
            clauses.append("trigger_id IN %(triggers)s")
            parameters["triggers"] = self.triggers
        if self.fired_from is not None:
            clauses.append("fired_at >= %(fired_from)s")
            parameters["fired_from"] = self.fired_from
        if self.fired_to is not None:
            clauses.append("fired_at < %(fired_to)s")
            parameters["fired_to"] = self.fired_to
        if self.retractions is not None:
            clauses.append("is_retraction = %(retraction)s")
            parameters["retraction"] = int(self.retractions)
        return " AND ".join(clauses), parameters


@dataclass(frozen=True, slots=True)
class TriggerCount:
    trigger_id: str
    kind: str
    fired: int
    """Firings that stand."""
    retracted: int
    buyers: int
    """Buyers with a firing that stands."""
    last_fired_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredTrigger:
    trigger_event_id: str
    trigger_id: str
    kind: str
    buyer_id: str
    fired_at: datetime
    stage: str | None
    event_id: str | None
    channel: str | None
    campaign: str | None
    persona: str | None
    payload: str
    is_retraction: bool


def _query(
    client: Client, database: str, sql: str, parameters: dict[str, Any]
) -> Sequence[Sequence[Any]]:
    """The rows of ``sql`` (cells typed by ClickHouse, so Any to Python)."""
    try:
        return client.query(sql, parameters=parameters).result_rows
    except ClickHouseError as exc:
        raise translate_error(exc, f"reading {database}.journey_triggers") from exc


def counts(client: Client, database: str, where: TriggerFilter) -> list[TriggerCount]:
    """Per trigger: firings that stand, retractions, buyers, the latest firing."""
    database = identifier(database)
    condition, parameters = where.where()
    rows = _query(
        client,
        database,
        "SELECT trigger_id, any(kind), countIf(is_retraction = 0), countIf(is_retraction = 1), "
        "uniqExactIf(buyer_id, is_retraction = 0), maxIf(fired_at, is_retraction = 0) "
        f"FROM {database}.journey_triggers FINAL WHERE {condition} "
        "GROUP BY trigger_id ORDER BY trigger_id",
        parameters,
    )
    return [
        TriggerCount(trigger, kind, fired, retracted, buyers, last if fired else None)
        for trigger, kind, fired, retracted, buyers, last in rows
    ]


def latest(client: Client, database: str, where: TriggerFilter, limit: int) -> list[StoredTrigger]:
    """The ``limit`` latest firings (and retractions) by ``fired_at``, newest first."""
    database = identifier(database)
    condition, parameters = where.where()
    parameters["limit"] = limit
    rows = _query(
        client,
        database,
        "SELECT trigger_event_id, trigger_id, kind, buyer_id, fired_at, stage, event_id, "
        "channel, campaign, persona, payload, is_retraction "
        f"FROM {database}.journey_triggers FINAL WHERE {condition} "
        "ORDER BY fired_at DESC, trigger_id, buyer_id LIMIT %(limit)s",
        parameters,
    )
    return [
        StoredTrigger(
            trigger_event_id=row[0],
            trigger_id=row[1],
            kind=row[2],
            buyer_id=row[3],
            fired_at=row[4],
            stage=row[5],
            event_id=row[6],
            channel=row[7],
            campaign=row[8],
            persona=row[9],
            payload=row[10],
            is_retraction=bool(row[11]),
        )
        for row in rows
    ]
