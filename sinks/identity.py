"""Identity in the store: touchpoints read per person, and who is whom.

The workers fold the journeys of linked ids into one person's (:mod:`processors.identity`):
``journey_state``, ``stage_transitions`` and ``dropoffs`` are kept under the person id
(the merged ids' rows retracted), and ``identity_links`` says which person each other id
belongs to. ``touchpoints`` keeps the id each event came with — what the source said — so
every query that reads touchpoints per buyer reads them through :func:`person_touchpoints`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Final

from schemas.raw import RawRecord
from sinks.clickhouse import Client, identifier

__all__ = [
    "Erasure",
    "Person",
    "block",
    "blocked_ids",
    "by_person",
    "forget",
    "person_of",
    "person_touchpoints",
    "rebuild_aggregates",
    "stored_events",
]


def by_person(database: str, table: str, *, final: bool = True) -> str:
    """A ``FROM`` source: ``table`` (deduplicated with ``FINAL`` unless ``final`` is False,
    for an aggregate to ``-Merge``) with its ``buyer_id`` read as the person id.

    A table kept per raw id (``touchpoints`` and the summaries views fill from it) holds one
    person's rows under several ids: a query over it counts persons with ``uniqExact``, or
    groups by ``buyer_id`` before it counts."""
    db = identifier(database)
    rows = f"{db}.{identifier(table)} AS s" + (" FINAL" if final else "")
    return (
        "(SELECT s.* REPLACE (if(empty(l.person_id), s.buyer_id, l.person_id) AS buyer_id) "
        f"FROM {rows} "
        f"LEFT ANY JOIN (SELECT alias_id, person_id FROM {db}.identity_links FINAL) AS l "
        "ON l.alias_id = s.buyer_id)"
    )


def person_touchpoints(database: str) -> str:
    """A ``FROM`` source: ``touchpoints`` (deduplicated) with ``buyer_id`` the person id."""
    return by_person(database, "touchpoints")


@dataclass(frozen=True)
class Person:
    """One person as the store knows it: the id their journey lives under and every other."""

    person_id: str
    ids: tuple[str, ...]
    """Every id of the person, the person id first."""


def person_of(client: Client, database: str, buyer_id: str) -> Person:
    """The person ``buyer_id`` belongs to (itself alone if no link names it)."""
    db = identifier(database)
    rows = client.query(
        f"SELECT person_id FROM {db}.identity_links FINAL WHERE alias_id = %(id)s",
        parameters={"id": buyer_id},
    ).result_rows
    person = str(rows[0][0]) if rows else buyer_id
    aliases = client.query(
        f"SELECT alias_id FROM {db}.identity_links FINAL WHERE person_id = %(person)s "
        "ORDER BY alias_id",
        parameters={"person": person},
    ).result_rows
    return Person(person, (person, *(str(alias) for (alias,) in aliases if alias != person)))


@dataclass
class Erasure:
    """What :func:`forget` removed, per table: rows (or, for aggregates, rebuilt)."""

    person: Person
    removed: dict[str, int] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)
    """Aggregate tables recomputed from what is left (their states held the person's ids)."""


def forget(client: Client, database: str, person: Person) -> Erasure:
    """Erase every row of ``person`` from the database (GDPR erasure), physically.

    Rows keyed by one of the person's ids go from every table that has a ``buyer_id`` (and
    ``identity_links``, ``crm_clients``); dead letters whose raw payload names one of the ids
    as a JSON string go with their replay records; each materialized view's aggregate is
    recomputed from the remaining rows (an aggregate's state holds hashes of the buyer ids it
    counted). Deletes are mutations that rewrite the parts (``mutations_sync = 2``), not
    lightweight masks, so the data is gone from disk when this returns.
    """
    db = identifier(database)
    ids = list(person.ids)
    erasure = Erasure(person)
    keyed = client.query(
        "SELECT table FROM system.columns WHERE database = %(db)s AND name = 'buyer_id' "
        "AND table IN (SELECT name FROM system.tables WHERE database = %(db)s "
        "AND engine LIKE '%%MergeTree') ORDER BY table",
        parameters={"db": database},
    ).result_rows
    where: dict[str, str] = {str(table): "buyer_id IN %(ids)s" for (table,) in keyed}
    where["identity_links"] = "alias_id IN %(ids)s OR person_id IN %(ids)s"
    where["crm_clients"] = "client_key IN %(ids)s"
    quoted = [json.dumps(one) for one in ids]
    letters = [
        str(letter)
        for (letter,) in client.query(
            f"SELECT dead_letter_id FROM {db}.dead_letters WHERE multiSearchAny(raw, %(quoted)s)",
            parameters={"quoted": quoted},
        ).result_rows
    ]
    for table, condition in sorted(where.items()):
        erasure.removed[table] = _delete(client, db, table, condition, {"ids": ids})
    if letters:
        for table in ("dead_letters", "dead_letter_replays"):
            erasure.removed[table] = _delete(
                client, db, table, "dead_letter_id IN %(letters)s", {"letters": letters}
            )
    erasure.rebuilt = rebuild_aggregates(client, database)
    return erasure


def _delete(client: Client, db: str, table: str, condition: str, parameters: dict[str, Any]) -> int:
    count = client.query(
        f"SELECT count() FROM {db}.{identifier(table)} WHERE {condition}", parameters=parameters
    ).result_rows[0][0]
    if count:
        client.command(
            f"ALTER TABLE {db}.{identifier(table)} DELETE WHERE {condition}",
            parameters=parameters,
            settings={"mutations_sync": 2},
        )
    return int(count)


def rebuild_aggregates(client: Client, database: str) -> list[str]:
    """Recompute every materialized view's target table from its source, as it is now."""
    db = identifier(database)
    views = client.query(
        "SELECT name, create_table_query, as_select FROM system.tables "
        "WHERE database = %(db)s AND engine = 'MaterializedView' ORDER BY name",
        parameters={"db": database},
    ).result_rows
    rebuilt = []
    for _, create, select in views:
        match = re.search(rf"\bTO\s+{re.escape(database)}\.(\w+)", str(create))
        if match is None:
            continue
        target = identifier(match.group(1))
        client.command(f"TRUNCATE TABLE {db}.{target}")
        client.command(f"INSERT INTO {db}.{target} {select}", settings={"insert_deduplicate": 0})
        rebuilt.append(target)
    return rebuilt


def blocked_ids(client: Client, database: str) -> set[str]:
    """Ids split off their person: the processor never links them again."""
    db = identifier(database)
    rows = client.query(f"SELECT buyer_id FROM {db}.identity_blocks FINAL").result_rows
    return {str(buyer_id) for (buyer_id,) in rows}


def block(client: Client, database: str, buyer_id: str) -> None:
    client.insert(
        f"{identifier(database)}.identity_blocks",
        [[buyer_id]],
        column_names=["buyer_id"],
    )


_EVENT_COLUMNS: Final = (
    "event_id",
    "buyer_id",
    "anonymous_id",
    "account_id",
    "channel",
    "event_type",
    "occurred_at",
    "received_at",
    "campaign",
    "promo",
    "revenue",
    "currency",
    "properties",
    "schema_version",
)


def stored_events(
    client: Client, database: str, buyer_ids: Sequence[str]
) -> Generator[RawRecord, None, None]:
    """The stored touchpoints of these ids as Touchpoint v1 records, in event-time order
    (what a split folds again)."""
    db = identifier(database)
    columns = ", ".join(_EVENT_COLUMNS)
    result = client.query(
        f"SELECT {columns} FROM {db}.touchpoints FINAL WHERE buyer_id IN %(ids)s "
        "ORDER BY occurred_at, event_id",
        parameters={"ids": list(buyer_ids)},
    )
    for row in result.result_rows:
        record = dict(zip(_EVENT_COLUMNS, row, strict=True))
        properties = json.loads(record.pop("properties") or "{}")
        event: dict[str, Any] = {name: value for name, value in record.items() if value is not None}
        for name in ("occurred_at", "received_at"):
            if name in event:
                event[name] = event[name].astimezone(UTC).isoformat()
        if "revenue" in event:
            event["revenue"] = str(event["revenue"])
        if properties:
            event["properties"] = properties
        yield RawRecord(
            source=f"{database}.touchpoints",
            position=str(event["event_id"]),
            data=json.dumps(event, separators=(",", ":")).encode(),
        )
