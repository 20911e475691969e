"""Migrations, the idempotent writer and the analysis queries on the real engine (chDB)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.local import run_local
from schemas.enums import Stage
from schemas.errors import MigrationError
from schemas.raw import RawRecord
from schemas.rules import JourneyRules
from sinks import analysis, queries
from sinks.migrate import Migration, apply_migrations, load_migrations
from sinks.writer import ClickHouseWriter
from tests.factories import T0, event

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)
T0_DAY: date = T0.date()


def scalar(client: Any, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_migrations_apply_once_and_refuse_an_edited_migration(
    clickhouse_client: Any, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert apply_migrations(clickhouse_client, database) == []
    tables = {row[0] for row in clickhouse_client.query(f"SHOW TABLES FROM {database}").result_rows}
    assert {
        "touchpoints",
        "stage_transitions",
        "journey_state",
        "dropoffs",
        "dead_letters",
        "funnel_daily",
        "interactions_hour_of_week",
        "schema_migrations",
    } <= tables

    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
    monkeypatch.setattr("sinks.migrate.load_migrations", lambda: edited)
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        apply_migrations(clickhouse_client, database)


def journey_records() -> list[RawRecord]:
    records = [
        event("email_sent", at=0 * DAY, buyer="ana", campaign="spring"),
        event("email_open", at=1 * DAY, buyer="ana"),
        event("email_click", at=2 * DAY, buyer="ana"),
        event("purchase", at=3 * DAY, buyer="ana", revenue="99.00", currency="USD"),
        event("ad_impression", at=0 * DAY, buyer="ben", campaign="social"),
        event("sms_opt_out", at=2 * DAY, buyer="ben", channel="sms"),
        event("email_sent", at=0 * DAY, buyer="cy"),
        event("ticket_opened", at=5 * DAY, buyer="cy"),
        event("page_view", at=90 * DAY, buyer="clock"),
    ]
    lines = [json.dumps(record).encode() for record in records] + [b"{not json"]
    return [RawRecord("it.jsonl", f"line {i + 1}", data) for i, data in enumerate(lines)]


def run(client: Any, database: str, run_id: str = "it") -> None:
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=DAY * 7
    )
    run_local(
        journey_records(),
        processor,
        ClickHouseWriter(client, database),
        batch_size=4,
        run_id=run_id,
    )


def test_queries_answer_the_funnel_drop_off_and_exit_questions(
    clickhouse_client: Any, database: str
) -> None:
    run(clickhouse_client, database)
    funnel = {step.stage: step for step in analysis.funnel(clickhouse_client, database)}
    assert [(funnel[s].reached, funnel[s].moved_on, funnel[s].dropped) for s in Stage] == [
        (4, 3, 1),  # ana, ben (skipped pre-awareness), cy, clock(awareness)
        (3, 1, 1),  # ben drops at awareness; clock is still inside its timeout
        (1, 1, 0),
        (1, 0, 1),  # ana bought on day 3 and nothing since: the 60-day purchase timeout ran out
        (0, 0, 0),
        (0, 0, 0),
    ]
    assert funnel[Stage.PRE_AWARENESS].conversion_pct == 75.0
    assert funnel[Stage.AWARENESS].in_progress == 1
    drops = queries.dropoffs_by_stage_channel(clickhouse_client, database)
    assert {(d.stage, d.channel, d.buyers) for d in drops} == {
        (Stage.PRE_AWARENESS, "support", 1),
        (Stage.AWARENESS, "sms", 1),
        (Stage.PURCHASE, "web", 1),
    }
    exits = queries.exits_by_stage_channel(clickhouse_client, database)
    assert [(e.stage, e.kind, e.channel, e.exits) for e in exits] == [
        ("awareness", "opt_out", "sms", 1)
    ]
    by_campaign = {
        (s.group, s.stage): s.reached
        for s in analysis.funnel(clickhouse_client, database, by="campaign")
    }
    assert by_campaign[("spring", Stage.PURCHASE)] == 1
    assert queries.dead_letter_counts(clickhouse_client, database) == {"invalid_json": 1}


def test_a_replayed_run_changes_no_table_and_no_aggregate(
    clickhouse_client: Any, database: str
) -> None:
    run(clickhouse_client, database)

    def snapshot() -> tuple[Any, ...]:
        return (
            queries.table_counts(clickhouse_client, database),
            scalar(clickhouse_client, f"SELECT count() FROM {database}.touchpoints"),
            scalar(clickhouse_client, f"SELECT sum(touches) FROM {database}.funnel_daily"),
            scalar(
                clickhouse_client, f"SELECT sum(touches) FROM {database}.interactions_hour_of_week"
            ),
        )

    before = snapshot()
    run(clickhouse_client, database)
    assert snapshot() == before
    assert before[1] == 9
    assert before[2] == 7  # the ticket and the opt-out carry no stage


def test_the_daily_funnel_aggregate_matches_the_raw_table(
    clickhouse_client: Any, database: str
) -> None:
    run(clickhouse_client, database)
    from_view = clickhouse_client.query(
        "SELECT stage, sum(touches), uniqExactMerge(buyers), sum(revenue) "
        f"FROM {database}.funnel_daily "
        "GROUP BY stage ORDER BY stage"
    ).result_rows
    from_raw = clickhouse_client.query(
        f"SELECT stage, count(), uniqExact(buyer_id), sumIf(ifNull(revenue, 0), is_purchase) "
        f"FROM {database}.touchpoints FINAL WHERE stage IS NOT NULL GROUP BY stage ORDER BY stage"
    ).result_rows
    assert [tuple(row) for row in from_view] == [tuple(row) for row in from_raw]


def test_a_move_retracted_by_a_late_event_disappears_from_the_transitions_table(
    clickhouse_client: Any, database: str
) -> None:
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=2), dedup_window=DAY * 7
    )
    writer = ClickHouseWriter(clickhouse_client, database)
    first = [event("email_sent", at=timedelta(0)), event("email_open", at=timedelta(hours=1))]
    late = [event("email_click", at=timedelta(seconds=1))]  # arrives after the open
    for index, records in enumerate((first, late)):
        run_local(
            [RawRecord("t", str(i), json.dumps(r).encode()) for i, r in enumerate(records)],
            processor,
            writer,
            batch_size=10,
            run_id=f"retract{index}",
        )
    moves = clickhouse_client.query(
        f"SELECT toString(from_stage), toString(to_stage) FROM {database}.stage_transitions FINAL "
        "ORDER BY transitioned_at"
    ).result_rows
    assert [tuple(move) for move in moves] == [
        (None, "pre_awareness"),
        ("pre_awareness", "consideration"),
    ]


# -- 0008: stage columns become strings ---------------------------------------------------

STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "touchpoints": ("stage",),
    "stage_transitions": ("to_stage", "from_stage"),
    "journey_state": ("furthest_stage", "current_stage", "dropoff_stage"),
    "dropoffs": ("stage",),
    "funnel_daily": ("stage",),
}
OWN_STAGES = JourneyRules.model_validate(
    {
        "stages": ["lead", "evaluation", "trial"],
        "timeouts": {"evaluation": "2d"},
        "rule": [
            {"channel": "web", "event_type": "page_view", "stage": "evaluation"},
            {"channel": "web", "event_type": "signup", "stage": "trial"},
        ],
    }
)


def stage_column_types(client: Any, database: str) -> dict[tuple[str, str], str]:
    rows = client.query(
        "SELECT table, name, type FROM system.columns WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    wanted = {(table, column) for table, columns in STAGE_COLUMNS.items() for column in columns}
    return {(table, name): kind for table, name, kind in rows if (table, name) in wanted}


def contents(client: Any, database: str) -> dict[str, list[tuple[Any, ...]]]:
    """What each table a stage lives in holds — deduplicated (FINAL), aggregates merged — in
    an order that does not depend on how the engine sorts stages. (Unmerged rows are no
    measure: the engine may merge parts, or rows of one inserted block, at any time.)"""
    queries = {
        "touchpoints": "SELECT * FROM {db}.touchpoints FINAL",
        "stage_transitions": "SELECT * FROM {db}.stage_transitions FINAL",
        "journey_state": "SELECT * FROM {db}.journey_state FINAL",
        "dropoffs": "SELECT * FROM {db}.dropoffs FINAL",
        "funnel_daily": (
            "SELECT day, stage, channel, campaign, persona, sum(touches), sum(purchases), "
            "sum(revenue), uniqExactMerge(buyers) FROM {db}.funnel_daily GROUP BY ALL"
        ),
        "interactions_hour_of_week": (
            "SELECT channel, event_type, day_of_week, hour, sum(touches), "
            "uniqExactMerge(buyers) FROM {db}.interactions_hour_of_week GROUP BY ALL"
        ),
    }
    return {
        name: sorted(
            (tuple(row) for row in client.query(sql.format(db=database)).result_rows), key=repr
        )
        for name, sql in queries.items()
    }


def write_own_stages(client: Any, database: str) -> None:
    """Journeys classified by OWN_STAGES: "evaluation" in every stage column."""
    records = [
        event("page_view", at=0 * DAY, buyer="eva"),
        event("page_view", at=0 * DAY, buyer="tim"),
        event("signup", at=1 * DAY, buyer="tim"),
        event("page_view", at=9 * DAY, buyer="clock"),  # moves the watermark: eva drops
    ]
    run_local(
        [RawRecord("own", str(i), json.dumps(r).encode()) for i, r in enumerate(records)],
        JourneyProcessor(OWN_STAGES, allowed_lateness=timedelta(hours=1), dedup_window=DAY * 7),
        ClickHouseWriter(client, database),
        batch_size=2,
        run_id="own-stages",
    )


@pytest.fixture
def at_0007(clickhouse_client: Any) -> Iterator[str]:
    """A database migrated up to 0007 (stage columns still Enum8), holding the default
    stages' journeys — two of whose daily-funnel rows are identical (ana's two opens)."""
    name = f"m8_{uuid.uuid4().hex[:12]}"
    applied = apply_migrations(clickhouse_client, name, upto=7)
    assert [m.version for m in applied] == [1, 2, 3, 4, 5, 6, 7]
    run(clickhouse_client, name)
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=DAY * 7
    )
    writer = ClickHouseWriter(clickhouse_client, name)
    for index, at in enumerate((DAY + timedelta(hours=1), DAY + timedelta(hours=2))):
        record = event("email_open", at=at, buyer="ana")
        run_local(
            [RawRecord("again", "1", json.dumps(record).encode())],
            processor,
            writer,
            batch_size=1,
            run_id=f"again{index}",
        )
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def test_0008_makes_stage_columns_strings_keeping_every_row_and_aggregate(
    clickhouse_client: Any, at_0007: str
) -> None:
    client, database = clickhouse_client, at_0007
    types = stage_column_types(client, database)
    assert len(types) == 8 and all("Enum8('pre_awareness' = 1" in kind for kind in types.values())
    before = contents(client, database)
    assert all(before.values()), {name: len(rows) for name, rows in before.items()}
    unmerged = client.query(
        f"SELECT * EXCEPT buyers, finalizeAggregation(buyers) FROM {database}.funnel_daily"
    ).result_rows
    assert len(set(unmerged)) < len(unmerged)  # identical rows: a deduplicated copy loses one
    with pytest.raises(Exception, match="evaluation"):
        client.command(
            f"INSERT INTO {database}.dropoffs (buyer_id, stage, entered_at, deadline, version) "
            "VALUES ('eva', 'evaluation', now64(3), now64(3), 1)"
        )

    applied = apply_migrations(client, database, upto=8)

    assert [(m.version, m.name) for m in applied] == [(8, "stage_names")]
    assert stage_column_types(client, database) == {
        (table, column): "LowCardinality(Nullable(String))"
        if column in ("from_stage", "furthest_stage", "current_stage", "dropoff_stage")
        or table == "touchpoints"
        else "LowCardinality(String)"
        for table, columns in STAGE_COLUMNS.items()
        for column in columns
    }
    enums = client.query(
        "SELECT table, name FROM system.columns WHERE database = {db:String} "
        "AND type LIKE '%Enum%'",
        parameters={"db": database},
    ).result_rows
    assert [tuple(row) for row in enums] == [("journey_runs", "status")]
    tables = {row[0] for row in client.query(f"SHOW TABLES FROM {database}").result_rows}
    assert not [table for table in tables if table.endswith("__0008")]
    assert contents(client, database) == before
    assert apply_migrations(client, database, upto=8) == []

    # The view feeds the new funnel_daily, and a stage of the rules' own is accepted.
    write_own_stages(client, database)
    after = contents(client, database)
    assert after["funnel_daily"] == sorted(
        [
            *before["funnel_daily"],
            (T0_DAY, "evaluation", "web", "", "", 2, 0, Decimal(0), 2),
            (T0_DAY + DAY, "trial", "web", "", "", 1, 0, Decimal(0), 1),
            (T0_DAY + 9 * DAY, "evaluation", "web", "", "", 1, 0, Decimal(0), 1),
        ],
        key=repr,
    )
    moves = client.query(
        f"SELECT buyer_id, from_stage, to_stage FROM {database}.stage_transitions FINAL "
        "WHERE buyer_id IN ('eva', 'tim') ORDER BY buyer_id, transitioned_at"
    ).result_rows
    assert [tuple(move) for move in moves] == [
        ("eva", None, "evaluation"),
        ("tim", None, "evaluation"),
        ("tim", "evaluation", "trial"),
    ]
    drops = client.query(f"SELECT buyer_id, stage FROM {database}.dropoffs FINAL").result_rows
    assert ("eva", "evaluation") in [tuple(drop) for drop in drops]
    eva = client.query(
        "SELECT furthest_stage, current_stage, dropoff_stage "
        f"FROM {database}.journey_state FINAL WHERE buyer_id = 'eva'"
    ).result_rows
    assert [tuple(row) for row in eva] == [("evaluation", "evaluation", "evaluation")]


def test_0008_interrupted_after_a_swap_finishes_when_applied_again(
    clickhouse_client: Any, at_0007: str
) -> None:
    client, database = clickhouse_client, at_0007
    before = contents(client, database)
    (migration,) = [m for m in load_migrations() if m.version == 8]
    statements = migration.statements(database)
    swaps = [i for i, sql in enumerate(statements) if sql.startswith("EXCHANGE TABLES")]
    assert len(swaps) == 3
    for statement in statements[: swaps[-1] + 1]:  # funnel_daily swapped, its view not back
        client.command(statement)

    assert [m.version for m in apply_migrations(client, database, upto=8)] == [8]
    assert contents(client, database) == before
    views = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND engine = 'MaterializedView' ORDER BY name",
        parameters={"db": database},
    ).result_rows
    assert [row[0] for row in views] == ["funnel_daily_mv", "interactions_hour_of_week_mv"]
