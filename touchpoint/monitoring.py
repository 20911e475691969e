"""Process-level monitoring: the /metrics endpoint, build info, and consumer-lag gauges."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Gauge, Info, start_http_server

from schemas.touchpoint import SCHEMA_VERSION

__all__ = ["LagMonitor", "build_info", "serve_metrics"]

logger = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("touchpoint-pipeline")
    except PackageNotFoundError:
        return "unknown"


def build_info(registry: CollectorRegistry, component: str) -> None:
    Info("touchpoint_build", "Build information.", registry=registry).info(
        {
            "version": package_version(),
            "component": component,
            "schema_version": str(SCHEMA_VERSION),
        }
    )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serve /metrics now, before anything talks to Kafka (so it is up while Kafka is down)."""
    start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)


class LagMonitor(threading.Thread):
    """Every ``interval`` seconds: end offset minus committed offset per partition of a group.

    ``touchpoint_consumer_lag`` is the lag; ``touchpoint_consumer_lag_up`` is 0 while
    Kafka cannot be asked (the last lag values stay as they were).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        interval: float = 10.0,
    ) -> None:
        super().__init__(name=f"lag-{group}", daemon=True)
        self.bootstrap = bootstrap
        self.group = group
        self.topics = list(topics)
        self.interval = interval
        self.lag = Gauge(
            "touchpoint_consumer_lag",
            "Messages not yet consumed: end offset minus the group's committed "
            "offset, per topic and partition.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.up = Gauge(
            "touchpoint_consumer_lag_up",
            "1 if the last lag measurement reached Kafka, else 0.",
            ["group"],
            registry=registry,
        )
        self._stop = threading.Event()
        self._children: dict[tuple[str, int], Any] = {}

    def measure(self) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        # Group-less: it only reads end offsets and never commits. kafka-python's default
        # enable_auto_commit=True would make it warn "group_id is None: disabling
        # auto-commit." at every measurement (every 10 s in a worker and in the sink).
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, request_timeout_ms=5000, enable_auto_commit=False
        )
        try:
            committed = admin.list_group_offsets(self.group).get(self.group, {})
            partitions = [
                TopicPartition(topic, partition)
                for topic in self.topics
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            ends = consumer.end_offsets(partitions) if partitions else {}
        finally:
            consumer.close()
            admin.close()
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            child = self._children.get((tp.topic, tp.partition))
            if child is None:
                child = self._children[(tp.topic, tp.partition)] = self.lag.labels(
                    self.group, tp.topic, str(tp.partition)
                )
            child.set(max(0, end - done))

    def run(self) -> None:
        up = self.up.labels(self.group)
        while not self._stop.is_set():
            try:
                self.measure()
                up.set(1)
            except (KafkaError, OSError, ValueError) as exc:
                up.set(0)
                logger.debug("consumer lag not measured: %s", exc)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
