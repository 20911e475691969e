"""A bounded input gives the same result whatever the order of its lines.

A file (or a set of files) is not a stream: all of it is there before the first
record is judged, so `touchpoint run` must not drop or misjudge an event because
of where its line sits. The allowed lateness and the dedup window govern streams.

One generated export spanning two months is written three ways — as delivered
(time order, with late deliveries inside the lateness bound), sorted by buyer (as
CRM and ESP exports often are) and shuffled — and each is run through the
`touchpoint` command into its own fresh chDB database. All three must give the
same funnel, journey states, moves, drop-offs, exits, touchpoints and dead letters,
no `too_late` dead letter, and the generator's ground truth.
"""

from __future__ import annotations

import json
import logging
import random
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest import ordering
from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.classify import default_rules
from tests.readback import everything_written, expected_from_truth
from touchpoint.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEDUP_WINDOW = timedelta(days=7)  # the default


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], GroundTruth]:
    folder = tmp_path_factory.mktemp("input-order")
    config = GeneratorConfig(
        buyers=700,
        seed=1189,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        timeouts=dict(default_rules().timeouts),
    )
    delivered = folder / "delivered.jsonl"
    truth = write_dataset(config, delivered)
    lines = delivered.read_text(encoding="utf-8").splitlines()

    def buyer(line: str) -> str:
        try:
            record = json.loads(line)
        except ValueError:
            return ""
        return str(record.get("buyer_id", "")) if isinstance(record, dict) else ""

    by_buyer = sorted(lines, key=buyer)  # stable: each buyer's lines stay in delivery order
    shuffled = list(lines)
    random.Random(11).shuffle(shuffled)
    files = {"delivered": delivered}
    for name, ordered in (("by_buyer", by_buyer), ("shuffled", shuffled)):
        files[name] = folder / f"{name}.jsonl"
        files[name].write_text("\n".join(ordered) + "\n", encoding="utf-8")
    return files, truth


def event_times(path: Path) -> list[datetime]:
    times = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            at = datetime.fromisoformat(json.loads(line)["occurred_at"])
        except (ValueError, KeyError, TypeError):
            continue
        if at.tzinfo is not None:
            times.append(at)
    return times


def test_the_exports_span_weeks_and_two_are_far_out_of_time_order(
    exports: tuple[dict[str, Path], GroundTruth],
) -> None:
    files, _ = exports
    times = event_times(files["delivered"])
    assert max(times) - min(times) > timedelta(days=14)
    for name in ("by_buyer", "shuffled"):
        newest = None
        far_behind = 0
        for at in event_times(files[name]):
            if newest is not None and at < newest - DEDUP_WINDOW:
                far_behind += 1
            newest = at if newest is None else max(newest, at)
        assert far_behind > len(times) // 3, name  # a stream would drop these as too_late


@pytest.fixture
def fresh_database(clickhouse_client: Any) -> Iterator[Callable[[], str]]:
    names: list[str] = []

    def new() -> str:
        names.append(f"order_{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    for name in names:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def touchpoint_run(
    capsys: pytest.CaptureFixture[str], chdb_url: str, database: str, path: Path, *more: str
) -> str:
    """`touchpoint run` in this process (chDB opens one directory per process)."""
    capsys.readouterr()
    code = main(
        ["--clickhouse-url", chdb_url, "--database", database, "run", "--input", str(path), *more]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_time_sorted_by_buyer_and_shuffled_files_give_the_same_result_and_the_truth(
    exports: tuple[dict[str, Path], GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    files, truth = exports
    results = {}
    for name, path in files.items():
        database = fresh_database()
        printed = touchpoint_run(capsys, chdb_url, database, path, "--batch-size", "500")
        assert "too_late" not in printed, f"{name}: {printed}"
        assert " 0 late," in printed, f"{name}: {printed}"
        results[name] = everything_written(clickhouse_client, database)

    # The same through the spill path: runs of 400 records in files under --sort-dir.
    monkeypatch.setattr(ordering, "DEFAULT_RUN_RECORDS", 400)
    caplog.set_level(logging.INFO, logger=ordering.__name__)
    sort_dir = tmp_path / "sort"
    sort_dir.mkdir()
    database = fresh_database()
    printed = touchpoint_run(
        capsys,
        chdb_url,
        database,
        files["shuffled"],
        "--batch-size",
        "500",
        "--sort-dir",
        str(sort_dir),
    )
    assert "too_late" not in printed
    spilled = re.search(r"(\d+) runs spilled to disk", caplog.text)
    assert spilled is not None and int(spilled.group(1)) > 10, caplog.text
    assert list(sort_dir.iterdir()) == []
    results["shuffled, spilled"] = everything_written(clickhouse_client, database)

    expected = expected_from_truth(truth)
    for name, got in results.items():
        assert {key: got[key] for key in expected} == expected, name
        assert got["tables"]["touchpoints"] == truth.events_unique, name
    assert results["by_buyer"] == results["delivered"]
    assert results["shuffled"] == results["delivered"]
    assert results["shuffled, spilled"] == results["delivered"]
    assert sum(truth.dropoffs().values()) > 50  # the comparison is not vacuous
    assert len(truth.exits()) > 5


def test_produce_sends_a_file_in_event_time_order_so_the_workers_give_the_same_result(
    exports: tuple[dict[str, Path], GroundTruth],
    pipeline: Any,
    chdb_url: str,
    clickhouse_client: Any,
    fresh_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The distributed path (real Kafka, a Faust worker, the sink) over the by-buyer copy."""
    from tests.kafka_pipeline import stop

    files, truth = exports
    embedded = fresh_database()
    touchpoint_run(capsys, chdb_url, embedded, files["delivered"])
    produced = pipeline.cli("produce", "--input", str(files["by_buyer"]))
    assert produced.returncode == 0, produced.stderr
    worker = pipeline.start_worker("worker")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)
    distributed = fresh_database()
    pipeline.sink_into(clickhouse_client, distributed)

    got, want = (
        everything_written(clickhouse_client, distributed),
        everything_written(clickhouse_client, embedded),
    )
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert "too_late" not in got["dead_letters"]
    for key in ("tables", "journey_state_rows", "transition_rows", "dropoff_rows"):
        assert got[key] == want[key], key
