"""Per-buyer journey state: what the fold keeps, in a compact form that serializes fast.

The state is a function of the *set* of a buyer's events, not of their arrival
order: every field is a min, max, sum or count keyed by ``(occurred_at, event_id)``,
so a late event gives the same final state as if it had arrived in order. The
fold itself lives in :mod:`processors.journey`.

Why msgspec structs and not pydantic here
    A worker writes every changed buyer's state to ``journey.store`` once per batch
    and the embedded runner keeps every idle buyer's state encoded, so the state is
    encoded and decoded millions of times per run. ``msgspec`` structs build and
    encode in C (``array_like``: positional MessagePack arrays, no field names),
    which keeps a buyer at a few hundred bytes and the codec at a few microseconds.
    Times are integers: microseconds since the Unix epoch, UTC (see :data:`US`).
    Stages are ``Stage`` values (plain strings) and channels ``Channel`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec
from pydantic import TypeAdapter

from schemas.enums import DeadLetterReason
from schemas.errors import SchemaValidationError

__all__ = [
    "EPOCH",
    "PARTITION_POSITION_ADAPTER",
    "US",
    "DropoffRecord",
    "ExitRecord",
    "FiredTrigger",
    "IdentityMessage",
    "JourneyState",
    "Latest",
    "PartitionPosition",
    "TouchRef",
    "decode_identity_message",
    "decode_state",
    "encode_identity_message",
    "encode_state",
    "from_micros",
    "to_micros",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
US: Final = timedelta(microseconds=1)
STATE_FORMAT: Final = 1
"""Version of the encoded state (the last element of every encoded state)."""


def to_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float)."""
    return (value - EPOCH) // US


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class TouchRef(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A pointer to one touchpoint, ordered by ``(at, event_id)``."""

    at: int
    event_id: str
    channel: str
    event_type: str
    campaign: str | None = None
    stage: str | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.at, self.event_id)


class Latest(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The most recent value of an attribute, by event time."""

    at: int
    event_id: str
    value: str


class ExitRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    kind: str
    touch: TouchRef


class DropoffRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The buyer made no progress past ``stage`` before ``deadline`` (event time)."""

    stage: str
    entered_at: int
    deadline: int
    last_touch: TouchRef | None
    recovered_at: int | None = None


class FiredTrigger(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One occurrence a trigger fired on (kept so it never fires twice, and for cooldowns)."""

    trigger: str
    """The trigger's id."""
    key: str
    """What makes the occurrence one: the stage of a move or a drop-off (each happens once
    per buyer), the event id of an exit or a high-intent crossing."""
    at: int
    """When it fired (event time, µs): what the trigger's cooldown counts from."""
    trigger_event_id: str
    retracted: bool = False
    """A drop-off that a late event disproved (a retraction row was sent)."""


class JourneyState(msgspec.Struct, array_like=True, gc=False):
    """Everything the fold remembers about one buyer (mutable: the fold updates it in place).

    ``first_touch`` and ``current`` are kept only once the touches that define them
    left ``recent`` (pruning): until then they are read off ``recent``, so a buyer's
    state holds each touch once. Use :func:`processors.journey.first_touch`,
    ``last_touch`` and ``current`` to read them.
    """

    buyer_id: str
    partition: int = 0
    """The input partition this buyer's events arrive on (0 in the local runner)."""
    version: int = 0
    events: int = 0
    unclassified: int = 0
    stage_hits: dict[str, TouchRef] = msgspec.field(default_factory=dict)
    """First event (by event time) classified into each stage."""
    touches_by_stage: dict[str, int] = msgspec.field(default_factory=dict)
    touches_by_channel: dict[str, int] = msgspec.field(default_factory=dict)
    exits: list[ExitRecord] = msgspec.field(default_factory=list)
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    first_purchase_at: int | None = None
    last_purchase_at: int | None = None
    persona: Latest | None = None
    tier: Latest | None = None
    account_id: Latest | None = None
    anonymous_id: Latest | None = None
    recent: list[TouchRef] = msgspec.field(default_factory=list)
    """Touches still inside the dedup window or an unjudged drop-off, sorted by key."""
    pruned_first: TouchRef | None = None
    """The first touch of all, once it has left ``recent``."""
    pruned_last: TouchRef | None = None
    """The latest touch that has left ``recent``."""
    pruned_current: TouchRef | None = None
    """The latest staged touch that has left ``recent``."""
    judged: list[str] = msgspec.field(default_factory=list)
    """Stages whose drop-off deadline the watermark has passed."""
    dropoffs: dict[str, DropoffRecord] = msgspec.field(default_factory=dict)
    format: int = STATE_FORMAT
    """Version of this encoding (a reader refuses others)."""
    # Fields added after format 1 shipped go below, with defaults: an encoded state is a
    # positional array, so a state stored before them decodes with their defaults.
    fired: list[FiredTrigger] = msgspec.field(default_factory=list)
    """Trigger occurrences that fired for this buyer (see :mod:`processors.triggers`)."""
    aliases: list[str] = msgspec.field(default_factory=list)
    """Other ids whose journeys were merged into this one (identity stitching), sorted."""
    merged_into: str | None = None
    """Set on an id whose journey was merged into another person's: that person's id.
    The state keeps nothing else of use; the id's later events fold into that person."""
    identified: list[str] = msgspec.field(default_factory=list)
    """The person's ids (own or aliases) that were the buyer id of a linking event, sorted
    (they name the person: :func:`processors.identity.person_id`)."""


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(JourneyState)

encode_state = _ENCODER.encode
"""A journey state as compact MessagePack bytes (the ``journey.store`` value)."""


def decode_state(data: bytes) -> JourneyState:
    """The state :func:`encode_state` wrote; SchemaValidationError if it is not one."""
    try:
        state = _DECODER.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise SchemaValidationError(
            DeadLetterReason.INVALID_PAYLOAD,
            f"not an encoded journey state ({exc}); a journey.store written by a version "
            "before 0.2 holds JSON states: start the workers on a new app id and topic prefix",
        ) from None
    if state.format != STATE_FORMAT:
        raise SchemaValidationError(
            DeadLetterReason.INVALID_PAYLOAD,
            f"journey state format {state.format}, this version reads {STATE_FORMAT}",
        )
    return state


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


class IdentityMessage(msgspec.Struct, array_like=True, frozen=True):
    """A control record the Kafka workers send each other to stitch identities.

    Sent on ``touchpoints.raw`` to the partition of ``target`` (header
    :data:`~schemas.topics.CONTROL_HEADER` = :data:`~schemas.topics.CONTROL_IDENTITY`), in
    the transaction of the input that caused it; :mod:`processors.stitching` explains the
    protocol. ``op`` is one of:

    - ``"union"``: the person of ``target`` and the person of ``other`` are one
      (``other_named``: ``other`` is the buyer id of a linking event; ``size``: its ids);
    - ``"absorb"``: ``state`` is a person's whole journey, shipped to join ``target``'s (or,
      with ``adopt``, to live under ``target``, one of its own ids, from now on);
    - ``"event"``: ``event`` (a Touchpoint JSON object) belongs to ``target``'s person; it
      arrived at ``source`` ``position`` under an id merged into that person.
    """

    op: str
    target: str
    other: str = ""
    other_named: bool = False
    size: int = 1
    state: bytes = b""
    adopt: bool = False
    event: bytes = b""
    source: str = ""
    position: str = ""


_MESSAGE_ENCODER: Final = msgspec.msgpack.Encoder()
_MESSAGE_DECODER: Final = msgspec.msgpack.Decoder(IdentityMessage)

encode_identity_message = _MESSAGE_ENCODER.encode


def decode_identity_message(data: bytes) -> IdentityMessage:
    """The message :func:`encode_identity_message` wrote; SchemaValidationError if not one."""
    try:
        message = _MESSAGE_DECODER.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise SchemaValidationError(
            DeadLetterReason.INVALID_PAYLOAD, f"not an identity control message ({exc})"
        ) from None
    if message.op not in ("union", "absorb", "event") or not message.target:
        raise SchemaValidationError(
            DeadLetterReason.INVALID_FIELD,
            f"identity control message with op {message.op!r} and target {message.target!r}",
        )
    return message
