"""The distributed path on a genuine Apache Kafka broker.

generator → `touchpoint produce` → two `touchpoint worker` processes sharing 6
partitions → Kafka→ClickHouse sink → chDB. Every funnel, drop-off and exit
number must equal the generator's ground truth and the embedded `touchpoint run`
over the same file — also when a worker is killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.rules import default_rules
from schemas.settings import KafkaSettings
from schemas.topics import Topics
from sinks.consumer import KafkaClickHouseSink
from sinks.writer import ClickHouseWriter
from tests.readback import expected_from_truth, read_back
from touchpoint import wiring

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
    settings = wiring.load_settings(clickhouse_url=chdb_url, clickhouse_database=database)
    with wiring.clickhouse(settings) as client:
        wiring.run_files(settings, wiring.inspect_inputs([events]), client)
    return read_back(clickhouse_client, database)


@dataclass
class Pipeline:
    bootstrap: str
    topics: Topics
    app_id: str
    env: dict[str, str]
    logs: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "touchpoint", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "touchpoint", "-v", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def committed_raw(self) -> int:
        """Input records the workers have committed (0 while their group is still forming)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets(self.app_id).get(self.app_id, {})
        except KafkaError:
            return 0
        finally:
            admin.close()
        return sum(
            meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.topics.raw and meta.offset > 0
        )

    def raw_end(self) -> int:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tps = [TopicPartition(self.topics.raw, p) for p in range(PARTITIONS)]
            return sum(consumer.end_offsets(tps).values())
        finally:
            consumer.close()

    def wait_until_workers_consumed_everything(self, timeout: float = 300) -> None:
        end = self.raw_end()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.committed_raw() >= end:
                return
            time.sleep(1)
        pytest.fail(f"workers did not catch up: {self.committed_raw()} of {end}; see {self.logs}")

    def sink_into(self, clickhouse_client: Any, database: str) -> None:
        from sinks.migrate import apply_migrations

        apply_migrations(clickhouse_client, database)
        settings = KafkaSettings(bootstrap=self.bootstrap, sink_group=f"{self.app_id}-sink")
        writer = ClickHouseWriter(clickhouse_client, database)
        with KafkaClickHouseSink(
            settings, writer, topics=self.topics.table_by_topic, max_rows=5000, max_seconds=1.0
        ) as sink:
            sink.run(idle_timeout=8.0)


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    tag = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"t{tag}.")
    app_id = f"touchpoint-{tag}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")}
    env.update(
        PYTHONPATH=str(REPO),
        TOUCHPOINT_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TOUCHPOINT_KAFKA_PARTITIONS=str(PARTITIONS),
        TOUCHPOINT_KAFKA_TOPIC_PREFIX=topics.prefix,
        TOUCHPOINT_KAFKA_APP_ID=app_id,
    )
    yield Pipeline(kafka_bootstrap, topics, app_id, env, tmp_path)


def assert_aggregates_match_the_raw_table(clickhouse_client: Any, database: str) -> None:
    """No output row was written twice: the daily funnel aggregate equals a FINAL recount."""
    from_view = clickhouse_client.query(
        f"SELECT sum(touches) FROM {database}.funnel_daily"
    ).result_rows[0][0]
    from_raw = clickhouse_client.query(
        f"SELECT count() FROM {database}.touchpoints FINAL WHERE stage IS NOT NULL"
    ).result_rows[0][0]
    assert from_view == from_raw


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def test_a_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    pipeline: Pipeline,
    dataset: tuple[Path, GroundTruth],
    clickhouse_client: Any,
    database: str,
) -> None:
    events, truth = dataset
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    end = pipeline.raw_end()
    first, second = pipeline.start_worker("worker-a"), pipeline.start_worker("worker-b")
    restarted = None
    try:
        deadline = time.monotonic() + 180
        while pipeline.committed_raw() < end // 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        progress = pipeline.committed_raw()
        assert 0 < progress < end, "the kill must land mid-stream"
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(2)
        restarted = pipeline.start_worker("worker-a-restarted")
        pipeline.wait_until_workers_consumed_everything()
    finally:
        for worker in (first, second, restarted):
            if worker is not None:
                stop(worker)
    pipeline.sink_into(clickhouse_client, database)

    got = read_back(clickhouse_client, database)
    expected = expected_from_truth(truth)
    assert {key: got[key] for key in expected} == expected
    assert got["tables"]["touchpoints"] == truth.events_unique, _debug_missing(
        pipeline, events, clickhouse_client, database
    )
    assert_aggregates_match_the_raw_table(clickhouse_client, database)


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
