"""The sink's batches, pure: what goes into which batch, intents, and a batch's rows.

No Kafka client, no ClickHouse, no clock: :class:`~sinks.consumer.KafkaClickHouseSink`
feeds these with what it polls and commits what they decide, and the unit tests run them
on plain data.

Batching (:class:`BatchPlanner`)
    Messages are buffered per topic-partition (a message may carry many rows,
    newline-separated: the workers pack them). All buffered partitions are due when
    ``max_rows`` rows are buffered or the oldest has waited ``max_seconds``; each
    partition's messages become batches (:class:`PartitionBatch`) of at most ``max_rows``
    rows (or one message, if bigger), whose token is ``"{topic}:{partition}:{first}-{last}"``
    (their offset range), so ClickHouse's ``insert_deduplication_token`` drops a replayed
    batch. :func:`rounds` orders them so each round holds one batch per partition.

Intents (:class:`Intent`)
    The token only protects a replay that reproduces the batch exactly, so the sink
    commits a batch's boundaries (``{"sink":1,"start":first,"end":last+1}``, at its first
    offset) before inserting it. A partition opened with such an intent gives exactly
    ``[start, end)`` as its first batch (``replay``), whatever ``max_rows`` says; later
    messages wait for the next batch.

Decoding (:func:`decode_batch`)
    A batch's rows are checked, not rebuilt: the messages' own bytes go to ClickHouse.
    A row that does not validate as its table's row becomes a ``dead_letters`` row
    (reason ``invalid_output_row``, position ``"{partition}:{offset}"``, recorded at the
    message's Kafka timestamp so a replay builds the identical row) in the same batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec

from schemas.dead_letter import DeadLetter
from schemas.enums import DeadLetterReason
from schemas.errors import ConfigError
from schemas.rows import ROW_ADAPTERS, ROW_TYPES, DeadLetterRow
from sinks.base import RowBatch

__all__ = [
    "BatchPlanner",
    "Intent",
    "Message",
    "Partition",
    "PartitionBatch",
    "decode_batch",
    "rounds",
]

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
"""(topic, partition); kafka-python's ``TopicPartition`` is a namedtuple equal to it."""


@dataclass(frozen=True, slots=True)
class Message:
    """One record of an output topic, as the sink needs it (no kafka-python type)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int = -1
    rows: int = 1
    """Rows it carries (a worker packs many rows into one record, newline-separated)."""

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Intent:
    """A batch ``[start, end)`` of one partition that may have been inserted, not yet committed."""

    start: int
    end: int

    def encode(self) -> str:
        return json.dumps({"sink": 1, "start": self.start, "end": self.end}, separators=(",", ":"))

    @classmethod
    def decode(cls, offset: int | None, metadata: str | None) -> Intent | None:
        """The intent stored with a committed offset, or None (no intent, or not ours)."""
        if offset is None or offset < 0 or not metadata:
            return None
        try:
            data = json.loads(metadata)
        except ValueError:
            logger.warning("ignoring commit metadata that is not a sink intent: %r", metadata)
            return None
        if (
            not isinstance(data, dict)
            or data.get("sink") != 1
            or not isinstance(data.get("start"), int)
            or not isinstance(data.get("end"), int)
        ):
            logger.warning("ignoring commit metadata that is not a sink intent: %r", metadata)
            return None
        start, end = data["start"], data["end"]
        if start != offset or end <= start:
            logger.warning(
                "ignoring stale sink intent %r: the committed offset is %d", metadata, offset
            )
            return None
        return cls(start, end)


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    """Consecutive messages of one partition, written as one :class:`RowBatch`.

    ``replay`` marks the batch that re-does a recovered :class:`Intent`: its range is the
    intent's (even if some of its messages are gone from the log) and its intent is
    already committed.
    """

    topic: str
    partition: int
    first: int
    last: int
    messages: tuple[Message, ...]
    replay: bool = False

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)

    @property
    def token(self) -> str:
        return f"{self.topic}:{self.partition}:{self.first}-{self.last}"

    @property
    def end(self) -> int:
        """The offset to commit once the batch is written."""
        return self.last + 1

    @property
    def intent(self) -> Intent:
        return Intent(self.first, self.end)


@dataclass
class _PartitionBuffer:
    intent: Intent | None = None
    intent_complete: bool = False
    messages: list[Message] = field(default_factory=list)
    rows: int = 0
    """Rows in ``messages``."""
    since: float | None = None
    next_offset: int = -1
    """One past the last offset added: a message below it is a re-delivery and is ignored."""

    @property
    def held(self) -> bool:
        """Waiting for the rest of a recovered intent's range."""
        return self.intent is not None and not self.intent_complete

    @property
    def flushable(self) -> bool:
        if self.held:
            return False
        return bool(self.messages) or self.intent is not None


class BatchPlanner:
    """Decides which messages go into which batch; pure (no Kafka, no ClickHouse, no clock).

    Partitions are opened (with the intent their committed offset carries, if any) before
    their messages are added, and closed when they are no longer owned.
    """

    def __init__(self, max_rows: int, max_seconds: float) -> None:
        if max_rows < 1:
            raise ConfigError(f"max_rows must be at least 1, got {max_rows}")
        if max_seconds <= 0:
            raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._parts: dict[Partition, _PartitionBuffer] = {}

    # -- ownership ---------------------------------------------------------------------

    def open(self, tp: Partition, intent: Intent | None = None) -> None:
        self._parts[tp] = _PartitionBuffer(intent=intent)

    def is_open(self, tp: Partition) -> bool:
        return tp in self._parts

    def partitions(self) -> list[Partition]:
        return list(self._parts)

    def close(self, tps: Iterable[Partition]) -> int:
        """Forget these partitions; returns how many buffered messages were dropped."""
        dropped = 0
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                dropped += len(part.messages)
        return dropped

    # -- input -------------------------------------------------------------------------

    def add(self, message: Message, now: float) -> bool:
        """Buffer a message; False if it was ignored (a re-delivery below what was seen)."""
        part = self._parts.get(message.tp)
        if part is None:
            raise KeyError(f"partition {message.tp} is not open")
        if message.offset < part.next_offset:
            return False
        part.next_offset = message.offset + 1
        if part.intent is not None and message.offset >= part.intent.end - 1:
            part.intent_complete = True
        if not part.messages:
            part.since = now
        part.messages.append(message)
        part.rows += message.rows
        return True

    def advance(self, tp: Partition, position: int) -> None:
        """The consumer's position: a recovered intent is complete once it is reached."""
        part = self._parts.get(tp)
        if part is not None and part.intent is not None and position >= part.intent.end:
            part.intent_complete = True

    def awaiting_intent(self) -> list[Partition]:
        """Partitions still reading the range of a recovered intent."""
        return [tp for tp, part in self._parts.items() if part.held]

    def is_idle(self, tp: Partition) -> bool:
        """Nothing buffered and no intent pending: the position may be committed as is."""
        part = self._parts.get(tp)
        return part is not None and not part.messages and part.intent is None

    # -- decisions ---------------------------------------------------------------------

    def buffered(self, exclude: Collection[Partition] = ()) -> int:
        """Rows that the next :meth:`take` would write."""
        return sum(
            part.rows for tp, part in self._parts.items() if part.flushable and tp not in exclude
        )

    def full(self, exclude: Collection[Partition] = ()) -> bool:
        return self.buffered(exclude) >= self.max_rows

    def due(self, now: float, exclude: Collection[Partition] = ()) -> bool:
        """Size or time bound reached, or a recovered intent is ready to be replayed."""
        if self.full(exclude):
            return True
        wait = self.seconds_until_due(now, exclude)
        return wait is not None and wait <= 0

    def seconds_until_due(self, now: float, exclude: Collection[Partition] = ()) -> float | None:
        """How long until the time bound is reached (None: nothing is waiting)."""
        deadlines: list[float] = []
        for tp, part in self._parts.items():
            if not part.flushable or tp in exclude:
                continue
            if part.intent is not None:
                return 0.0  # a complete replay: write it now
            if part.since is not None:
                deadlines.append(part.since + self.max_seconds - now)
        return min(deadlines) if deadlines else None

    def take(self, exclude: Collection[Partition] = ()) -> list[PartitionBatch]:
        """Every flushable partition's batches, in offset order per partition.

        A recovered intent gives its exact range as the partition's first batch; the rest
        is cut into batches of at most ``max_rows`` rows (or one message, if bigger).
        """
        batches: list[PartitionBatch] = []
        for tp, part in self._parts.items():
            if not part.flushable or tp in exclude:
                continue
            messages = part.messages
            if part.intent is not None:
                end = part.intent.end
                inside = tuple(m for m in messages if m.offset < end)
                messages = [m for m in messages if m.offset >= end]
                batches.append(
                    PartitionBatch(tp[0], tp[1], part.intent.start, end - 1, inside, replay=True)
                )
                part.intent = None
                part.intent_complete = False
            chunk: list[Message] = []
            rows = 0
            for message in messages:
                if chunk and rows + message.rows > self.max_rows:
                    batches.append(_batch(tp, chunk))
                    chunk, rows = [], 0
                chunk.append(message)
                rows += message.rows
            if chunk:
                batches.append(_batch(tp, chunk))
            part.messages = []
            part.rows = 0
            part.since = None
        return batches


def _batch(tp: Partition, messages: list[Message]) -> PartitionBatch:
    return PartitionBatch(tp[0], tp[1], messages[0].offset, messages[-1].offset, tuple(messages))


def rounds(batches: Sequence[PartitionBatch]) -> list[list[PartitionBatch]]:
    """Groups batches so that each group holds at most one batch per partition, in order."""
    result: list[list[PartitionBatch]] = []
    seen: dict[Partition, int] = {}
    for batch in batches:
        index = seen.get(batch.tp, 0)
        seen[batch.tp] = index + 1
        if index == len(result):
            result.append([])
        result[index].append(batch)
    return result


def _recorded_at(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, tz=UTC)


_CHECKERS: Final = {
    table: msgspec.json.Decoder(adapter_type, strict=False)
    for table, adapter_type in ((row_type.table, row_type) for row_type in ROW_TYPES)
}
"""Per table: a C-speed check that JSON rows are that table's rows (types, required
fields, enum values). It reads both the processors' rows (times as float seconds) and
pydantic's (ISO-8601 times), exactly as :data:`schemas.rows.ROW_ADAPTERS` does."""
_DEAD_LETTER_ADAPTER: Final = ROW_ADAPTERS[DeadLetterRow.table]


def _dead_letter(message: Message, raw: bytes, position: str, detail: str) -> bytes:
    row = DeadLetterRow.from_dead_letter(
        DeadLetter.build(
            reason=DeadLetterReason.INVALID_OUTPUT_ROW,
            detail=detail,
            raw=raw,
            source=message.topic,
            position=position,
            recorded_at=_recorded_at(message.timestamp_ms),
        )
    )
    return bytes(_DEAD_LETTER_ADAPTER.dump_json(row))


def decode_batch(batch: PartitionBatch, table: str) -> tuple[RowBatch, int]:
    """The encoded rows of a batch (invalid ones as dead letters) and how many were dead letters.

    A message is one or more rows, newline-separated. Rows are checked, not rebuilt: the
    batch carries the messages' own bytes, so ClickHouse parses each row once. A row that
    is not a valid row of ``table`` becomes a dead letter at ``partition:offset`` (plus
    ``:line`` inside a multi-row message), recorded at the message's Kafka timestamp so a
    replay builds the identical batch.
    """
    checker = _CHECKERS[table]
    rows: list[bytes] = []
    letters: list[bytes] = []
    for message in batch.messages:
        value = message.value
        position = f"{message.partition}:{message.offset}"
        if value is None:
            letters.append(
                _dead_letter(message, b"", position, "the message has no value (a tombstone)")
            )
            continue
        try:
            if checker.decode_lines(value):
                if b"\n" in value:
                    rows.extend(line for line in value.split(b"\n") if line.strip())
                else:
                    rows.append(value)
                continue
            raise msgspec.ValidationError("the message has no rows")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            if b"\n" not in value.strip():
                letters.append(
                    _dead_letter(message, value, position, f"not a valid {table} row: {exc}")
                )
                continue
        for index, line in enumerate(value.split(b"\n")):
            if not line.strip():
                continue
            try:
                checker.decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                letters.append(
                    _dead_letter(
                        message, line, f"{position}:{index}", f"not a valid {table} row: {exc}"
                    )
                )
            else:
                rows.append(line)
    tables: dict[str, list[bytes]] = {}
    if rows:
        tables[table] = rows
    if letters:
        tables.setdefault(DeadLetterRow.table, []).extend(letters)
    return RowBatch(batch.token, tables), len(letters)
