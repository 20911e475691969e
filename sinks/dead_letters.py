"""Dead letters in ClickHouse: find them, and keep the ledger of their replays.

``touchpoint dead-letters list`` and ``replay`` read the ``dead_letters`` table through
:func:`find`; a replay records each letter's outcome in ``dead_letter_replays`` with
:func:`record_outcomes`, so a letter that was replayed (or whose event was already
there) is not sent again, and one that failed again is, after the next fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from clickhouse_connect.driver.exceptions import ClickHouseError

from sinks.clickhouse import Client, identifier, translate_error

__all__ = [
    "DONE_OUTCOMES",
    "DeadLetterFilter",
    "StoredDeadLetter",
    "find",
    "known_event_ids",
    "record_outcomes",
]

DONE_OUTCOMES: Final = ("replayed", "duplicate", "sent")
"""Outcomes after which a dead letter is not replayed again."""
_ID_CHUNK: Final = 10_000


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters: by reason, source (SQL LIKE pattern), and recorded time."""

    reasons: tuple[str, ...] = ()
    source: str | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["1"]
        parameters: dict[str, Any] = {}
        if self.reasons:
            clauses.append("d.reason IN %(reasons)s")
            parameters["reasons"] = self.reasons
        if self.source is not None:
            clauses.append("d.source LIKE %(source)s")
            parameters["source"] = self.source
        if self.recorded_from is not None:
            clauses.append("d.recorded_at >= %(recorded_from)s")
            parameters["recorded_from"] = self.recorded_from
        if self.recorded_to is not None:
            clauses.append("d.recorded_at < %(recorded_to)s")
            parameters["recorded_to"] = self.recorded_to
        return " AND ".join(clauses), parameters


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    dead_letter_id: str
    reason: str
    detail: str
    raw: str
    raw_truncated: bool
    source: str
    position: str
    recorded_at: datetime
    last_outcome: str
    """The latest replay's outcome ('' if never replayed)."""

    @property
    def done(self) -> bool:
        return self.last_outcome in DONE_OUTCOMES


def find(
    client: Client, database: str, where: DeadLetterFilter, *, limit: int | None = None
) -> list[StoredDeadLetter]:
    """The matching dead letters, oldest first, with their latest replay outcome."""
    database = identifier(database)
    condition, parameters = where.where()
    sql = (
        "SELECT d.dead_letter_id, d.reason, d.detail, d.raw, d.raw_truncated, d.source, "
        "d.position, d.recorded_at, r.outcome "
        f"FROM {database}.dead_letters AS d FINAL "
        "LEFT JOIN (SELECT dead_letter_id, argMax(outcome, replayed_at) AS outcome "
        f"FROM {database}.dead_letter_replays GROUP BY dead_letter_id) AS r "
        "ON r.dead_letter_id = d.dead_letter_id "
        f"WHERE {condition} ORDER BY d.recorded_at, d.source, d.position"
    )
    if limit is not None:
        sql += " LIMIT %(limit)s"
        parameters["limit"] = limit
    try:
        rows = client.query(sql, parameters=parameters).result_rows
    except ClickHouseError as exc:
        raise translate_error(exc, f"reading {database}.dead_letters") from exc
    return [
        StoredDeadLetter(
            dead_letter_id=letter_id,
            reason=reason,
            detail=detail,
            raw=raw,
            raw_truncated=bool(truncated),
            source=source,
            position=position,
            recorded_at=recorded_at,
            last_outcome=outcome or "",
        )
        for letter_id, reason, detail, raw, truncated, source, position, recorded_at, outcome in (
            rows
        )
    ]


def known_event_ids(client: Client, database: str, event_ids: Sequence[str]) -> set[str]:
    """Which of ``event_ids`` the ``touchpoints`` table already holds."""
    database = identifier(database)
    known: set[str] = set()
    for start in range(0, len(event_ids), _ID_CHUNK):
        chunk = list(event_ids[start : start + _ID_CHUNK])
        try:
            rows = client.query(
                f"SELECT DISTINCT event_id FROM {database}.touchpoints WHERE event_id IN %(ids)s",
                parameters={"ids": chunk},
            ).result_rows
        except ClickHouseError as exc:
            raise translate_error(exc, f"reading {database}.touchpoints") from exc
        known.update(row[0] for row in rows)
    return known


def record_outcomes(
    client: Client,
    database: str,
    outcomes: Iterable[tuple[str, str, str]],
    *,
    target: str,
    run_seq: int = 0,
) -> int:
    """Record (dead letter id, outcome, detail) of one replay; returns how many."""
    rows = [[letter, outcome, detail, target, run_seq] for letter, outcome, detail in outcomes]
    if not rows:
        return 0
    database = identifier(database)
    try:
        client.insert(
            "dead_letter_replays",
            rows,
            column_names=["dead_letter_id", "outcome", "detail", "target", "run_seq"],
            database=database,
        )
    except ClickHouseError as exc:
        raise translate_error(exc, f"insert into {database}.dead_letter_replays") from exc
    return len(rows)
