"""Collector metrics, created by a factory that takes a registry (never module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CollectorMetrics"]


class CollectorMetrics:
    """What SREs need to see of the collector: volume, rejections and Kafka hand-off."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "touchpoint_collector_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.received = Counter(
            "touchpoint_collector_events_received_total",
            "Events received, by source.",
            ["source"],
            registry=registry,
        )
        self.accepted = Counter(
            "touchpoint_collector_events_accepted_total",
            "Events validated and acknowledged by Kafka, by source.",
            ["source"],
            registry=registry,
        )
        self.rejected = Counter(
            "touchpoint_collector_events_rejected_total",
            "Events rejected (dead-lettered), by source and reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.unauthorized = Counter(
            "touchpoint_collector_unauthorized_total",
            "Requests refused with 401, by source.",
            ["source"],
            registry=registry,
        )
        self.produce_seconds = Histogram(
            "touchpoint_collector_produce_seconds",
            "Time from handing a request's records to Kafka until acks=all, in seconds.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.produce_errors = Counter(
            "touchpoint_collector_produce_errors_total",
            "Requests answered 503 because Kafka did not acknowledge them.",
            registry=registry,
        )
        self.open_connections = Gauge(
            "touchpoint_collector_open_connections",
            "HTTP connections open now (at most TOUCHPOINT_COLLECTOR_MAX_CONNECTIONS).",
            registry=registry,
        )
        self.connections_refused = Counter(
            "touchpoint_collector_connections_refused_total",
            "Connections answered 503 and closed because max_connections were open.",
            registry=registry,
        )
        self.timeouts = Counter(
            "touchpoint_collector_timeouts_total",
            "Connections cut off for slowness, by phase: headers (closed) or body (408).",
            ["phase"],
            registry=registry,
        )
        self.header_timeouts = self.timeouts.labels("headers")
        self.body_timeouts = self.timeouts.labels("body")
