"""Per-buyer journey state: what the fold keeps, in a form that serializes to JSON.

The state is a function of the *set* of a buyer's events, not of their arrival
order: every field is a min, max, sum or count keyed by ``(occurred_at, event_id)``,
so a late event gives the same final state as if it had arrived in order. The
fold itself lives in :mod:`processors.journey`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from schemas.enums import Channel, ExitKind, Stage

__all__ = ["DropoffRecord", "ExitRecord", "JourneyState", "Latest", "TouchRef"]


class TouchRef(BaseModel):
    """A pointer to one touchpoint, ordered by ``(at, event_id)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    event_id: str
    channel: Channel
    event_type: str
    campaign: str | None = None
    stage: Stage | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


class Latest(BaseModel):
    """The most recent value of an attribute, by event time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    event_id: str
    value: str


class ExitRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ExitKind
    touch: TouchRef


class DropoffRecord(BaseModel):
    """The buyer made no progress past ``stage`` before ``deadline`` (event time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Stage
    entered_at: datetime
    deadline: datetime
    last_touch: TouchRef | None
    recovered_at: datetime | None = None


class JourneyState(BaseModel):
    """Everything the fold remembers about one buyer."""

    model_config = ConfigDict(extra="forbid")

    buyer_id: str
    version: int = 0
    events: int = 0
    unclassified: int = 0
    stage_hits: dict[Stage, TouchRef] = Field(default_factory=dict)
    """First event (by event time) classified into each stage."""
    current: TouchRef | None = None
    """Latest event (by event time) that carries a stage."""
    touches_by_stage: dict[Stage, int] = Field(default_factory=dict)
    touches_by_channel: dict[Channel, int] = Field(default_factory=dict)
    first_touch: TouchRef | None = None
    last_touch: TouchRef | None = None
    exits: list[ExitRecord] = Field(default_factory=list)
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    persona: Latest | None = None
    account_id: Latest | None = None
    anonymous_id: Latest | None = None
    recent: list[TouchRef] = Field(default_factory=list)
    """Touches still inside the dedup window or an unjudged drop-off, sorted by key."""
    pruned_last: TouchRef | None = None
    """The latest touch that has left ``recent``."""
    judged: list[Stage] = Field(default_factory=list)
    """Stages whose drop-off deadline the watermark has passed."""
    dropoffs: dict[Stage, DropoffRecord] = Field(default_factory=dict)
