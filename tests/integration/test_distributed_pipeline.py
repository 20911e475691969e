"""The distributed path on a genuine Apache Kafka broker.

generator → `touchpoint produce` → two `touchpoint worker` processes sharing 6
partitions → Kafka→ClickHouse sink → chDB. Every funnel, drop-off and exit
number must equal the generator's ground truth and the embedded `touchpoint run`
over the same file — also when a worker is killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from ingest.topics import ensure_topics
from processors.classify import default_rules
from tests.e2e.test_identity import links, per_person, truth_per_person
from tests.factories import event
from tests.kafka_pipeline import Pipeline, assert_aggregates_match_the_raw_table, stop
from tests.readback import expected_from_truth, read_back
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    folder = tmp_path_factory.mktemp("distributed")
    config = GeneratorConfig(
        buyers=1500,
        seed=4242,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    return events, write_dataset(config, events)


@pytest.fixture(scope="module")
def embedded_numbers(
    dataset: tuple[Path, GroundTruth], chdb_url: str, clickhouse_client: Any
) -> dict[str, Any]:
    """The embedded `touchpoint run` over the same file, for comparison."""
    events, _ = dataset
    database = f"embedded_{uuid.uuid4().hex[:8]}"
    settings = load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    with clickhouse(settings) as client:
        run_files(settings, inspect_inputs([events]), client)
    return read_back(clickhouse_client, database)


def test_two_workers_give_exactly_the_ground_truth_and_the_embedded_numbers(
    pipeline: Pipeline,
    dataset: tuple[Path, GroundTruth],
    embedded_numbers: dict[str, Any],
    clickhouse_client: Any,
    database: str,
) -> None:
    events, truth = dataset
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    workers = [pipeline.start_worker("worker-a"), pipeline.start_worker("worker-b")]
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        for worker in workers:
            stop(worker)
    pipeline.sink_into(clickhouse_client, database)

    got = read_back(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert {key: got[key] for key in expected} == {key: embedded_numbers[key] for key in expected}
    assert got["tables"]["touchpoints"] == truth.events_unique
    assert_aggregates_match_the_raw_table(clickhouse_client, database)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """Large enough that two workers are still busy when the first offsets commit."""
    folder = tmp_path_factory.mktemp("distributed-big")
    config = GeneratorConfig(
        buyers=5000,
        seed=777,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.002,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    return events, write_dataset(config, events)


def run_with_a_worker_killed(
    pipeline: Pipeline, events: Path, clickhouse_client: Any, database: str, **env: str
) -> None:
    """Produce ``events``, run two workers, SIGKILL one right after the first commit (mid-
    stream), start it again, wait until everything is consumed, sink into ``database``."""
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    end = pipeline.raw_end()
    first = pipeline.start_worker("worker-a", **env)
    second = pipeline.start_worker("worker-b", **env)
    restarted = None
    try:
        deadline = time.monotonic() + 180
        while pipeline.committed_raw() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # kill right after the first commit: mid-stream
        progress = pipeline.committed_raw()
        assert 0 < progress < end, f"the kill must land mid-stream ({progress} of {end})"
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(2)
        restarted = pipeline.start_worker("worker-a-restarted", **env)
        pipeline.wait_until_workers_consumed_everything()
    finally:
        for worker in (first, second, restarted):
            if worker is not None:
                stop(worker)
    pipeline.sink_into(clickhouse_client, database)


def test_a_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    pipeline: Pipeline,
    big_dataset: tuple[Path, GroundTruth],
    clickhouse_client: Any,
    database: str,
) -> None:
    events, truth = big_dataset
    run_with_a_worker_killed(pipeline, events, clickhouse_client, database)

    got = read_back(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert got["tables"]["touchpoints"] == truth.events_unique, _debug_missing(
        pipeline, events, clickhouse_client, database
    )
    assert_aggregates_match_the_raw_table(clickhouse_client, database)


def test_records_delivered_again_after_their_state_was_stored_are_skipped_not_re_judged(
    pipeline: Pipeline,
    dataset: tuple[Path, GroundTruth],
    clickhouse_client: Any,
    database: str,
) -> None:
    """Faust rewinds a partition to its committed offset after every rebalance, which can
    be behind the state stored with the last transaction. Here the whole input is
    delivered again to a worker that loads the finished state: it must emit nothing,
    not even a too_late dead letter for records its watermark has long passed."""
    events, truth = dataset
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    worker = pipeline.start_worker("worker")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)
    outputs_before = pipeline.output_ends()

    pipeline.rewind_workers_to(0)
    assert pipeline.committed_raw() == 0
    worker = pipeline.start_worker("worker-after-rewind")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)

    assert pipeline.output_ends() == outputs_before, "records were emitted a second time"
    log = (pipeline.logs / "worker-after-rewind.log").read_text()
    assert "records delivered again from offset 0 are skipped" in log
    pipeline.sink_into(clickhouse_client, database)
    got = read_back(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert got["tables"]["touchpoints"] == truth.events_unique


def test_malformed_records_sent_straight_to_the_raw_topic_become_dead_letters(
    pipeline: Pipeline, clickhouse_client: Any, database: str
) -> None:
    created = pipeline.cli("produce", "--generate", "5", "--no-watermark")
    assert created.returncode == 0, created.stderr
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all")
    bad = [
        b"{not json",
        b"[1, 2]",
        json.dumps({"event_id": "x", "channel": "fax"}).encode(),
        b"\xff",
    ]
    sent = [
        producer.send(pipeline.topics.raw, value=value, partition=3).get(timeout=30)
        for value in bad
    ]
    producer.close()
    pipeline.env["TOUCHPOINT_KAFKA_STORE"] = "rocksdict"  # this worker keeps state in RocksDB
    pipeline.env["TOUCHPOINT_KAFKA_STORE_DIR"] = str(pipeline.logs / "state")
    worker = pipeline.start_worker("worker")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)
    pipeline.sink_into(clickhouse_client, database)
    positions = [f"3:{metadata.offset}" for metadata in sent]
    rows = clickhouse_client.query(
        f"SELECT reason, source, position FROM {database}.dead_letters FINAL "
        "WHERE position IN {positions:Array(String)} "
        "ORDER BY toUInt64(splitByChar(':', position)[2])",
        parameters={"positions": positions},
    ).result_rows
    assert [tuple(row) for row in rows] == [
        (reason, pipeline.topics.raw, position)
        for reason, position in zip(
            ["invalid_json", "not_an_object", "missing_field", "invalid_encoding"],
            positions,
            strict=True,
        )
    ]
    touchpoints = clickhouse_client.query(f"SELECT count() FROM {database}.touchpoints FINAL")
    assert touchpoints.result_rows[0][0] > 0  # the worker went on past the bad records


def test_a_receive_time_stamped_event_does_not_poison_the_partition_for_the_history_after_it(
    pipeline: Pipeline, clickhouse_client: Any, database: str
) -> None:
    """A Twilio callback (no event time: stamped when received, i.e. now) arrives first on a
    partition, then months-old history follows: the history must be folded, not dead-lettered
    ``too_late`` behind a watermark the callback dragged to now."""
    now = datetime.now(UTC).replace(microsecond=0)
    callback = event(
        "sms_delivered",
        at=now,
        buyer="sms-buyer",
        event_id="SM-now",
        channel="sms",
        received_at=now.isoformat(),
    )
    history = [
        event("page_view", at=timedelta(days=day, minutes=number), buyer=f"old-{number}")
        for day in range(30)
        for number in range(5)
    ]
    ensure_topics(pipeline.bootstrap, {pipeline.topics.raw: PARTITIONS})
    producer = KafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all")
    for record in [callback, *history]:
        producer.send(pipeline.topics.raw, value=json.dumps(record).encode(), partition=2)
    producer.flush()
    producer.close()
    worker = pipeline.start_worker("worker")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)
    pipeline.sink_into(clickhouse_client, database)
    dead = clickhouse_client.query(
        f"SELECT reason, count() FROM {database}.dead_letters FINAL GROUP BY reason"
    ).result_rows
    assert dead == []
    touchpoints = clickhouse_client.query(f"SELECT count() FROM {database}.touchpoints FINAL")
    assert touchpoints.result_rows[0][0] == 1 + len(history)


def _debug_missing(pipeline: Pipeline, events: Path, clickhouse_client: Any, database: str) -> str:
    """Which unique events have no touchpoint row, and is their classified message in Kafka?"""
    expected: set[str] = set()
    for line in events.read_text().splitlines():
        try:
            record = json.loads(line)
            expected.add(record["event_id"])
        except (ValueError, KeyError, TypeError):
            continue
    rows = clickhouse_client.query(f"SELECT event_id FROM {database}.touchpoints FINAL").result_rows
    missing = expected - {row[0] for row in rows}
    consumer = KafkaConsumer(
        bootstrap_servers=pipeline.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    consumer.subscribe([pipeline.topics.for_table("touchpoints")])
    found = [
        (message.partition, message.offset)
        for message in consumer
        if json.loads(message.value)["event_id"] in missing
    ]
    consumer.close()
    return f"missing={sorted(missing)[:5]} in_topic={found[:5]}"


def test_the_sink_command_runs_until_sigterm_and_the_report_reads_its_rows(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    env = dict(
        pipeline.env,
        TOUCHPOINT_CLICKHOUSE_URL=f"chdb:{tmp_path / 'ch'}",
        TOUCHPOINT_KAFKA_SINK_GROUP=f"{pipeline.app_id}-cli-sink",
        TOUCHPOINT_KAFKA_SINK_BATCH_SECONDS="1",
    )
    produced = pipeline.cli("produce", "--generate", "40")
    assert produced.returncode == 0, produced.stderr
    worker = pipeline.start_worker("worker")
    try:
        pipeline.wait_until_workers_consumed_everything()
    finally:
        stop(worker)

    sink = subprocess.Popen(
        [sys.executable, "-m", "touchpoint", "sink"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    outputs = [TopicPartition(topic, p) for topic in pipeline.topics.outputs for p in range(6)]
    probe = KafkaConsumer(bootstrap_servers=pipeline.bootstrap)
    ends = probe.end_offsets(outputs)
    probe.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        admin = KafkaAdminClient(bootstrap_servers=pipeline.bootstrap)
        try:
            committed = admin.list_group_offsets(env["TOUCHPOINT_KAFKA_SINK_GROUP"])
            offsets = committed.get(env["TOUCHPOINT_KAFKA_SINK_GROUP"], {})
        except KafkaError:
            offsets = {}
        finally:
            admin.close()
        # A transaction's commit marker takes the last offset of a partition.
        if all(
            ends[tp] == 0 or (tp in offsets and offsets[tp].offset >= ends[tp] - 1)
            for tp in outputs
        ):
            break
        time.sleep(1)
    sink.send_signal(signal.SIGTERM)
    out, err = sink.communicate(timeout=60)
    assert sink.returncode == 0, err.decode()[-2000:]
    assert b"Sink stopped after" in out

    report = subprocess.run(
        [sys.executable, "-m", "touchpoint", "report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    pre_awareness = next(line for line in report.stdout.splitlines() if line.startswith("pre_aw"))
    assert pre_awareness.split()[1] == "40"


@pytest.fixture(scope="module")
def people_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """Most buyers known by several ids (a cookie, an email address), which hash to different
    partitions: their journeys are stitched across workers."""
    folder = tmp_path_factory.mktemp("distributed-people")
    config = GeneratorConfig(
        buyers=1200,
        seed=3131,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.003,
        several_ids_rate=0.7,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    return events, write_dataset(config, events)


def test_ids_of_one_person_on_different_partitions_are_stitched_exactly_across_a_sigkill(
    pipeline: Pipeline,
    people_dataset: tuple[Path, GroundTruth],
    clickhouse_client: Any,
    database: str,
) -> None:
    events, truth = people_dataset
    lines = events.read_text(encoding="utf-8").splitlines()
    several = [buyer for buyer in truth.buyers if buyer.other_ids]
    assert len(several) > len(truth.buyers) // 8  # the comparison is not vacuous
    # The whole file is a backlog: a worker's control record to another partition queues
    # behind that partition's unread input, months of event time later. A merge is exact
    # within the dedup window (processors.stitching); here it spans the data.
    run_with_a_worker_killed(
        pipeline,
        events,
        clickhouse_client,
        database,
        TOUCHPOINT_KAFKA_STITCH_IDENTITIES="true",
        TOUCHPOINT_DEDUP_WINDOW="365d",
    )

    got = read_back(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert got["tables"]["touchpoints"] == truth.events_unique
    assert per_person(clickhouse_client, database) == truth_per_person(truth, lines)
    linked = links(clickhouse_client, database)
    assert {other: linked.get(other) for buyer in several for other in buyer.other_ids} == {
        other: buyer.buyer_id for buyer in several for other in buyer.other_ids
    }
