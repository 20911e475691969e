"""The distributed path: topics, producing to Kafka, the Faust worker and the ClickHouse sink."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from ingest.generator import GeneratorConfig, generate
from ingest.kafka import TouchpointProducer
from ingest.ordering import in_order_within, sort_by_event_time
from ingest.reader import read_records
from ingest.topics import ensure_topics
from processors.faust_app import run_worker as run_faust_worker
from processors.metrics import WorkerMetrics
from schemas.errors import BrokerError
from schemas.raw import RawRecord
from schemas.settings import Settings
from schemas.topics import Topics
from sinks.consumer import KafkaClickHouseSink, SinkStats
from sinks.metrics import SinkMetrics
from sinks.writer import ClickHouseWriter
from touchpoint.config import clickhouse, rules_for
from touchpoint.embedded import inspect_inputs
from touchpoint.monitoring import LagMonitor, build_info, serve_metrics

__all__ = [
    "ensure_pipeline_topics",
    "file_payloads",
    "generated_payloads",
    "metrics_registry",
    "produce",
    "run_sink",
    "run_worker",
    "wait_for_topics",
]

logger = logging.getLogger(__name__)


def ensure_pipeline_topics(settings: Settings, *, raw_only: bool = False) -> list[str]:
    """Create the pipeline's topics (idempotent) with the configured partition count."""
    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix)
    names = (topics.raw,) if raw_only else (topics.raw, *topics.outputs, topics.store)
    return ensure_topics(
        kafka.bootstrap,
        {name: kafka.partitions for name in names},
        replication=kafka.replication,
        compacted=topics.compacted,
    )


def generated_payloads(settings: Settings, buyers: int, seed: int) -> tuple[Iterator[bytes], int]:
    """Synthetic journeys as raw records (and their count), shaped by the configured rules."""
    rules = rules_for(settings)
    config = GeneratorConfig(
        buyers=buyers,
        seed=seed,
        timeouts=dict(rules.timeouts),
        allowed_lateness=settings.processing.allowed_lateness,
    )
    lines, _ = generate(config)
    return (line.encode() for line in lines), len(lines)


def file_payloads(
    paths: Sequence[Path],
    *,
    sort_dir: Path | None = None,
    on_sort_progress: Callable[[int], None] | None = None,
    lateness: timedelta | None = None,
) -> tuple[Iterator[bytes], int]:
    """Raw records of input files in event-time order, as ``run_files`` processes them
    (and a line count for the progress bar). The files are sorted when the first record
    is taken — unless they are already in order within ``lateness``, which the workers
    handle as a sorted input; closing the iterator removes the sort's temporary files."""
    files = inspect_inputs(paths)

    def records() -> Iterator[RawRecord]:
        for item in files:
            yield from read_records(item.path)

    def payloads() -> Iterator[bytes]:
        if lateness is not None and in_order_within(records(), lateness):
            yield from (record.data for record in records())
            return
        ordered = sort_by_event_time(records(), temp_dir=sort_dir, on_read=on_sort_progress)
        with closing(ordered):
            for record in ordered:
                yield record.data

    return payloads(), sum(item.lines for item in files)


def produce(
    settings: Settings,
    payloads: Iterator[bytes],
    *,
    watermark: bool,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[str, int, int]:
    """Send raw records to the raw topic; returns (topic, records acknowledged, partitions told)."""
    ensure_pipeline_topics(settings, raw_only=True)
    topic = Topics(settings.kafka.topic_prefix).raw
    producer = TouchpointProducer(
        settings.kafka.bootstrap, topic=topic, pack_events=settings.kafka.pack_events
    )
    try:
        for payload in payloads:
            producer.send(payload)
            if on_progress is not None:
                on_progress(1)
        producer.flush()
        told = producer.send_watermark() if watermark else 0
        stats = producer.flush()
    finally:
        producer.close()
        if isinstance(payloads, Generator):
            payloads.close()  # e.g. the temporary files of a sorted input
    return topic, stats.acknowledged, told


def metrics_registry(settings: Settings, component: str) -> CollectorRegistry | None:
    """A metrics registry served on /metrics, or None when no metrics port is set.

    Served before anything talks to Kafka, so it answers while Kafka is down.
    """
    if not settings.metrics_port:
        return None
    registry = CollectorRegistry()
    build_info(registry, component)
    serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    return registry


def wait_for_topics(settings: Settings) -> None:
    """Create the pipeline's topics, retrying every 5 s while Kafka cannot be reached."""
    while True:
        try:
            ensure_pipeline_topics(settings)
            return
        except BrokerError as exc:
            logger.warning("Kafka is not reachable yet (%s); retrying in 5 s", exc)
            time.sleep(5)


def run_worker(settings: Settings, *, loglevel: str) -> None:
    """Create the topics, then run one Faust journey worker until it is stopped."""
    rules = rules_for(settings)
    registry = metrics_registry(settings, "worker")
    metrics = WorkerMetrics(registry) if registry is not None else None
    kafka = settings.kafka
    wait_for_topics(settings)
    if registry is not None:
        raw = [Topics(kafka.topic_prefix).raw]
        LagMonitor(registry, kafka.bootstrap, kafka.app_id, raw).start()
    run_faust_worker(kafka, settings.processing, rules, loglevel=loglevel, metrics=metrics)


def run_sink(settings: Settings, stop: threading.Event) -> SinkStats:
    """Consume the output topics into ClickHouse until ``stop`` is set; returns the sink stats."""
    registry = metrics_registry(settings, "sink")
    metrics = SinkMetrics(registry) if registry is not None else None
    wait_for_topics(settings)
    if registry is not None:
        outputs = Topics(settings.kafka.topic_prefix).outputs
        LagMonitor(registry, settings.kafka.bootstrap, settings.kafka.sink_group, outputs).start()
    with clickhouse(settings) as client:
        writer = ClickHouseWriter(
            client,
            settings.clickhouse.database,
            retries=settings.clickhouse.insert_retries,
            backoff=settings.clickhouse.retry_backoff,
            metrics=metrics,
        )
        topics = Topics(settings.kafka.topic_prefix).table_by_topic
        with KafkaClickHouseSink(settings.kafka, writer, topics=topics) as sink:
            return sink.run(stop=stop)
