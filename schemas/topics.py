"""Kafka topics of the distributed path and what each carries.

``touchpoints.raw`` carries records as sources sent them (validated by the
workers, so a bad one becomes a dead letter, never a crash): one Touchpoint JSON
object keyed by buyer id, or — from the collector and ``touchpoint produce`` — a
*pack* (header :data:`PACK_HEADER`): many touchpoints as newline-delimited JSON in one
record, all of buyers whose key hashes (Kafka's murmur2, as for keyed records) to the
record's partition. Packs are what makes the path batch-first: the per-record costs of
Kafka clients and of Faust are paid once per pack, not once per event.

Every output topic carries one row type as JSON objects (the ``JSONEachRow`` shape
of its ClickHouse table, :data:`schemas.rows.ROW_ADAPTERS` reads them), one or more
per record, newline-separated, and has as many partitions as ``touchpoints.raw``: a
worker writes each output to the *same partition number* it read the input from, so
under ``exactly_once`` the input offset and all its outputs commit in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from schemas.rows import (
    DeadLetterRow,
    DropoffRow,
    IdentityLinkRow,
    JourneyStateRow,
    StageTransitionRow,
    TouchpointRow,
    TriggerRow,
)

__all__ = [
    "COMPACTED_TOPICS",
    "CONTROL_HEADER",
    "CONTROL_IDENTITY",
    "CONTROL_WATERMARK",
    "OUTPUT_TOPICS",
    "PACK_HEADER",
    "PACK_NDJSON",
    "RAW_TOPIC",
    "STORE_POSITION_KEY",
    "STORE_TOPIC",
    "TABLE_BY_TOPIC",
    "TRIGGERS_DLQ_TOPIC",
    "TRIGGERS_TOPIC",
    "Topics",
]

RAW_TOPIC: Final = "touchpoints.raw"

TRIGGERS_TOPIC: Final = "journey.triggers"
"""Fired triggers (one JSON row each, ``trigger_id`` and ``trigger_event_id`` among them)."""
TRIGGERS_DLQ_TOPIC: Final = "journey.triggers.dlq"
"""Trigger deliveries that failed after their last try (``touchpoint webhooks``)."""
TABLE_BY_TOPIC: Final[dict[str, str]] = {
    "touchpoints.classified": TouchpointRow.table,
    "journey.transitions": StageTransitionRow.table,
    "journey.state": JourneyStateRow.table,
    "journey.dropoffs": DropoffRow.table,
    "touchpoints.dlq": DeadLetterRow.table,
    TRIGGERS_TOPIC: TriggerRow.table,
    "journey.identities": IdentityLinkRow.table,
}
"""Output topic → the ClickHouse table (and row type) its messages are rows of."""

OUTPUT_TOPICS: Final[tuple[str, ...]] = tuple(TABLE_BY_TOPIC)
STORE_TOPIC: Final = "journey.store"
"""The workers' own state store (compacted): key buyer id, value the full
:class:`~schemas.journey.JourneyState` (:func:`~schemas.journey.encode_state`), plus
one :data:`STORE_POSITION_KEY` record per partition. Read back by a worker when it is
assigned a partition; not written to ClickHouse."""
STORE_POSITION_KEY: Final = b"\xff\x00position"
"""Key of a partition's :class:`~schemas.journey.PartitionPosition` in the store topic.
Not valid UTF-8, so it can never be the key of a buyer (buyer ids are text)."""
COMPACTED_TOPICS: Final[frozenset[str]] = frozenset({STORE_TOPIC})
"""``journey.state`` is not compacted: its records are packs of many buyers' rows, and
ClickHouse's ``journey_state`` (a ReplacingMergeTree) is the latest-state view."""

PACK_HEADER: Final = "touchpoint-pack"
"""A raw record with this header holds several touchpoints (see :data:`PACK_NDJSON`)."""
PACK_NDJSON: Final = b"ndjson"
"""Pack format: one Touchpoint JSON object per line (``\n``-separated)."""

CONTROL_HEADER: Final = "touchpoint-control"
"""A record on ``touchpoints.raw`` with this header is a control message, not a touchpoint."""
CONTROL_WATERMARK: Final = b"watermark"
"""Control value: the record's value is an ISO-8601 event time; the partition's source
promises no event older than it minus the allowed lateness will follow (a source
watermark, e.g. sent by ``touchpoint produce`` at the end of its input)."""
CONTROL_IDENTITY: Final = b"identity"
"""Control value: the record's value is a :class:`~schemas.journey.IdentityMessage`, sent by
one journey worker to another (identity stitching across partitions)."""


@dataclass(frozen=True)
class Topics:
    """The pipeline's topic names under an optional prefix (``TOUCHPOINT_KAFKA_TOPIC_PREFIX``),
    so several pipelines (environments, tests) can share one cluster."""

    prefix: str = ""

    @property
    def raw(self) -> str:
        return self.prefix + RAW_TOPIC

    @property
    def table_by_topic(self) -> dict[str, str]:
        return {self.prefix + topic: table for topic, table in TABLE_BY_TOPIC.items()}

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.table_by_topic)

    @property
    def store(self) -> str:
        return self.prefix + STORE_TOPIC

    @property
    def triggers(self) -> str:
        return self.prefix + TRIGGERS_TOPIC

    @property
    def triggers_dlq(self) -> str:
        return self.prefix + TRIGGERS_DLQ_TOPIC

    @property
    def compacted(self) -> frozenset[str]:
        return frozenset(self.prefix + topic for topic in COMPACTED_TOPICS)

    def for_table(self, table: str) -> str:
        return next(topic for topic, name in self.table_by_topic.items() if name == table)
