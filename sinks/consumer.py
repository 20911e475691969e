"""The Kafka → ClickHouse sink of the distributed path: effectively-once batched inserts.

:class:`KafkaClickHouseSink` reads the output topics (:data:`schemas.topics.TABLE_BY_TOPIC`)
as one consumer group member (kafka-python, ``isolation_level=read_committed`` because the
workers write in Kafka transactions, no auto-commit) and writes their rows to any
:class:`~sinks.base.Sink` — :class:`~sinks.writer.ClickHouseWriter` in production.

Batching
    Messages are buffered per topic-partition and cut into batches, one
    :class:`~sinks.base.RowBatch` per partition and round, whose token is their offset
    range (``"{topic}:{partition}:{first}-{last}"``), so ClickHouse's
    ``insert_deduplication_token`` drops a replayed batch. What goes into which batch,
    the intents and the rows' checks are pure and live in :mod:`sinks.batches`; this
    module holds the kafka-python calls around them.

The intent protocol (insert first, then commit — and replay the *same* batch)
    The token only protects a replay that reproduces the batch exactly, so the batch's
    boundaries are written to Kafka before the insert, in the group's commit metadata:

    1. *intent*: commit the partition at the batch's first offset (the position does not
       move) with metadata ``{"sink":1,"start":first,"end":last+1}``;
    2. insert the batch (see *ClickHouse unreachable* below);
    3. *done*: commit ``last + 1`` with empty metadata.

    When a partition is assigned, its committed offset is read *with* metadata
    (``KafkaConsumer.committed(tp, metadata=True)``). If an intent is there, a previous
    owner may have inserted ``[start, end)`` before dying, so the first batch of the
    partition is exactly ``[start, end)`` with token ``{topic}:{partition}:{start}-{end-1}``
    (later messages wait for the next batch), whatever ``max_rows`` says: the replay is
    dropped by ClickHouse if the first insert happened, written if it did not. An offset
    is never committed past rows that are not written.

Rebalances
    kafka-python 3 runs rebalance callbacks on its IO thread, where blocking consumer
    calls (``commit``, ``committed``) raise ``RuntimeError``, so nothing is written from
    a callback. Nothing needs to be: what is buffered has neither an intent nor an insert
    behind it, and every flush completes (intent, insert, done) before the next ``poll``,
    the only place a rebalance happens. A partition that moves to another sink simply has
    its buffer dropped — the new owner reads it again from the committed offset — and a
    partition this sink keeps keeps its buffer (kafka-python keeps its position). So no
    work is lost or written twice across sink processes. On a clean stop (``stop`` event,
    ``idle_timeout``) everything buffered is flushed before :meth:`KafkaClickHouseSink.run`
    returns.

ClickHouse unreachable
    A batch whose insert fails in a retryable way (``SinkRetryableError``: network,
    overload, storage refusing writes — after :class:`~sinks.writer.ClickHouseWriter`'s own
    short retries) is kept and written again, for as long as it takes: the waits double
    from ``retry_backoff`` (1 s) up to ``sink_retry_max`` (30 s). Nothing is committed past
    it meanwhile, and the sink stays in its group: between attempts it polls with every
    partition paused (kafka-python leaves the group when ``poll`` is not called for
    ``max_poll_interval_ms``), so a rebalance is still taken part in; if the batch's
    partition moves to another sink during the wait, the batch is dropped and the new
    owner replays it from the intent. A stop request (SIGTERM) during the wait ends the
    run with ``SinkRetryableError`` (exit 1); nothing is lost, the next start replays.
    A ``SinkFatalError`` (schema drift, bad SQL) is not retried: the process exits.
    Likewise a commit that fails because Kafka is unreachable (timeout, no broker) is
    retried with the same offsets. A commit the group refuses because it moved on without
    this member (a rebalance, or an eviction: seen after a broker restart, when the
    session expired before the heartbeats found the coordinator again) is not retried:
    the round's partitions are dropped from the buffers and rewound to their batches, and
    re-opened from their committed offsets (and intents), so nothing is lost — a batch
    inserted before its *done* commit was refused is replayed from its intent. The sink
    stays up and rejoins on its next poll.

Fault injection (tests only; inert unless armed)
    With ``TOUCHPOINT_FAULT_SINK_EXIT_AFTER_INSERT=N`` set when the sink is created, the
    process ends with ``os._exit(FAULT_EXIT_STATUS)`` right after the N-th round of
    inserts, before its *done* commit: the crash the intent protocol exists for. Read
    once, in :class:`KafkaClickHouseSink`'s constructor; unset (the default) it does nothing.

Bad messages
    A message that does not validate as its table's row becomes a ``dead_letters`` row in
    the same batch (:func:`sinks.batches.decode_batch`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConfigurationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas.errors import BrokerError, BrokerUnavailableError, ConfigError, SinkRetryableError
from schemas.rows import ROW_ADAPTERS
from schemas.settings import KafkaSettings
from schemas.topics import TABLE_BY_TOPIC
from sinks.base import RowBatch, Sink
from sinks.batches import (
    BatchPlanner,
    Intent,
    Message,
    Partition,
    PartitionBatch,
    decode_batch,
    rounds,
)

__all__ = [
    "FAULT_EXIT_AFTER_INSERT",
    "FAULT_EXIT_STATUS",
    "ConsumerLike",
    "KafkaClickHouseSink",
    "SinkStats",
]

logger = logging.getLogger(__name__)

_MAX_POLL_RECORDS: Final = 2000
_POLL_CEILING_SECONDS: Final = 0.5
_KAFKA_TIMEOUT_MS: Final = 30_000

# The group refused a commit because it moved on without this member (a rebalance, or
# an eviction after its session expired, e.g. across a broker restart).
_GROUP_MOVED_ON: Final = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)

FAULT_EXIT_AFTER_INSERT: Final = "TOUCHPOINT_FAULT_SINK_EXIT_AFTER_INSERT"
"""Env var arming the fault-injection point: exit after the N-th round of inserts."""
FAULT_EXIT_STATUS: Final = 86
"""The exit status of a sink that ended at the fault-injection point."""


def _armed_exit_after_insert() -> int | None:
    value = os.environ.get(FAULT_EXIT_AFTER_INSERT, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{FAULT_EXIT_AFTER_INSERT} must be a positive integer, got {value!r}")
    logger.warning(
        "fault injection armed: this sink exits after insert round %s, before its commit", value
    )
    return int(value)


@dataclass
class SinkStats:
    """What one sink instance did: messages read, rows sent per table, batches, dead letters."""

    messages: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    dead_letters: int = 0
    replays: int = 0
    """Batches that re-did a recovered intent (ClickHouse drops them if already written)."""
    write_retries: int = 0
    """Attempts to write a batch that failed in a retryable way and were tried again."""
    abandoned: int = 0
    """Batches dropped while waiting for ClickHouse because their partition moved away."""


class ConsumerLike(Protocol):
    """The part of ``kafka.KafkaConsumer`` the sink uses (a test double implements it too)."""

    def subscribe(self, topics: Sequence[str], *, listener: Any) -> None: ...

    def poll(self, timeout_ms: int = ...) -> Mapping[Any, Sequence[Any]]: ...

    def commit(self, offsets: Mapping[Any, Any]) -> None: ...

    def committed(self, partition: Any, metadata: bool = ...) -> Any: ...

    def position(self, partition: Any, timeout_ms: int | None = ...) -> int | None: ...

    def assignment(self) -> Any: ...

    def seek(self, partition: Any, offset: int) -> None: ...

    def pause(self, *partitions: Any) -> None: ...

    def resume(self, *partitions: Any) -> None: ...

    def close(self) -> None: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    """Runs on kafka-python's IO thread: only bookkeeping here, never a blocking call."""

    def __init__(self, owner: KafkaClickHouseSink) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Collection[Partition]) -> None:
        self._owner._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Collection[Partition]) -> None:
        self._owner._on_assigned(assigned)

    def on_partitions_lost(self, lost: Collection[Partition]) -> None:
        self._owner._on_lost(lost)


def _create_consumer(settings: KafkaSettings, max_rows: int) -> Any:
    bootstrap = [server.strip() for server in settings.bootstrap.split(",") if server.strip()]
    session_ms = int(settings.sink_session_timeout.total_seconds() * 1000)
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=settings.sink_group,
            client_id="touchpoint-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=min(max_rows, _MAX_POLL_RECORDS),
            # A killed sink's partitions wait for its session to expire (kafka-python's
            # default is 45 s); a static member (group.instance.id) is replaced at once.
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 5),
            group_instance_id=settings.sink_instance_id,
        )
    except (KafkaConfigurationError, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Kafka consumer settings: {exc}") from exc
    except KafkaError as exc:
        raise BrokerUnavailableError(
            f"cannot talk to Kafka at {settings.bootstrap}: {exc}"
        ) from exc


class _GroupMovedOn(BrokerError):
    """The group refused a commit: it rebalanced or evicted this member meanwhile."""


class KafkaClickHouseSink:
    """Consumes the output topics and writes their rows to ``sink``, effectively once.

    ``topics`` maps each topic to its table (default: every output topic). ``max_rows`` and
    ``max_seconds`` bound a flush (default: the settings' ``sink_batch_rows`` and
    ``sink_batch_seconds``). A batch ClickHouse refuses is retried after ``retry_backoff``
    seconds, doubling up to the settings' ``sink_retry_max``. ``consumer`` replaces the
    kafka-python consumer (tests).
    The sink is not closed by this class; the consumer is, by :meth:`close`.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        sink: Sink,
        *,
        topics: Mapping[str, str] = TABLE_BY_TOPIC,
        max_rows: int | None = None,
        max_seconds: float | None = None,
        consumer: ConsumerLike | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_backoff: float = 1.0,
    ) -> None:
        if not topics:
            raise ConfigError("the sink needs at least one topic")
        unknown = sorted(table for table in topics.values() if table not in ROW_ADAPTERS)
        if unknown:
            raise ConfigError(f"no row type for table(s) {', '.join(unknown)}")
        self.topics = dict(topics)
        self.sink = sink
        self.stats = SinkStats()
        self._clock = clock
        self._planner = BatchPlanner(
            max_rows if max_rows is not None else settings.sink_batch_rows,
            max_seconds if max_seconds is not None else settings.sink_batch_seconds,
        )
        self._lock = threading.Lock()
        self._revoking: set[Partition] = set()
        self._to_open: set[Partition] = set()
        self._committed: dict[Partition, int] = {}
        self._rebalanced = False
        self._closed = False
        self._failed = False
        self._stop: threading.Event | None = None
        self._retry_backoff = retry_backoff
        self._retry_max = max(retry_backoff, settings.sink_retry_max.total_seconds())
        self._poll_failing_since: float | None = None
        self._poll_wait = self._retry_backoff
        self._exit_after_inserts = _armed_exit_after_insert()
        self._insert_rounds = 0
        self._consumer: ConsumerLike = (
            consumer if consumer is not None else _create_consumer(settings, self._planner.max_rows)
        )
        try:
            self._consumer.subscribe(list(self.topics), listener=_Listener(self))
        except (KafkaError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot subscribe to {', '.join(self.topics)}: {exc}") from exc

    # -- the loop ----------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, idle_timeout: float | None = None
    ) -> SinkStats:
        """Poll, batch and write until ``stop`` is set or nothing arrived for ``idle_timeout`` s.

        Returns after flushing everything buffered. A batch ClickHouse refuses for a while
        is kept and retried (see the module docstring). Raises (without committing what is
        not written) if Kafka fails, the sink fails fatally, or ``stop`` is set while a batch
        waits for ClickHouse; a restart replays from the committed offsets.
        """
        if self._failed:
            raise BrokerError(
                "this sink failed earlier and may have lost track of what it read; "
                "create a new one (it resumes from the committed offsets)"
            )
        self._stop = stop
        try:
            return self._run(stop, idle_timeout)
        except BaseException:
            self._failed = True
            raise

    def _run(self, stop: threading.Event | None, idle_timeout: float | None) -> SinkStats:
        last_activity = self._clock()
        while stop is None or not stop.is_set():
            now = self._clock()
            records = self._poll(self._poll_timeout(now, last_activity, idle_timeout))
            self._open_assigned()
            now = self._clock()
            if records or self._take_rebalanced():
                last_activity = now
            for message in records:
                self._add(message, now)
                if self._planner.full(self._revoking):
                    self._flush(catch_up=False)
            self._advance_intents()
            if self._planner.due(self._clock(), self._revoking):
                self._flush(catch_up=True)
            if idle_timeout is not None and self._clock() - last_activity >= idle_timeout:
                logger.info("nothing arrived for %.1fs; stopping", idle_timeout)
                break
        self._flush(catch_up=True)
        return self.stats

    def _poll_timeout(self, now: float, last_activity: float, idle_timeout: float | None) -> int:
        wait = _POLL_CEILING_SECONDS
        until_due = self._planner.seconds_until_due(now, self._revoking)
        if until_due is not None:
            wait = min(wait, until_due)
        if idle_timeout is not None:
            wait = min(wait, last_activity + idle_timeout - now)
        return max(0, int(wait * 1000))

    def _poll(self, timeout_ms: int) -> list[Message]:
        """The next records; while Kafka is unreachable, none (after a backoff wait)."""
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise BrokerError(f"polling the output topics failed: {exc}") from exc
            now = self._clock()
            if self._poll_failing_since is None:
                self._poll_failing_since = now
                self._poll_wait = self._retry_backoff
            logger.warning(
                "polling the output topics failed for %.0fs (%s); retrying in %.0fs",
                now - self._poll_failing_since,
                exc,
                self._poll_wait,
            )
            if self._stop is not None:
                self._stop.wait(self._poll_wait)
            else:
                time.sleep(self._poll_wait)
            self._poll_wait = min(self._poll_wait * 2, self._retry_max)
            return []
        if self._poll_failing_since is not None:
            logger.warning(
                "polling the output topics again after %.0fs",
                self._clock() - self._poll_failing_since,
            )
            self._poll_failing_since = None
        return [
            Message(
                record.topic,
                record.partition,
                record.offset,
                record.value,
                record.timestamp if record.timestamp is not None else -1,
                record.value.count(b"\n") + 1 if record.value else 1,
            )
            for records in polled.values()
            for record in records
        ]

    def _add(self, message: Message, now: float) -> None:
        if not self._planner.is_open(message.tp):
            self._open_partitions([message.tp])
        if self._planner.add(message, now):
            self.stats.messages += 1

    def _take_rebalanced(self) -> bool:
        with self._lock:
            rebalanced, self._rebalanced = self._rebalanced, False
        return rebalanced

    def _open_assigned(self) -> None:
        with self._lock:
            pending, self._to_open = sorted(self._to_open), set()
        self._open_partitions(pending)

    def _open_partitions(self, tps: Iterable[Partition]) -> None:
        """Read the committed offset (and intent) of newly owned partitions; open them."""
        for tp in tps:
            try:
                committed = self._consumer.committed(TopicPartition(*tp), metadata=True)
            except KafkaError as exc:
                raise BrokerError(f"reading the committed offset of {tp} failed: {exc}") from exc
            offset = getattr(committed, "offset", None)
            intent = Intent.decode(offset, getattr(committed, "metadata", None))
            with self._lock:
                if self._planner.is_open(tp):
                    continue
                self._planner.open(tp, intent)
                if isinstance(offset, int) and offset >= 0:
                    self._committed[tp] = offset
            if intent is not None:
                logger.warning(
                    "partition %s:%d has an unfinished batch [%d, %d) from an earlier sink; "
                    "replaying it with the same token",
                    tp[0],
                    tp[1],
                    intent.start,
                    intent.end,
                )

    def _position(self, tp: Partition) -> int | None:
        try:
            position = self._consumer.position(TopicPartition(*tp), timeout_ms=1000)
        except KafkaError as exc:
            logger.debug("no position for %s yet: %s", tp, exc)
            return None
        return position if isinstance(position, int) else None

    def _advance_intents(self) -> None:
        for tp in self._planner.awaiting_intent():
            position = self._position(tp)
            if position is not None:
                self._planner.advance(tp, position)

    # -- writing -----------------------------------------------------------------------

    def _commit(self, offsets: Mapping[Partition, OffsetAndMetadata], what: str) -> None:
        """Commit, retrying while Kafka is unreachable (the same offsets: idempotent).

        A non-retriable failure (the group moved on: ``CommitFailedError``, unknown member)
        raises: what is not committed is replayed by the next owner.
        """
        if not offsets:
            return
        wait = self._retry_backoff
        failing_since: float | None = None
        while True:
            try:
                self._consumer.commit({TopicPartition(*tp): om for tp, om in offsets.items()})
            except KafkaError as exc:
                retriable = bool(getattr(exc, "retriable", False))  # timeouts, connections
                stopping = self._stop is not None and self._stop.is_set()
                if isinstance(exc, _GROUP_MOVED_ON) and not stopping:
                    raise _GroupMovedOn(
                        f"the group refused the {what} commit of {len(offsets)} partition(s): {exc}"
                    ) from exc
                if not retriable or stopping:
                    raise BrokerError(
                        f"committing {what} offsets for {len(offsets)} partition(s) failed: {exc}"
                    ) from exc
                now = self._clock()
                if failing_since is None:
                    failing_since = now
                logger.warning(
                    "committing %s offsets failed for %.0fs (%s); retrying in %.0fs",
                    what,
                    now - failing_since,
                    exc,
                    wait,
                )
                if self._stop is not None:
                    self._stop.wait(wait)
                else:
                    time.sleep(wait)
                wait = min(wait * 2, self._retry_max)
                continue
            if failing_since is not None:
                logger.warning(
                    "committed %s offsets after %.0fs", what, self._clock() - failing_since
                )
            return

    def _flush(self, *, catch_up: bool) -> None:
        """Write every flushable partition: intent commit, insert, done commit, per round.

        ``catch_up`` also commits the position of idle partitions (past transaction
        markers); only safe once every polled message has been added.
        """
        batches = self._planner.take(self._revoking)
        for taken in rounds(batches):
            # A partition that moved away while an earlier round waited for ClickHouse is
            # the new owner's: neither its intent nor its batch is this sink's any more.
            group = [batch for batch in taken if self._planner.is_open(batch.tp)]
            self.stats.abandoned += len(taken) - len(group)
            if not group:
                continue
            try:
                self._commit(
                    {
                        batch.tp: OffsetAndMetadata(batch.first, batch.intent.encode(), -1)
                        for batch in group
                        if not batch.replay
                    },
                    "intent",
                )
            except _GroupMovedOn as exc:
                self._read_again(group, exc)  # nothing of this round was inserted
                continue
            written = [batch for batch in group if self._write(batch)]
            self.sink.flush()
            self._fault_point(group)
            try:
                self._commit(
                    {batch.tp: OffsetAndMetadata(batch.end, "", -1) for batch in written},
                    "written",
                )
            except _GroupMovedOn as exc:
                self._read_again(written, exc)  # inserted; the intent replays it, same token
                continue
            for batch in written:
                self._committed[batch.tp] = batch.end
        if catch_up:
            try:
                self._commit_idle_positions()
            except _GroupMovedOn as exc:
                logger.info("%s; the positions are committed after the rejoin", exc)

    def _read_again(self, batches: Sequence[PartitionBatch], exc: _GroupMovedOn) -> None:
        """After a refused commit: forget these partitions' buffers and read them again
        from their committed offsets (with intents) — here if they are still assigned
        after the rejoin, else by their new owner."""
        tps = sorted({batch.tp for batch in batches})
        with self._lock:
            self._planner.close(tps)
            for tp in tps:
                self._committed.pop(tp, None)
        try:
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        except KafkaError:
            assigned = set()
        for batch in batches:
            if batch.tp in assigned:
                try:
                    self._consumer.seek(TopicPartition(*batch.tp), batch.first)
                except (KafkaError, ValueError) as error:  # unassigned meanwhile
                    logger.debug("no seek for %s: %s", batch.tp, error)
        with self._lock:
            self._to_open.update(tp for tp in tps if tp in assigned)
        logger.warning(
            "%s; %d partition(s) will be read again from their committed offsets", exc, len(tps)
        )

    def _write(self, batch: PartitionBatch) -> bool:
        """Write one batch; False if its partition moved to another sink meanwhile."""
        row_batch, dead = decode_batch(batch, self.topics[batch.topic])
        if batch.replay:
            self.stats.replays += 1
            logger.info("replaying batch %s (%d messages)", batch.token, len(batch.messages))
        if not len(row_batch):
            return True
        if not self._write_until_written(batch, row_batch):
            return False
        self.stats.batches += 1
        self.stats.dead_letters += dead
        for table, rows in row_batch.tables.items():
            self.stats.rows[table] = self.stats.rows.get(table, 0) + len(rows)
        logger.debug("wrote batch %s: %d rows", batch.token, len(row_batch))
        return True

    def _write_until_written(self, batch: PartitionBatch, row_batch: RowBatch) -> bool:
        """``sink.write``, retried while it fails in a retryable way (capped backoff).

        False when the partition moved to another sink during a wait: that sink replays
        the batch from its intent, so this one must neither write nor commit it.
        """
        wait = self._retry_backoff
        failing_since: float | None = None
        while True:
            try:
                self.sink.write(row_batch)
            except SinkRetryableError as exc:
                now = self._clock()
                if failing_since is None:
                    failing_since = now
                self.stats.write_retries += 1
                logger.warning(
                    "batch %s not written for %.0fs (%s); it is kept, nothing is committed "
                    "past it; next attempt in %.0fs",
                    batch.token,
                    now - failing_since,
                    exc,
                    wait,
                )
                self._wait_in_group(wait)
                if not self._planner.is_open(batch.tp):
                    self.stats.abandoned += 1
                    logger.warning(
                        "partition %s:%d moved to another sink while batch %s waited; "
                        "the new owner replays it",
                        batch.topic,
                        batch.partition,
                        batch.token,
                    )
                    return False
                wait = min(wait * 2, self._retry_max)
                continue
            if failing_since is not None:
                logger.warning(
                    "batch %s written after %.0fs of retries",
                    batch.token,
                    self._clock() - failing_since,
                )
            return True

    def _wait_in_group(self, seconds: float) -> None:
        """Wait ``seconds`` while staying a live group member: poll with partitions paused.

        A rebalance inside ``poll`` runs the usual bookkeeping; records polled anyway
        (partitions assigned by it, before they could be paused) are buffered as usual.
        """
        deadline = self._clock() + seconds
        try:
            while True:
                if self._stop is not None and self._stop.is_set():
                    raise SinkRetryableError(
                        "stopped while a batch waited for ClickHouse; nothing was committed "
                        "past it, the next start writes it"
                    )
                left = deadline - self._clock()
                if left <= 0:
                    return
                self._pause_assigned()
                records = self._poll(max(1, int(min(left, _POLL_CEILING_SECONDS) * 1000)))
                self._open_assigned()
                now = self._clock()
                for message in records:
                    self._add(message, now)
        finally:
            self._resume_assigned()

    def _pause_assigned(self) -> None:
        try:
            self._consumer.pause(*self._consumer.assignment())
        except (KafkaError, ValueError) as exc:  # e.g. a partition no longer assigned
            logger.debug("pausing partitions failed: %s", exc)

    def _resume_assigned(self) -> None:
        try:
            self._consumer.resume(*self._consumer.assignment())
        except (KafkaError, ValueError) as exc:
            logger.debug("resuming partitions failed: %s", exc)

    def _fault_point(self, group: Sequence[PartitionBatch]) -> None:
        """The armed fault-injection point: exit after the N-th insert round, uncommitted."""
        if self._exit_after_inserts is None or not any(batch.messages for batch in group):
            return
        self._insert_rounds += 1
        if self._insert_rounds == self._exit_after_inserts:
            logger.critical(
                "%s=%d: exiting after inserting %s, before committing it",
                FAULT_EXIT_AFTER_INSERT,
                self._exit_after_inserts,
                ", ".join(batch.token for batch in group),
            )
            logging.shutdown()
            os._exit(FAULT_EXIT_STATUS)

    def _commit_idle_positions(self) -> None:
        offsets: dict[Partition, OffsetAndMetadata] = {}
        for tp in self._planner.partitions():
            if tp in self._revoking or not self._planner.is_idle(tp):
                continue
            position = self._position(tp)
            if position is not None and position > self._committed.get(tp, 0):
                offsets[tp] = OffsetAndMetadata(position, "", -1)
        self._commit(offsets, "caught-up")
        for tp, om in offsets.items():
            self._committed[tp] = om.offset

    # -- rebalance bookkeeping (kafka-python's IO thread, inside poll) ------------------

    def _on_revoked(self, revoked: Collection[Partition]) -> None:
        with self._lock:
            self._revoking.update((tp[0], tp[1]) for tp in revoked)

    def _on_assigned(self, assigned: Collection[Partition]) -> None:
        now_owned = {(tp[0], tp[1]) for tp in assigned}
        with self._lock:
            gone = self._revoking - now_owned
            dropped = self._planner.close(gone)
            for tp in gone:
                self._committed.pop(tp, None)
            self._revoking.clear()
            self._to_open.difference_update(gone)
            self._to_open.update(tp for tp in now_owned if not self._planner.is_open(tp))
            self._rebalanced = True
        if gone:
            logger.info(
                "%d partition(s) moved to another sink; %d unwritten message(s) left to it",
                len(gone),
                dropped,
            )

    def _on_lost(self, lost: Collection[Partition]) -> None:
        tps = {(tp[0], tp[1]) for tp in lost}
        with self._lock:
            dropped = self._planner.close(tps)
            for tp in tps:
                self._committed.pop(tp, None)
            self._revoking.difference_update(tps)
            self._to_open.difference_update(tps)
            self._rebalanced = True
        logger.warning(
            "lost %d partition(s) (evicted from the group); dropped %d unwritten message(s)",
            len(tps),
            dropped,
        )

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Leave the group and close the consumer (does not flush: :meth:`run` did)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except KafkaError as exc:
            logger.warning("closing the Kafka consumer failed: %s", exc)

    def __enter__(self) -> KafkaClickHouseSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
