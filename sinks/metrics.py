"""Sink metrics, created by a factory that takes a registry (never module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SinkMetrics"]

_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400)


class SinkMetrics:
    """What the Kafka→ClickHouse sink reports: rows, batches, insert time, retries, failures,
    whether ClickHouse takes inserts (and since when it has not), and how long an event
    took from its source to ClickHouse."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "touchpoint_sink_rows_total",
            "Rows written to ClickHouse, by table.",
            ["table"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "touchpoint_sink_batch_rows",
            "Rows per written batch.",
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000, 100000),
            registry=registry,
        )
        self.insert_seconds = Histogram(
            "touchpoint_sink_insert_seconds",
            "Time to write one batch (all its tables), in seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.retries = Counter(
            "touchpoint_sink_insert_retries_total",
            "Insert attempts retried after a retryable error.",
            registry=registry,
        )
        self.failures = Counter(
            "touchpoint_sink_insert_failures_total",
            "Attempts to write a batch that gave up (retries exhausted or fatal); the sink "
            "keeps a retryable batch and tries it again.",
            registry=registry,
        )
        self.clickhouse_up = Gauge(
            "touchpoint_sink_clickhouse_up",
            "0 from a failed insert attempt until the next insert succeeds, else 1.",
            registry=registry,
        )
        self.clickhouse_up.set(1)
        self.last_insert = Gauge(
            "touchpoint_sink_last_insert_timestamp_seconds",
            "Unix time of the last batch written to ClickHouse (before the first: the sink start).",
            registry=registry,
        )
        self.last_insert.set_to_current_time()
        self.event_to_written = Histogram(
            "touchpoint_end_to_end_event_seconds",
            "From an event's occurred_at to its row written in ClickHouse, in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.received_to_written = Histogram(
            "touchpoint_end_to_end_received_seconds",
            "From an event's received_at (collector) to its row written in ClickHouse, in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
