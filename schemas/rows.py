"""One row type per ClickHouse table. Field order is column order.

Rows are built by the processors from already-validated data, millions at a
time, so they are slotted dataclasses (a pydantic model costs ~15x more to
build); :data:`ROW_ADAPTERS` gives each its pydantic (de)serializer for the
internal Kafka topics. The SQL column types live in ``sinks/migrations``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import ClassVar, TypeVar, cast

from pydantic import TypeAdapter

from schemas.dead_letter import DeadLetter
from schemas.enums import Channel, ExitKind
from schemas.rules import StageName

__all__ = [
    "ROW_ADAPTERS",
    "ROW_TYPES",
    "AdSpendRow",
    "CrmClientRow",
    "DeadLetterRow",
    "DropoffRow",
    "ExitTuple",
    "IdentityLinkRow",
    "JourneyStateRow",
    "JsonRow",
    "JsonScalar",
    "Row",
    "StageTransitionRow",
    "TouchpointRow",
    "TriggerRow",
    "row_adapter",
]


JsonScalar = str | int | float | bool | None
"""One JSON scalar (a trigger payload's values)."""
JsonRow = dict[str, object]
"""One row as the processors emit it: column → a JSON-ready value, encoded straight to the
internal topic (or the embedded sink) and read back through :data:`ROW_ADAPTERS`."""


@dataclass(frozen=True, slots=True)
class Row:
    table: ClassVar[str]

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.columns())


_R = TypeVar("_R", bound=Row)


@dataclass(frozen=True, slots=True)
class TouchpointRow(Row):
    table: ClassVar[str] = "touchpoints"

    event_id: str
    buyer_id: str
    anonymous_id: str | None
    account_id: str | None
    channel: Channel
    event_type: str
    occurred_at: datetime
    received_at: datetime | None
    campaign: str | None
    promo: str | None
    revenue: Decimal | None
    currency: str | None
    properties: str
    persona: str | None
    stage: StageName | None
    exit_kind: ExitKind | None
    is_purchase: bool
    rule_id: str | None
    source: str
    source_position: str
    schema_version: int


@dataclass(frozen=True, slots=True)
class StageTransitionRow(Row):
    """The buyer's furthest stage rose to ``to_stage`` (from ``from_stage``, if any).

    ``is_deleted`` retracts an earlier row for the same ``to_stage``: a late
    event revealed the buyer skipped past it (``ReplacingMergeTree`` drops it
    under ``FINAL``).
    """

    table: ClassVar[str] = "stage_transitions"

    buyer_id: str
    to_stage: StageName
    from_stage: StageName | None
    transitioned_at: datetime
    event_id: str
    channel: Channel
    event_type: str
    campaign: str | None
    persona: str | None
    version: int
    is_deleted: int = 0


ExitTuple = tuple[str, str, str, datetime]
"""(exit kind, furthest stage at the exit or '', channel, occurred_at)"""


@dataclass(frozen=True, slots=True)
class JourneyStateRow(Row):
    table: ClassVar[str] = "journey_state"

    buyer_id: str
    persona: str | None
    tier: str | None
    account_id: str | None
    anonymous_id: str | None
    furthest_stage: StageName | None
    current_stage: StageName | None
    stage_entered_at: dict[str, datetime]
    touches_by_stage: dict[str, int]
    touches_by_channel: dict[str, int]
    preferred_channel: str | None
    first_touch_at: datetime | None
    first_touch_channel: str | None
    first_touch_campaign: str | None
    last_touch_at: datetime | None
    last_touch_channel: str | None
    last_touch_campaign: str | None
    exits: list[ExitTuple]
    purchases: int
    revenue: Decimal
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    dropoff_stage: StageName | None
    dropoff_at: datetime | None
    events: int
    unclassified: int
    version: int
    is_deleted: int = 0
    """1: this id's journey was merged into another person's (see ``identity_links``)."""


@dataclass(frozen=True, slots=True)
class DropoffRow(Row):
    """No progress past ``stage`` before ``deadline``; ``recovered_at`` if it came later."""

    table: ClassVar[str] = "dropoffs"

    buyer_id: str
    stage: StageName
    entered_at: datetime
    deadline: datetime
    last_touch_at: datetime | None
    last_touch_channel: str | None
    last_touch_event_type: str | None
    last_touch_campaign: str | None
    recovered_at: datetime | None
    persona: str | None
    version: int
    is_deleted: int = 0
    """1: retracted — the buyer was merged into another person, or the merged journey
    shows no drop-off here."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow(Row):
    table: ClassVar[str] = "dead_letters"

    dead_letter_id: str
    reason: str
    detail: str
    raw: str
    raw_bytes: int
    raw_sha256: str
    raw_truncated: bool
    source: str
    position: str
    recorded_at: datetime

    @classmethod
    def from_dead_letter(cls, letter: DeadLetter) -> DeadLetterRow:
        return cls(
            dead_letter_id=letter.dead_letter_id,
            reason=letter.reason.value,
            detail=letter.detail,
            raw=letter.raw,
            raw_bytes=letter.raw_bytes,
            raw_sha256=letter.raw_sha256,
            raw_truncated=letter.raw_truncated,
            source=letter.source,
            position=letter.position,
            recorded_at=letter.recorded_at,
        )


@dataclass(frozen=True, slots=True)
class AdSpendRow(Row):
    """One day of one campaign's spend on one ad platform (from an export)."""

    table: ClassVar[str] = "ad_spend"

    day: date
    platform: str
    campaign: str
    impressions: int
    clicks: int
    cost: Decimal
    currency: str
    source: str
    position: str


@dataclass(frozen=True, slots=True)
class CrmClientRow(Row):
    """One client from a CRM export, keyed by buyer id or account id."""

    table: ClassVar[str] = "crm_clients"

    client_key: str
    client_name: str
    client_type: str
    region: str
    persona: str
    key_decision_maker: str
    payment_terms: str
    contract_on_file: bool
    sla: str
    source: str


@dataclass(frozen=True, slots=True)
class TriggerRow(Row):
    """A real-time trigger fired (or, ``is_retraction = 1``, was taken back).

    One row per (trigger, buyer, occurrence); ``trigger_event_id`` is a hash of the
    three, so a replay gives the same id. ``fired_at`` is the event time of what caused
    it (a drop-off's deadline). A retraction carries the same id and a higher
    ``version``: under ``FINAL`` the latest word on each firing wins.
    """

    table: ClassVar[str] = "journey_triggers"

    trigger_event_id: str
    trigger_id: str
    kind: str
    buyer_id: str
    fired_at: datetime
    stage: StageName | None
    event_id: str | None
    """The event that caused it (a drop-off: the last touch before its deadline)."""
    channel: str | None
    campaign: str | None
    persona: str | None
    payload: str
    """JSON object: what else a receiver needs (see docs/journeys.md, *Triggers*)."""
    is_retraction: int
    version: int


@dataclass(frozen=True, slots=True)
class IdentityLinkRow(Row):
    """``alias_id``'s journey is part of ``person_id``'s (identity stitching).

    Always one hop, and rewritten for every id of the person whenever it grows: the latest
    row of each alias names the person it belongs to now, and ``version`` is the number of
    ids the person had then (a person only grows, so a later row always wins). A row with
    ``is_deleted = 1`` takes a link back (an id that became the person id itself).
    """

    table: ClassVar[str] = "identity_links"

    alias_id: str
    person_id: str
    identified: int
    """1: the alias was the buyer id of a linking event (a user id, not only a cookie)."""
    version: int
    is_deleted: int = 0


ROW_TYPES: tuple[type[Row], ...] = (
    TouchpointRow,
    StageTransitionRow,
    JourneyStateRow,
    DropoffRow,
    DeadLetterRow,
    AdSpendRow,
    CrmClientRow,
    TriggerRow,
    IdentityLinkRow,
)
ROW_ADAPTERS: dict[str, TypeAdapter[Row]] = {
    row_type.table: TypeAdapter(row_type) for row_type in ROW_TYPES
}
"""Per table: validates and serializes that table's rows (JSON on internal topics)."""


def row_adapter(row_type: type[_R]) -> TypeAdapter[_R]:
    """The entry of :data:`ROW_ADAPTERS` for ``row_type``, typed as that row type's."""
    return cast("TypeAdapter[_R]", ROW_ADAPTERS[row_type.table])
