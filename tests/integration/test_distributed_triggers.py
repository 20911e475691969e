"""Triggers on the distributed path, on a genuine Apache Kafka broker.

`touchpoint produce` → two `touchpoint worker` processes (6 partitions) with a rules file
that has ``[[trigger]]`` entries; one worker is killed with SIGKILL right after the first
offsets commit and started again. Read read_committed, ``journey.triggers`` must hold
every firing exactly once — the same firings as the embedded `touchpoint run` over the
same file — however the kill split the work.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from ingest.generator import GeneratorConfig, GroundTruth, write_dataset
from processors.classify import default_rules
from tests.factories import SAMPLE_TRIGGERS
from tests.kafka_pipeline import PARTITIONS, Pipeline, stop
from touchpoint.config import clickhouse, load_settings
from touchpoint.embedded import inspect_inputs, run_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIGGERS = (
    SAMPLE_TRIGGERS
    + """
[[trigger]]
id = "hot"
on = "high_intent"
threshold = 4
window = "3d"
"""
)

Firing = tuple[str, str, str, int]
"""(trigger_event_id, trigger id, buyer id, is_retraction)"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, GroundTruth]:
    """Large enough that two workers are still busy when the first offsets commit."""
    folder = tmp_path_factory.mktemp("distributed-triggers")
    rules = folder / "rules.toml"
    shipped = resources.files("processors").joinpath("default_rules.toml").read_text("utf-8")
    rules.write_text(shipped + TRIGGERS, encoding="utf-8")
    config = GeneratorConfig(
        buyers=5000,
        seed=778,
        duplicate_rate=0.03,
        out_of_order_rate=0.10,
        malformed_rate=0.002,
        timeouts=dict(default_rules().timeouts),
    )
    events = folder / "events.jsonl"
    return events, rules, write_dataset(config, events)


def embedded_firings(
    events: Path, rules: Path, chdb_url: str, clickhouse_client: Any
) -> set[Firing]:
    database = f"embedded_{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        clickhouse_url=chdb_url, clickhouse_database=database, rules_file=rules
    )
    try:
        with clickhouse(settings) as client:
            run_files(settings, inspect_inputs([events]), client)
        rows = clickhouse_client.query(
            "SELECT trigger_event_id, trigger_id, buyer_id, is_retraction "
            f"FROM {database}.journey_triggers FINAL"
        ).result_rows
    finally:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    return {(e, t, b, int(r)) for e, t, b, r in rows}


def topic_firings(pipeline: Pipeline) -> Counter[Firing]:
    """Every trigger row on journey.triggers, read committed, counted."""
    topic = pipeline.topics.for_table("journey_triggers")
    consumer = KafkaConsumer(
        bootstrap_servers=pipeline.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: Counter[Firing] = Counter()
        for message in consumer:
            for line in message.value.split(b"\n"):
                row = json.loads(line)
                found[
                    (
                        row["trigger_event_id"],
                        row["trigger_id"],
                        row["buyer_id"],
                        row["is_retraction"],
                    )
                ] += 1
        return found
    finally:
        consumer.close()


def test_a_worker_killed_mid_stream_leaves_every_trigger_exactly_once_on_the_topic(
    pipeline: Pipeline,
    inputs: tuple[Path, Path, GroundTruth],
    chdb_url: str,
    clickhouse_client: Any,
) -> None:
    events, rules, _ = inputs
    expected = embedded_firings(events, rules, chdb_url, clickhouse_client)
    assert {trigger for _, trigger, _, _ in expected} == {"considering", "stalled", "lost", "hot"}

    pipeline.env["TOUCHPOINT_RULES_FILE"] = str(rules)
    produced = pipeline.cli("produce", "--input", str(events))
    assert produced.returncode == 0, produced.stderr
    end = pipeline.raw_end()
    first, second = pipeline.start_worker("worker-a"), pipeline.start_worker("worker-b")
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
        restarted = pipeline.start_worker("worker-a-restarted")
        pipeline.wait_until_workers_consumed_everything()
    finally:
        for worker in (first, second, restarted):
            if worker is not None:
                stop(worker)

    found = topic_firings(pipeline)
    twice = {firing: count for firing, count in found.items() if count > 1}
    assert twice == {}, f"{len(twice)} firings on the topic more than once, e.g. {list(twice)[:3]}"
    assert set(found) == expected
