"""The demo's timeline ends "now": buyers are mid-journey there, the ground truth is still
exact, and the report's "High intent now" lists live buyers (issue 16).

A demo-sized dataset (2,000 buyers, the demo's noise) ending at a fixed "now" goes
through the embedded `touchpoint run` path into chDB; then `touchpoint demo` itself, as
a user runs it: ending at the clock by default, reused on a rerun, a different --now
only with --fresh.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.classify import default_rules
from sinks import analysis
from tests.e2e.test_cli import touchpoint
from tests.readback import expected_from_truth, read_back
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
UNSUBSCRIBED = {"unsubscribe", "opt_out", "spam_complaint"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    folder = tmp_path_factory.mktemp("demo-timeline")
    config = GeneratorConfig.ending_at(
        NOW, buyers=2000, seed=16, timeouts=dict(default_rules().timeouts)
    )
    events = folder / "events.jsonl"
    return events, write_dataset(config, events)


@pytest.fixture(scope="module")
def loaded(
    dataset: tuple[Path, GroundTruth], chdb_url: str, clickhouse_client: Any
) -> Iterator[tuple[str, Any]]:
    """The dataset run once into a database of its own (dropped after the module)."""
    from sinks.migrate import apply_migrations

    database = "t_demo_timeline"
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    apply_migrations(clickhouse_client, database)
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    with clickhouse(settings) as client:
        summary = run_files(settings, inspect_inputs([dataset[0]]), client)
    yield database, summary
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")


def test_a_timeline_ending_now_gives_exactly_the_ground_truth(
    dataset: tuple[Path, GroundTruth], loaded: Any, clickhouse_client: Any
) -> None:
    _, truth = dataset
    database, summary = loaded
    assert summary.counters.accepted == truth.events_unique
    assert summary.counters.late == 0
    assert summary.watermark == truth.final_watermark
    got = read_back(clickhouse_client, database)
    del got["tables"]
    assert got == expected_from_truth(truth)

    rows = clickhouse_client.query(
        f"SELECT buyer_id, toString(furthest_stage), toString(dropoff_stage), purchases, revenue "
        f"FROM {database}.journey_state FINAL"
    ).result_rows
    assert {
        buyer: (furthest, dropoff, purchases, Decimal(revenue))
        for buyer, furthest, dropoff, purchases, revenue in rows
    } == {
        buyer.buyer_id: (
            buyer.furthest_stage.value,
            buyer.dropoff_stage.value if buyer.dropoff_stage else None,
            buyer.purchases,
            buyer.revenue,
        )
        for buyer in truth.buyers
    }
    assert len(truth.live()) > 400  # not vacuous: many journeys are cut mid-way


def test_high_intent_now_lists_only_buyers_live_in_consideration(
    dataset: tuple[Path, GroundTruth], loaded: Any, clickhouse_client: Any
) -> None:
    _, truth = dataset
    database, _ = loaded
    by_id = {buyer.buyer_id: buyer for buyer in truth.buyers}

    shown = analysis.high_intent(clickhouse_client, database, limit=25)  # as the report asks
    assert len(shown) == 25
    everyone = analysis.high_intent(clickhouse_client, database, limit=100_000)
    assert everyone[:25] == shown
    for listed in everyone:
        buyer = by_id[listed.buyer_id]
        assert buyer.furthest_stage.value == "consideration"
        assert buyer.dropoff_stage is None
        assert buyer.live_at(truth.final_watermark)
        assert not UNSUBSCRIBED & {kind for kind, _, _ in buyer.exits}
    candidates = [
        buyer
        for buyer in truth.live()
        if buyer.furthest_stage.value == "consideration"
        and not UNSUBSCRIBED & {kind for kind, _, _ in buyer.exits}
    ]
    # Most live buyers in consideration touched something in the last 14 days.
    assert len(everyone) > len(candidates) / 2


def ground_truth(data_dir: Path, seed: int, buyers: int) -> dict[str, Any]:
    path = data_dir / "demo" / f"truth-seed{seed}-buyers{buyers}.json"
    truth: dict[str, Any] = json.loads(path.read_text())
    return truth


def high_intent_rows(report: str) -> list[str]:
    """The buyer ids of the report's "High intent now" table."""
    section = report.split("High intent now", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^(buyer-\S+)", section, re.MULTILINE)


def test_the_demo_ends_now_a_rerun_reuses_it_and_another_dataset_needs_fresh(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "touchpoint-data"
    before = datetime.now(UTC).replace(microsecond=0)
    first = touchpoint(tmp_path, "demo", "--buyers", "600", "--seed", "4")
    after = datetime.now(UTC)
    assert first.returncode == 0, first.stderr
    truth = ground_truth(data_dir, 4, 600)
    end = datetime.fromisoformat(truth["totals"]["timeline_end"])
    assert before <= end <= after
    assert f"Timeline:     ends {end:%Y-%m-%d %H:%M:%S} UTC\n" in first.stdout

    report = touchpoint(tmp_path, "report")
    assert report.returncode == 0, report.stderr
    listed = high_intent_rows(report.stdout)
    assert listed
    by_id = {buyer["buyer_id"]: buyer for buyer in truth["buyers"]}
    for buyer_id in listed:  # in consideration and not dropped there: before its deadline
        assert by_id[buyer_id]["furthest_stage"] == "consideration"
        assert by_id[buyer_id]["dropoff_stage"] is None

    again = touchpoint(tmp_path, "demo", "--buyers", "600", "--seed", "4")
    assert again.returncode == 0, again.stderr
    assert "(data of an earlier run; --fresh for data ending now)" in again.stdout
    assert ground_truth(data_dir, 4, 600) == truth
    same_end = touchpoint(
        tmp_path, "demo", "--buyers", "600", "--seed", "4", "--now", f"{end:%Y-%m-%dT%H:%M:%S}"
    )
    assert same_end.returncode == 0, same_end.stderr
    assert "(data of an earlier run" in same_end.stdout

    # The database holds one demo: a run folds into the journeys stored there.
    for other in (("--buyers", "900"), ("--now", "2026-06-01"), ("--seed", "5")):
        refused = touchpoint(tmp_path, "demo", "--buyers", "600", "--seed", "4", *other)
        assert refused.returncode == 1, other
        assert refused.stderr.startswith("touchpoint: error: database touchpoint in ")
        assert "--fresh" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert ground_truth(data_dir, 4, 600) == truth  # refused before anything was written
    future = touchpoint(tmp_path, "demo", "--now", "2999-01-01", "--fresh")
    assert future.returncode == 1 and "in the future" in future.stderr

    fresh = touchpoint(
        tmp_path, "demo", "--buyers", "600", "--seed", "4", "--now", "2026-06-01", "--fresh"
    )
    assert fresh.returncode == 0, fresh.stderr
    assert ground_truth(data_dir, 4, 600)["totals"]["timeline_end"] == "2026-06-01T00:00:00+00:00"
    assert "Timeline:     ends 2026-06-01 00:00:00 UTC\n" in fresh.stdout
