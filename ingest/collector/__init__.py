"""The HTTP collector: authenticated, validated, durable in Kafka before acknowledged."""

from ingest.collector.app import Collector, create_app, new_metrics
from ingest.collector.metrics import CollectorMetrics
from ingest.collector.publisher import KafkaPublisher, Publisher, PublishResult

__all__ = [
    "Collector",
    "CollectorMetrics",
    "KafkaPublisher",
    "PublishResult",
    "Publisher",
    "create_app",
    "new_metrics",
]
