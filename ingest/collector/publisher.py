"""Durable hand-off to Kafka: a request is answered 2xx only after Kafka acknowledged it.

kafka-python is a blocking client, so the collector runs each request's sends in
a worker thread and awaits them; the event loop never blocks on Kafka. While
Kafka is unreachable every publish fails fast (``max_block_ms``) and the
collector answers 503 — nothing it acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas.errors import BrokerUnavailableError, DeliveryError
from schemas.rows import ROW_ADAPTERS, DeadLetterRow
from schemas.topics import Topics
from schemas.touchpoint import Touchpoint

__all__ = ["KafkaPublisher", "PublishResult", "Publisher"]


@dataclass(frozen=True, slots=True)
class PublishResult:
    records: int
    seconds: float


class Publisher(Protocol):
    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetterRow]
    ) -> PublishResult: ...

    async def ready(self) -> bool: ...

    def close(self) -> None: ...


class KafkaPublisher:
    """Touchpoints to the raw topic (keyed by buyer), rejections to the dead-letter topic."""

    def __init__(self, bootstrap: str, topics: Topics, *, timeout: float = 10.0) -> None:
        self.topics = topics
        self.timeout = timeout
        self._bootstrap = bootstrap
        self._producer: Any = None
        self._lock = threading.Lock()
        self._dead_letter_topic = topics.for_table(DeadLetterRow.table)

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    api_version=(3, 9),  # no blocking version probe: start even if Kafka is down
                    acks="all",
                    enable_idempotence=True,
                    compression_type="zstd",
                    linger_ms=2,
                    max_block_ms=int(min(self.timeout, 5.0) * 1000),
                    request_timeout_ms=int(self.timeout * 1000),
                    max_request_size=2_000_000,
                    client_id="touchpoint-collector",
                )
            return self._producer

    def _send_all(self, records: list[tuple[str, bytes | None, bytes]]) -> PublishResult:
        started = time.perf_counter()
        try:
            producer = self._get()
            futures = [producer.send(topic, key=key, value=value) for topic, key, value in records]
            producer.flush(timeout=self.timeout)
            for future in futures:
                future.get(timeout=self.timeout)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"Kafka did not acknowledge the events: {exc}") from exc
        except TimeoutError as exc:
            raise DeliveryError("Kafka did not acknowledge the events in time") from exc
        return PublishResult(len(records), time.perf_counter() - started)

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetterRow]
    ) -> PublishResult:
        adapter = ROW_ADAPTERS[DeadLetterRow.table]
        records: list[tuple[str, bytes | None, bytes]] = [
            (self.topics.raw, touchpoint.buyer_id.encode(), touchpoint.model_dump_json().encode())
            for touchpoint in touchpoints
        ]
        records.extend(
            (self._dead_letter_topic, None, adapter.dump_json(row)) for row in dead_letters
        )
        if not records:
            return PublishResult(0, 0.0)
        return await asyncio.to_thread(self._send_all, records)

    def _ready(self) -> bool:
        try:
            return bool(self._get().partitions_for(self.topics.raw))
        except KafkaError:
            return False

    async def ready(self) -> bool:
        return await asyncio.to_thread(self._ready)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None
