"""A pipeline on the real broker for tests: its topics, its workers, its sink."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from schemas.settings import KafkaSettings
from schemas.topics import Topics
from sinks.consumer import KafkaClickHouseSink
from sinks.writer import ClickHouseWriter

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6


@dataclass
class Pipeline:
    """One pipeline's names and processes on the shared test broker."""

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

    def rewind_workers_to(self, offset: int) -> None:
        """Set the workers' committed input offsets back (their group must have no members)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            tps = [TopicPartition(self.topics.raw, p) for p in range(PARTITIONS)]
            admin.reset_group_offsets(self.app_id, {tp: offset for tp in tps})
        finally:
            admin.close()

    def output_ends(self) -> dict[TopicPartition, int]:
        """End offsets of every output topic partition (they move with each record or marker)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            tps = [
                TopicPartition(topic, p) for topic in self.topics.outputs for p in range(PARTITIONS)
            ]
            return dict(consumer.end_offsets(tps))
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


def new_pipeline(bootstrap: str, logs: Path) -> Pipeline:
    """A pipeline with its own topic prefix, app id and logs, on ``bootstrap``."""
    tag = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"t{tag}.")
    app_id = f"touchpoint-{tag}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")}
    env.update(
        PYTHONPATH=str(REPO),
        TOUCHPOINT_KAFKA_BOOTSTRAP=bootstrap,
        TOUCHPOINT_KAFKA_PARTITIONS=str(PARTITIONS),
        TOUCHPOINT_KAFKA_TOPIC_PREFIX=topics.prefix,
        TOUCHPOINT_KAFKA_APP_ID=app_id,
    )
    return Pipeline(bootstrap, topics, app_id, env, logs)


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
