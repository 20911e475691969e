"""End to end on the embedded default: generated journeys → `touchpoint run` path → chDB.

Every funnel, drop-off and exit number read back from ClickHouse must equal the
generator's ground truth exactly, with duplicates, out-of-order delivery and
malformed records injected; and running the same input again changes nothing.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.classify import default_rules
from tests.readback import read_back
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    folder = tmp_path_factory.mktemp("e2e")
    config = GeneratorConfig(
        buyers=3000,
        seed=2026,
        duplicate_rate=0.04,
        out_of_order_rate=0.15,
        malformed_rate=0.003,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    truth = write_dataset(config, events, folder / "truth.json")
    return events, truth


def run(chdb_url: str, database: str, events: Path) -> Any:
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database, batch_size=2000)
    inputs = inspect_inputs([events])
    with clickhouse(settings) as client:
        return run_files(settings, inputs, client)


def test_every_number_equals_the_ground_truth_and_a_rerun_changes_nothing(
    dataset: tuple[Path, GroundTruth], chdb_url: str, database: str, clickhouse_client: Any
) -> None:
    events, truth = dataset
    summary = run(chdb_url, database, events)

    assert summary.counters.accepted == truth.events_unique
    assert summary.counters.duplicates == truth.duplicates
    assert dict(summary.counters.dead_letters) == dict(truth.malformed)
    assert summary.counters.late == 0  # out-of-order, but all inside the lateness bound

    got = read_back(clickhouse_client, database)
    assert got["funnel"] == {stage.value: counts for stage, counts in truth.funnel().items()}
    assert got["dropoffs"] == dict(truth.dropoffs())
    assert got["exits"] == dict(truth.exits())
    assert got["dead_letters"] == dict(truth.malformed)
    assert got["purchases"] == sum(buyer.purchases for buyer in truth.buyers)
    assert got["revenue"] == sum((buyer.revenue for buyer in truth.buyers), Decimal(0))
    assert got["buyers"] == len(truth.buyers)
    assert got["unclassified"] == truth.unclassified
    assert got["tables"]["touchpoints"] == truth.events_unique
    assert sum(truth.dropoffs().values()) > 100  # the comparison is not vacuous
    assert len(truth.exits()) > 5

    run(chdb_url, database, events)
    assert read_back(clickhouse_client, database) == got


def test_per_buyer_furthest_and_drop_off_stage_match(
    dataset: tuple[Path, GroundTruth], chdb_url: str, database: str, clickhouse_client: Any
) -> None:
    events, truth = dataset
    run(chdb_url, database, events)
    rows = clickhouse_client.query(
        f"SELECT buyer_id, toString(furthest_stage), toString(dropoff_stage), purchases, revenue "
        f"FROM {database}.journey_state FINAL"
    ).result_rows
    got = {
        buyer: (furthest, dropoff, purchases, Decimal(revenue))
        for buyer, furthest, dropoff, purchases, revenue in rows
    }
    expected = {
        buyer.buyer_id: (
            buyer.furthest_stage.value,
            buyer.dropoff_stage.value if buyer.dropoff_stage else None,
            buyer.purchases,
            buyer.revenue,
        )
        for buyer in truth.buyers
    }
    assert got == expected
