"""Migrations, the idempotent writer and the analysis queries on the real engine (chDB)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from processors.engine import JourneyProcessor
from processors.local import run_local
from processors.rules import default_rules
from schemas.enums import Stage
from schemas.errors import MigrationError
from schemas.raw import RawRecord
from sinks import analysis, queries
from sinks.migrate import Migration, apply_migrations, load_migrations
from sinks.writer import ClickHouseWriter
from tests.factories import event

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)


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
