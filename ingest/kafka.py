"""Kafka on the way in: topic creation and the Touchpoint producer (kafka-python).

The producer writes raw records to ``touchpoints.raw`` keyed by buyer id, with
``acks=all``, idempotence and zstd compression. Every send is tracked; a record
Kafka does not acknowledge is reported by :meth:`TouchpointProducer.flush` as a
:class:`~schemas.errors.DeliveryError` — never silently dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.errors import BrokerUnavailableError, ConfigError, DeliveryError
from schemas.topics import CONTROL_HEADER, CONTROL_WATERMARK, RAW_TOPIC

__all__ = ["ProduceStats", "TouchpointProducer", "ensure_topics", "peek"]

logger = logging.getLogger(__name__)

_MAX_REQUEST_BYTES: Final = 2_000_000
"""Above the 1 MB record limit, so an oversized record reaches the workers and is dead-lettered."""


def _admin(bootstrap: str) -> Any:
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchpoint-admin")
    except KafkaError as exc:
        raise BrokerUnavailableError(f"no Kafka broker reachable at {bootstrap}: {exc}") from exc


def ensure_topics(
    bootstrap: str,
    partitions: Mapping[str, int],
    *,
    replication: int = 1,
    compacted: Iterable[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.

    An existing topic with a different partition count is a ConfigError: keyed
    co-partitioning of input and outputs depends on equal counts.
    """
    compact = set(compacted)
    admin = _admin(bootstrap)
    try:
        existing = {
            topic["name"]: len(topic["partitions"])
            for topic in admin.describe_topics(list(partitions))
            if topic.get("error_code", 0) == 0 and topic["partitions"]
        }
        for name, count in existing.items():
            if count != partitions[name]:
                raise ConfigError(
                    f"topic {name} has {count} partitions, the pipeline is configured for "
                    f"{partitions[name]} (TOUCHPOINT_KAFKA_PARTITIONS); use a new topic or "
                    "change the setting"
                )
        missing = {
            name: {
                "num_partitions": count,
                "replication_factor": replication,
                "configs": {"cleanup.policy": "compact"} if name in compact else {},
            }
            for name, count in partitions.items()
            if name not in existing
        }
        if not missing:
            return []
        try:
            admin.create_topics(missing, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass  # created meanwhile by another process: fine
        logger.info("created topics %s", ", ".join(sorted(missing)))
        return sorted(missing)
    except KafkaError as exc:
        raise BrokerUnavailableError(f"creating topics on {bootstrap} failed: {exc}") from exc
    finally:
        admin.close()


def peek(data: bytes) -> tuple[bytes | None, datetime | None]:
    """Best-effort buyer id (the partitioning key) and event time of a raw record.

    Validation is the workers' job; a record this cannot read is still sent,
    without a key, so it reaches them and becomes a dead letter there.
    """
    try:
        decoded = json.loads(data)
    except ValueError:
        return None, None
    if not isinstance(decoded, dict):
        return None, None
    buyer = decoded.get("buyer_id")
    key = buyer.encode() if isinstance(buyer, str) and buyer else None
    occurred = decoded.get("occurred_at")
    at: datetime | None = None
    if isinstance(occurred, str):
        try:
            at = datetime.fromisoformat(occurred)
        except ValueError:
            at = None
        if at is not None and at.tzinfo is None:
            at = None
    return key, at


@dataclass
class ProduceStats:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    first_error: str | None = None
    max_event_time: datetime | None = None
    """The newest event time among the records sent (for the end-of-input watermark)."""


class TouchpointProducer:
    """Sends raw touchpoint records to Kafka, keyed by buyer, and accounts for every one."""

    def __init__(self, bootstrap: str, *, topic: str = RAW_TOPIC, linger_ms: int = 20) -> None:
        self.topic = topic
        self.stats = ProduceStats()
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                compression_type="zstd",
                linger_ms=linger_ms,
                max_request_size=_MAX_REQUEST_BYTES,
                client_id="touchpoint-producer",
            )
        except KafkaError as exc:
            raise BrokerUnavailableError(
                f"no Kafka broker reachable at {bootstrap}: {exc}"
            ) from exc

    def _acknowledged(self, _metadata: object) -> None:
        self.stats.acknowledged += 1

    def _failed(self, error: BaseException) -> None:
        self.stats.failed += 1
        if self.stats.first_error is None:
            self.stats.first_error = f"{type(error).__name__}: {error}"

    def send(self, data: bytes) -> None:
        """Queue one raw record, keyed by its buyer id."""
        record_key, at = peek(data)
        if at is not None and (self.stats.max_event_time is None or at > self.stats.max_event_time):
            self.stats.max_event_time = at
        try:
            future = self._producer.send(self.topic, value=data, key=record_key)
        except KafkaError as exc:
            self._failed(exc)
            return
        self.stats.sent += 1
        future.add_callback(self._acknowledged)
        future.add_errback(self._failed)

    def send_watermark(self, event_time: datetime | None = None) -> int:
        """Tell every partition's workers this input ends at ``event_time`` (a source watermark).

        Defaults to the newest event time sent. Returns the number of partitions told.
        """
        event_time = event_time or self.stats.max_event_time
        if event_time is None:
            return 0
        partitions = self._producer.partitions_for(self.topic) or set()
        value = event_time.isoformat().encode()
        for partition in sorted(partitions):
            future = self._producer.send(
                self.topic,
                value=value,
                partition=partition,
                headers=[(CONTROL_HEADER, CONTROL_WATERMARK)],
            )
            self.stats.sent += 1
            future.add_callback(self._acknowledged)
            future.add_errback(self._failed)
        return len(partitions)

    def flush(self, timeout: float = 120.0) -> ProduceStats:
        """Wait for every queued record; raise DeliveryError if any was not acknowledged."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise DeliveryError(f"flushing to Kafka failed: {exc}") from exc
        unaccounted = self.stats.sent - self.stats.acknowledged - self.stats.failed
        if self.stats.failed or unaccounted:
            raise DeliveryError(
                f"{self.stats.failed} of {self.stats.sent} records were not acknowledged "
                f"({unaccounted} still pending); first error: {self.stats.first_error}"
            )
        return self.stats

    def close(self) -> None:
        self._producer.close(timeout=30)
