"""The journey fold: pure functions over :class:`schemas.journey.JourneyState`.

Every field the fold keeps is a min, max, count or sum keyed by
``(occurred_at, event_id)``, so the final state depends on the set of events,
not on the order they arrived in. What *does* depend on time — whether a stall
was a drop-off — is decided only once the watermark has passed the deadline,
when every event before it has arrived (see :func:`judge`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

from pydantic_core import to_json

from processors.rules import Classification
from schemas.enums import STAGES, Channel, Stage
from schemas.journey import DropoffRecord, ExitRecord, JourneyState, Latest, TouchRef
from schemas.rows import DropoffRow, ExitTuple, JourneyStateRow, StageTransitionRow, TouchpointRow
from schemas.touchpoint import Touchpoint

__all__ = [
    "Transition",
    "deadlines",
    "dropoff_row",
    "fold",
    "furthest_stage",
    "is_duplicate",
    "judge",
    "last_touch_until",
    "moves_of",
    "new_state",
    "preferred_channel",
    "prune",
    "reached_at",
    "stage_at",
    "state_row",
    "touch_ref",
    "touchpoint_row",
    "transition_rows",
    "transitions",
]

Transition = tuple[Stage | None, Stage, TouchRef]
"""(from stage, to stage, the event that moved the buyer)"""
_CHANNEL_ORDER = {channel: index for index, channel in enumerate(Channel)}
_DESCENDING = tuple(reversed(STAGES))
_RANK = {stage: index for index, stage in enumerate(STAGES)}


def new_state(buyer_id: str) -> JourneyState:
    return JourneyState(buyer_id=buyer_id)


def touch_ref(touchpoint: Touchpoint, stage: Stage | None) -> TouchRef:
    return TouchRef(
        at=touchpoint.occurred_at,
        event_id=touchpoint.event_id,
        channel=touchpoint.channel,
        event_type=touchpoint.event_type,
        campaign=touchpoint.campaign,
        stage=stage,
    )


def _key(touch: TouchRef) -> tuple[datetime, str]:
    return (touch.at, touch.event_id)


def is_duplicate(state: JourneyState, event_id: str, at: datetime) -> bool:
    """True if this event id is already folded into ``state`` (within the dedup window).

    Matched on the id alone: a source that stamps events with their receive time
    (Twilio) redelivers the same event with a later time.
    """
    index = bisect.bisect_left(state.recent, (at, event_id), key=_key)
    if index < len(state.recent) and state.recent[index].event_id == event_id:
        return True
    return any(touch.event_id == event_id for touch in state.recent)


def _later(current: Latest | None, touch: TouchRef, value: str | None) -> Latest | None:
    if value is None:
        return current
    if current is None or (current.at, current.event_id) < touch.key:
        return Latest(at=touch.at, event_id=touch.event_id, value=value)
    return current


def fold(state: JourneyState, touchpoint: Touchpoint, classification: Classification) -> None:
    """Fold one new (not duplicate) event into ``state``, in place."""
    stage = classification.stage
    touch = touch_ref(touchpoint, stage)
    key = touch.key
    state.version += 1
    state.events += 1
    if not classification.classified:
        state.unclassified += 1
    bisect.insort(state.recent, touch, key=_key)

    state.touches_by_channel[touch.channel] = state.touches_by_channel.get(touch.channel, 0) + 1
    if state.first_touch is None or key < state.first_touch.key:
        state.first_touch = touch
    if state.last_touch is None or key > state.last_touch.key:
        state.last_touch = touch
    state.persona = _later(state.persona, touch, touchpoint.persona)
    state.tier = _later(state.tier, touch, touchpoint.tier)
    state.account_id = _later(state.account_id, touch, touchpoint.account_id)
    state.anonymous_id = _later(state.anonymous_id, touch, touchpoint.anonymous_id)

    if stage is not None:
        state.touches_by_stage[stage] = state.touches_by_stage.get(stage, 0) + 1
        hit = state.stage_hits.get(stage)
        if hit is None or key < hit.key:
            state.stage_hits[stage] = touch
        if state.current is None or key > state.current.key:
            state.current = touch
        _mark_recoveries(state, stage, touch.at)

    if classification.exit is not None:
        bisect.insort(
            state.exits,
            ExitRecord(kind=classification.exit, touch=touch),
            key=lambda record: record.touch.key,
        )

    if classification.purchase:
        state.purchases += 1
        if touchpoint.revenue is not None:
            state.revenue += touchpoint.revenue
        if state.first_purchase_at is None or touch.at < state.first_purchase_at:
            state.first_purchase_at = touch.at
        if state.last_purchase_at is None or touch.at > state.last_purchase_at:
            state.last_purchase_at = touch.at


def _mark_recoveries(state: JourneyState, stage: Stage, at: datetime) -> None:
    for dropped_stage, record in state.dropoffs.items():
        if _RANK[stage] > _RANK[dropped_stage] and (
            record.recovered_at is None or at < record.recovered_at
        ):
            state.dropoffs[dropped_stage] = replace(record, recovered_at=at)


def furthest_stage(state: JourneyState) -> Stage | None:
    for stage in reversed(STAGES):
        if stage in state.stage_hits:
            return stage
    return None


def transitions(state: JourneyState) -> list[Transition]:
    """The moves of the buyer's furthest stage, in order.

    A stage is a move when it was hit before every higher stage; a stage reached
    only by skipping past it is not a move of its own.
    """
    return moves_of(state.stage_hits)


def moves_of(hits: Mapping[Stage, TouchRef]) -> list[Transition]:
    """:func:`transitions` of a buyer whose first hit per stage is ``hits``."""
    found: list[tuple[Stage, TouchRef]] = []
    earliest: TouchRef | None = None
    for stage in _DESCENDING:
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
    previous: Stage | None = None
    for stage, hit in reversed(found):
        moves.append((previous, stage, hit))
        previous = stage
    return moves


def reached_at(state: JourneyState) -> dict[Stage, datetime]:
    """When the buyer first reached each stage (a higher stage reaches the ones below it)."""
    result: dict[Stage, datetime] = {}
    earliest: datetime | None = None
    for stage in reversed(STAGES):
        hit = state.stage_hits.get(stage)
        if hit is not None and (earliest is None or hit.at < earliest):
            earliest = hit.at
        if earliest is not None:
            result[stage] = earliest
    return result


def stage_at(state: JourneyState, key: tuple[datetime, str]) -> Stage | None:
    """The buyer's furthest stage as of the event with this key (inclusive)."""
    for stage in reversed(STAGES):
        hit = state.stage_hits.get(stage)
        if hit is not None and hit.key <= key:
            return stage
    return None


def preferred_channel(state: JourneyState) -> Channel | None:
    if not state.touches_by_channel:
        return None
    return min(
        state.touches_by_channel.items(),
        key=lambda item: (-item[1], _CHANNEL_ORDER.get(item[0], len(_CHANNEL_ORDER))),
    )[0]


def deadlines(
    state: JourneyState,
    timeouts: Mapping[Stage, timedelta],
    moves: Sequence[Transition] | None = None,
) -> Iterator[tuple[datetime, Stage]]:
    """Drop-off deadlines of the buyer's moves that are not judged yet."""
    for _, stage, hit in transitions(state) if moves is None else moves:
        timeout = timeouts.get(stage)
        if timeout is not None and stage not in state.judged:
            yield hit.at + timeout, stage


def last_touch_until(state: JourneyState, until: datetime) -> TouchRef | None:
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
    state: JourneyState, stage: Stage, timeouts: Mapping[Stage, timedelta]
) -> DropoffRecord | None:
    """Decide whether the buyer dropped off at ``stage``, once the watermark passed its deadline.

    Returns the new drop-off record, or None if the buyer moved on in time (or
    ``stage`` is not one of their moves, or was judged before).
    """
    if stage in state.judged:
        return None
    moves = {to_stage: hit for _, to_stage, hit in transitions(state)}
    hit = moves.get(stage)
    timeout = timeouts.get(stage)
    if hit is None or timeout is None:
        return None
    state.judged.append(stage)
    state.version += 1
    deadline = hit.at + timeout
    progress = min(
        (
            other.at
            for other_stage, other in state.stage_hits.items()
            if _RANK[other_stage] > _RANK[stage]
        ),
        default=None,
    )
    if progress is not None and progress <= deadline:
        return None
    record = DropoffRecord(
        stage=stage,
        entered_at=hit.at,
        deadline=deadline,
        last_touch=last_touch_until(state, deadline),
        recovered_at=progress,
    )
    state.dropoffs[stage] = record
    return record


def prune(
    state: JourneyState,
    watermark: datetime,
    dedup_window: timedelta,
    timeouts: Mapping[Stage, timedelta],
    moves: Sequence[Transition] | None = None,
) -> None:
    """Forget touches no dedup check or drop-off judgement can need any more."""
    cutoff = watermark - dedup_window
    recent = state.recent
    if not recent or recent[0].at >= cutoff:
        return
    for deadline, _ in deadlines(state, timeouts, moves):
        cutoff = min(cutoff, deadline)
    index = bisect.bisect_left(recent, cutoff, key=lambda touch: touch.at)
    if index:
        state.pruned_last = recent[index - 1]
        del recent[:index]


# --- rows ------------------------------------------------------------------


def touchpoint_row(
    touchpoint: Touchpoint, classification: Classification, source: str, position: str
) -> TouchpointRow:
    return TouchpointRow(
        event_id=touchpoint.event_id,
        buyer_id=touchpoint.buyer_id,
        anonymous_id=touchpoint.anonymous_id,
        account_id=touchpoint.account_id,
        channel=touchpoint.channel,
        event_type=touchpoint.event_type,
        occurred_at=touchpoint.occurred_at,
        received_at=touchpoint.received_at,
        campaign=touchpoint.campaign,
        promo=touchpoint.promo,
        revenue=touchpoint.revenue,
        currency=touchpoint.currency,
        properties=to_json(touchpoint.properties).decode(),
        persona=touchpoint.persona,
        stage=classification.stage,
        exit_kind=classification.exit,
        is_purchase=classification.purchase,
        rule_id=classification.rule_id,
        source=source,
        source_position=position,
        schema_version=touchpoint.schema_version,
    )


# Enum members are written as they are: a StrEnum member *is* its string value,
# and skipping `.value` (an enum descriptor call) matters on this hot path.
def _value(latest: Latest | None) -> str | None:
    return None if latest is None else latest.value


def transition_rows(
    state: JourneyState, moves: Sequence[Transition], retracted: Sequence[Transition] = ()
) -> list[StageTransitionRow]:
    """Rows for new or changed ``moves``, and deletion markers for ``retracted`` ones."""
    persona = _value(state.persona)
    return [
        StageTransitionRow(
            buyer_id=state.buyer_id,
            to_stage=to_stage,
            from_stage=from_stage,
            transitioned_at=hit.at,
            event_id=hit.event_id,
            channel=hit.channel,
            event_type=hit.event_type,
            campaign=hit.campaign,
            persona=persona,
            version=state.version,
            is_deleted=deleted,
        )
        for deleted, group in ((0, moves), (1, retracted))
        for from_stage, to_stage, hit in group
    ]


def dropoff_row(state: JourneyState, record: DropoffRecord) -> DropoffRow:
    last = record.last_touch
    return DropoffRow(
        buyer_id=state.buyer_id,
        stage=record.stage,
        entered_at=record.entered_at,
        deadline=record.deadline,
        last_touch_at=None if last is None else last.at,
        last_touch_channel=None if last is None else last.channel,
        last_touch_event_type=None if last is None else last.event_type,
        last_touch_campaign=None if last is None else last.campaign,
        recovered_at=record.recovered_at,
        persona=_value(state.persona),
        version=state.version,
    )


def state_row(state: JourneyState) -> JourneyStateRow:
    furthest = furthest_stage(state)
    open_dropoff = next(
        (record for record in state.dropoffs.values() if record.recovered_at is None), None
    )
    preferred = preferred_channel(state)
    exits: list[ExitTuple] = []
    for record in state.exits:
        at_stage = stage_at(state, record.touch.key)
        exits.append(
            (
                record.kind,
                "" if at_stage is None else at_stage,
                record.touch.channel,
                record.touch.at,
            )
        )
    first, last = state.first_touch, state.last_touch
    return JourneyStateRow(
        buyer_id=state.buyer_id,
        persona=_value(state.persona),
        tier=_value(state.tier),
        account_id=_value(state.account_id),
        anonymous_id=_value(state.anonymous_id),
        furthest_stage=furthest,
        current_stage=None if state.current is None else state.current.stage,
        stage_entered_at={stage: at for stage, at in reached_at(state).items()},
        touches_by_stage={stage: count for stage, count in state.touches_by_stage.items()},
        touches_by_channel={channel: count for channel, count in state.touches_by_channel.items()},
        preferred_channel=None if preferred is None else preferred,
        first_touch_at=None if first is None else first.at,
        first_touch_channel=None if first is None else first.channel,
        first_touch_campaign=None if first is None else first.campaign,
        last_touch_at=None if last is None else last.at,
        last_touch_channel=None if last is None else last.channel,
        last_touch_campaign=None if last is None else last.campaign,
        exits=exits,
        purchases=state.purchases,
        revenue=state.revenue if isinstance(state.revenue, Decimal) else Decimal(state.revenue),
        first_purchase_at=state.first_purchase_at,
        last_purchase_at=state.last_purchase_at,
        dropoff_stage=None if open_dropoff is None else open_dropoff.stage,
        dropoff_at=None if open_dropoff is None else open_dropoff.deadline,
        events=state.events,
        unclassified=state.unclassified,
        version=state.version,
    )
