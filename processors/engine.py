"""The journey processor: dedup → classify → fold → drop-off timers, over any state store.

Both drivers run exactly this class: the local runner with a plain dict as the
state store, the Faust worker with a Faust table. It does no I/O; it returns
rows for a sink.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from processors import journey
from processors.rules import Classifier
from schemas.dead_letter import DeadLetter
from schemas.enums import STAGES, DeadLetterReason, Stage
from schemas.errors import SchemaValidationError
from schemas.journey import DropoffRecord, JourneyState, TouchRef
from schemas.rows import (
    DeadLetterRow,
    DropoffRow,
    JourneyStateRow,
    Row,
    StageTransitionRow,
    TouchpointRow,
)
from schemas.rules import JourneyRules
from schemas.touchpoint import Touchpoint, parse_touchpoint

__all__ = ["BatchOutput", "JourneyProcessor", "ProcessorCounters"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProcessorCounters:
    """Running totals since the processor started."""

    accepted: int = 0
    duplicates: int = 0
    unclassified: int = 0
    late: int = 0
    dropoffs: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())


@dataclass
class BatchOutput:
    """The rows one batch produced, per table."""

    touchpoints: list[TouchpointRow] = field(default_factory=list)
    transitions: list[StageTransitionRow] = field(default_factory=list)
    states: list[JourneyStateRow] = field(default_factory=list)
    dropoffs: list[DropoffRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)

    def tables(self) -> dict[str, list[Row]]:
        return {
            TouchpointRow.table: list(self.touchpoints),
            StageTransitionRow.table: list(self.transitions),
            JourneyStateRow.table: list(self.states),
            DropoffRow.table: list(self.dropoffs),
            DeadLetterRow.table: list(self.dead_letters),
        }

    def __len__(self) -> int:
        return (
            len(self.touchpoints)
            + len(self.transitions)
            + len(self.states)
            + len(self.dropoffs)
            + len(self.dead_letters)
        )


@dataclass
class _Snapshot:
    """A buyer's state as it was before this batch touched it (what flush compares against)."""

    stage_hits: dict[Stage, TouchRef]
    dropoffs: dict[Stage, DropoffRecord]


class JourneyProcessor:
    """Turns touchpoints into journey rows. Feed events, then :meth:`flush` per batch.

    Event time is tracked per input partition (the local runner has one,
    partition 0; a Kafka worker has one per assigned partition, and a buyer's
    events all arrive on one of them). A partition's watermark is the newest
    event time seen on it minus ``allowed_lateness`` (or a later source
    watermark, see :meth:`advance_watermark`); a drop-off is judged when the
    watermark of the buyer's partition passes its deadline. Events older than
    ``watermark - dedup_window`` cannot be de-duplicated any more and become
    ``too_late`` dead letters.
    """

    def __init__(
        self,
        rules: JourneyRules,
        *,
        allowed_lateness: timedelta,
        dedup_window: timedelta,
        states: MutableMapping[str, JourneyState] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if dedup_window < allowed_lateness:
            raise ValueError("dedup_window must be at least allowed_lateness")
        self.classifier = Classifier(rules)
        self.timeouts = dict(rules.timeouts)
        self.allowed_lateness = allowed_lateness
        self.dedup_window = dedup_window
        self.states: MutableMapping[str, JourneyState] = {} if states is None else states
        self.counters = ProcessorCounters()
        self.max_event_times: dict[int, datetime] = {}
        self._clock = clock
        self._timers: dict[int, list[tuple[datetime, str, int]]] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        self._output = BatchOutput()

    # -- event time ----------------------------------------------------------

    def watermark(self, partition: int = 0) -> datetime | None:
        newest = self.max_event_times.get(partition)
        return None if newest is None else newest - self.allowed_lateness

    @property
    def max_event_time(self) -> datetime | None:
        """The newest event time seen on any partition."""
        return max(self.max_event_times.values(), default=None)

    def advance_watermark(self, partition: int, event_time: datetime) -> None:
        """A source watermark: no event older than ``event_time - allowed_lateness`` will follow.

        Sent at the end of a finite input (and by idle sources), so drop-offs are
        judged without waiting for newer events.
        """
        newest = self.max_event_times.get(partition)
        if newest is None or event_time > newest:
            self.max_event_times[partition] = event_time
            self._fire_timers(partition)

    def restore(
        self,
        partitions: set[int] | None = None,
        newest_event_times: Mapping[int, datetime] | None = None,
    ) -> None:
        """Re-arm timers and event time from the state store (after a restart or a rebalance).

        A partition's event time restarts at the time it had reached when its
        states were stored (``newest_event_times``, when the driver kept it), and
        never before the newest touch its buyers have. Without a stored time it
        can only be behind the time reached before, so a restart delays
        judgements but never makes a wrong one.
        """
        for partition in partitions if partitions is not None else set(self._timers):
            self._timers.pop(partition, None)
            self.max_event_times.pop(partition, None)
        for partition, stored_at in (newest_event_times or {}).items():
            if partitions is None or partition in partitions:
                self.max_event_times[partition] = stored_at
        for buyer_id, state in self.states.items():
            if partitions is not None and state.partition not in partitions:
                continue
            self._schedule(buyer_id, state)
            if state.last_touch is not None:
                newest = self.max_event_times.get(state.partition)
                if newest is None or state.last_touch.at > newest:
                    self.max_event_times[state.partition] = state.last_touch.at

    def forget(self, partitions: set[int]) -> None:
        """Drop timers and event time of partitions this processor no longer owns."""
        for partition in partitions:
            self._timers.pop(partition, None)
            self.max_event_times.pop(partition, None)

    # -- state ---------------------------------------------------------------

    def _state_for_update(self, buyer_id: str, partition: int) -> JourneyState:
        state = self.states.get(buyer_id)
        if state is None:
            state = journey.new_state(buyer_id)
            state.partition = partition
        if buyer_id not in self._snapshots:
            self._snapshots[buyer_id] = _Snapshot(
                stage_hits=dict(state.stage_hits), dropoffs=dict(state.dropoffs)
            )
        return state

    def _schedule(self, buyer_id: str, state: JourneyState) -> None:
        timers = self._timers.setdefault(state.partition, [])
        for deadline, stage in journey.deadlines(state, self.timeouts):
            heapq.heappush(timers, (deadline, buyer_id, STAGES.index(stage)))

    # -- input ---------------------------------------------------------------

    def process_raw(
        self, data: bytes | str, *, source: str, position: str, partition: int = 0
    ) -> Touchpoint | None:
        """Validate one raw record and process it; a bad record becomes a dead letter."""
        try:
            touchpoint = parse_touchpoint(data)
        except SchemaValidationError as exc:
            self.dead_letter(exc.reason, exc.detail, data, source=source, position=position)
            return None
        self.process(touchpoint, source=source, position=position, partition=partition)
        return touchpoint

    def dead_letter(
        self,
        reason: DeadLetterReason,
        detail: str,
        raw: bytes | str,
        *,
        source: str,
        position: str,
    ) -> None:
        letter = DeadLetter.build(
            reason=reason,
            detail=detail,
            raw=raw,
            source=source,
            position=position,
            recorded_at=self._clock(),
        )
        self.counters.dead_letters[reason.value] += 1
        self._output.dead_letters.append(DeadLetterRow.from_dead_letter(letter))

    def process(
        self, touchpoint: Touchpoint, *, source: str, position: str, partition: int = 0
    ) -> None:
        """Process one validated touchpoint that arrived on ``partition``."""
        at = touchpoint.occurred_at
        watermark = self.watermark(partition)
        if watermark is not None and at < watermark - self.dedup_window:
            self.dead_letter(
                DeadLetterReason.TOO_LATE,
                f"occurred_at {at.isoformat()} is more than the dedup window "
                f"({self.dedup_window}) behind the watermark {watermark.isoformat()}",
                touchpoint.model_dump_json(),
                source=source,
                position=position,
            )
            return
        buyer_id = touchpoint.buyer_id
        existing = self.states.get(buyer_id)
        if existing is not None and journey.is_duplicate(existing, touchpoint.event_id, at):
            self.counters.duplicates += 1
            return
        if watermark is not None and at < watermark:
            self.counters.late += 1

        state = self._state_for_update(buyer_id, partition)
        classification = self.classifier.classify(touchpoint)
        journey.fold(state, touchpoint, classification)
        self.states[buyer_id] = state
        self.counters.accepted += 1
        if not classification.classified:
            self.counters.unclassified += 1
        self._output.touchpoints.append(
            journey.touchpoint_row(touchpoint, classification, source, position)
        )
        stage = classification.stage
        if stage is not None and state.stage_hits[stage].event_id == touchpoint.event_id:
            self._schedule(buyer_id, state)

        newest = self.max_event_times.get(state.partition)
        if newest is None or at > newest:
            self.max_event_times[state.partition] = at
            self._fire_timers(state.partition)

    def _fire_timers(self, partition: int) -> None:
        watermark = self.watermark(partition)
        timers = self._timers.get(partition)
        if watermark is None or not timers:
            return
        while timers and timers[0][0] <= watermark:
            deadline, buyer_id, rank = heapq.heappop(timers)
            state = self.states.get(buyer_id)
            if state is None:
                continue
            stage = STAGES[rank]
            hit = state.stage_hits.get(stage)
            if hit is None or stage in state.judged or hit.at + self.timeouts[stage] != deadline:
                continue  # superseded: a late event moved this stage's entry
            state = self._state_for_update(buyer_id, state.partition)
            record = journey.judge(state, stage, self.timeouts)
            self.states[buyer_id] = state
            if record is not None:
                self.counters.dropoffs += 1

    # -- output --------------------------------------------------------------

    def flush(self) -> BatchOutput:
        """Rows produced since the last flush: touchpoints, dead letters, and changed journeys."""
        output, self._output = self._output, BatchOutput()
        for buyer_id, before in self._snapshots.items():
            state = self.states[buyer_id]
            moves = journey.transitions(state)
            watermark = self.watermark(state.partition)
            if watermark is not None:
                journey.prune(state, watermark, self.dedup_window, self.timeouts, moves)
                self.states[buyer_id] = state
            if state.stage_hits != before.stage_hits:
                previous = journey.moves_of(before.stage_hits)
                changed = [move for move in moves if move not in previous]
                still_moves = {to_stage for _, to_stage, _ in moves}
                retracted = [move for move in previous if move[1] not in still_moves]
                output.transitions.extend(journey.transition_rows(state, changed, retracted))
            for stage, record in state.dropoffs.items():
                if before.dropoffs.get(stage) != record:
                    output.dropoffs.append(journey.dropoff_row(state, record))
            output.states.append(journey.state_row(state))
        self._snapshots.clear()
        return output
