"""The HTTP collector in front of Kafka: ``touchpoint collector``."""

from __future__ import annotations

import threading

from ingest.collector import Collector, KafkaPublisher, new_metrics
from ingest.collector.server import run
from schemas.settings import Settings
from schemas.topics import Topics
from touchpoint.kafka import wait_for_topics
from touchpoint.monitoring import build_info

__all__ = ["run_collector"]


def run_collector(settings: Settings) -> None:
    """Serve the HTTP collector until SIGTERM/SIGINT (Kafka need not be up to start)."""
    collector_settings = settings.collector
    publisher = KafkaPublisher(
        settings.kafka.bootstrap,
        Topics(settings.kafka.topic_prefix),
        timeout=collector_settings.produce_timeout.total_seconds(),
    )
    metrics = new_metrics()
    build_info(metrics.registry, "collector")
    collector = Collector(collector_settings, publisher, metrics)

    threading.Thread(target=wait_for_topics, args=(settings,), daemon=True).start()
    run(collector)
