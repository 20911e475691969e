"""The distributed driver: a Faust app that runs the same :class:`JourneyProcessor` over Kafka.

``touchpoints.raw`` → batches of records (each one touchpoint, or a pack of many) →
``JourneyProcessor`` → per batch and input partition: each table's rows as a few
newline-delimited JSON records on the output topics of :mod:`schemas.topics`, and each
changed buyer's full state on the compacted ``journey.store`` topic, all written to
the partition number the input came from.

Batch-first
    Faust costs tens of microseconds per *record* it streams (measured: ~70 µs of CPU per
    record for an agent that does nothing), so records are made big: the collector and
    ``touchpoint produce`` send packs, and the outputs go out as packs too. Per batch a
    partition's records are appended to one aiokafka batch per topic and sent with
    ``send_batch``; the partitions of a batch are sent concurrently.

Exactly once, and why it is done by hand
    Under ``processing_guarantee="exactly_once"`` Faust commits a partition's input
    offsets in a Kafka transaction of one producer per (topic group, partition).
    Faust itself routes a send into that transaction only when the *consumer*
    knows the destination topic; the output topics are only written, so Faust
    would send them outside any transaction. Faust tables, for their part, hand
    changelog records to a background buffer that can still be sending after a
    rebalance committed the transaction. So this driver keeps journey state in a
    plain dict (only the partitions it owns), and sends every output and every
    state record itself, awaited, through the transactional producer of the
    input partition, all of a partition's records of a batch under the
    transaction's lock (:func:`send_together`). An event's output rows and its state
    change then commit or abort together, with its offset in the same or a later
    commit (events are acknowledged only after their batch was sent). A killed
    worker's open transaction is aborted when the partition's new owner starts
    its producer (fencing), and the new owner reloads the partition's state from
    ``journey.store`` (read-committed) before it processes the partition's first
    event.

Records delivered twice
    Faust rewinds every partition it is assigned to the group's committed offset,
    also a partition the worker keeps across a rebalance, and the offsets acked
    since its last periodic commit are not committed on revocation; a new owner
    likewise starts at the committed offset, which can be behind the states the
    last transaction stored. So each batch also stores the partition's
    :class:`~schemas.journey.PartitionPosition` (last input offset applied, event
    time reached) with its states, and a record at or before that offset is
    skipped as already applied — never re-judged against a watermark that has
    since moved past it.

Raw bytes are validated inside the agent (never in a Faust deserializer, where
a decode error would crash-loop the agent): a bad record becomes a dead letter
on ``touchpoints.dlq`` with its partition and offset.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from datetime import datetime
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from processors.journey_processor import JourneyProcessor
from processors.metrics import WorkerMetrics
from processors.state_stores import open_state_store
from schemas.enums import DeadLetterReason
from schemas.journey import PARTITION_POSITION_ADAPTER, PartitionPosition
from schemas.rules import JourneyRules
from schemas.settings import KafkaSettings, ProcessingSettings
from schemas.topics import (
    CONTROL_HEADER,
    CONTROL_WATERMARK,
    PACK_HEADER,
    PACK_NDJSON,
    STORE_POSITION_KEY,
    Topics,
)

__all__ = [
    "PartitionStates",
    "Record",
    "control_kind",
    "create_app",
    "header",
    "pack_rows",
    "run_worker",
    "send_together",
]

logger = logging.getLogger(__name__)

PACK_BYTES: Final = 512 * 1024
"""Upper bound of one output record's value (rows are packed up to it)."""
_PRODUCER_BATCH_BYTES: Final = 1024 * 1024


def header(headers: Any, wanted: str) -> bytes | None:
    """The value of header ``wanted`` of a record, if it has one."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == wanted:
            return bytes(value) if value is not None else b""
    return None


def control_kind(headers: Any) -> bytes | None:
    """The control header's value of a raw record, if it is a control message."""
    return header(headers, CONTROL_HEADER)


def pack_rows(rows: list[bytes], limit: int = PACK_BYTES) -> Iterable[bytes]:
    """Newline-joined runs of ``rows``, each at most ``limit`` bytes (or one row)."""
    start, size = 0, 0
    for index, row in enumerate(rows):
        if size and size + len(row) + 1 > limit:
            yield b"\n".join(rows[start:index])
            start, size = index, 0
        size += len(row) + 1
    if start < len(rows):
        yield b"\n".join(rows[start:])


Record = tuple[str, bytes | None, bytes]
"""(topic, key, value) of one output record."""


async def send_together(app: Any, source_topic: str, partition: int, records: list[Record]) -> None:
    """Send a batch's records of one partition inside the transaction that commits its input.

    All of them go in while holding the transaction's lock, so Faust's periodic
    commit cannot fall between them: an event's state change and its output rows
    are in one transaction, never split across two. (If a commit could split them
    and the worker died before the second, the retried event would be found in
    the restored state and not emit again — its remaining outputs lost.) Records are
    appended to one aiokafka batch per topic (``create_batch``/``send_batch``): no
    per-record future, one queue entry per topic.
    """
    if not records:
        return
    producer = app.producer
    if not app.in_transaction:
        for topic, key, value in records:
            await producer.send(topic, key, value, partition, None, None)
        return
    group = app.assignor.group_for_topic(source_topic)
    transactional_id = f"{app.conf.id}-{group}-{partition}"
    # Faust's aiokafka driver keeps one producer and one lock per transactional id
    # (the lock its commit takes too); there is no public way to hold it.
    lock = producer._trn_locks[transactional_id]
    transaction = producer._transaction_producers.get(transactional_id)
    if transaction is None:
        raise RuntimeError(f"no transactional producer for {transactional_id}")
    async with lock:
        batches: dict[str, Any] = {}
        for topic, key, value in records:
            batch = batches.get(topic)
            if batch is None:
                batch = batches[topic] = transaction.create_batch()
            elif batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            else:
                await transaction.send_batch(batch, topic, partition=partition)
                batch = batches[topic] = transaction.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                # Larger than a whole batch: send() sizes a batch of its own for it.
                del batches[topic]
                await transaction.send(topic, value, key=key, partition=partition)
        for topic, batch in batches.items():
            await transaction.send_batch(batch, topic, partition=partition)


class PartitionStates:
    """Journey states (encoded) of the partitions this worker owns, loaded from the store
    topic, which buyers belong to which partition, and per partition the last input
    offset they include (``applied``)."""

    def __init__(
        self,
        bootstrap: list[str],
        store_topic: str,
        states: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self.states: MutableMapping[str, bytes] = {} if states is None else states
        self.buyers: dict[int, set[str]] = {}
        """Partition → the buyers whose states are held."""
        self.loaded: set[int] = set()
        self.loading: set[int] = set()
        """Partitions whose load from the store topic is in progress."""
        self.applied: dict[int, int] = {}
        self.stored_event_times: dict[int, datetime] = {}
        """Event time each loaded partition had reached when its states were stored."""
        self._bootstrap = bootstrap
        self._store_topic = store_topic
        self._reader: AIOKafkaConsumer | None = None

    async def load(self, partition: int) -> set[str]:
        """Read the partition's committed states (the compacted store); returns its buyers."""
        if self._reader is None:
            self._reader = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
            )
            await self._reader.start()
        self.loading.add(partition)
        try:
            return await self._load(partition)
        finally:
            self.loading.discard(partition)

    async def _load(self, partition: int) -> set[str]:
        reader = self._reader
        assert reader is not None
        tp = TopicPartition(self._store_topic, partition)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        # An empty partition's position() waits for a fetch (a second or so): skip it.
        begin = (await reader.beginning_offsets([tp]))[tp] if end else 0
        buyers = self.buyers.setdefault(partition, set())
        self.applied.pop(partition, None)
        self.stored_event_times.pop(partition, None)
        while end > begin and await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                if record.key == STORE_POSITION_KEY:
                    if record.value is not None:
                        self._restore_position(
                            PARTITION_POSITION_ADAPTER.validate_json(record.value)
                        )
                    continue
                buyer = record.key.decode()
                if record.value is None:
                    self.states.pop(buyer, None)
                    buyers.discard(buyer)
                else:
                    self.states[buyer] = record.value
                    buyers.add(buyer)
        self.loaded.add(partition)
        return buyers

    def note(self, partition: int, buyers: Iterable[str]) -> None:
        """These buyers' states (just stored by the processor) belong to ``partition``."""
        self.buyers.setdefault(partition, set()).update(buyers)

    def _restore_position(self, position: PartitionPosition) -> None:
        self.applied[position.partition] = position.offset
        if position.newest_event_at is not None:
            self.stored_event_times[position.partition] = position.newest_event_at

    def already_applied(self, partition: int, offset: int) -> bool:
        """Whether the partition's states already include the record at ``offset``."""
        return offset <= self.applied.get(partition, -1)

    def position_record(self, partition: int, newest_event_at: datetime | None) -> Record:
        """The store record of how far the partition's states have got (sent with them)."""
        position = PartitionPosition(partition, self.applied[partition], newest_event_at)
        return (
            self._store_topic,
            STORE_POSITION_KEY,
            PARTITION_POSITION_ADAPTER.dump_json(position),
        )

    def drop(self, partitions: set[int]) -> None:
        """Forget the states of partitions this worker no longer owns."""
        self.loaded -= partitions
        for partition in partitions:
            self.applied.pop(partition, None)
            self.stored_event_times.pop(partition, None)
            for buyer in self.buyers.pop(partition, ()):
                self.states.pop(buyer, None)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        closer = getattr(self.states, "close", None)
        if closer is not None:
            closer()


def create_app(
    kafka: KafkaSettings,
    processing: ProcessingSettings,
    rules: JourneyRules,
    metrics: WorkerMetrics | None = None,
) -> tuple[Any, JourneyProcessor]:
    """The Faust app (not started) and the processor its agent drives."""
    topics = Topics(kafka.topic_prefix)
    raw_name = topics.raw
    faust_dir = kafka.store_dir / f"faust-{kafka.app_id}"  # not "<app id>-data" in the cwd
    faust_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = [address.strip() for address in kafka.bootstrap.split(",")]
    app = faust.App(
        kafka.app_id,
        broker=[f"kafka://{address}" for address in bootstrap],
        processing_guarantee=kafka.processing_guarantee,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        web_enabled=False,
        autodiscover=False,
        datadir=faust_dir,
        producer_acks=-1,
        producer_max_request_size=2_000_000,
        producer_max_batch_size=_PRODUCER_BATCH_BYTES,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    raw_topic = app.topic(
        raw_name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=kafka.partitions,
    )
    topic_for_table = {table: topic for topic, table in topics.table_by_topic.items()}
    store = PartitionStates(
        bootstrap,
        topics.store,
        open_state_store(kafka.store, kafka.store_dir / f"{kafka.app_id}-{os.getpid()}"),
    )
    processor = JourneyProcessor(
        rules,
        allowed_lateness=processing.allowed_lateness,
        max_future_skew=processing.max_future_skew,
        dedup_window=processing.dedup_window,
        states=store.states,
    )
    if metrics is not None:
        metrics.bind_triggers(processor.triggers.ids)

    skipping: dict[int, int] = {}
    """Partitions now receiving records delivered again → how many were skipped so far."""

    owned: set[int] | None = None
    """Raw partitions this worker owns (None until the first assignment)."""
    in_batch = False
    leaving: set[int] = set()
    """Partitions taken away while a batch was in flight: the batch drops their outputs."""

    def forget(partitions: set[int]) -> None:
        processor.forget(partitions)
        store.drop(partitions)
        for partition in partitions:
            skipping.pop(partition, None)

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        # Partitions kept across a rebalance keep their in-memory state: it matches
        # their still-open transaction. Only partitions now owned elsewhere are
        # forgotten; a partition (re)gained is loaded from the store on its first event.
        # A rebalance can land while a batch awaits (a store load, its sends): that
        # batch then drops what it did for the partitions that left, at its end.
        nonlocal owned
        assigned: set[Any] = args[0] if args else set()
        owned = {tp.partition for tp in assigned if tp.topic == raw_name}
        gone = (store.loaded | store.loading) - owned
        if in_batch:
            leaving.update(gone)
        else:
            forget(gone)

    async def ensure_loaded(partition: int) -> None:
        if partition in store.loaded:
            return
        delay = 1.0
        while True:
            try:
                buyers = await store.load(partition)
                break
            except KafkaError as exc:  # the broker away: nothing applied yet, try again
                if partition in leaving:
                    return
                logger.warning(
                    "partition %d: loading its journey states failed (%s); retrying in %.0f s",
                    partition,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        processor.restore({partition}, store.stored_event_times, buyers)
        logger.info(
            "partition %d: %d journey states loaded from %s, applied up to offset %s",
            partition,
            len(buyers),
            topics.store,
            store.applied.get(partition, "none"),
        )

    handled = 0

    async def process(event: Any) -> bool:
        """Apply one raw record; False if the partition's state already includes it."""
        message = event.message
        partition = int(message.partition)
        if partition in leaving or (owned is not None and partition not in owned):
            return False  # owned elsewhere now: its new owner reads it again
        await ensure_loaded(partition)
        if partition in leaving:
            return False
        offset = int(message.offset)
        if store.already_applied(partition, offset):
            if partition not in skipping:
                logger.info(
                    "partition %d: records delivered again from offset %d are skipped "
                    "(its state already includes them, up to offset %d)",
                    partition,
                    offset,
                    store.applied[partition],
                )
            skipping[partition] = skipping.get(partition, 0) + 1
            return False
        if partition in skipping:
            logger.info(
                "partition %d: %d records delivered again skipped; applying from offset %d",
                partition,
                skipping.pop(partition),
                offset,
            )
        store.applied[partition] = offset
        position = f"{partition}:{offset}"
        value = event.value if event.value is not None else b""
        headers = event.headers
        if headers and header(headers, PACK_HEADER) == PACK_NDJSON:
            process_raw = processor.process_raw
            for index, line in enumerate(value.split(b"\n")):
                if line:
                    process_raw(
                        line, source=raw_name, position=f"{position}:{index}", partition=partition
                    )
        elif headers and control_kind(headers) == CONTROL_WATERMARK:
            try:
                processor.advance_watermark(partition, datetime.fromisoformat(value.decode()))
            except (UnicodeDecodeError, ValueError) as exc:
                processor.dead_letter(
                    DeadLetterReason.INVALID_FIELD,
                    f"watermark control message with an unreadable time: {exc}",
                    value,
                    source=raw_name,
                    position=position,
                    partition=partition,
                )
        else:
            processor.process_raw(value, source=raw_name, position=position, partition=partition)
        return True

    async def handle(events: list[Any]) -> None:
        """Process a batch, then send each partition's records together, in its transaction.

        Faust acknowledges a taken batch even when its handler fails (``take_events``
        acks in a ``finally``), and an acknowledged offset is committed by the next
        transaction: a batch that fails half-way would be committed without its output.
        So a failure here ends the process at once — its open transactions are aborted
        and the partitions' next owner reads the batch again.
        """
        nonlocal in_batch
        in_batch = True
        try:
            await handle_batch(events)
        except BaseException as exc:  # anything, CancelledError too
            logger.critical(
                "a batch failed half-way (%s: %s); exiting so that its input is not "
                "committed without its output (the next owner reads it again)",
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, asyncio.CancelledError),
            )
            logging.shutdown()
            os._exit(70)
        finally:
            in_batch = False
            if leaving:
                gone = set(leaving)
                leaving.clear()
                forget(gone)

    async def handle_batch(events: list[Any]) -> None:
        nonlocal handled
        started = time.perf_counter()
        before = handled
        applied: set[int] = set()
        skipped = 0
        for event in events:
            if await process(event):
                applied.add(int(event.message.partition))
            else:
                skipped += 1
        output = processor.flush()
        for partition, stored in output.stored.items():
            store.note(partition, (buyer for buyer, _ in stored))
        handled += sum(output.stats.events.values()) + len(events)
        if before == 0 or handled // 100_000 != before // 100_000:
            # Faust's own objects and the long-lived journey state: keep the cyclic
            # collector from rescanning them on every collection.
            gc.freeze()
        if metrics is not None:
            metrics.observe(output, processor.counters, len(store.states))
            metrics.observe_watermarks(processor.max_event_times)
            metrics.replayed.inc(skipped)
        newest = processor.max_event_times
        sends = []
        for partition in applied | set(output.rows) | set(output.stored):
            if partition in leaving:
                continue  # dropped at the batch's end; the new owner reads it again
            records: list[Record] = []
            if partition in applied:
                records.append(store.position_record(partition, newest.get(partition)))
            stored = output.stored.get(partition, [])
            records.extend((topics.store, buyer.encode(), blob) for buyer, blob in stored)
            for table, rows in output.rows.get(partition, {}).items():
                topic = topic_for_table[table]
                for index, pack in enumerate(pack_rows(rows)):
                    key = f"{partition}:{store.applied.get(partition, -1)}:{index}".encode()
                    records.append((topic, key, pack))
            sends.append(send_partition(partition, records))
        processed = time.perf_counter()
        await asyncio.gather(*sends)
        sent = time.perf_counter()
        if metrics is not None:
            metrics.batch_process_seconds.observe(processed - started)
            metrics.batch_send_seconds.observe(sent - processed)
        logger.debug(
            "batch of %d records (%d events): processed in %.3f s, sent in %.3f s",
            len(events),
            sum(output.stats.events.values()),
            processed - started,
            sent - processed,
        )

    async def send_partition(partition: int, records: list[Record]) -> None:
        try:
            await send_together(app, raw_name, partition, records)
        except Exception:
            if partition in leaving:  # its producer went with it: nothing of it commits
                logger.info(
                    "partition %d left during its send; its next owner redoes it", partition
                )
                return
            raise

    @app.agent(raw_topic, name="journeys")
    async def journeys(stream: Any) -> AsyncIterator[None]:
        # Events are acknowledged (and their offsets become committable) only after
        # the whole batch has been handled and sent.
        async for events in stream.take_events(kafka.worker_batch, within=kafka.worker_wait):
            await handle(list(events))
            yield None

    @app.on_before_shutdown.connect
    async def _closing(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        await store.close()

    return app, processor


def run_worker(
    kafka: KafkaSettings,
    processing: ProcessingSettings,
    rules: JourneyRules,
    *,
    loglevel: str = "warning",
    metrics: WorkerMetrics | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT (Faust handles the signals and a clean stop)."""
    app, _ = create_app(kafka, processing, rules, metrics)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()
