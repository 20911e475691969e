"""Metrics factories: counted from what the processor and the writer really did."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError
from prometheus_client import CollectorRegistry

from processors.classify import default_rules
from processors.journey_processor import JourneyProcessor
from processors.metrics import WorkerMetrics
from schemas.errors import SinkRetryableError
from schemas.rows import TouchpointRow
from sinks.base import RowBatch
from sinks.metrics import SinkMetrics
from sinks.writer import ClickHouseWriter
from tests.factories import event
from tests.unit.test_writer_retry import FlakyClient


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_worker_metrics_follow_the_processor() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    processor = JourneyProcessor(
        default_rules(), allowed_lateness=timedelta(hours=1), dedup_window=timedelta(days=7)
    )
    records = [
        event("email_open", at=timedelta(0)),
        event("email_click", at=timedelta(hours=1)),
        event("email_click", at=timedelta(hours=1)),
    ]
    for index, record in enumerate(records):
        processor.process_raw(json.dumps(record), source="t", position=str(index))
    processor.process_raw("{broken", source="t", position="9")
    metrics.observe(processor.flush(), processor.counters, len(processor.states))
    assert (
        value(registry, "touchpoint_worker_events_total", channel="email", stage="awareness") == 1
    )
    assert (
        value(registry, "touchpoint_worker_events_total", channel="email", stage="consideration")
        == 1
    )
    assert value(registry, "touchpoint_worker_duplicates_total") == 1
    assert value(registry, "touchpoint_worker_dead_letters_total", reason="invalid_json") == 1
    assert value(registry, "touchpoint_worker_dead_letters_total", reason="too_late") == 0
    assert (
        value(
            registry,
            "touchpoint_worker_stage_transitions_total",
            from_stage="awareness",
            to_stage="consideration",
        )
        == 1
    )
    assert value(registry, "touchpoint_worker_journeys") == 1
    metrics.observe(processor.flush(), processor.counters, len(processor.states))
    assert value(registry, "touchpoint_worker_duplicates_total") == 1  # totals, not re-added


def row(at: datetime) -> TouchpointRow:
    return TouchpointRow(
        "e",
        "b",
        None,
        None,
        "web",
        "page_view",
        at,
        at,
        None,
        None,
        None,
        None,  # type: ignore[arg-type]
        "{}",
        None,
        None,
        None,
        False,
        None,
        "s",
        "1",
        1,
    )


def test_sink_metrics_count_rows_retries_and_end_to_end_latency() -> None:
    registry = CollectorRegistry()
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    client: Any = FlakyClient(1, OperationalError("blip"))
    writer = ClickHouseWriter(
        client,
        "db",
        retries=2,
        backoff=timedelta(0),
        sleep=lambda _: None,
        metrics=SinkMetrics(registry),
        clock=lambda: now,
    )
    writer.write(RowBatch("t:1", {"touchpoints": [row(now - timedelta(seconds=30))] * 3}))
    assert value(registry, "touchpoint_sink_rows_total", table="touchpoints") == 3
    assert value(registry, "touchpoint_sink_insert_retries_total") == 1
    assert value(registry, "touchpoint_sink_batch_rows_count") == 1
    assert value(registry, "touchpoint_end_to_end_event_seconds_sum") == 90
    assert value(registry, "touchpoint_end_to_end_received_seconds_bucket", le="60.0") == 3


def test_sink_metrics_say_when_clickhouse_refuses_inserts_and_when_it_last_took_one() -> None:
    registry = CollectorRegistry()
    client: Any = FlakyClient(3, OperationalError("down"))
    metrics = SinkMetrics(registry)
    started = value(registry, "touchpoint_sink_last_insert_timestamp_seconds")
    assert value(registry, "touchpoint_sink_clickhouse_up") == 1 and started > 0
    writer = ClickHouseWriter(
        client, "db", retries=1, backoff=timedelta(0), sleep=lambda _: None, metrics=metrics
    )
    batch = RowBatch("t:1", {"touchpoints": [row(datetime.now(UTC))]})
    try:
        writer.write(batch)
    except SinkRetryableError:
        pass
    assert value(registry, "touchpoint_sink_clickhouse_up") == 0
    assert value(registry, "touchpoint_sink_insert_failures_total") == 1
    assert value(registry, "touchpoint_sink_last_insert_timestamp_seconds") == started
    writer.write(batch)  # the third failure is retried, then it goes in
    assert value(registry, "touchpoint_sink_clickhouse_up") == 1
    assert value(registry, "touchpoint_sink_last_insert_timestamp_seconds") >= started
    assert value(registry, "touchpoint_sink_insert_retries_total") == 2


def test_trigger_metrics_count_firings_and_retractions_per_trigger() -> None:
    from tests.factories import rules_with_triggers

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    processor = JourneyProcessor(
        rules_with_triggers(), allowed_lateness=timedelta(hours=2), dedup_window=timedelta(days=7)
    )
    metrics.bind_triggers(processor.triggers.ids)
    fired = "touchpoint_worker_triggers_fired_total"
    assert registry.get_sample_value(fired, {"trigger": "stalled"}) == 0  # bound, at 0
    records = [
        event("email_open", at=timedelta(0)),
        event("email_click", at=timedelta(days=1), buyer="b2"),
        event("email_unsubscribe", at=timedelta(days=1), buyer="b2"),
        event("email_sent", at=timedelta(days=22), buyer="clock"),  # b1 dropped at day 21
        event("email_click", at=timedelta(days=20)),  # late: b1 moved on in time after all
    ]
    for index, record in enumerate(records):
        processor.process_raw(json.dumps(record), source="t", position=str(index))
    metrics.observe(processor.flush(), processor.counters, len(processor.states))
    assert value(registry, fired, trigger="considering") == 2
    assert value(registry, fired, trigger="lost") == 1
    assert value(registry, fired, trigger="stalled") == 1
    assert value(registry, "touchpoint_worker_triggers_retracted_total", trigger="stalled") == 1
