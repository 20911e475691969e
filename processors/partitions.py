"""The worker's partitions, pure: what it owns, what its states include, what a batch sends.

:class:`PartitionStates` is the bookkeeping the Faust worker (:mod:`processors.faust_app`)
does around :class:`~processors.journey_processor.JourneyProcessor`, without Kafka or Faust:
the driver reads the store topic and hands its records to :meth:`PartitionStates.load_records`,
tells it the assignments it gets, and sends what :meth:`PartitionStates.outgoing` returns in
the input partition's transaction.

Ownership
    A rebalance can land while a batch awaits (a store load, its sends). Partitions that
    left then stay until the batch ends (``leaving``): the batch drops what it did for
    them, and their next owner reads it again.

Positions
    Faust rewinds a partition to the group's committed offset, which can be behind the
    states the last transaction stored. So every batch stores the partition's
    :class:`~schemas.journey.PartitionPosition` (last input offset applied, event time
    reached) with its states, and a record at or before that offset is skipped as already
    applied (:meth:`PartitionStates.apply`).

What a batch sends
    Per input partition: its position record, the changed buyers' encoded states on the
    store topic, and each table's rows as newline-joined packs (:func:`pack_rows`) on its
    output topic, keyed ``"{partition}:{applied offset}:{pack}"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from datetime import datetime
from typing import Final, Protocol

from processors.journey_processor import BatchOutput
from schemas.journey import PARTITION_POSITION_ADAPTER, PartitionPosition
from schemas.topics import STORE_POSITION_KEY, Topics

__all__ = ["PACK_BYTES", "PartitionStates", "Record", "StoreRecord", "pack_rows"]

logger = logging.getLogger(__name__)

PACK_BYTES: Final = 512 * 1024
"""Upper bound of one output record's value (rows are packed up to it)."""

Record = tuple[str, bytes | None, bytes]
"""(topic, key, value) of one output record."""


class StoreRecord(Protocol):
    """A record read back from the store topic (aiokafka's ``ConsumerRecord`` is one)."""

    key: bytes
    value: bytes | None


def pack_rows(rows: list[bytes], limit: int = PACK_BYTES) -> Iterator[bytes]:
    """Newline-joined runs of ``rows``, each at most ``limit`` bytes (or one row)."""
    start, size = 0, 0
    for index, row in enumerate(rows):
        if size and size + len(row) + 1 > limit:
            yield b"\n".join(rows[start:index])
            start, size = index, 0
        size += len(row) + 1
    if start < len(rows):
        yield b"\n".join(rows[start:])


class PartitionStates:
    """Journey states (encoded) of the partitions this worker owns, which buyers belong to
    which partition, per partition the last input offset they include (``applied``), and
    which partitions are owned or leaving."""

    def __init__(self, topics: Topics, states: MutableMapping[str, bytes] | None = None) -> None:
        self.states: MutableMapping[str, bytes] = {} if states is None else states
        self.buyers: dict[int, set[str]] = {}
        """Partition → the buyers whose states are held."""
        self.loaded: set[int] = set()
        self.loading: set[int] = set()
        """Partitions whose load from the store topic is in progress."""
        self.applied: dict[int, int] = {}
        self.stored_event_times: dict[int, datetime] = {}
        """Event time each loaded partition had reached when its states were stored."""
        self.owned: set[int] | None = None
        """Input partitions this worker owns (None until the first assignment)."""
        self.in_batch = False
        self.leaving: set[int] = set()
        """Partitions taken away while a batch was in flight: the batch drops their outputs."""
        self.skipping: dict[int, int] = {}
        """Partitions now receiving records delivered again → how many were skipped so far."""
        self.store_topic = topics.store
        self._topic_for_table = {table: topic for topic, table in topics.table_by_topic.items()}

    # -- ownership -----------------------------------------------------------------------

    def assign(self, owned: set[int]) -> set[int]:
        """The worker now owns these input partitions; returns the ones to forget now.

        Partitions kept across a rebalance keep their in-memory state: it matches their
        still-open transaction. Only partitions now owned elsewhere are forgotten, at once
        or — while a batch is in flight — when it ends (:meth:`end_batch`); a partition
        (re)gained is loaded from the store on its first record.
        """
        self.owned = owned
        gone = (self.loaded | self.loading) - owned
        if self.in_batch:
            self.leaving.update(gone)
            return set()
        return gone

    def owns(self, partition: int) -> bool:
        """Whether records of ``partition`` are still this worker's to apply."""
        return partition not in self.leaving and (self.owned is None or partition in self.owned)

    def begin_batch(self) -> None:
        self.in_batch = True

    def end_batch(self) -> set[int]:
        """The batch is over; returns the partitions that left during it, to forget now."""
        self.in_batch = False
        gone = set(self.leaving)
        self.leaving.clear()
        return gone

    def drop(self, partitions: set[int]) -> None:
        """Forget the states and positions of partitions this worker no longer owns."""
        self.loaded -= partitions
        for partition in partitions:
            self.applied.pop(partition, None)
            self.stored_event_times.pop(partition, None)
            self.skipping.pop(partition, None)
            for buyer in self.buyers.pop(partition, ()):
                self.states.pop(buyer, None)

    # -- loading from the store topic ----------------------------------------------------

    def start_load(self, partition: int) -> None:
        """A load of the partition's states from the store topic begins."""
        self.loading.add(partition)
        self.buyers.setdefault(partition, set())
        self.applied.pop(partition, None)
        self.stored_event_times.pop(partition, None)

    def load_records(self, partition: int, records: Iterable[StoreRecord]) -> None:
        """Records of the store topic: buyers' states, their tombstones, or the position."""
        states = self.states
        buyers = self.buyers.setdefault(partition, set())
        for record in records:
            key, value = record.key, record.value
            if key == STORE_POSITION_KEY:
                if value is not None:
                    self._restore_position(PARTITION_POSITION_ADAPTER.validate_json(value))
                continue
            buyer = key.decode()
            if value is None:
                states.pop(buyer, None)
                buyers.discard(buyer)
            else:
                states[buyer] = value
                buyers.add(buyer)

    def _restore_position(self, position: PartitionPosition) -> None:
        self.applied[position.partition] = position.offset
        if position.newest_event_at is not None:
            self.stored_event_times[position.partition] = position.newest_event_at

    def end_load(self, partition: int, *, complete: bool) -> set[str]:
        """The load is over (``complete``: the store was read to its end); returns the
        partition's buyers."""
        self.loading.discard(partition)
        if complete:
            self.loaded.add(partition)
        return self.buyers.get(partition, set())

    # -- positions -----------------------------------------------------------------------

    def already_applied(self, partition: int, offset: int) -> bool:
        """Whether the partition's states already include the record at ``offset``."""
        return offset <= self.applied.get(partition, -1)

    def apply(self, partition: int, offset: int) -> bool:
        """Note the record at ``offset`` as applied; False if the states already include it
        (a record delivered again: skip it)."""
        if self.already_applied(partition, offset):
            if partition not in self.skipping:
                logger.info(
                    "partition %d: records delivered again from offset %d are skipped "
                    "(its state already includes them, up to offset %d)",
                    partition,
                    offset,
                    self.applied[partition],
                )
            self.skipping[partition] = self.skipping.get(partition, 0) + 1
            return False
        if partition in self.skipping:
            logger.info(
                "partition %d: %d records delivered again skipped; applying from offset %d",
                partition,
                self.skipping.pop(partition),
                offset,
            )
        self.applied[partition] = offset
        return True

    def position_record(self, partition: int, newest_event_at: datetime | None) -> Record:
        """The store record of how far the partition's states have got (sent with them)."""
        position = PartitionPosition(partition, self.applied[partition], newest_event_at)
        return (
            self.store_topic,
            STORE_POSITION_KEY,
            PARTITION_POSITION_ADAPTER.dump_json(position),
        )

    # -- a batch's output ----------------------------------------------------------------

    def note(self, partition: int, buyers: Iterable[str]) -> None:
        """These buyers' states (just stored by the processor) belong to ``partition``."""
        self.buyers.setdefault(partition, set()).update(buyers)

    def outgoing(
        self,
        output: BatchOutput,
        applied: set[int],
        newest_event_times: Mapping[int, datetime],
    ) -> dict[int, list[Record]]:
        """Per input partition, the records a batch sends in its transaction.

        ``applied`` are the partitions the batch applied records of (they get a position
        record). The changed buyers are noted as the partitions' own; partitions leaving
        are left out (dropped at the batch's end; their new owner reads them again).
        """
        for partition, stored in output.stored.items():
            self.note(partition, (buyer for buyer, _ in stored))
        store_topic = self.store_topic
        topic_for_table = self._topic_for_table
        result: dict[int, list[Record]] = {}
        for partition in applied | set(output.rows) | set(output.stored):
            if partition in self.leaving:
                continue
            records: list[Record] = []
            if partition in applied:
                records.append(self.position_record(partition, newest_event_times.get(partition)))
            stored = output.stored.get(partition, [])
            records.extend((store_topic, buyer.encode(), blob) for buyer, blob in stored)
            for table, rows in output.rows.get(partition, {}).items():
                topic = topic_for_table[table]
                for index, pack in enumerate(pack_rows(rows)):
                    key = f"{partition}:{self.applied.get(partition, -1)}:{index}".encode()
                    records.append((topic, key, pack))
            result[partition] = records
        return result

    def close(self) -> None:
        """Close the state store (an on-disk one holds files open)."""
        closer = getattr(self.states, "close", None)
        if closer is not None:
            closer()
