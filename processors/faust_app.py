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

This module holds the Faust and aiokafka calls only. What a worker owns, what its
states include and what a batch sends per partition is decided by
:class:`~processors.partitions.PartitionStates` (pure); what a raw record (one
touchpoint, a pack, a watermark control message) becomes is decided by
:meth:`~processors.journey_processor.JourneyProcessor.process_record`, the call the
local runner makes too. Raw bytes are validated there, inside the agent (never in a
Faust deserializer, where a decode error would crash-loop the agent): a bad record
becomes a dead letter on ``touchpoints.dlq`` with its partition and offset.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ingest.kafka import partition_for
from processors.journey_processor import JourneyProcessor
from processors.metrics import WorkerMetrics
from processors.partitions import PartitionStates, Record
from processors.state_stores import open_state_store
from schemas.rules import JourneyRules
from schemas.settings import KafkaSettings, ProcessingSettings
from schemas.topics import CONTROL_HEADER, CONTROL_IDENTITY, Topics

__all__ = ["StoreReader", "create_app", "run_worker", "send_together"]

logger = logging.getLogger(__name__)

_PRODUCER_BATCH_BYTES: Final = 1024 * 1024
_IDENTITY_HEADERS: Final = [(CONTROL_HEADER, CONTROL_IDENTITY)]


async def send_together(
    app: Any,
    source_topic: str,
    partition: int,
    records: list[Record],
    controls: Sequence[tuple[int, bytes]] = (),
) -> None:
    """Send a batch's records of one partition inside the transaction that commits its input.

    All of them go in while holding the transaction's lock, so Faust's periodic
    commit cannot fall between them: an event's state change and its output rows
    are in one transaction, never split across two. (If a commit could split them
    and the worker died before the second, the retried event would be found in
    the restored state and not emit again — its remaining outputs lost.) Records are
    appended to one aiokafka batch per topic (``create_batch``/``send_batch``): no
    per-record future, one queue entry per topic. ``controls`` (target partition, value)
    go to ``source_topic`` as identity control records (:mod:`processors.stitching`), in the
    same transaction.
    """
    if not records and not controls:
        return
    producer = app.producer
    if not app.in_transaction:
        for topic, key, value in records:
            await producer.send(topic, key, value, partition, None, None)
        for target, value in controls:
            await producer.send(source_topic, None, value, target, None, _IDENTITY_HEADERS)
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
        for target, value in controls:
            await transaction.send(source_topic, value, partition=target, headers=_IDENTITY_HEADERS)


class StoreReader:
    """Reads a partition's committed journey states back from the store topic (compacted,
    read-committed) into the worker's :class:`~processors.partitions.PartitionStates`."""

    def __init__(self, bootstrap: list[str], partitions: PartitionStates) -> None:
        self.partitions = partitions
        self._bootstrap = bootstrap
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
        partitions = self.partitions
        partitions.start_load(partition)
        complete = False
        try:
            await self._read(partition)
            complete = True
        finally:
            buyers = partitions.end_load(partition, complete=complete)
        return buyers

    async def _read(self, partition: int) -> None:
        reader = self._reader
        assert reader is not None
        tp = TopicPartition(self.partitions.store_topic, partition)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        # An empty partition's position() waits for a fetch (a second or so): skip it.
        begin = (await reader.beginning_offsets([tp]))[tp] if end else 0
        while end > begin and await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=1000)
            self.partitions.load_records(partition, batch.get(tp, []))

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None
        self.partitions.close()


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
    partitions = PartitionStates(
        topics,
        open_state_store(kafka.store, kafka.store_dir / f"{kafka.app_id}-{os.getpid()}"),
    )
    store = StoreReader(bootstrap, partitions)
    processor = JourneyProcessor(
        rules,
        allowed_lateness=processing.allowed_lateness,
        max_future_skew=processing.max_future_skew,
        dedup_window=processing.dedup_window,
        states=partitions.states,
        stitch_identities=processing.stitch_identities and kafka.stitch_identities,
        max_person_ids=processing.identity_max_ids,
        home=lambda buyer_id: partition_for(buyer_id.encode(), kafka.partitions),
    )
    if metrics is not None:
        metrics.bind_triggers(processor.triggers.ids)

    def forget(gone: set[int]) -> None:
        processor.forget(gone)
        partitions.drop(gone)

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        # What is kept, forgotten or left to the batch in flight: PartitionStates.assign.
        assigned: set[Any] = args[0] if args else set()
        forget(partitions.assign({tp.partition for tp in assigned if tp.topic == raw_name}))

    async def ensure_loaded(partition: int) -> None:
        if partition in partitions.loaded:
            return
        delay = 1.0
        while True:
            try:
                buyers = await store.load(partition)
                break
            except KafkaError as exc:  # the broker away: nothing applied yet, try again
                if partition in partitions.leaving:
                    return
                logger.warning(
                    "partition %d: loading its journey states failed (%s); retrying in %.0f s",
                    partition,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        processor.restore({partition}, partitions.stored_event_times, buyers)
        logger.info(
            "partition %d: %d journey states loaded from %s, applied up to offset %s",
            partition,
            len(buyers),
            topics.store,
            partitions.applied.get(partition, "none"),
        )

    handled = 0

    async def process(event: Any) -> bool:
        """Apply one raw record; False if the partition's state already includes it."""
        message = event.message
        partition = int(message.partition)
        if not partitions.owns(partition):
            return False  # owned elsewhere now: its new owner reads it again
        await ensure_loaded(partition)
        if partition in partitions.leaving:
            return False
        offset = int(message.offset)
        if not partitions.apply(partition, offset):
            return False
        processor.process_record(
            event.value if event.value is not None else b"",
            source=raw_name,
            position=f"{partition}:{offset}",
            partition=partition,
            headers=event.headers,
        )
        return True

    async def handle(events: list[Any]) -> None:
        """Process a batch, then send each partition's records together, in its transaction.

        Faust acknowledges a taken batch even when its handler fails (``take_events``
        acks in a ``finally``), and an acknowledged offset is committed by the next
        transaction: a batch that fails half-way would be committed without its output.
        So a failure here ends the process at once — its open transactions are aborted
        and the partitions' next owner reads the batch again.
        """
        partitions.begin_batch()
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
            gone = partitions.end_batch()
            if gone:
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
        handled += sum(output.stats.events.values()) + len(events)
        if before == 0 or handled // 100_000 != before // 100_000:
            # Faust's own objects and the long-lived journey state: keep the cyclic
            # collector from rescanning them on every collection.
            gc.freeze()
        if metrics is not None:
            metrics.observe(output, processor.counters, len(partitions.states))
            metrics.observe_watermarks(processor.max_event_times)
            metrics.replayed.inc(skipped)
        outgoing = partitions.outgoing(output, applied, processor.max_event_times)
        sends = [
            send_partition(partition, records, output.controls.get(partition, ()))
            for partition, records in outgoing.items()
        ]
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

    async def send_partition(
        partition: int, records: list[Record], controls: Sequence[tuple[int, bytes]]
    ) -> None:
        try:
            await send_together(app, raw_name, partition, records, controls)
        except Exception:
            if partition in partitions.leaving:  # its producer went with it: nothing commits
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
