"""The journey fold: pure functions over :class:`schemas.journey.JourneyState`.

Every field the fold keeps is a min, max, count or sum keyed by
``(occurred_at, event_id)``, so the final state depends on the set of events,
not on the order they arrived in. What *does* depend on time — whether a stall
was a drop-off — is decided only once the watermark has passed the deadline,
when every event before it has arrived (see :func:`judge`).

Times are integer microseconds since the epoch (UTC) and timeouts are integer
microseconds too (:func:`micros_of`). The row builders return the dict of one
ClickHouse row (JSON-ready: times as float seconds, see :func:`seconds`), which
the processor encodes once; :mod:`schemas.rows` reads such JSON back into typed rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal

from processors.classify import Classification
from schemas.enums import Channel
from schemas.events import Event
from schemas.journey import DropoffRecord, ExitRecord, JourneyState, Latest, TouchRef
from schemas.rows import JsonRow
from schemas.rules import DEFAULT_ORDER, StageOrder

__all__ = [
    "Transition",
    "current",
    "deadlines",
    "dropoff_row",
    "first_touch",
    "fold",
    "furthest_stage",
    "is_duplicate",
    "judge",
    "last_touch",
    "last_touch_until",
    "merge",
    "micros_of",
    "moves_of",
    "new_state",
    "preferred_channel",
    "prune",
    "reached_at",
    "stage_at",
    "state_row",
    "touchpoint_row",
    "transition_rows",
    "transitions",
]

Transition = tuple[str | None, str, TouchRef]
"""(from stage, to stage, the event that moved the buyer)"""
_CHANNEL_ORDER = {channel.value: index for index, channel in enumerate(Channel)}


def micros_of(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1)


def _seconds_or_none(micros: int | None) -> float | None:
    """A time as JSON-ready float seconds: exact to the microsecond through any correct
    float parser (ClickHouse keeps milliseconds of it, pydantic every microsecond)."""
    return None if micros is None else micros / 1_000_000


def new_state(buyer_id: str, partition: int = 0) -> JourneyState:
    return JourneyState(buyer_id=buyer_id, partition=partition)


def touch_ref(event: Event, stage: str | None) -> TouchRef:
    return TouchRef(
        event.at, event.event_id, event.channel, event.event_type, event.campaign, stage
    )


# -- derived touches ------------------------------------------------------------------


def first_touch(state: JourneyState) -> TouchRef | None:
    if state.pruned_first is not None:
        return state.pruned_first
    return state.recent[0] if state.recent else None


def last_touch(state: JourneyState) -> TouchRef | None:
    recent, pruned = state.recent, state.pruned_last
    if not recent:
        return pruned
    newest = recent[-1]
    if pruned is not None and (pruned.at, pruned.event_id) > (newest.at, newest.event_id):
        return pruned
    return newest


def current(state: JourneyState) -> TouchRef | None:
    """The latest touch (by event time) that carries a stage."""
    for touch in reversed(state.recent):
        if touch.stage is not None:
            pruned = state.pruned_current
            if pruned is not None and (pruned.at, pruned.event_id) > (touch.at, touch.event_id):
                return pruned
            return touch
    return state.pruned_current


def is_duplicate(state: JourneyState, event_id: str, at: int) -> bool:
    """True if this event id is already folded into ``state`` (within the dedup window).

    Matched on the id alone: a source that stamps events with their receive time
    (Twilio) redelivers the same event with a later time.
    """
    for touch in state.recent:
        if touch.event_id == event_id:
            return True
    return False


def _later(current: Latest | None, touch: TouchRef, value: str | None) -> Latest | None:
    if value is None:
        return current
    if current is None or (current.at, current.event_id) < (touch.at, touch.event_id):
        return Latest(touch.at, touch.event_id, value)
    return current


def fold(
    state: JourneyState,
    event: Event,
    classification: Classification,
    order: StageOrder = DEFAULT_ORDER,
) -> TouchRef:
    """Fold one new (not duplicate) event into ``state``, in place; returns its touch."""
    stage = classification.stage
    at, event_id = event.at, event.event_id
    touch = TouchRef(at, event_id, event.channel, event.event_type, event.campaign, stage)
    key = (at, event_id)
    state.version += 1
    state.events += 1
    if classification.rule_id is None:
        state.unclassified += 1
    recent = state.recent
    if not recent or (recent[-1].at, recent[-1].event_id) < key:
        recent.append(touch)
    else:
        bisect.insort(recent, touch, key=_touch_key)
    first = state.pruned_first
    if first is not None and key < (first.at, first.event_id):
        state.pruned_first = touch

    channels = state.touches_by_channel
    channels[event.channel] = channels.get(event.channel, 0) + 1
    properties = event.properties
    if properties:
        persona = properties.get("persona")
        if type(persona) is str:
            state.persona = _later(state.persona, touch, persona)
        tier = properties.get("tier")
        if type(tier) is str:
            state.tier = _later(state.tier, touch, tier)
    if event.account_id is not None:
        state.account_id = _later(state.account_id, touch, event.account_id)
    if event.anonymous_id is not None:
        state.anonymous_id = _later(state.anonymous_id, touch, event.anonymous_id)

    if stage is not None:
        by_stage = state.touches_by_stage
        by_stage[stage] = by_stage.get(stage, 0) + 1
        hit = state.stage_hits.get(stage)
        if hit is None or key < (hit.at, hit.event_id):
            state.stage_hits[stage] = touch
        if state.dropoffs:
            _mark_recoveries(state, stage, at, order.rank)

    if classification.exit is not None:
        bisect.insort(
            state.exits,
            ExitRecord(classification.exit, touch),
            key=lambda record: (record.touch.at, record.touch.event_id),
        )

    if classification.purchase:
        state.purchases += 1
        if event.revenue is not None:
            state.revenue += event.revenue
        if state.first_purchase_at is None or at < state.first_purchase_at:
            state.first_purchase_at = at
        if state.last_purchase_at is None or at > state.last_purchase_at:
            state.last_purchase_at = at
    return touch


def _touch_key(touch: TouchRef) -> tuple[int, str]:
    return (touch.at, touch.event_id)


def _mark_recoveries(state: JourneyState, stage: str, at: int, ranks: Mapping[str, int]) -> None:
    rank = ranks[stage]
    for dropped_stage, record in state.dropoffs.items():
        if rank > ranks[dropped_stage] and (
            record.recovered_at is None or at < record.recovered_at
        ):
            state.dropoffs[dropped_stage] = DropoffRecord(
                record.stage, record.entered_at, record.deadline, record.last_touch, at
            )


def _earlier(a: TouchRef | None, b: TouchRef | None) -> TouchRef | None:
    if a is None:
        return b
    if b is None or (a.at, a.event_id) <= (b.at, b.event_id):
        return a
    return b


def _newer(a: TouchRef | None, b: TouchRef | None) -> TouchRef | None:
    if a is None:
        return b
    if b is None or (a.at, a.event_id) >= (b.at, b.event_id):
        return a
    return b


def _newer_value(a: Latest | None, b: Latest | None) -> Latest | None:
    if a is None:
        return b
    if b is None or (a.at, a.event_id) >= (b.at, b.event_id):
        return a
    return b


def _summed(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    result = dict(a)
    for key, count in b.items():
        result[key] = result.get(key, 0) + count
    return result


def merge(person: JourneyState, other: JourneyState) -> list[TouchRef]:
    """Fold ``other``'s journey into ``person``'s, in place (identity stitching).

    Every field is a min, max, count or sum over the events, so the result is the state
    one id would have had for the union of both ids' events — except the drop-off
    judgements, which depend on the watermark: ``judged`` and ``dropoffs`` are cleared
    here and the caller judges the merged journey's moves again (:func:`judge`).

    An event both states hold (one event delivered under both ids, still inside the dedup
    window) is kept once among the touches and counted once in ``events`` and the
    per-channel and per-stage counts; returns those shared touches.
    """
    known = {touch.event_id for touch in person.recent}
    shared = [touch for touch in other.recent if touch.event_id in known]
    for touch in shared:
        _uncount(other, touch)
    person.version += other.version + 1
    person.events += other.events
    person.unclassified += other.unclassified
    for stage, hit in other.stage_hits.items():
        mine = person.stage_hits.get(stage)
        person.stage_hits[stage] = hit if mine is None else _earlier(mine, hit) or hit
    person.touches_by_stage = _summed(person.touches_by_stage, other.touches_by_stage)
    person.touches_by_channel = _summed(person.touches_by_channel, other.touches_by_channel)
    exits = {(record.touch.event_id, record.kind): record for record in other.exits}
    exits.update(((record.touch.event_id, record.kind), record) for record in person.exits)
    person.exits = sorted(
        exits.values(), key=lambda record: (record.touch.at, record.touch.event_id)
    )
    person.purchases += other.purchases
    person.revenue += other.revenue
    if other.first_purchase_at is not None and (
        person.first_purchase_at is None or other.first_purchase_at < person.first_purchase_at
    ):
        person.first_purchase_at = other.first_purchase_at
    if other.last_purchase_at is not None and (
        person.last_purchase_at is None or other.last_purchase_at > person.last_purchase_at
    ):
        person.last_purchase_at = other.last_purchase_at
    person.persona = _newer_value(person.persona, other.persona)
    person.tier = _newer_value(person.tier, other.tier)
    person.account_id = _newer_value(person.account_id, other.account_id)
    person.anonymous_id = _newer_value(person.anonymous_id, other.anonymous_id)
    person.recent = sorted(
        [*person.recent, *(touch for touch in other.recent if touch.event_id not in known)],
        key=_touch_key,
    )
    person.pruned_first = _earlier(person.pruned_first, other.pruned_first)
    person.pruned_last = _newer(person.pruned_last, other.pruned_last)
    person.pruned_current = _newer(person.pruned_current, other.pruned_current)
    person.judged = []
    person.dropoffs = {}
    fired = {(record.trigger, record.key): record for record in other.fired}
    fired.update(((record.trigger, record.key), record) for record in person.fired)
    person.fired = sorted(fired.values(), key=lambda record: (record.at, record.trigger))
    person.aliases = sorted({*person.aliases, other.buyer_id, *other.aliases})
    return shared


def _uncount(state: JourneyState, touch: TouchRef) -> None:
    """Take one touch's counts out of ``state`` (it is already in the person's)."""
    state.events -= 1
    channels = state.touches_by_channel
    channels[touch.channel] = channels.get(touch.channel, 0) - 1
    if touch.stage is not None:
        stages = state.touches_by_stage
        stages[touch.stage] = stages.get(touch.stage, 0) - 1


def furthest_stage(state: JourneyState, order: StageOrder = DEFAULT_ORDER) -> str | None:
    hits = state.stage_hits
    for stage in order.descending:
        if stage in hits:
            return stage
    return None


def transitions(state: JourneyState, order: StageOrder = DEFAULT_ORDER) -> list[Transition]:
    """The moves of the buyer's furthest stage, in order.

    A stage is a move when it was hit before every higher stage; a stage reached
    only by skipping past it is not a move of its own.
    """
    return moves_of(state.stage_hits, order)


def moves_of(hits: Mapping[str, TouchRef], order: StageOrder = DEFAULT_ORDER) -> list[Transition]:
    """:func:`transitions` of a buyer whose first hit per stage is ``hits``."""
    found: list[tuple[str, TouchRef]] = []
    earliest: TouchRef | None = None
    for stage in order.descending:
        hit = hits.get(stage)
        if hit is None:
            continue
        if (
            earliest is None
            or hit.at < earliest.at
            or (hit.at == earliest.at and hit.event_id < earliest.event_id)
        ):
            found.append((stage, hit))
            earliest = hit
    moves: list[Transition] = []
    previous: str | None = None
    for stage, hit in reversed(found):
        moves.append((previous, stage, hit))
        previous = stage
    return moves


def reached_at(state: JourneyState, order: StageOrder = DEFAULT_ORDER) -> dict[str, int]:
    """When the buyer first reached each stage (a higher stage reaches the ones below it)."""
    result: dict[str, int] = {}
    earliest: int | None = None
    hits = state.stage_hits
    for stage in order.descending:
        hit = hits.get(stage)
        if hit is not None and (earliest is None or hit.at < earliest):
            earliest = hit.at
        if earliest is not None:
            result[stage] = earliest
    return result


def stage_at(
    state: JourneyState, key: tuple[int, str], order: StageOrder = DEFAULT_ORDER
) -> str | None:
    """The buyer's furthest stage as of the event with this key (inclusive)."""
    hits = state.stage_hits
    for stage in order.descending:
        hit = hits.get(stage)
        if hit is not None and (hit.at, hit.event_id) <= key:
            return stage
    return None


def preferred_channel(state: JourneyState) -> str | None:
    if not state.touches_by_channel:
        return None
    return min(
        state.touches_by_channel.items(),
        key=lambda item: (-item[1], _CHANNEL_ORDER.get(item[0], len(_CHANNEL_ORDER))),
    )[0]


def deadlines(
    state: JourneyState,
    timeouts: Mapping[str, int],
    moves: Sequence[Transition] | None = None,
    order: StageOrder = DEFAULT_ORDER,
) -> Iterator[tuple[int, str]]:
    """Drop-off deadlines of the buyer's moves that are not judged yet."""
    for _, stage, hit in transitions(state, order) if moves is None else moves:
        timeout = timeouts.get(stage)
        if timeout is not None and stage not in state.judged:
            yield hit.at + timeout, stage


def last_touch_until(state: JourneyState, until: int) -> TouchRef | None:
    """The buyer's last touch at or before ``until``."""
    index = bisect.bisect_right(state.recent, until, key=lambda touch: touch.at)
    if index:
        return state.recent[index - 1]
    return (
        state.pruned_last
        if state.pruned_last is not None and state.pruned_last.at <= until
        else None
    )


def judge(
    state: JourneyState,
    stage: str,
    timeouts: Mapping[str, int],
    order: StageOrder = DEFAULT_ORDER,
) -> DropoffRecord | None:
    """Decide whether the buyer dropped off at ``stage``, once the watermark passed its deadline.

    Returns the new drop-off record, or None if the buyer moved on in time (or
    ``stage`` is not one of their moves, or was judged before).
    """
    if stage in state.judged:
        return None
    moves = {to_stage: hit for _, to_stage, hit in transitions(state, order)}
    hit = moves.get(stage)
    timeout = timeouts.get(stage)
    if hit is None or timeout is None:
        return None
    state.judged.append(stage)
    state.version += 1
    deadline = hit.at + timeout
    ranks = order.rank
    rank = ranks[stage]
    progress = min(
        (other.at for other_stage, other in state.stage_hits.items() if ranks[other_stage] > rank),
        default=None,
    )
    if progress is not None and progress <= deadline:
        return None
    record = DropoffRecord(stage, hit.at, deadline, last_touch_until(state, deadline), progress)
    state.dropoffs[stage] = record
    return record


def prune(
    state: JourneyState,
    watermark: int,
    dedup_window: int,
    timeouts: Mapping[str, int],
    moves: Sequence[Transition] | None = None,
    order: StageOrder = DEFAULT_ORDER,
) -> None:
    """Forget touches no dedup check or drop-off judgement can need any more."""
    cutoff = watermark - dedup_window
    recent = state.recent
    if not recent or recent[0].at >= cutoff:
        return
    for deadline, _ in deadlines(state, timeouts, moves, order):
        cutoff = min(cutoff, deadline)
    index = bisect.bisect_left(recent, cutoff, key=lambda touch: touch.at)
    if not index:
        return
    if state.pruned_first is None:
        state.pruned_first = recent[0]
    gone = recent[:index]
    state.pruned_last = _newer(state.pruned_last, gone[-1])  # a late fold can prune an old touch
    for touch in reversed(gone):
        if touch.stage is not None:
            pruned = state.pruned_current
            if pruned is None or (pruned.at, pruned.event_id) < (touch.at, touch.event_id):
                state.pruned_current = touch
            break
    del recent[:index]


# --- rows (dicts of one ClickHouse row each, JSON-ready) ------------------------------


def touchpoint_row(
    event: Event, classification: Classification, properties_json: str, source: str, position: str
) -> JsonRow:
    revenue = event.revenue
    return {
        "event_id": event.event_id,
        "buyer_id": event.buyer_id,
        "anonymous_id": event.anonymous_id,
        "account_id": event.account_id,
        "channel": event.channel,
        "event_type": event.event_type,
        "occurred_at": event.at / 1_000_000,
        "received_at": None if event.received_at is None else event.received_at / 1_000_000,
        "campaign": event.campaign,
        "promo": event.promo,
        "revenue": None if revenue is None else str(revenue),
        "currency": event.currency,
        "properties": properties_json,
        "persona": event.persona,
        "stage": classification.stage,
        "exit_kind": classification.exit,
        "is_purchase": classification.purchase,
        "rule_id": classification.rule_id,
        "source": source,
        "source_position": position,
        "schema_version": event.schema_version,
    }


def _value(latest: Latest | None) -> str | None:
    return None if latest is None else latest.value


def transition_rows(
    state: JourneyState, moves: Sequence[Transition], retracted: Sequence[Transition] = ()
) -> list[JsonRow]:
    """Rows for new or changed ``moves``, and deletion markers for ``retracted`` ones."""
    persona = _value(state.persona)
    return [
        {
            "buyer_id": state.buyer_id,
            "to_stage": to_stage,
            "from_stage": from_stage,
            "transitioned_at": hit.at / 1_000_000,
            "event_id": hit.event_id,
            "channel": hit.channel,
            "event_type": hit.event_type,
            "campaign": hit.campaign,
            "persona": persona,
            "version": state.version,
            "is_deleted": deleted,
        }
        for deleted, group in ((0, moves), (1, retracted))
        for from_stage, to_stage, hit in group
    ]


def dropoff_row(state: JourneyState, record: DropoffRecord) -> JsonRow:
    last = record.last_touch
    return {
        "buyer_id": state.buyer_id,
        "stage": record.stage,
        "entered_at": record.entered_at / 1_000_000,
        "deadline": record.deadline / 1_000_000,
        "last_touch_at": None if last is None else last.at / 1_000_000,
        "last_touch_channel": None if last is None else last.channel,
        "last_touch_event_type": None if last is None else last.event_type,
        "last_touch_campaign": None if last is None else last.campaign,
        "recovered_at": _seconds_or_none(record.recovered_at),
        "persona": _value(state.persona),
        "version": state.version,
    }


def state_row(state: JourneyState, order: StageOrder = DEFAULT_ORDER) -> JsonRow:
    hits = state.stage_hits
    furthest: str | None = None
    stage_entered_at: dict[str, float] = {}
    earliest: int | None = None
    for stage in order.descending:
        hit = hits.get(stage)
        if hit is not None:
            if furthest is None:
                furthest = stage
            if earliest is None or hit.at < earliest:
                earliest = hit.at
        if earliest is not None:
            stage_entered_at[stage] = earliest / 1_000_000
    open_dropoff = None
    for record in state.dropoffs.values():
        if record.recovered_at is None:
            open_dropoff = record
            break
    exits = [
        [
            record.kind,
            stage_at(state, (record.touch.at, record.touch.event_id), order) or "",
            record.touch.channel,
            record.touch.at / 1_000_000,
        ]
        for record in state.exits
    ]
    first, last, now = first_touch(state), last_touch(state), current(state)
    revenue = state.revenue
    return {
        "buyer_id": state.buyer_id,
        "persona": _value(state.persona),
        "tier": _value(state.tier),
        "account_id": _value(state.account_id),
        "anonymous_id": _value(state.anonymous_id),
        "furthest_stage": furthest,
        "current_stage": None if now is None else now.stage,
        "stage_entered_at": stage_entered_at,
        # Sorted: the dicts are in arrival order, and a Map's order is part of its value.
        "touches_by_stage": dict(sorted(state.touches_by_stage.items())),
        "touches_by_channel": dict(sorted(state.touches_by_channel.items())),
        "preferred_channel": preferred_channel(state),
        "first_touch_at": None if first is None else first.at / 1_000_000,
        "first_touch_channel": None if first is None else first.channel,
        "first_touch_campaign": None if first is None else first.campaign,
        "last_touch_at": None if last is None else last.at / 1_000_000,
        "last_touch_channel": None if last is None else last.channel,
        "last_touch_campaign": None if last is None else last.campaign,
        "exits": exits,
        "purchases": state.purchases,
        "revenue": str(revenue if isinstance(revenue, Decimal) else Decimal(revenue)),
        "first_purchase_at": _seconds_or_none(state.first_purchase_at),
        "last_purchase_at": _seconds_or_none(state.last_purchase_at),
        "dropoff_stage": None if open_dropoff is None else open_dropoff.stage,
        "dropoff_at": None if open_dropoff is None else open_dropoff.deadline / 1_000_000,
        "events": state.events,
        "unclassified": state.unclassified,
        "version": state.version,
    }
