"""Durable hand-off to Kafka: a request is answered 2xx only after Kafka acknowledged it.

kafka-python is a blocking client, so the collector runs each request's sends in
a worker thread and awaits them; the event loop never blocks on Kafka. While
Kafka is unreachable every publish fails fast (``max_block_ms``) and the
collector answers 503 — nothing it acknowledged is ever lost.

The worker threads are daemon threads: on shutdown the collector waits for
requests in flight only as long as its shutdown timeout, then exits even if a
send to an unreachable Kafka is still blocked. Such a request was never answered
2xx, so its sender retries it; nothing acknowledged is lost.

Readiness is a fresh round trip: a metadata request through the producer's own
connections, answered within ``probe_timeout``, that knows the raw topic. Probes
are shared and cached for a second, so polling ``/readyz`` cannot tie up threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas.errors import BrokerUnavailableError, DeliveryError
from schemas.rows import ROW_ADAPTERS, DeadLetterRow
from schemas.topics import Topics
from schemas.touchpoint import Touchpoint

__all__ = ["KafkaPublisher", "PublishResult", "Publisher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_READY_CACHE_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class PublishResult:
    records: int
    seconds: float


class Publisher(Protocol):
    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetterRow]
    ) -> PublishResult: ...

    async def ready(self) -> bool: ...

    def abandon(self) -> int: ...

    def close(self, timeout: float = 5.0) -> None: ...


class _Workers:
    """A few daemon threads for blocking calls; unlike asyncio's default executor, the
    interpreter does not wait for them at exit."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]
        ] = queue.SimpleQueue()
        self._pending: set[asyncio.Future[Any]] = set()
        for index in range(size):
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True).start()

    def _work(self) -> None:
        while True:
            loop, future, call = self._jobs.get()
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        self._jobs.put((loop, future, call))
        return future

    def abandon(self, error: BaseException) -> int:
        """Fail every call still waiting with ``error`` (its thread carries on unobserved)."""
        waiting = [future for future in self._pending if not future.done()]
        for future in waiting:
            future.set_exception(error)
        return len(waiting)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone, shutdown)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class KafkaPublisher:
    """Touchpoints to the raw topic (keyed by buyer), rejections to the dead-letter topic."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        timeout: float = 10.0,
        probe_timeout: float = 2.0,
        workers: int | None = None,
    ) -> None:
        self.topics = topics
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self._bootstrap = bootstrap
        self._producer: Any = None
        self._lock = threading.Lock()
        self._dead_letter_topic = topics.for_table(DeadLetterRow.table)
        self._workers = _Workers(workers or min(32, (os.cpu_count() or 1) + 6), "collector-kafka")
        self._probe: asyncio.Future[bool] | None = None
        self._probed_at = float("-inf")
        self._ready = False

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
        return await self._workers.run(lambda: self._send_all(records))

    def _round_trip(self) -> bool:
        """Ask the broker for fresh metadata through the producer; True if it answered in
        time and knows the raw topic."""
        try:
            producer = self._get()
            # kafka-python has no public "refresh metadata now": use the call its own
            # partitions_for() makes, with our deadline instead of max_block_ms.
            metadata = producer._metadata
            producer._sender.add_topic(self.topics.raw)  # metadata covers known topics only
            deadline = time.monotonic() + self.probe_timeout
            while (left := deadline - time.monotonic()) > 0:
                answered = threading.Event()
                update = metadata.request_update()
                update.add_both(lambda event, *_: event.set(), answered)
                producer._sender.wakeup()
                if not answered.wait(left) or update.failed():
                    return False
                if metadata.partitions_for_topic(self.topics.raw):
                    return True
            return False
        except AttributeError:  # a kafka-python without those internals: cached metadata
            logger.debug("readiness falls back to the producer's cached metadata")
            try:
                return bool(self._get().partitions_for(self.topics.raw))
            except KafkaError:
                return False
        except KafkaError:
            return False

    async def ready(self) -> bool:
        if self._probe is None and time.monotonic() - self._probed_at > _READY_CACHE_SECONDS:
            self._probe = self._workers.run(self._round_trip)
        if self._probe is not None:
            probe = self._probe
            try:
                self._ready = await asyncio.shield(probe)
            finally:
                if self._probe is probe and probe.done():
                    self._probe = None
                    self._probed_at = time.monotonic()
        return self._ready

    def abandon(self) -> int:
        """At shutdown: publishes still waiting for Kafka fail now (their requests get 503)."""
        return self._workers.abandon(
            BrokerUnavailableError("the collector is shutting down before Kafka acknowledged")
        )

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, waiting at most ``timeout`` seconds, then let go of Kafka."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout)
        except KafkaError as exc:
            # Records still queued belong to requests not answered 2xx: their senders retry.
            logger.warning("closed the Kafka producer with records unacknowledged: %s", exc)
