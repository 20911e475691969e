"""Kafka on the way in: the Touchpoint producer (kafka-python).

Topic set-up is :mod:`ingest.topics`.

The producer writes raw records to ``touchpoints.raw`` in *packs*: the records of
buyers whose key hashes to the same partition (Kafka's murmur2, exactly as a keyed
record would be placed) go out together as one Kafka record of newline-delimited
JSON with the :data:`~schemas.topics.PACK_HEADER` header, so every per-record cost
downstream (the clients, Faust) is paid once per pack. ``acks=all``, idempotence and
zstd compression. Every send is tracked; a record Kafka does not acknowledge is
reported by :meth:`TouchpointProducer.flush` as a :class:`~schemas.errors.DeliveryError`
— never silently dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from schemas.errors import BrokerUnavailableError, ConfigError, DeliveryError
from schemas.topics import CONTROL_HEADER, CONTROL_WATERMARK, PACK_HEADER, PACK_NDJSON, RAW_TOPIC

__all__ = [
    "PACK_BYTES",
    "PACK_EVENTS",
    "ProduceStats",
    "TouchpointProducer",
    "partition_for",
    "peek",
]

logger = logging.getLogger(__name__)

_MAX_REQUEST_BYTES: Final = 2_000_000
"""Above the 1 MB record limit, so an oversized record reaches the workers and is dead-lettered."""
PACK_EVENTS: Final = 64
"""Records per pack, at most: a worker batch of 500 Kafka records is then up to ~32k events."""
PACK_BYTES: Final = 256 * 1024
"""Bytes per pack, at most (a record larger than half of it travels alone)."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (murmur2, as in Java)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class _Peek(msgspec.Struct):
    buyer_id: str | None = None
    occurred_at: str | None = None


_PEEK: Final = msgspec.json.Decoder(_Peek)


def peek(data: bytes) -> tuple[bytes | None, datetime | None]:
    """Best-effort buyer id (the partitioning key) and event time of a raw record.

    Validation is the workers' job; a record this cannot read is still sent,
    without a key, so it reaches them and becomes a dead letter there.
    """
    try:
        peeked = _PEEK.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    else:
        return _peeked(peeked.buyer_id, peeked.occurred_at)
    try:
        decoded = json.loads(data)
    except ValueError:
        return None, None
    if not isinstance(decoded, dict):
        return None, None
    buyer, occurred = decoded.get("buyer_id"), decoded.get("occurred_at")
    return _peeked(
        buyer if isinstance(buyer, str) else None, occurred if isinstance(occurred, str) else None
    )


def _peeked(buyer: str | None, occurred: str | None) -> tuple[bytes | None, datetime | None]:
    key = buyer.encode() if buyer else None
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
    """Sends raw touchpoint records to Kafka, packed per buyer partition, and accounts for
    every one (``stats`` counts records, not packs)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = RAW_TOPIC,
        linger_ms: int = 20,
        pack_events: int = PACK_EVENTS,
        pack_bytes: int = PACK_BYTES,
    ) -> None:
        self.topic = topic
        self.stats = ProduceStats()
        self.pack_events = pack_events
        self.pack_bytes = pack_bytes
        self._partitions: int | None = None
        self._packs: dict[int, list[bytes]] = {}
        self._pack_sizes: dict[int, int] = {}
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

    def _acknowledged(self, _metadata: object, count: int = 1) -> None:
        self.stats.acknowledged += count

    def _failed(self, error: BaseException, count: int = 1) -> None:
        self.stats.failed += count
        if self.stats.first_error is None:
            self.stats.first_error = f"{type(error).__name__}: {error}"

    def _partition_count(self) -> int:
        if self._partitions is None:
            try:
                partitions = self._producer.partitions_for(self.topic)
            except KafkaError as exc:
                raise BrokerUnavailableError(
                    f"cannot read the partitions of {self.topic}: {exc}"
                ) from exc
            if not partitions:
                raise ConfigError(f"topic {self.topic} has no partitions (does it exist?)")
            self._partitions = len(partitions)
        return self._partitions

    def _send(self, value: bytes, count: int, **where: object) -> None:
        try:
            future = self._producer.send(self.topic, value=value, **where)
        except KafkaError as exc:
            self._failed(exc, count)
            return
        self.stats.sent += count
        future.add_callback(self._acknowledged, count=count)
        future.add_errback(self._failed, count=count)

    def send(self, data: bytes) -> None:
        """Queue one raw record: into its buyer partition's pack (sent when full)."""
        record_key, at = peek(data)
        if at is not None and (self.stats.max_event_time is None or at > self.stats.max_event_time):
            self.stats.max_event_time = at
        if (
            self.pack_events == 1
            or record_key is None
            or b"\n" in data
            or len(data) > self.pack_bytes // 2
        ):
            # Unreadable (it still reaches the workers, to become a dead letter there),
            # or too big to share a record: on its own, keyed like any record.
            self._send(data, 1, key=record_key)
            return
        partition = partition_for(record_key, self._partition_count())
        pack = self._packs.get(partition)
        if pack is None:
            pack = self._packs[partition] = []
            self._pack_sizes[partition] = 0
        pack.append(data)
        size = self._pack_sizes[partition] = self._pack_sizes[partition] + len(data) + 1
        if len(pack) >= self.pack_events or size >= self.pack_bytes:
            self._send_pack(partition)

    def _send_pack(self, partition: int) -> None:
        pack = self._packs.pop(partition, None)
        self._pack_sizes.pop(partition, None)
        if pack:
            self._send(
                b"\n".join(pack),
                len(pack),
                partition=partition,
                headers=[(PACK_HEADER, PACK_NDJSON)],
            )

    def send_watermark(self, event_time: datetime | None = None) -> int:
        """Tell every partition's workers this input ends at ``event_time`` (a source watermark).

        Defaults to the newest event time sent. Returns the number of partitions told.
        """
        event_time = event_time or self.stats.max_event_time
        if event_time is None:
            return 0
        for partition in sorted(self._packs):  # every record before its watermark
            self._send_pack(partition)
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
        """Send every open pack and wait for every queued record; raise DeliveryError if any
        was not acknowledged."""
        for partition in sorted(self._packs):
            self._send_pack(partition)
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
