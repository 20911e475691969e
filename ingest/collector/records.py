"""What a request puts on Kafka: canonical touchpoint JSON, packed per partition.

Pure functions, no I/O. An accepted touchpoint is encoded once (msgspec) as the
canonical Touchpoint v1 JSON — every field, times in UTC — the same values
``Touchpoint.model_dump_json()`` gives, so the workers decode the same touchpoint
from it. A request's touchpoints are then grouped by the partition their buyer
key hashes to (Kafka's murmur2, as for a keyed record) and each group becomes one
record: a *pack* (header :data:`~schemas.topics.PACK_HEADER`, newline-delimited
JSON) of at most :data:`~ingest.kafka.PACK_EVENTS` touchpoints and
:data:`~ingest.kafka.PACK_BYTES` bytes, or a plain keyed record when the group
holds one touchpoint. Dead-letter rows go to their topic newline-separated, several
per record, as the sink reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec

from ingest.kafka import PACK_BYTES, PACK_EVENTS, partition_for
from schemas.events import Event
from schemas.journey import EPOCH
from schemas.topics import PACK_HEADER, PACK_NDJSON
from schemas.touchpoint import PropertyValue

__all__ = [
    "PACK_HEADERS",
    "OutRecord",
    "PartitionCache",
    "encode_event",
    "join_rows",
    "pack_touchpoints",
]

PACK_HEADERS: Final = [(PACK_HEADER, PACK_NDJSON)]


class _Canonical(msgspec.Struct, gc=False):
    """Touchpoint v1 in the field order and shapes of ``Touchpoint.model_dump_json()``."""

    schema_version: int
    event_id: str
    buyer_id: str
    anonymous_id: str | None
    account_id: str | None
    channel: str
    event_type: str
    occurred_at: datetime
    received_at: datetime | None
    campaign: str | None
    promo: str | None
    revenue: Decimal | None
    currency: str | None
    properties: dict[str, PropertyValue]


_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")


def _time(micros: int) -> datetime:
    return EPOCH + timedelta(0, 0, micros)


class _LastTime:
    """The datetime of the last receive time asked for (one per request, shared by its
    events)."""

    micros: int | None = None
    value: datetime = EPOCH


def _received(micros: int) -> datetime:
    if micros != _LastTime.micros:
        _LastTime.value = _time(micros)
        _LastTime.micros = micros
    return _LastTime.value


def encode_event(event: Event) -> bytes:
    """The canonical Touchpoint JSON of a validated event."""
    received = event.received_at
    return _ENCODER.encode(
        _Canonical(
            event.schema_version,
            event.event_id,
            event.buyer_id,
            event.anonymous_id,
            event.account_id,
            event.channel,
            event.event_type,
            _time(event.at),
            None if received is None else _received(received),
            event.campaign,
            event.promo,
            event.revenue,
            event.currency,
            event.properties,
        )
    )


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One Kafka record to send: its partition (None: the partitioner's choice), key,
    value, headers, and how many touchpoints or dead letters it carries."""

    partition: int | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    count: int


class PartitionCache:
    """Buyer key → partition, remembered (murmur2 in Python costs microseconds a key).

    Bounded: forgotten all at once when full, and when the partition count changes.
    """

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._partitions = 0
        self._known: dict[bytes, int] = {}

    def known(self, partitions: int) -> dict[bytes, int]:
        """The remembered partitions, for ``partitions`` partitions (read with ``get``;
        :meth:`of` for a key not in it)."""
        if partitions != self._partitions:
            self._known.clear()
            self._partitions = partitions
        return self._known

    def of(self, key: bytes, partitions: int) -> int:
        found = self.known(partitions).get(key)
        if found is None:
            if len(self._known) >= self.size:
                self._known.clear()
            found = self._known[key] = partition_for(key, partitions)
        return found


def pack_touchpoints(
    touchpoints: Sequence[tuple[bytes, bytes]],
    partitions: int,
    cache: PartitionCache,
    *,
    pack_events: int = PACK_EVENTS,
    pack_bytes: int = PACK_BYTES,
) -> list[OutRecord]:
    """(buyer key, touchpoint JSON) pairs → one record per partition (more if a pack fills).

    Within a partition the touchpoints keep their order in the request.
    """
    groups: dict[int, list[tuple[bytes, bytes]]] = {}
    known = cache.known(partitions).get
    for pair in touchpoints:
        partition = known(pair[0])
        if partition is None:
            partition = cache.of(pair[0], partitions)
        group = groups.get(partition)
        if group is None:
            groups[partition] = [pair]
        else:
            group.append(pair)
    records: list[OutRecord] = []
    for partition, group in groups.items():
        for chunk in _chunks(group, pack_events, pack_bytes):
            if len(chunk) == 1:
                key, value = chunk[0]
                records.append(OutRecord(partition, key, value, None, 1))
            else:
                value = b"\n".join(value for _, value in chunk)
                records.append(OutRecord(partition, None, value, PACK_HEADERS, len(chunk)))
    return records


def _chunks(
    group: list[tuple[bytes, bytes]], most: int, limit: int
) -> Iterator[list[tuple[bytes, bytes]]]:
    if len(group) <= most and sum(len(value) + 1 for _, value in group) <= limit:
        yield group
        return
    start, size = 0, 0
    for index, (_, value) in enumerate(group):
        if index > start and (index - start >= most or size + len(value) + 1 > limit):
            yield group[start:index]
            start, size = index, 0
        size += len(value) + 1
    yield group[start:]


def join_rows(rows: Sequence[bytes], limit: int = PACK_BYTES) -> list[OutRecord]:
    """Dead-letter rows as records of newline-separated rows, each at most ``limit``
    bytes (or one row)."""
    records: list[OutRecord] = []
    start, size = 0, 0
    for index, row in enumerate(rows):
        if index > start and size + len(row) + 1 > limit:
            records.append(
                OutRecord(None, None, b"\n".join(rows[start:index]), None, index - start)
            )
            start, size = index, 0
        size += len(row) + 1
    if start < len(rows):
        records.append(OutRecord(None, None, b"\n".join(rows[start:]), None, len(rows) - start))
    return records
