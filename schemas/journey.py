"""Per-buyer journey state: what the fold keeps, in a form that serializes to JSON.

The state is a function of the *set* of a buyer's events, not of their arrival
order: every field is a min, max, sum or count keyed by ``(occurred_at, event_id)``,
so a late event gives the same final state as if it had arrived in order. The
fold itself lives in :mod:`processors.journey`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from pydantic import TypeAdapter

from schemas.enums import Channel, ExitKind, Stage

__all__ = [
    "JOURNEY_STATE_ADAPTER",
    "PARTITION_POSITION_ADAPTER",
    "DropoffRecord",
    "ExitRecord",
    "JourneyState",
    "Latest",
    "PartitionPosition",
    "TouchRef",
]


@dataclass(frozen=True, slots=True)
class TouchRef:
    """A pointer to one touchpoint, ordered by ``(at, event_id)``."""

    at: datetime
    event_id: str
    channel: Channel
    event_type: str
    campaign: str | None = None
    stage: Stage | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(frozen=True, slots=True)
class Latest:
    """The most recent value of an attribute, by event time."""

    at: datetime
    event_id: str
    value: str


@dataclass(frozen=True, slots=True)
class ExitRecord:
    kind: ExitKind
    touch: TouchRef


@dataclass(frozen=True, slots=True)
class DropoffRecord:
    """The buyer made no progress past ``stage`` before ``deadline`` (event time)."""

    stage: Stage
    entered_at: datetime
    deadline: datetime
    last_touch: TouchRef | None
    recovered_at: datetime | None = None


@dataclass(slots=True)
class JourneyState:
    """Everything the fold remembers about one buyer (mutable: the fold updates it in place)."""

    buyer_id: str
    partition: int = 0
    """The input partition this buyer's events arrive on (0 in the local runner)."""
    version: int = 0
    events: int = 0
    unclassified: int = 0
    stage_hits: dict[Stage, TouchRef] = field(default_factory=dict)
    """First event (by event time) classified into each stage."""
    current: TouchRef | None = None
    """Latest event (by event time) that carries a stage."""
    touches_by_stage: dict[Stage, int] = field(default_factory=dict)
    touches_by_channel: dict[Channel, int] = field(default_factory=dict)
    first_touch: TouchRef | None = None
    last_touch: TouchRef | None = None
    exits: list[ExitRecord] = field(default_factory=list)
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    persona: Latest | None = None
    tier: Latest | None = None
    account_id: Latest | None = None
    anonymous_id: Latest | None = None
    recent: list[TouchRef] = field(default_factory=list)
    """Touches still inside the dedup window or an unjudged drop-off, sorted by key."""
    pruned_last: TouchRef | None = None
    """The latest touch that has left ``recent``."""
    judged: list[Stage] = field(default_factory=list)
    """Stages whose drop-off deadline the watermark has passed."""
    dropoffs: dict[Stage, DropoffRecord] = field(default_factory=dict)


JOURNEY_STATE_ADAPTER: TypeAdapter[JourneyState] = TypeAdapter(JourneyState)
"""Validates and serializes journey state (e.g. as JSON in a Faust table or changelog)."""


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    """How far a worker's state of one input partition has got.

    Written with the partition's journey states, in the same transaction, so the
    two always agree: ``offset`` is the last input record whose effect the states
    include, ``newest_event_at`` the partition's event time at that record (what
    its watermark is computed from). A record at or before ``offset`` that is
    delivered again (after a rebalance or a restart) is skipped, not re-applied.
    """

    partition: int
    offset: int
    newest_event_at: datetime | None = None


PARTITION_POSITION_ADAPTER: TypeAdapter[PartitionPosition] = TypeAdapter(PartitionPosition)
