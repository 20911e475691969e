"""Every answer served from the report summaries (migration 0011) equals its raw twin.

Each question that reads ``purchases``, ``support_touches`` or ``buyer_last_touch`` keeps
the SQL it had over ``touchpoints`` (``source="raw"``); both must return the same rows on
generated data loaded the hard way: half of it before 0011 (so the migration backfills a
database with data), half after (so the views fill the summaries), a batch written twice
(block deduplication), touches inserted again in blocks of their own (a replay that block
deduplication cannot catch: ``touchpoints FINAL`` drops them, and so must the summaries)
and a late event that retracts a stage move.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, write_dataset
from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.local import run_local
from schemas.raw import RawRecord
from sinks import analysis
from sinks.analysis import Period
from sinks.migrate import apply_migrations, load_migrations
from sinks.writer import ClickHouseWriter
from tests.factories import event

pytestmark = pytest.mark.integration

SUMMARIES = 11
BEFORE_SUMMARIES = 9
"""The last migration before the summaries (0010 is reserved; ``upto`` skips a gap)."""
PERIODS = [
    Period(),
    Period(start=datetime(2026, 2, 1, tzinfo=UTC)),
    Period(end=datetime(2026, 2, 15, 12, 30, tzinfo=UTC)),
    Period(datetime(2026, 1, 20, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
]


def _records(path: Path) -> list[RawRecord]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [RawRecord("gen", str(i), line.encode()) for i, line in enumerate(lines)]


def _processor() -> JourneyProcessor:
    return JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=2), dedup_window=timedelta(days=7)
    )


def _run(client: Any, database: str, records: list[RawRecord], run_id: str) -> None:
    writer = ClickHouseWriter(client, database)
    run_local(records, _processor(), writer, batch_size=500, run_id=run_id)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, clickhouse_client: Any) -> Iterator[str]:
    client = clickhouse_client
    database = f"summaries_{uuid.uuid4().hex[:8]}"
    events = tmp_path_factory.mktemp("summaries") / "events.jsonl"
    write_dataset(
        GeneratorConfig(buyers=900, seed=5, timeouts=dict(default_rules().timeouts)), events
    )
    records = _records(events)
    half = len(records) // 2
    apply_migrations(client, database, upto=BEFORE_SUMMARIES)
    _run(client, database, records[:half], "first-half")
    applied = apply_migrations(client, database)
    assert SUMMARIES in [migration.version for migration in applied]
    _run(client, database, records[half:], "second-half")
    # the same batches again: same tokens, dropped as blocks by touchpoints and the views
    _run(client, database, records[half:], "second-half")
    # touches of 60 buyers inserted again in new blocks, as a replay with other batch
    # boundaries would: touchpoints FINAL drops them
    client.command(
        f"INSERT INTO {database}.touchpoints SELECT * FROM {database}.touchpoints "
        f"WHERE buyer_id IN (SELECT DISTINCT buyer_id FROM {database}.touchpoints "
        "WHERE is_purchase OR channel = 'support' ORDER BY buyer_id LIMIT 60)",
        settings={"insert_deduplicate": 0},
    )
    # a late click retracts a move (pre_awareness → consideration becomes two moves) already
    # written, the way tests/integration/test_clickhouse.py shows it
    processor = _processor()
    for index, late in enumerate(
        (
            [
                event("email_sent", at=timedelta(0), buyer="late-1"),
                event("email_open", at=timedelta(hours=1), buyer="late-1"),
                event("ticket_opened", at=timedelta(hours=1, minutes=5), buyer="late-1"),
                event("purchase", at=timedelta(hours=2), buyer="late-1", revenue="12.50"),
            ],
            [event("email_click", at=timedelta(seconds=1), buyer="late-1")],
        )
    ):
        raw = [RawRecord("late", str(i), json.dumps(r).encode()) for i, r in enumerate(late)]
        run_local(
            raw, processor, ClickHouseWriter(client, database), batch_size=10, run_id=f"late{index}"
        )
    retracted = client.command(
        f"SELECT count() FROM {database}.stage_transitions WHERE buyer_id = 'late-1' AND is_deleted"
    )
    assert int(retracted) >= 1
    yield database
    client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


Answer = Callable[..., Any]
BY_PERIOD: dict[str, Answer] = {
    "promo_effectiveness": analysis.promo_effectiveness,
    "weekly_sales": analysis.weekly_sales,
    "retention_cohorts": lambda *a, **k: list(analysis.retention_cohorts(*a, **k)),
    "persona_stats": analysis.persona_stats,
    "why_not_buy_or_stay": analysis.why_not_buy_or_stay,
    "channel_effectiveness": lambda *a, **k: analysis.channel_effectiveness(
        *a, lookback=timedelta(days=30), **k
    ),
}


@pytest.mark.parametrize("period", PERIODS, ids=lambda p: f"{p.start}..{p.end}")
@pytest.mark.parametrize("name", sorted(BY_PERIOD))
def test_each_answer_from_the_summaries_equals_its_raw_twin(
    clickhouse_client: Any, loaded: str, name: str, period: Period
) -> None:
    answer = BY_PERIOD[name]
    summary = answer(clickhouse_client, loaded, period=period)
    raw = answer(clickhouse_client, loaded, period=period, source="raw")
    assert summary == raw
    if period == Period():
        assert summary, name


def test_the_buyer_tracker_from_the_summaries_equals_its_raw_twin(
    clickhouse_client: Any, loaded: str
) -> None:
    as_of = datetime(2026, 3, 15, tzinfo=UTC)
    every: dict[str, Any] = {"as_of": as_of, "limit": 100_000, "lapsed_after": timedelta(days=45)}
    summary = analysis.buyer_tracker(clickhouse_client, loaded, **every)
    assert len(summary) > 900
    assert summary == analysis.buyer_tracker(clickhouse_client, loaded, **every, source="raw")
    assert analysis.buyer_tracker(clickhouse_client, loaded, limit=25) == analysis.buyer_tracker(
        clickhouse_client, loaded, limit=25, source="raw"
    )


def test_the_summaries_hold_the_deduplicated_touches_and_no_more(
    clickhouse_client: Any, loaded: str
) -> None:
    db = loaded

    def count(sql: str) -> int:
        return int(clickhouse_client.command(sql))

    stored = count(f"SELECT count() FROM {db}.touchpoints")
    assert stored > count(f"SELECT count() FROM {db}.touchpoints FINAL")  # the replay is there
    assert count(f"SELECT count() FROM {db}.purchases FINAL") == count(
        f"SELECT count() FROM {db}.touchpoints FINAL WHERE is_purchase"
    )
    assert count(f"SELECT count() FROM {db}.support_touches FINAL") == count(
        f"SELECT count() FROM {db}.touchpoints FINAL "
        "WHERE channel = 'support' OR event_type = 'ticket_opened'"
    )
    assert count(
        f"SELECT count() FROM (SELECT buyer_id FROM {db}.buyer_last_touch GROUP BY buyer_id)"
    ) == count(f"SELECT uniqExact(buyer_id) FROM {db}.touchpoints")
    assert count(f"SELECT count() FROM {db}.buyer_channels FINAL") == count(
        f"SELECT uniqExact(buyer_id, channel) FROM {db}.touchpoints WHERE NOT is_purchase"
    )
    # 0012 took buyer_paths out again, its view first
    assert not count(
        f"SELECT count() FROM system.tables WHERE database = '{db}' "
        "AND name IN ('buyer_paths', 'buyer_paths_mv')"
    )


@pytest.mark.parametrize("period", PERIODS, ids=lambda p: f"{p.start}..{p.end}")
@pytest.mark.parametrize(("lookback", "half_life"), [(30, 7), (3, 1)])
def test_every_attribution_from_the_summaries_equals_its_raw_twin(
    clickhouse_client: Any, loaded: str, period: Period, lookback: int, half_life: int
) -> None:
    every: dict[str, Any] = {
        "period": period,
        "lookback": timedelta(days=lookback),
        "half_life": timedelta(days=half_life),
    }
    summary = analysis.attribution_all(clickhouse_client, loaded, **every)
    raw = analysis.attribution_all(clickhouse_client, loaded, **every, source="raw")
    assert summary.keys() == raw.keys()
    for key, shares in summary.items():
        twin = raw[key]
        assert [(s.model, s.key, s.revenue) for s in shares] == [
            (s.model, s.key, s.revenue) for s in twin
        ], key
        # float sums of parallel threads: equal to the last bits only run by run
        assert [s.purchases for s in shares] == pytest.approx([s.purchases for s in twin])
        assert [s.acquisitions for s in shares] == pytest.approx([s.acquisitions for s in twin])
    assert any(summary.values())


def test_the_migration_runs_again_from_the_top_without_changing_an_answer(
    clickhouse_client: Any, loaded: str
) -> None:
    """0011 failed half-way is applied again from the top: its backfills copy every touch
    a second time, which the summaries absorb."""
    migration = next(m for m in load_migrations() if m.version == SUMMARIES)
    for statement in migration.statements(loaded):
        clickhouse_client.command(statement)
    for name, answer in sorted(BY_PERIOD.items()):
        assert answer(clickhouse_client, loaded) == answer(
            clickhouse_client, loaded, source="raw"
        ), name
    summary = analysis.attribution_all(clickhouse_client, loaded)
    raw = analysis.attribution_all(clickhouse_client, loaded, source="raw")
    assert {key: [(s.key, s.revenue) for s in shares] for key, shares in summary.items()} == {
        key: [(s.key, s.revenue) for s in shares] for key, shares in raw.items()
    }
