"""Durable hand-off to Kafka: a request is answered 2xx only after Kafka acknowledged it.

A request's accepted touchpoints go out as one record per partition (a pack, see
:mod:`ingest.collector.records`) and its dead letters as newline-separated rows,
each with one kafka-python ``send`` made on the event loop — ``send`` only
appends to the producer's buffer once the topics' metadata is known — and the
request waits for *its own* records only: their futures, resolved by the
producer's sender thread, settle one asyncio future per request through
``loop.call_soon_threadsafe``. No ``flush()``: nobody waits for another request's
records. The sender batches what is buffered per partition by itself (``acks=all``,
idempotent, so one batch in flight per partition while the next fills; see
:class:`KafkaPublisher`).

What can block — creating the producer, waiting for metadata the producer does
not have yet (Kafka unreachable at start), the readiness probe — runs in a few
daemon threads instead, bounded by ``max_block_ms``: while Kafka is unreachable
such a publish fails and the collector answers 503 — nothing it acknowledged is
ever lost. A request whose records Kafka does not acknowledge within ``timeout``
is answered 503 too.

The threads are daemon threads: on shutdown the collector waits for requests in
flight only as long as its shutdown timeout, then answers those still waiting for
Kafka 503 (:meth:`KafkaPublisher.abandon`) and exits even if a send to an
unreachable Kafka is still blocked. Such a request was never answered 2xx, so its
sender retries it; nothing acknowledged is lost.

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

from ingest.collector.records import OutRecord, PartitionCache, join_rows, pack_touchpoints
from schemas.errors import BrokerUnavailableError, DeliveryError
from schemas.rows import DeadLetterRow
from schemas.topics import Topics

__all__ = ["KafkaPublisher", "PublishResult", "Publisher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_READY_CACHE_SECONDS: Final = 1.0
_BATCH_BYTES: Final = 512 * 1024
_REAP_SECONDS: Final = 0.25
_MAX_REQUEST_BYTES: Final = 2_000_000


@dataclass(frozen=True, slots=True)
class PublishResult:
    records: int
    """Kafka records sent (packs count once)."""
    seconds: float
    """From the first send until Kafka acknowledged the last record."""


class Publisher(Protocol):
    async def publish(
        self, touchpoints: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[bytes]
    ) -> PublishResult:
        """Send (buyer key, canonical Touchpoint JSON) pairs to the raw topic and dead-letter
        rows (JSON) to the dead-letter topic; return once Kafka acknowledged all of them.
        Raises BrokerError if it did not."""
        ...

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


class _Acks:
    """The acknowledgements one request waits for: settles its asyncio future once, when
    the last of its records is acknowledged or the first fails (from the sender thread)."""

    __slots__ = ("_left", "_lock", "_loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, records: int) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self._left = records
        self._lock = threading.Lock()

    def _settle(self, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, self.future, None, error)
        except RuntimeError:  # the loop is closed: the collector has stopped
            pass

    def acked(self, _metadata: object) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._settle(None)

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first = self._left > 0
            self._left = 0
        if first:
            self._settle(error)


class KafkaPublisher:
    """Touchpoints to the raw topic (packed per buyer partition), rejections to the
    dead-letter topic.

    Producer settings, from how kafka-python 3 batches: with idempotence it keeps one
    batch in flight per partition (``guarantee_message_order``) and appends what
    arrives meanwhile to the next one, which leaves as soon as the first is
    acknowledged — so under load requests share produce requests by themselves.
    ``linger_ms`` (2) lets a batch of an idle partition wait that long for company: it
    costs an idle collector up to 2 ms per request, and under load it took a fifth of the
    broker's CPU off in one A/B run (docs/benchmarks.md). ``batch_size`` is
    what one partition's batch may hold before a second one starts: with one batch
    in flight per partition it bounds a partition's throughput per round trip, so it
    is large (512 KiB, within the broker's 1 MB ``message.max.bytes``).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        timeout: float = 10.0,
        probe_timeout: float = 2.0,
        workers: int | None = None,
        linger_ms: int = 2,
        batch_bytes: int = _BATCH_BYTES,
    ) -> None:
        self.topics = topics
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self._bootstrap = bootstrap
        self._linger_ms = linger_ms
        self._batch_bytes = batch_bytes
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._dead_letter_topic = topics.for_table(DeadLetterRow.table)
        self._workers = _Workers(workers or min(32, (os.cpu_count() or 1) + 6), "collector-kafka")
        self._waiting: dict[asyncio.Future[None], float] = {}
        """Requests waiting for acknowledgements → their deadline (loop time)."""
        self._reaper: asyncio.Task[None] | None = None
        self._partitions = PartitionCache()
        self._probe: asyncio.Future[bool] | None = None
        self._probed_at = float("-inf")
        self._ready = False

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    api_version=(3, 9),  # no blocking version probe: start even if Kafka is down
                    acks="all",
                    enable_idempotence=True,
                    compression_type="zstd",
                    linger_ms=self._linger_ms,
                    batch_size=self._batch_bytes,
                    max_block_ms=int(min(self.timeout, 5.0) * 1000),
                    request_timeout_ms=int(self.timeout * 1000),
                    max_request_size=_MAX_REQUEST_BYTES,
                    client_id="touchpoint-collector",
                    metrics_enabled=False,  # its own sensors cost the sender thread; unread
                )
            return self._producer

    def _raw_partitions(self, producer: KafkaProducer) -> int | None:
        """Partitions of the raw topic if the producer knows both topics' metadata (so
        ``send`` cannot block), else None."""
        try:
            metadata = producer._metadata
            raw = metadata.partitions_for_topic(self.topics.raw)
            if not raw or not metadata.partitions_for_topic(self._dead_letter_topic):
                return None
        except AttributeError:  # a kafka-python without that internal: always the thread
            return None
        return len(raw)

    def _prepare(self) -> int:
        """In a worker thread: the producer, and the topics' metadata (blocks up to
        ``max_block_ms``); the raw topic's partition count."""
        try:
            producer = self._get()
            raw = producer.partitions_for(self.topics.raw)
            if not raw or not producer.partitions_for(self._dead_letter_topic):
                raise BrokerUnavailableError("Kafka does not know the collector's topics yet")
        except KafkaError as exc:
            raise BrokerUnavailableError(f"Kafka did not acknowledge the events: {exc}") from exc
        return len(raw)

    def _records(
        self,
        touchpoints: Sequence[tuple[bytes, bytes]],
        dead_letters: Sequence[bytes],
        partitions: int,
    ) -> list[tuple[str, OutRecord]]:
        records = [
            (self.topics.raw, record)
            for record in pack_touchpoints(touchpoints, partitions, self._partitions)
        ]
        if dead_letters:
            records.extend((self._dead_letter_topic, record) for record in join_rows(dead_letters))
        return records

    async def publish(
        self, touchpoints: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[bytes]
    ) -> PublishResult:
        if not touchpoints and not dead_letters:
            return PublishResult(0, 0.0)
        producer = self._producer
        partitions = None if producer is None else self._raw_partitions(producer)
        if producer is None or partitions is None:
            partitions = await self._workers.run(self._prepare)
            producer = self._producer
            if producer is None:  # closed meanwhile: the collector is stopping
                raise BrokerUnavailableError("the collector is shutting down")
        records = self._records(touchpoints, dead_letters, partitions)
        loop = asyncio.get_running_loop()
        acks = _Acks(loop, len(records))
        started = time.perf_counter()
        try:
            for topic, record in records:
                future = producer.send(
                    topic,
                    value=record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=record.headers,
                )
                future.add_callback(acks.acked)
                future.add_errback(acks.failed)
        except (KafkaError, ValueError) as exc:
            # ValueError: the topic or partition left the producer's metadata since it was
            # read above (a topic deleted, say): Kafka's state, not the request's fault.
            acks.future.cancel()  # records sent before are acknowledged unobserved
            raise BrokerUnavailableError(f"Kafka did not take the events: {exc}") from exc
        self._waiting[acks.future] = loop.time() + self.timeout
        reaper = self._reaper
        if reaper is None or reaper.done() or reaper.get_loop() is not loop:
            # one per event loop; asyncio.run cancels it with the loop's other tasks
            self._reaper = loop.create_task(self._reap(), name="collector-kafka-deadlines")
        try:
            await acks.future
        except KafkaError as exc:
            raise BrokerUnavailableError(f"Kafka did not acknowledge the events: {exc}") from exc
        finally:
            self._waiting.pop(acks.future, None)
        return PublishResult(len(records), time.perf_counter() - started)

    async def _reap(self) -> None:
        """Fail the requests whose deadline passed (one sweep a quarter second, instead
        of a timer armed and cancelled per request)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_REAP_SECONDS)
            now = loop.time()
            for future, deadline in list(self._waiting.items()):
                if deadline <= now and not future.done():
                    future.set_exception(
                        DeliveryError("Kafka did not acknowledge the events in time")
                    )

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
        error = BrokerUnavailableError("the collector is shutting down before Kafka acknowledged")
        waiting = [future for future in self._waiting if not future.done()]
        for future in waiting:
            future.set_exception(error)
        return len(waiting) + self._workers.abandon(error)

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
